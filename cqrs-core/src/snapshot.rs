//! When the command layer takes snapshots, and how it reaches a snapshot store.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::{Result, SnapshotRecord, SnapshotStore, StreamId, StreamItem};

/// When the command layer takes a snapshot of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotPolicy {
    /// Never take snapshots, and never read them: every load replays the whole stream
    /// (one read instead of two per load).
    #[default]
    Never,
    /// Take a snapshot whenever an append crosses a multiple of this many events, and
    /// start loads from the latest snapshot. `EveryEvents(0)` reads snapshots (taken by
    /// [`Repository::snapshot_now`](crate::Repository::snapshot_now) or an operations tool) but never takes any itself.
    EveryEvents(u64),
}

impl SnapshotPolicy {
    pub(crate) fn due(self, before: u64, after: u64) -> bool {
        match self {
            SnapshotPolicy::EveryEvents(n) if n > 0 => before / n != after / n,
            _ => false,
        }
    }
}

/// The two snapshot calls of a repository whose store is a [`SnapshotStore`], captured
/// when the policy is set, so the rest of the repository only needs an event log.
pub(crate) struct SnapshotIo<S> {
    pub(crate) read: for<'a> fn(&'a S, &'a StreamId) -> BoxStream<'a, Result<StreamItem>>,
    pub(crate) save: for<'a> fn(&'a S, &'a StreamId, SnapshotRecord) -> BoxFuture<'a, Result<()>>,
}

impl<S: SnapshotStore> SnapshotIo<S> {
    pub(crate) fn new() -> Self {
        SnapshotIo {
            read: |store, stream| Box::pin(store.read_stream_from_snapshot(stream)),
            save: |store, stream, snapshot| Box::pin(store.save_snapshot(stream, snapshot)),
        }
    }
}

impl<S> Clone for SnapshotIo<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for SnapshotIo<S> {}
