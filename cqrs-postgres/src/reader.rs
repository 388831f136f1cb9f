//! Reading the global log on a task of its own: the rows are received and decoded there,
//! beside the caller's work on the records, on a multi-threaded runtime.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_core::{Error, LogItem, Position, RecordedEvent, Result};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt, stream};
use sqlx::AssertSqlSafe;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::PostgresEventStore;
use crate::row::{decode_rows, saturating_i64, store_error, stored_u64};

/// Records per message from the reading task: large enough that the hand-over costs
/// little per record, small enough that the first records of a long read arrive at
/// once (a chunk also goes as soon as the next row is not ready yet).
const CHUNK: usize = 256;

/// Chunks in flight between the task and the caller: with the one each side holds,
/// at most four chunks of records in memory.
const IN_FLIGHT: usize = 2;

/// Whether records can be decoded beside their caller: on a multi-threaded Tokio
/// runtime (on a current-thread runtime the task would only take turns with its caller).
pub(crate) fn can_read_beside() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Runs `store`'s read of the log after `after` (at most `limit` records) on a task of
/// its own and yields its records in order.
pub(crate) fn read_all_beside(
    store: PostgresEventStore,
    after: Position,
    limit: Option<u64>,
) -> BesideStream {
    beside(move |chunks| async move { chunks.forward(store.read_all_here(after, limit)).await })
}

/// Runs `store`'s read of the records of `types` after `after` (see
/// [`read_all_of_types`](cqrs_core::EventLog::read_all_of_types)) on a task of its own
/// and yields its items in order.
pub(crate) fn read_all_of_types_beside(
    store: PostgresEventStore,
    after: Position,
    limit: Option<u64>,
    types: Vec<String>,
) -> BesideStream<LogItem> {
    beside(move |chunks| async move {
        let items = store.read_all_of_types_here(after, limit, &types);
        chunks.forward(items).await;
    })
}

/// Runs `read` on a task of its own, handing it the sending end, and yields the records
/// it forwards, in order.
///
/// The task sends chunks of records through a bounded channel, so it reads ahead of
/// the caller by at most [`IN_FLIGHT`] chunks. Dropping the returned stream stops the
/// task (its read is dropped, as an unfinished read of the caller's own would be). A
/// task that ends without finishing its read (it panicked, or the runtime is shutting
/// down) ends the stream with [`Error::Store`], never as if the log ended there.
fn beside<T, F, Fut>(read: F) -> BesideStream<T>
where
    T: Send + 'static,
    F: FnOnce(Chunks<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Vec<Result<T>>>(IN_FLIGHT);
    // The task runs in the caller's span, so what the read logs is the caller's.
    let task = tokio::spawn(read(Chunks { tx }).instrument(tracing::Span::current()));
    let state = Beside {
        rx,
        task: Some(AbortOnDrop(task)),
    };
    stream::unfold(state, |mut state| async move {
        if let Some(chunk) = state.rx.recv().await {
            return Some((stream::iter(chunk), state));
        }
        // The channel closed: the task ended. Only a task that finished its read ends
        // the log here.
        let mut task = state.task.take()?;
        let failed = match (&mut task.0).await {
            Ok(()) => return None,
            Err(e) => e,
        };
        let error = Error::store(std::io::Error::other(format!(
            "the task reading the log ended before the end of its read: {failed}"
        )));
        Some((stream::iter(vec![Err(error)]), state))
    })
    .flatten()
    .boxed()
}

/// The reading task's end of the channel.
struct Chunks<T> {
    tx: mpsc::Sender<Vec<Result<T>>>,
}

impl<T> Chunks<T> {
    /// Sends `records` in chunks of up to [`CHUNK`]; returns early when the caller is
    /// gone.
    async fn forward(self, records: impl Stream<Item = Result<T>>) {
        let mut records = std::pin::pin!(records);
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            // A partial chunk goes when the next record is not there yet and the caller
            // has nothing queued: it never waits for rows that the server has not sent,
            // and a caller that is behind gets full chunks (fewer hand-overs).
            let next = match records.next().now_or_never() {
                Some(next) => next,
                None if chunk.is_empty() || self.tx.capacity() < self.tx.max_capacity() => {
                    records.next().await
                }
                None => {
                    let ready = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    if self.tx.send(ready).await.is_err() {
                        return;
                    }
                    records.next().await
                }
            };
            let Some(record) = next else { break };
            chunk.push(record);
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                if self.tx.send(full).await.is_err() {
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            // The caller may have gone: nothing to tell it then.
            let _ = self.tx.send(chunk).await;
        }
    }
}

/// The records (or items) of [`read_all_beside`] and [`read_all_of_types_beside`].
pub(crate) type BesideStream<T = RecordedEvent> = futures::stream::BoxStream<'static, Result<T>>;

/// The caller's end: the channel and the task, which is stopped when the stream is
/// dropped.
struct Beside<T> {
    rx: mpsc::Receiver<Vec<Result<T>>>,
    task: Option<AbortOnDrop>,
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresEventStore {
    /// The read of [`read_all`](EventLog::read_all), decoded in the caller's polls.
    pub(crate) fn read_all_here(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        let limit = limit.map(saturating_i64);
        stream::once(self.horizon())
            .map_ok(move |horizon| {
                decode_rows(self.restarting(move || {
                    sqlx::query(AssertSqlSafe(self.inner.sql.read_all.clone()))
                        .bind(saturating_i64(after.commit))
                        .bind(saturating_i64(after.sequence))
                        .bind(horizon)
                        .bind(limit)
                        .fetch(&self.inner.pool)
                }))
            })
            .try_flatten()
    }
}

impl PostgresEventStore {
    /// The read of [`read_all_of_types`](EventLog::read_all_of_types): the server leaves
    /// the records of other types out, and a read that ends before `limit` passes to the
    /// last event below its horizon (found by the horizon query) when it did not hand
    /// that one out.
    pub(crate) fn read_all_of_types_here<'a>(
        &'a self,
        after: Position,
        limit: Option<u64>,
        types: &'a [String],
    ) -> impl Stream<Item = Result<LogItem>> + Send + 'a {
        let bound = limit.map(saturating_i64);
        stream::once(self.horizon_and_last())
            .map_ok(move |(horizon, last)| {
                let handed = Arc::new(Mutex::new(Handed::default()));
                let tally = handed.clone();
                let records = decode_rows(self.restarting(move || {
                    sqlx::query(AssertSqlSafe(self.inner.sql.read_all_of_types.clone()))
                        .bind(saturating_i64(after.commit))
                        .bind(saturating_i64(after.sequence))
                        .bind(horizon)
                        .bind(bound)
                        .bind(types)
                        .fetch(&self.inner.pool)
                }))
                .map(move |decoded| {
                    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    match &decoded {
                        Ok(record) => {
                            (tally.rows, tally.last) = (tally.rows + 1, Some(record.position))
                        }
                        Err(_) => tally.failed = true,
                    }
                    decoded.map(LogItem::Event)
                });
                // Read to the end (not stopped by the limit, nor by a failure): the
                // records below the horizon after the last one handed out are of other
                // types, up to the last event there.
                let end = stream::once(async move {
                    let handed = handed.lock().unwrap_or_else(PoisonError::into_inner);
                    let whole = !handed.failed && limit.is_none_or(|limit| handed.rows < limit);
                    let reached = handed.last.unwrap_or(after).max(after);
                    let passed = last.filter(|&last| whole && last > reached);
                    passed.map(|passed| Ok(LogItem::Passed(passed)))
                })
                .filter_map(std::future::ready);
                records.chain(end)
            })
            .try_flatten()
    }
}

/// What a read by type handed out so far.
#[derive(Debug, Default)]
struct Handed {
    /// Records handed out.
    rows: u64,
    /// The last one's position.
    last: Option<Position>,
    /// Whether a row failed (the read then says nothing of what it passed).
    failed: bool,
}

impl PostgresEventStore {
    /// Counts the events after `after` below the horizon (of `types`, when given): one
    /// `count(*)` with the read's own bounds.
    pub(crate) async fn count_after(
        &self,
        after: Position,
        types: Option<&[String]>,
    ) -> Result<u64> {
        let horizon = self.horizon().await?;
        let sql = match types {
            Some(_) => &self.inner.sql.count_events_of_types,
            None => &self.inner.sql.count_events,
        };
        let count: i64 = self
            .retrying(|| {
                let query = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                    .bind(saturating_i64(after.commit))
                    .bind(saturating_i64(after.sequence))
                    .bind(horizon);
                match types {
                    Some(types) => query.bind(types),
                    None => query,
                }
                .fetch_one(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        stored_u64(count, || "the event count".into(), "count")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use cqrs_core::{Metadata, StreamId};
    use futures::TryStreamExt;

    use super::*;

    fn record(n: u64) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::from_u128(u128::from(n)),
            stream: StreamId::new("t", "s").unwrap(),
            version: n,
            position: Position::new(1, n),
            event_type: "E".into(),
            schema_version: 1,
            recorded_at: SystemTime::UNIX_EPOCH,
            payload: b"{}".to_vec(),
            metadata: Metadata::default(),
        }
    }

    /// How long a test waits for the task: a guard against a hang, not a timing check.
    const DEADLINE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_long_read_arrives_whole_and_in_order() {
        let n = u64::try_from(CHUNK * (IN_FLIGHT + 3) + 17).unwrap();
        let read = beside(move |chunks| async move {
            chunks
                .forward(stream::iter((1..=n).map(|i| Ok(record(i)))))
                .await;
        });
        let records: Vec<_> = tokio::time::timeout(DEADLINE, read.try_collect::<Vec<_>>())
            .await
            .expect("the read ends")
            .unwrap();
        let versions: Vec<u64> = records.iter().map(|r| r.version).collect();
        assert_eq!(versions, (1..=n).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_task_that_dies_mid_read_ends_the_stream_with_an_error() {
        let read = beside(|chunks| async move {
            let records = stream::iter((1..=3).map(|i| Ok(record(i))))
                .chain(stream::once(async { panic!("the reading task dies") }));
            chunks.forward(records).await;
        });
        let items: Vec<_> = tokio::time::timeout(DEADLINE, read.collect::<Vec<_>>())
            .await
            .expect("the read ends");
        // The records the task had sent (here none: they were still in its chunk), in
        // order, then the error.
        let (last, before) = items.split_last().expect("at least the error");
        let versions: Vec<u64> = before.iter().map(|r| r.as_ref().unwrap().version).collect();
        assert!(versions.len() <= 3);
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
        let error = last.as_ref().unwrap_err();
        assert!(matches!(error, Error::Store { .. }), "{error:?}");
        assert!(error.to_string().contains("store"), "{error}");
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_task() {
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        let mut read = beside(move |chunks| async move {
            let _held = held;
            // An endless log: only the caller's drop ends this task.
            chunks
                .forward(stream::iter((1..).map(|i| Ok(record(i)))))
                .await;
        });
        let first = tokio::time::timeout(DEADLINE, read.next())
            .await
            .expect("a first record")
            .unwrap()
            .unwrap();
        assert_eq!(first.version, 1);
        drop(read);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while Arc::strong_count(&alive) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task still runs after its stream was dropped"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
