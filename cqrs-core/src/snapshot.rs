//! When the command layer takes snapshots.

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
