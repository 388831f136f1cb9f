//! The sled event store.

use std::collections::HashMap;
use std::fmt;
use std::future::ready;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use cqrs_core::{
    AppendResult, Error, EventData, EventLog, ExpectedVersion, Inspect, LogNotifier, LogWatcher,
    Position, RecordedEvent, Result, StoreStats, StreamId, StreamInfo, validate_batch,
};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use uuid::Uuid;

use crate::chunk::Chunk;
use crate::config::Durability;
use crate::contain::{guard, guard_chunk};
use crate::flush::{Flusher, Watermarks};
use crate::holes;
use crate::mark::MarkWriter;
use crate::record::{self, be_u64, log_key, stream_key};

/// Records a reader takes from sled per step: reads never hold a whole stream or log.
pub(crate) const READ_CHUNK: usize = 256;
/// Records at least this large may become sled blob files (sled's threshold is a quarter
/// of its 512 KiB segment, minus headers), which `Synced` must fsync separately.
pub(crate) const BLOB_HINT: usize = 96 * 1024;

pub(crate) const EVENTS_TREE: &str = "cqrs.events";
pub(crate) const SNAPSHOTS_TREE: &str = "cqrs.snapshots";
pub(crate) const CHECKPOINTS_TREE: &str = "cqrs.checkpoints";

/// An [`EventStore`](cqrs_core::EventStore) in an embedded sled database: one process, durable, with group
/// commit.
///
/// Open it with [`SledEventStore::open`] (or [`SledConfig`](crate::SledConfig) for options, or
/// [`SledEventStore::temporary`] in tests). Clones share the same database. Appends are
/// serialised by one writer that hands out gap-free global positions
/// (`Position::new(0, n)`, `n` from 1), so the log is in commit order by construction.
/// Events removed by [`StreamLifecycle`](cqrs_core::StreamLifecycle) leave holes that
/// readers skip; positions never move and are never handed out twice.
///
/// Reads run on the calling task (sled reads are memory or page-cache reads); an append
/// with a flushing [`Durability`] waits for the flusher thread without blocking the
/// runtime. Readers of the log ([`read_all`](cqrs_core::EventLog::read_all),
/// [`count_events`](cqrs_core::Inspect::count_events)) only see appends that are durable under
/// the configured durability, so a projection never gets ahead of what survives a crash.
///
/// # Cancel safety
/// An append is committed (atomically, all or nothing) before its future first waits;
/// dropping the future while it waits for the flush leaves the append committed, and
/// durable after the next flush. Re-append the same event ids to learn the outcome (the
/// idempotent path returns the original result). Dropping a read stream stops the read.
///
/// Dropping the last clone of a store joins its flusher thread (at most one flush).
///
/// # Errors after a commit
/// With a flushing durability, a flush that fails after the batch was committed makes
/// the append return [`Error::Store`] although the batch is in sled (and may still reach
/// the disk): the one case where an error does not mean that nothing was written, as for
/// a lost connection at commit time on a server database. Re-append the same ids to
/// find out.
///
/// # Examples
/// ```
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, StreamId};
/// use cqrs_sled::SledEventStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SledEventStore::open(dir.path().join("events"))?;
/// let stream = StreamId::new("account", "42")?;
/// let done = store
///     .append(&stream, ExpectedVersion::NoStream, vec![EventData::new("Opened", b"{}".to_vec())])
///     .await?;
/// assert_eq!(done.version, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SledEventStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: sled::Db,
    /// The log, stream index and id index (see `record.rs`).
    pub(crate) events: sled::Tree,
    pub(crate) snapshots: sled::Tree,
    pub(crate) checkpoints: sled::Tree,
    pub(crate) path: Option<PathBuf>,
    pub(crate) durability: Durability,
    /// The single writer: held while checking and committing one append. It guards a
    /// cache of stream heads (only this writer changes them, so a cached head is exact).
    pub(crate) writer: Mutex<Heads>,
    pub(crate) snapshot_writer: Mutex<()>,
    /// Held by a delete, truncation or restore from its start until it is durable, so
    /// the next one only builds on what is on disk (see `mark.rs`).
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    pub(crate) marks: Arc<Watermarks>,
    pub(crate) flusher: Option<Flusher>,
    pub(crate) notifier: LogNotifier,
    /// Records the durable end of the log beside sled's files (`None`: a temporary
    /// store, or one opened to inspect a damaged log, whose mark must stay as it is).
    pub(crate) mark: Option<Arc<MarkWriter>>,
    /// What was found damaged when the store was opened with `DamagedLog::Inspect`: the
    /// location and reason of the `Error::Corrupt` that writes and log reads report.
    pub(crate) damage: Option<(String, String)>,
    /// Whether log records are written compressed (`SledConfig::compress_records`).
    pub(crate) compress: bool,
    /// The store format a lifecycle operation marks the store with: 3 (holes), or 4 when
    /// the store is marked 4 already (which implies 3; `open.rs`).
    pub(crate) holes_format: &'static [u8],
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(flusher) = &self.flusher {
            flusher.stop();
        }
        // Closing: flush whatever is left and record the durable end of the log, so the
        // next open can tell a complete log from one that sled's recovery cut short.
        if let Some(mark) = &self.mark {
            let target = self.marks.committed.load(Ordering::Acquire);
            let recorded =
                guard(|| self.db.flush().map_err(store_error)).and_then(|_| mark.record(target));
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "cannot record the durable mark of the sled event store");
            }
        }
    }
}

impl fmt::Debug for SledEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledEventStore")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .field(
                "committed",
                &self.inner.marks.committed.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is `()` or a cache that is updated only after a successful
    // commit, in one step: a panic elsewhere cannot leave it inconsistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the single writer knows without a lookup: stream heads recently appended to,
/// so an append needs no index lookup for its version (bounded: cleared when it grows
/// past `HEADS_CACHE` streams), and the greatest event id in the id index.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    pub(crate) streams: HashMap<StreamId, Head>,
    /// No stored event id is greater (`None`: none is stored). New ids are time-ordered
    /// (UUIDv7, ADR 0012), so most are greater, and an append skips their index lookup.
    pub(crate) max_id: Option<Uuid>,
}

pub(crate) const HEADS_CACHE: usize = 65_536;

/// A stream's head: its version, and whether that version is its tombstone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: u64,
    pub(crate) deleted: bool,
}

/// The log record of `events` holding `position`, undecoded, with the position of its
/// first event: the last record keyed at or before `position` (the caller checks that it
/// reaches `position`).
pub(crate) fn record_holding(
    events: &sled::Tree,
    position: u64,
) -> Result<Option<(u64, sled::IVec)>> {
    let found = events
        .range(log_key(0)..=log_key(position))
        .next_back()
        .transpose()
        .map_err(store_error)?;
    found
        .map(|(key, value)| match be_u64(&key[1..]) {
            Some(first) => Ok((first, value)),
            None => Err(Error::corrupt("the log", "a log key is not 9 bytes")),
        })
        .transpose()
}

pub(crate) fn store_error(e: sled::Error) -> Error {
    Error::store(crate::error::SledError(e))
}

impl SledEventStore {
    /// The database directory (`None` for a temporary store).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The durability of appends.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Flushes everything written so far (appends, snapshots, checkpoints, read models)
    /// to disk, whatever the durability. Blocks the calling thread until done.
    ///
    /// # Errors
    /// [`Error::Store`] if sled cannot write.
    pub fn flush(&self) -> Result<()> {
        let committed = self.inner.marks.committed.load(Ordering::Acquire);
        guard(|| self.inner.db.flush().map_err(store_error))?;
        self.inner
            .marks
            .visible
            .fetch_max(committed, Ordering::AcqRel);
        if let Some(mark) = &self.inner.mark {
            mark.record(committed)?;
        }
        Ok(())
    }

    /// What was found damaged when the store was opened with
    /// [`DamagedLog::Inspect`](crate::DamagedLog::Inspect): the [`Error::Corrupt`] that
    /// its writes, and reads of the log to its end, report. `None` for a store that
    /// opened intact.
    pub fn damage(&self) -> Option<Error> {
        self.inner
            .damage
            .as_ref()
            .map(|(location, reason)| Error::corrupt(location, reason))
    }

    /// Refuses a write to a store opened to inspect a damaged log.
    pub(crate) fn writable(&self) -> Result<()> {
        self.damage().map_or(Ok(()), Err)
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    pub(crate) fn checkpoints_tree(&self) -> &sled::Tree {
        &self.inner.checkpoints
    }

    /// Stores `bytes` as the snapshot record of `stream`, as they are, for tests of
    /// damaged records (a real snapshot record carries a mark, the version, the schema
    /// version, the payload and a CRC32C of them: any other bytes read as damaged).
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails.
    #[cfg(feature = "fault-injection")]
    pub fn put_raw_snapshot(&self, stream: &StreamId, bytes: &[u8]) -> Result<()> {
        self.inner
            .snapshots
            .insert(record::bare_stream_key(stream), bytes)
            .map_err(store_error)?;
        Ok(())
    }

    /// The version of `stream`: the version in its last stream-index key.
    pub(crate) fn head(&self, stream: &StreamId) -> Result<u64> {
        Ok(self.head_entry(stream)?.version)
    }

    /// The head of `stream` from its last stream-index entry: the version in the key,
    /// and the tombstone mark in the value (one lookup either way).
    pub(crate) fn head_entry(&self, stream: &StreamId) -> Result<Head> {
        let last = self
            .inner
            .events
            .range(stream_key(stream, 0)..=stream_key(stream, u64::MAX))
            .next_back()
            .transpose()
            .map_err(store_error)?;
        let Some((key, value)) = last else {
            return Ok(Head::default());
        };
        let corrupt = |what| Error::corrupt(format!("stream {stream}"), what);
        let version =
            record::version_of_stream_key(&key).ok_or_else(|| corrupt("bad stream index key"))?;
        let (_, deleted) =
            record::decode_index_value(&value).ok_or_else(|| corrupt("bad stream index entry"))?;
        Ok(Head { version, deleted })
    }

    /// The log record holding `position`, undecoded, with the position of its first
    /// event: the last record keyed at or before `position` (the caller checks that it
    /// reaches `position`).
    pub(crate) fn record_holding(&self, position: u64) -> Result<Option<(u64, sled::IVec)>> {
        record_holding(&self.inner.events, position)
    }

    /// The first stream whose index keys are at or after `start`, its version, and the
    /// key just past its range.
    fn next_stream(&self, start: &[u8]) -> Result<Option<(StreamInfo, Vec<u8>)>> {
        let Some(first) = self
            .inner
            .events
            .range(start..&[record::STREAM + 1][..])
            .next()
            .transpose()
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let stream = record::stream_of_index_key(&first.0)
            .ok_or_else(|| Error::corrupt("the stream index", "a key does not name a stream"))?;
        let version = self.head(&stream)?;
        let mut next = stream_key(&stream, u64::MAX);
        next.push(0);
        Ok(Some((StreamInfo { stream, version }, next)))
    }

    /// At least `READ_CHUNK` log events from position `from` to `end` (unless the log ends
    /// first), and where to go on.
    fn log_chunk(&self, from: u64, end: u64) -> (Vec<Result<RecordedEvent>>, Option<u64>) {
        let mut out = Vec::with_capacity(READ_CHUNK);
        // Start at the record holding `from`: the last one keyed at or before it.
        let start = match self.record_holding(from) {
            Ok(Some((first, _))) => first,
            Ok(None) => from,
            Err(e) => {
                out.push(Err(e));
                return (out, None);
            }
        };
        let mut last_stream: Option<StreamId> = None;
        let mut low = from;
        for item in self.inner.events.range(log_key(start)..=log_key(end)) {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    out.push(Err(store_error(e)));
                    return (out, None);
                }
            };
            let Some(first) = be_u64(&key[1..]) else {
                out.push(Err(Error::corrupt("the log", "a log key is not 9 bytes")));
                return (out, None);
            };
            let mut chunk = match Chunk::open(&value, first, last_stream.as_ref()) {
                Ok(chunk) => chunk,
                Err(e) => {
                    // The next record says where the log goes on.
                    out.push(Err(e));
                    continue;
                }
            };
            let mut position = first;
            while let Some(event) = chunk.next_event((low..=end).contains(&position)) {
                position += 1;
                match event {
                    Ok(Some(event)) => {
                        // A truncation that rewrote a record while this read went past it
                        // shows its kept events again, under a later key: skip them.
                        low = position;
                        out.push(Ok(event));
                    }
                    Ok(None) => {}
                    Err(e) => out.push(Err(e)),
                }
            }
            let next = chunk.last_position().checked_add(1).filter(|&n| n <= end);
            last_stream = Some(chunk.stream);
            if out.len() >= READ_CHUNK {
                return (out, next);
            }
        }
        (out, None)
    }
}

impl EventLog for SledEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        self.writable()?;
        let (result, written) = guard(|| self.commit(stream, expected, &events))?;
        if let Some(flusher) = &self.inner.flusher {
            flusher.wait_durable(result.position.sequence).await?;
        }
        if written {
            self.inner.notifier.notify();
        }
        Ok(result)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        stream::unfold(Some(from_version.max(1)), move |next| {
            let step = next.map(|from| {
                let (chunk, next) = guard_chunk(|| self.stream_chunk(stream, from));
                (stream::iter(chunk), next)
            });
            ready(step.filter(|(chunk, _)| chunk.size_hint().0 > 0))
        })
        .flatten()
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        // Positions with a commit part come from another store and sort after all of ours.
        let first = (after.commit == 0).then(|| after.sequence.saturating_add(1));
        // End at the end of the visible log as it is now, so a reader under constant
        // writes ends.
        let visible = self.inner.marks.visible.load(Ordering::Acquire);
        let end = limit.map_or(visible, |l| visible.min(after.sequence.saturating_add(l)));
        let first = first.filter(|&f| f <= end && limit != Some(0));
        // A log known to be cut short ends with the error that says so, for every reader
        // that reads to its end.
        let lost = self.damage().filter(|_| end == visible).map(Err);
        stream::unfold(first, move |next| {
            let step = next.map(|from| {
                let (chunk, next) = guard_chunk(|| self.log_chunk(from, end));
                (stream::iter(chunk), next)
            });
            ready(step.filter(|(chunk, _)| chunk.size_hint().0 > 0))
        })
        .flatten()
        .chain(stream::iter(lost))
    }

    fn watch(&self) -> LogWatcher {
        self.inner.notifier.watcher()
    }
}

impl Inspect for SledEventStore {
    async fn find_event(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        guard(|| self.find(stream, event_id))
    }

    async fn count_events(&self, after: Position) -> Result<u64> {
        let visible = self.inner.marks.visible.load(Ordering::Acquire);
        if after.commit > 0 || after.sequence >= visible {
            return Ok(0);
        }
        // Every visible position holds an event, except the holes of removed events.
        let first = after.sequence + 1;
        let holes = guard(|| holes::holes_between(&self.inner.events, first, visible))?;
        Ok((visible - after.sequence).saturating_sub(holes))
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        // Walk the stream index one stream at a time: find the next stream's first key,
        // read its head, then jump past its key range. Memory stays bounded.
        stream::unfold(Some(vec![record::STREAM]), move |start| {
            ready(start.map(|start| match guard(|| self.next_stream(&start)) {
                Ok(Some((info, next))) => (Ok(info), Some(next)),
                Ok(None) => (Err(None), None),
                Err(e) => (Err(Some(e)), None),
            }))
        })
        .filter_map(|item| {
            ready(match item {
                Ok(info) => Some(Ok(info)),
                Err(e) => e.map(Err),
            })
        })
    }

    async fn stats(&self) -> Result<StoreStats> {
        let streams = self
            .list_streams()
            .try_fold(0u64, |n, _| ready(Ok(n + 1)))
            .await?;
        Ok(StoreStats {
            streams,
            events: self.count_events(Position::START).await?,
            snapshots: Some(
                u64::try_from(guard(|| Ok::<_, Error>(self.inner.snapshots.len()))?)
                    .unwrap_or(u64::MAX),
            ),
        })
    }
}
