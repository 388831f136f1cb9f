//! Run-time chosen stores: an object-safe mirror of [`EventStore`] and a boxed handle.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::Stream;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use uuid::Uuid;

use crate::{
    AppendResult, EventData, EventStore, ExpectedVersion, LogWatcher, Position, RecordedEvent,
    Result, SnapshotRecord, StoreStats, StreamId, StreamInfo, StreamItem,
};

/// The object-safe twin of [`EventStore`], with boxed futures and streams.
///
/// Every `EventStore` implements it; you rarely name it yourself. Use [`BoxEventStore`]
/// to hold a store whose type is only known at run time (picked from a URL at start-up,
/// say). Each call then costs one allocation and a virtual call; code that knows its
/// store type stays statically dispatched.
#[allow(missing_docs)] // Each method is documented on `EventStore`.
pub trait DynEventStore: Send + Sync + 'static {
    fn dyn_append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> BoxFuture<'a, Result<AppendResult>>;
    fn dyn_read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent>>;
    fn dyn_read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxStream<'a, Result<StreamItem>>;
    fn dyn_read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> BoxStream<'_, Result<RecordedEvent>>;
    fn dyn_find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RecordedEvent>>>;
    fn dyn_count_events(&self, after: Position) -> BoxFuture<'_, Result<u64>>;
    fn dyn_load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>>>;
    fn dyn_save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: SnapshotRecord,
    ) -> BoxFuture<'a, Result<()>>;
    fn dyn_load_checkpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Position>>>;
    fn dyn_save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<()>>;
    fn dyn_watch(&self) -> LogWatcher;
    fn dyn_list_streams(&self) -> BoxStream<'_, Result<StreamInfo>>;
    fn dyn_stats(&self) -> BoxFuture<'_, Result<StoreStats>>;
}

impl<S: EventStore + 'static> DynEventStore for S {
    fn dyn_append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> BoxFuture<'a, Result<AppendResult>> {
        Box::pin(self.append(stream, expected, events))
    }
    fn dyn_read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        Box::pin(self.read_stream(stream, from_version))
    }
    fn dyn_read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxStream<'a, Result<StreamItem>> {
        Box::pin(self.read_stream_from_snapshot(stream))
    }
    fn dyn_read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> BoxStream<'_, Result<RecordedEvent>> {
        Box::pin(self.read_all(after, limit))
    }
    fn dyn_find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RecordedEvent>>> {
        Box::pin(self.find_event(stream, event_id))
    }
    fn dyn_count_events(&self, after: Position) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.count_events(after))
    }
    fn dyn_load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>>> {
        Box::pin(self.load_snapshot(stream))
    }
    fn dyn_save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: SnapshotRecord,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.save_snapshot(stream, snapshot))
    }
    fn dyn_load_checkpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Position>>> {
        Box::pin(self.load_checkpoint(name))
    }
    fn dyn_save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.save_checkpoint(name, position))
    }
    fn dyn_watch(&self) -> LogWatcher {
        self.watch()
    }
    fn dyn_list_streams(&self) -> BoxStream<'_, Result<StreamInfo>> {
        Box::pin(self.list_streams())
    }
    fn dyn_stats(&self) -> BoxFuture<'_, Result<StoreStats>> {
        Box::pin(self.stats())
    }
}

/// A shared handle to a store whose type is chosen at run time.
///
/// It implements [`EventStore`], so repositories and projection runners take it like any
/// other store. Cloning it clones an `Arc`.
///
/// # Examples
/// ```
/// use cqrs_core::{BoxEventStore, EventStore, InMemoryEventStore, Position};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// let url = "memory:";
/// let store = match url {
///     "memory:" => BoxEventStore::new(InMemoryEventStore::new()),
///     other => panic!("unknown store {other}"),
/// };
/// assert_eq!(store.count_events(Position::START).await?, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct BoxEventStore(Arc<dyn DynEventStore>);

impl BoxEventStore {
    /// Boxes `store`.
    pub fn new(store: impl EventStore + 'static) -> Self {
        BoxEventStore(Arc::new(store))
    }
}

impl fmt::Debug for BoxEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxEventStore(..)")
    }
}

impl EventStore for BoxEventStore {
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult>> + Send + 'a {
        self.0.dyn_append(stream, expected, events)
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.0.dyn_read_stream(stream, from_version)
    }
    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
        self.0.dyn_read_stream_from_snapshot(stream)
    }
    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.0.dyn_read_all(after, limit)
    }
    fn find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>>> + Send + 'a {
        self.0.dyn_find_event(stream, event_id)
    }
    fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.0.dyn_count_events(after)
    }
    fn load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Future<Output = Result<Option<SnapshotRecord>>> + Send + 'a {
        self.0.dyn_load_snapshot(stream)
    }
    fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: SnapshotRecord,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.0.dyn_save_snapshot(stream, snapshot)
    }
    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send + 'a {
        self.0.dyn_load_checkpoint(name)
    }
    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.0.dyn_save_checkpoint(name, position)
    }
    fn watch(&self) -> LogWatcher {
        self.0.dyn_watch()
    }
    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        self.0.dyn_list_streams()
    }
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
        self.0.dyn_stats()
    }
}
