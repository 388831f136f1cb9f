//! The umbrella of the store traits.

use crate::{CheckpointStore, Inspect, SnapshotStore, StreamLifecycle};

/// A store with every capability: [`EventLog`](crate::EventLog) (the one trait a backend
/// must implement), [`SnapshotStore`], [`CheckpointStore`], [`Inspect`] and
/// [`StreamLifecycle`].
///
/// Implemented for every type that has the four; never implement it yourself. Bound on
/// it where you need everything (the operations tools do); bound on the narrow traits
/// where you need less, so log-only backends fit.
///
/// | trait | required methods | provided methods |
/// |---|---|---|
/// | [`EventLog`](crate::EventLog) | `append`, `read_stream`, `read_all` | `watch` |
/// | [`SnapshotStore`] | `load_snapshot`, `save_snapshot` | `read_stream_from_snapshot` |
/// | [`CheckpointStore`] | `load_checkpoint`, `save_checkpoint` | |
/// | [`Inspect`] | | `find_event`, `count_events`, `list_streams`, `stats` |
/// | [`StreamLifecycle`] | | `delete_stream`, `truncate_stream`, `restore_stream`, `read_stored` |
pub trait EventStore: SnapshotStore + CheckpointStore + Inspect + StreamLifecycle {}

impl<S: SnapshotStore + CheckpointStore + Inspect + StreamLifecycle + ?Sized> EventStore for S {}
