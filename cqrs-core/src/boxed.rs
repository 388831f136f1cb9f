//! Run-time chosen stores: the object-safe umbrella and a boxed handle.

use std::fmt;
use std::sync::Arc;

use crate::checkpoint_store::checkpoint_store_table;
use crate::inspect::inspect_table;
use crate::lifecycle::lifecycle_table;
use crate::log::event_log_table;
use crate::snapshot_store::snapshot_store_table;
use crate::{
    AppendResult, CheckpointStore, DynCheckpointStore, DynEventLog, DynInspect, DynSnapshotStore,
    DynStreamLifecycle, EventData, EventLog, EventStore, ExpectedVersion, Inspect, LogItem,
    LogWatcher, Position, RecordedEvent, Result, SnapshotRecord, SnapshotStore, StoreStats,
    StreamId, StreamInfo, StreamItem, StreamLifecycle,
};
use uuid::Uuid;

/// The object-safe twin of [`EventStore`]: every capability, boxed futures and streams.
///
/// Every `EventStore` implements it; you rarely name it yourself. Use [`BoxEventStore`]
/// to hold a store whose type is only known at run time (picked from a URL at start-up,
/// say). Each call then costs one allocation and a virtual call; code that knows its
/// store type stays statically dispatched.
pub trait DynEventStore:
    DynSnapshotStore + DynCheckpointStore + DynInspect + DynStreamLifecycle
{
}

impl<S: EventStore + 'static> DynEventStore for S {}

/// A shared handle to a store whose type is chosen at run time.
///
/// It implements [`EventStore`], so repositories and projection runners take it like any
/// other store. Cloning it clones an `Arc`.
///
/// # Examples
/// ```
/// use cqrs_core::{BoxEventStore, InMemoryEventStore, Inspect, Position};
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

event_log_table!(forward_to_dyn!(BoxEventStore, dyn DynEventStore));
snapshot_store_table!(forward_to_dyn!(BoxEventStore, dyn DynEventStore));
checkpoint_store_table!(forward_to_dyn!(BoxEventStore, dyn DynEventStore));
inspect_table!(forward_to_dyn!(BoxEventStore, dyn DynEventStore));
lifecycle_table!(forward_to_dyn!(BoxEventStore, dyn DynEventStore));
