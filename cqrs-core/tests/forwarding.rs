//! Every wrapper of a store (`&S`, `Arc<S>`, `Box<S>`, `BoxEventStore`, and wrappers of
//! wrappers) reaches the backend's own version of every provided method: an override
//! (PostgreSQL's one-query `read_stream_from_snapshot`, a backend's indexed
//! `count_events`) is never silently replaced by the slower default.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cqrs_core::{
    AppendResult, BoxEventStore, CheckpointStore, EventData, EventLog, EventStore, ExpectedVersion,
    InMemoryEventStore, Inspect, LogWatcher, Position, RecordedEvent, Result, SnapshotRecord,
    SnapshotStore, StoreStats, StreamId, StreamInfo, StreamItem,
};
use futures::{Stream, StreamExt};
use uuid::Uuid;

/// The in-memory store, with every provided method overridden to count its calls.
#[derive(Debug, Clone, Default)]
struct Marked {
    inner: InMemoryEventStore,
    overrides: Arc<AtomicU32>,
}

impl Marked {
    fn mark(&self) {
        self.overrides.fetch_add(1, Ordering::SeqCst);
    }
}

impl EventLog for Marked {
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult>> + Send + 'a {
        self.inner.append(stream, expected, events)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.inner.read_stream(stream, from_version)
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.inner.read_all(after, limit)
    }

    fn watch(&self) -> LogWatcher {
        self.mark();
        self.inner.watch()
    }
}

impl SnapshotStore for Marked {
    fn load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Future<Output = Result<Option<SnapshotRecord>>> + Send + 'a {
        self.inner.load_snapshot(stream)
    }

    fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: SnapshotRecord,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.inner.save_snapshot(stream, snapshot)
    }

    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
        self.mark();
        self.inner.read_stream_from_snapshot(stream)
    }
}

impl CheckpointStore for Marked {
    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send + 'a {
        self.inner.load_checkpoint(name)
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.inner.save_checkpoint(name, position)
    }
}

/// Deleting, truncating and restoring: the provided bodies (unsupported).
impl cqrs_core::StreamLifecycle for Marked {}

impl Inspect for Marked {
    fn find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>>> + Send + 'a {
        self.mark();
        self.inner.find_event(stream, event_id)
    }

    fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.mark();
        self.inner.count_events(after)
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        self.mark();
        self.inner.list_streams()
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
        self.mark();
        self.inner.stats()
    }
}

/// Calls every provided method through `store` (bounded on the umbrella trait only) and
/// returns how many reached an override.
async fn provided_calls_reaching_overrides<S: EventStore>(store: &S, overrides: &AtomicU32) -> u32 {
    let stream = StreamId::new("forwarded", "1").expect("a valid stream id");
    let before = overrides.load(Ordering::SeqCst);
    let _ = store.watch();
    let _ = store.read_stream_from_snapshot(&stream).count().await;
    store
        .find_event(&stream, Uuid::nil())
        .await
        .expect("find_event");
    store
        .count_events(Position::START)
        .await
        .expect("count_events");
    let _ = store.list_streams().count().await;
    store.stats().await.expect("stats");
    overrides.load(Ordering::SeqCst) - before
}

const PROVIDED: u32 = 6;

#[tokio::test]
async fn every_wrapper_keeps_the_backends_overrides() {
    let store = Marked::default();
    let overrides = store.overrides.clone();
    let count = &*overrides;

    assert_eq!(
        provided_calls_reaching_overrides(&store, count).await,
        PROVIDED,
        "the store itself"
    );
    assert_eq!(
        provided_calls_reaching_overrides(&&store, count).await,
        PROVIDED,
        "&S"
    );
    let arc = Arc::new(store.clone());
    assert_eq!(
        provided_calls_reaching_overrides(&arc, count).await,
        PROVIDED,
        "Arc<S>"
    );
    let boxed = Box::new(store.clone());
    assert_eq!(
        provided_calls_reaching_overrides(&boxed, count).await,
        PROVIDED,
        "Box<S>"
    );
    let nested = Arc::new(Box::new(&store));
    assert_eq!(
        provided_calls_reaching_overrides(&nested, count).await,
        PROVIDED,
        "Arc<Box<&S>>"
    );
    let dynamic = BoxEventStore::new(store.clone());
    assert_eq!(
        provided_calls_reaching_overrides(&dynamic, count).await,
        PROVIDED,
        "BoxEventStore"
    );
    let dynamic_of_arc = BoxEventStore::new(Arc::new(store.clone()));
    assert_eq!(
        provided_calls_reaching_overrides(&dynamic_of_arc, count).await,
        PROVIDED,
        "BoxEventStore of Arc<S>"
    );
}
