//! The in-memory event store: the reference backend, for tests and prototypes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use futures::{Stream, StreamExt, stream};
use uuid::Uuid;

use crate::{
    AppendResult, CheckpointStore, Error, EventData, EventLog, ExpectedVersion, Inspect,
    LogNotifier, LogWatcher, Position, RecordedEvent, Result, SnapshotRecord, SnapshotStore,
    StoreStats, StreamId, StreamInfo,
};
use crate::{validate_batch, validate_checkpoint_name};

/// How many records a reader copies per lock: reads never hold the lock for long and
/// never copy a whole stream at once.
const READ_CHUNK: usize = 256;

/// An [`EventStore`](crate::EventStore) that keeps everything in memory, behind one mutex.
///
/// It implements every contract of the conformance suite and is the reference the other
/// backends are compared with. Clones share the same data. Nothing survives the process.
///
/// Positions are `Position::new(0, n)` with `n` counting events from 1, gap-free.
///
/// # Examples
/// ```
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, InMemoryEventStore, Position, StreamId};
/// use futures::TryStreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// let store = InMemoryEventStore::new();
/// let a = StreamId::new("account", "a")?;
/// store.append(&a, ExpectedVersion::Any, vec![EventData::new("Opened", b"{}".to_vec())]).await?;
/// let log: Vec<_> = store.read_all(Position::START, None).try_collect().await?;
/// assert_eq!(log[0].position, Position::new(0, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    notifier: LogNotifier,
}

#[derive(Debug, Default)]
struct State {
    /// The global log; the event at index `i` has sequence `i + 1`.
    log: Vec<Arc<RecordedEvent>>,
    /// Per stream, the log index of each version (version `v` at `[v - 1]`).
    streams: HashMap<StreamId, Vec<usize>>,
    /// Event id → log index.
    ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, SnapshotRecord>,
    checkpoints: HashMap<String, Position>,
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding this lock, but if it ever did, the state is still
        // consistent (every mutation is completed before anything can fail): go on.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn version_of(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, |v| v.len() as u64)
    }

    /// The outcome of the idempotency check: `None` if no id of the batch is stored yet.
    fn check_duplicates(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Option<Result<AppendResult>> {
        let found: Vec<Option<&Arc<RecordedEvent>>> = events
            .iter()
            .map(|e| self.ids.get(&e.event_id).map(|&i| &self.log[i]))
            .collect();
        if found.iter().all(Option::is_none) {
            return None;
        }
        if let Some(other) = found.iter().flatten().find(|r| r.stream != *stream) {
            return Some(Err(Error::DuplicateEventId {
                event_id: other.event_id,
                existing_stream: other.stream.clone(),
            }));
        }
        let full_match = found.iter().all(Option::is_some)
            && found.windows(2).all(|w| match (w[0], w[1]) {
                (Some(a), Some(b)) => b.version == a.version + 1,
                _ => false,
            });
        Some(match found.last() {
            Some(Some(last)) if full_match => Ok(AppendResult {
                version: last.version,
                position: last.position,
                duplicate: true,
            }),
            _ => Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: self.version_of(stream),
            }),
        })
    }
}

impl EventLog for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        let result = {
            let mut state = self.lock();
            if let Some(outcome) = state.check_duplicates(stream, expected, &events) {
                return outcome;
            }
            let actual = state.version_of(stream);
            if !expected.matches(actual) {
                return Err(Error::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            let recorded_at = SystemTime::now();
            let state = &mut *state;
            let indexes = state.streams.entry(stream.clone()).or_default();
            let mut result = AppendResult {
                version: actual,
                position: Position::START,
                duplicate: false,
            };
            for event in events {
                let index = state.log.len();
                result.version += 1;
                result.position = Position::new(0, index as u64 + 1);
                state.ids.insert(event.event_id, index);
                indexes.push(index);
                state.log.push(Arc::new(RecordedEvent {
                    event_id: event.event_id,
                    stream: stream.clone(),
                    version: result.version,
                    position: result.position,
                    event_type: event.event_type,
                    schema_version: event.schema_version,
                    recorded_at,
                    payload: event.payload,
                    metadata: event.metadata,
                }));
            }
            result
        };
        self.inner.notifier.notify();
        Ok(result)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        let store = self.clone();
        let stream = stream.clone();
        let first = usize::try_from(from_version.max(1) - 1).unwrap_or(usize::MAX);
        stream::unfold(first, move |next| {
            let chunk: Vec<Result<RecordedEvent>> = {
                let state = store.lock();
                let indexes = state.streams.get(&stream).map_or(&[][..], Vec::as_slice);
                indexes
                    .iter()
                    .skip(next)
                    .take(READ_CHUNK)
                    .map(|&i| Ok(RecordedEvent::clone(&state.log[i])))
                    .collect()
            };
            let len = chunk.len();
            async move { (len > 0).then(|| (stream::iter(chunk), next + len)) }
        })
        .flatten()
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        let store = self.clone();
        // Positions with a commit part come from another store and sort after all of ours.
        let first = if after.commit > 0 {
            usize::MAX
        } else {
            usize::try_from(after.sequence).unwrap_or(usize::MAX)
        };
        let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        // End at the end of the log as it is now, so a reader under constant writes ends.
        let limit = limit.min(self.lock().log.len().saturating_sub(first));
        stream::unfold((first, limit), move |(next, remaining)| {
            let chunk: Vec<Result<RecordedEvent>> = {
                let state = store.lock();
                state
                    .log
                    .iter()
                    .skip(next)
                    .take(READ_CHUNK.min(remaining))
                    .map(|r| Ok(RecordedEvent::clone(r)))
                    .collect()
            };
            let len = chunk.len();
            async move { (len > 0).then(|| (stream::iter(chunk), (next + len, remaining - len))) }
        })
        .flatten()
    }

    fn watch(&self) -> LogWatcher {
        self.inner.notifier.watcher()
    }
}

impl SnapshotStore for InMemoryEventStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotRecord>> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: SnapshotRecord) -> Result<()> {
        let mut state = self.lock();
        match state.snapshots.get(stream) {
            // A later snapshot stays, unless it is ahead of the stream (then it is junk).
            Some(existing)
                if existing.version > snapshot.version
                    && existing.version <= state.version_of(stream) => {}
            _ => {
                state.snapshots.insert(stream.clone(), snapshot);
            }
        }
        Ok(())
    }
}

impl CheckpointStore for InMemoryEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_checkpoint_name(name)?;
        Ok(self.lock().checkpoints.get(name).copied())
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_checkpoint_name(name)?;
        self.lock().checkpoints.insert(name.to_owned(), position);
        Ok(())
    }
}

impl Inspect for InMemoryEventStore {
    async fn find_event(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let state = self.lock();
        Ok(state
            .ids
            .get(&event_id)
            .map(|&i| &state.log[i])
            .filter(|r| r.stream == *stream)
            .map(|r| RecordedEvent::clone(r)))
    }

    async fn count_events(&self, after: Position) -> Result<u64> {
        let len = self.lock().log.len() as u64;
        Ok(if after.commit > 0 {
            0
        } else {
            len.saturating_sub(after.sequence)
        })
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        let streams: Vec<Result<StreamInfo>> = self
            .lock()
            .streams
            .iter()
            .map(|(stream, versions)| {
                Ok(StreamInfo {
                    stream: stream.clone(),
                    version: versions.len() as u64,
                })
            })
            .collect();
        stream::iter(streams)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let state = self.lock();
        Ok(StoreStats {
            streams: state.streams.len() as u64,
            events: state.log.len() as u64,
            snapshots: Some(state.snapshots.len() as u64),
        })
    }
}

#[cfg(test)]
mod conformance_tests {
    async fn fresh_store() -> Option<crate::InMemoryEventStore> {
        Some(crate::InMemoryEventStore::new())
    }

    crate::store_conformance_tests!(fresh_store);

    /// Positions are handed out under the store's lock, in the append that commits them:
    /// commit order is position order, and every read is a dense prefix of the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commit_order_is_position_order() {
        crate::conformance::reads_are_dense_prefixes(crate::InMemoryEventStore::new()).await;
    }
}
