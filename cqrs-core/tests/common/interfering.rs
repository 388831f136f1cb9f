//! A store whose "concurrent writer" causes real conflicts, for the command tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cqrs_core::{
    CheckpointStore, Codec, EventData, EventLog, ExpectedVersion, InMemoryEventStore, Inspect,
    JsonCodec, LogWatcher, Position, RecordedEvent, Result, SnapshotRecord, SnapshotStore,
    StreamId,
};
use futures::Stream;
use uuid::Uuid;

use super::AccountEvent;

/// A store that lets a "concurrent writer" slip an event into the stream just before
/// each of the first `conflicts` appends, so the command layer sees real conflicts.
#[derive(Clone)]
pub struct InterferingStore {
    pub inner: InMemoryEventStore,
    pub conflicts_left: Arc<AtomicU32>,
    /// Stream reads (loads) so far.
    pub reads: Arc<AtomicU32>,
}

impl InterferingStore {
    pub fn new(conflicts: u32) -> Self {
        InterferingStore {
            inner: InMemoryEventStore::new(),
            conflicts_left: Arc::new(AtomicU32::new(conflicts)),
            reads: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl EventLog for InterferingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<cqrs_core::AppendResult> {
        let interfere = self
            .conflicts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if interfere {
            let payload = JsonCodec::new().encode(&AccountEvent::Deposited { amount: 1 })?;
            self.inner
                .append(
                    stream,
                    ExpectedVersion::Any,
                    vec![EventData::new("MoneyDeposited", payload)],
                )
                .await?;
        }
        self.inner.append(stream, expected, events).await
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_stream(stream, from)
    }
    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.inner.read_all(after, limit)
    }
    fn watch(&self) -> LogWatcher {
        self.inner.watch()
    }
}
impl SnapshotStore for InterferingStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotRecord>> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(&self, stream: &StreamId, snapshot: SnapshotRecord) -> Result<()> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}
impl CheckpointStore for InterferingStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        self.inner.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.inner.save_checkpoint(name, position).await
    }
}
/// Deleting, truncating and restoring: the provided bodies (unsupported).
impl cqrs_core::StreamLifecycle for InterferingStore {}

impl Inspect for InterferingStore {
    async fn find_event(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        self.inner.find_event(stream, event_id).await
    }
    async fn count_events(&self, after: Position) -> Result<u64> {
        self.inner.count_events(after).await
    }
}
