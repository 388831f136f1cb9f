//! The in-memory event store: the reference backend, for tests and prototypes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use futures::{Stream, StreamExt, stream};
use uuid::Uuid;

use crate::{
    AppendResult, CheckpointStore, Error, EventData, EventLog, ExpectedVersion, Inspect,
    LogNotifier, LogWatcher, Position, RecordedEvent, Result, SnapshotRecord, SnapshotStore,
    StoreStats, StreamDeleted, StreamId, StreamInfo, StreamLifecycle,
};
use crate::{validate_batch, validate_checkpoint_name, validate_restore};

/// How many records a reader copies per lock: reads never hold the lock for long and
/// never copy a whole stream at once.
const READ_CHUNK: usize = 256;

/// An [`EventStore`](crate::EventStore) that keeps everything in memory, behind one mutex.
///
/// It implements every contract of the conformance suite and is the reference the other
/// backends are compared with. Clones share the same data. Nothing survives the process.
///
/// Positions are `Position::new(0, n)` with `n` counting events from 1, gap-free until
/// a stream is deleted or truncated ([`StreamLifecycle`]).
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
    /// The global log; the event at index `i` has sequence `i + 1`. `None`: removed (a
    /// deleted or truncated stream's event).
    log: Vec<Option<Arc<RecordedEvent>>>,
    /// Events in `log` that are not removed.
    live: usize,
    /// Per stream, where its events are.
    streams: HashMap<StreamId, StreamEntry>,
    /// Event id → log index.
    ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, SnapshotRecord>,
    checkpoints: HashMap<String, Position>,
}

/// A stream's events in the log.
#[derive(Debug)]
struct StreamEntry {
    /// The version of `indexes[0]` (1 unless the stream was truncated).
    first: u64,
    /// The log index of each version from `first` on.
    indexes: Vec<usize>,
    /// The last index is a tombstone.
    deleted: bool,
}

impl Default for StreamEntry {
    fn default() -> Self {
        StreamEntry {
            first: 1,
            indexes: Vec::new(),
            deleted: false,
        }
    }
}

impl StreamEntry {
    fn version(&self) -> u64 {
        self.first - 1 + self.indexes.len() as u64
    }
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
        self.streams.get(stream).map_or(0, StreamEntry::version)
    }

    fn record(&self, index: usize) -> Option<&Arc<RecordedEvent>> {
        self.log.get(index).and_then(Option::as_ref)
    }

    /// Refuses appends and deletes to a deleted stream.
    fn check_not_deleted(&self, stream: &StreamId) -> Result<()> {
        match self.streams.get(stream) {
            Some(entry) if entry.deleted => Err(Error::StreamDeleted {
                stream: stream.clone(),
                version: entry.version(),
            }),
            _ => Ok(()),
        }
    }

    /// Removes the events at `indexes` from the log and the id index.
    fn remove(&mut self, indexes: &[usize]) {
        for &i in indexes {
            if let Some(record) = self.log.get_mut(i).and_then(Option::take) {
                self.ids.remove(&record.event_id);
                self.live -= 1;
            }
        }
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
            .map(|e| self.ids.get(&e.event_id).and_then(|&i| self.record(i)))
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
            state.check_not_deleted(stream)?;
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
            let entry = state.streams.entry(stream.clone()).or_default();
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
                entry.indexes.push(index);
                state.live += 1;
                state.log.push(Some(Arc::new(RecordedEvent {
                    event_id: event.event_id,
                    stream: stream.clone(),
                    version: result.version,
                    position: result.position,
                    event_type: event.event_type,
                    schema_version: event.schema_version,
                    recorded_at,
                    payload: event.payload,
                    metadata: event.metadata,
                })));
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
        stream::unfold(from_version.max(1), move |next| {
            let chunk: Vec<Result<RecordedEvent>> = {
                let state = store.lock();
                match state.streams.get(&stream) {
                    None => Vec::new(),
                    Some(entry) => {
                        let skip = next.saturating_sub(entry.first);
                        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
                        entry
                            .indexes
                            .iter()
                            .skip(skip)
                            .take(READ_CHUNK)
                            .filter_map(|&i| state.record(i))
                            .map(|r| Ok(RecordedEvent::clone(r)))
                            .collect()
                    }
                }
            };
            let next = chunk
                .last()
                .and_then(|r| r.as_ref().ok())
                .map_or(next, |r| r.version + 1);
            let len = chunk.len();
            async move { (len > 0).then(|| (stream::iter(chunk), next)) }
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
        let limit = limit.min(self.lock().live);
        let end = self.lock().log.len();
        stream::unfold((first, limit), move |(mut next, remaining)| {
            let chunk: Vec<Result<RecordedEvent>> = {
                let state = store.lock();
                let mut chunk = Vec::new();
                // Removed events are holes: skip them, within the end of the log as it was.
                while next < end && chunk.len() < READ_CHUNK.min(remaining) {
                    if let Some(record) = state.record(next) {
                        chunk.push(Ok(RecordedEvent::clone(record)));
                    }
                    next += 1;
                }
                chunk
            };
            let len = chunk.len();
            async move { (len > 0).then(|| (stream::iter(chunk), (next, remaining - len))) }
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
        if state.streams.get(stream).is_some_and(|entry| entry.deleted) {
            // A late save (a background snapshot) must not bring one back after a delete.
            return Ok(());
        }
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
            .and_then(|&i| state.record(i))
            .filter(|r| r.stream == *stream)
            .map(|r| RecordedEvent::clone(r)))
    }

    async fn count_events(&self, after: Position) -> Result<u64> {
        let state = self.lock();
        Ok(if after.commit > 0 {
            0
        } else {
            let first = usize::try_from(after.sequence).unwrap_or(usize::MAX);
            state.log.iter().skip(first).flatten().count() as u64
        })
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        let streams: Vec<Result<StreamInfo>> = self
            .lock()
            .streams
            .iter()
            .map(|(stream, entry)| {
                Ok(StreamInfo {
                    stream: stream.clone(),
                    version: entry.version(),
                })
            })
            .collect();
        stream::iter(streams)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let state = self.lock();
        Ok(StoreStats {
            streams: state.streams.len() as u64,
            events: state.live as u64,
            snapshots: Some(state.snapshots.len() as u64),
        })
    }
}

impl StreamLifecycle for InMemoryEventStore {
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let result = {
            let mut state = self.lock();
            state.check_not_deleted(stream)?;
            let actual = state.version_of(stream);
            if actual == 0 {
                return Err(Error::StreamNotFound {
                    stream: stream.clone(),
                });
            }
            if !expected.matches(actual) {
                return Err(Error::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            let tombstone = StreamDeleted::new(actual).event_data();
            let state = &mut *state;
            let index = state.log.len();
            let result = AppendResult {
                version: actual + 1,
                position: Position::new(0, index as u64 + 1),
                duplicate: false,
            };
            let entry = state.streams.entry(stream.clone()).or_default();
            let removed = std::mem::take(&mut entry.indexes);
            *entry = StreamEntry {
                first: actual + 1,
                indexes: vec![index],
                deleted: true,
            };
            state.remove(&removed);
            state.snapshots.remove(stream);
            state.ids.insert(tombstone.event_id, index);
            state.live += 1;
            state.log.push(Some(Arc::new(RecordedEvent {
                event_id: tombstone.event_id,
                stream: stream.clone(),
                version: result.version,
                position: result.position,
                event_type: tombstone.event_type,
                schema_version: tombstone.schema_version,
                recorded_at: SystemTime::now(),
                payload: tombstone.payload,
                metadata: tombstone.metadata,
            })));
            result
        };
        self.inner.notifier.notify();
        Ok(result)
    }

    async fn truncate_stream(&self, stream: &StreamId, before: u64) -> Result<u64> {
        let mut state = self.lock();
        state.check_not_deleted(stream)?;
        let version = state.version_of(stream);
        if version == 0 {
            return Err(Error::StreamNotFound {
                stream: stream.clone(),
            });
        }
        check_truncation(stream, before, version, state.snapshots.get(stream))?;
        let state = &mut *state;
        let Some(entry) = state.streams.get_mut(stream) else {
            return Ok(0);
        };
        let cut = usize::try_from(before.saturating_sub(entry.first))
            .unwrap_or(usize::MAX)
            .min(entry.indexes.len());
        let removed: Vec<usize> = entry.indexes.drain(..cut).collect();
        entry.first += cut as u64;
        state.remove(&removed);
        Ok(cut as u64)
    }

    async fn restore_stream(&self, stream: &StreamId, records: Vec<RecordedEvent>) -> Result<u64> {
        validate_restore(stream, &records)?;
        let count = records.len() as u64;
        {
            let mut state = self.lock();
            let (first, last) = match (records.first(), records.last()) {
                (Some(first), Some(last)) => (first.version, last.version),
                _ => return Ok(0),
            };
            let tombstone = match state.streams.get(stream) {
                None => None,
                Some(entry) if entry.deleted && entry.version() == last + 1 => {
                    entry.indexes.last().copied()
                }
                Some(entry) => {
                    return Err(Error::Conflict {
                        stream: stream.clone(),
                        expected: ExpectedVersion::Exact(last + 1),
                        actual: entry.version(),
                    });
                }
            };
            let mut slots = Vec::with_capacity(records.len());
            for record in &records {
                if let Some(&i) = state.ids.get(&record.event_id) {
                    let existing = state.record(i).map_or(stream, |r| &r.stream);
                    return Err(Error::DuplicateEventId {
                        event_id: record.event_id,
                        existing_stream: existing.clone(),
                    });
                }
                let slot = usize::try_from(record.position.sequence)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .filter(|&i| record.position.commit == 0 && i < state.log.len())
                    .filter(|&i| state.log[i].is_none());
                let Some(slot) = slot else {
                    return Err(Error::invalid_input(format!(
                        "restore to {stream}: position {} of version {} is taken or not this store's",
                        record.position, record.version
                    )));
                };
                slots.push(slot);
            }
            let state = &mut *state;
            if let Some(tombstone) = tombstone {
                state.remove(&[tombstone]);
            }
            let mut indexes = Vec::with_capacity(records.len());
            for (record, index) in records.into_iter().zip(slots) {
                state.ids.insert(record.event_id, index);
                state.live += 1;
                indexes.push(index);
                state.log[index] = Some(Arc::new(record));
            }
            state.streams.insert(
                stream.clone(),
                StreamEntry {
                    first,
                    indexes,
                    deleted: false,
                },
            );
        }
        self.inner.notifier.notify();
        Ok(count)
    }
}

/// Checks a truncation of a stream at `version` before `before`: `before` within the
/// stream, and a snapshot at `before` or later (its own event is kept: loads check that
/// the event at the snapshot's version exists, which shows it is not ahead).
///
/// Backends call this so they all refuse the same truncations.
///
/// # Errors
/// [`Error::InvalidInput`] naming the problem.
pub fn check_truncation(
    stream: &StreamId,
    before: u64,
    version: u64,
    snapshot: Option<&SnapshotRecord>,
) -> Result<()> {
    if before == 0 || before > version + 1 {
        return Err(Error::invalid_input(format!(
            "truncate {stream} before version {before}: the stream is at version {version}, \
             so the version must be 1 to {}",
            version + 1
        )));
    }
    let covered = snapshot.map_or(0, |s| s.version);
    if before > 1 && (covered < before || covered > version) {
        return Err(Error::invalid_input(format!(
            "truncate {stream} before version {before}: no snapshot at version {before} or \
             later (the latest is at {covered}), so a load could not rebuild the state"
        )));
    }
    Ok(())
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
