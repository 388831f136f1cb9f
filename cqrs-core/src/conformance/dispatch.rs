//! How [`store_conformance_tests!`](crate::store_conformance_tests) runs each case only
//! on a store with the capabilities it needs, and says `skipped` naming the missing
//! trait otherwise.
//!
//! Cases are grouped by the traits they need (the log alone, inspection, snapshots,
//! checkpoints, everything). Each case has a unit type in [`cases`] that
//! implements its group's case trait, whose `run` is generic over stores with those
//! traits. The macro calls `(&&Probe::of(&store)).run_…_case(…)`: the method of the
//! `Has…` trait, implemented for `&Probe<S>` only when `S` has the traits, is found
//! first; otherwise method lookup goes on to the `Lacks…` trait, implemented for every
//! `Probe<S>`, which only says what the store lacks. (Both are resolved at compile
//! time, for the concrete store type the macro was given.)

use std::future::Future;
use std::marker::PhantomData;

use futures::future::LocalBoxFuture;

use super::say;
use crate::{CheckpointStore, EventLog, EventStore, Inspect, SnapshotStore, StreamId};

/// The store type of a factory's output, for method lookup.
#[derive(Debug)]
pub struct Probe<S>(PhantomData<fn() -> S>);

impl<S> Probe<S> {
    /// The probe for the stores `store` holds (or would hold).
    pub fn of(_store: &Option<S>) -> Self {
        Probe(PhantomData)
    }
}

/// The backend's hooks, handed to the cases that use one.
pub struct Hooks<S> {
    damage_snapshot: Box<dyn FnOnce(S, StreamId) -> LocalBoxFuture<'static, bool>>,
}

impl<S> std::fmt::Debug for Hooks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

impl<S> Hooks<S> {
    /// Hooks with this snapshot-damaging function (see
    /// [`damaged_snapshot_is_ignored`](super::damaged_snapshot_is_ignored)).
    pub fn new(
        damage_snapshot: impl FnOnce(S, StreamId) -> LocalBoxFuture<'static, bool> + 'static,
    ) -> Self {
        Hooks {
            damage_snapshot: Box::new(damage_snapshot),
        }
    }

    /// Damages the stored snapshot of `stream`; `false` if the backend cannot.
    pub(super) async fn damage_snapshot(self, store: S, stream: StreamId) -> bool {
        (self.damage_snapshot)(store, stream).await
    }
}

async fn skip<S, T, TF>(path: &'static str, store: Option<S>, teardown: T, lacks: &str)
where
    T: FnOnce(S) -> TF,
    TF: Future<Output = ()>,
{
    if let Some(store) = store {
        teardown(store).await;
    }
    say(&format!(
        "skipped: {path}: the store does not implement {lacks}, which this case checks"
    ));
}

macro_rules! capability {
    ($(#[$doc:meta])* $case:ident, $has:ident, $lacks:ident, $method:ident, [$($bound:tt)+], $name:literal) => {
        $(#[$doc])*
        pub trait $case: Copy {
            /// Runs the case.
            fn run<S: $($bound)+ + Clone + 'static>(self, store: S, hooks: Hooks<S>) -> impl Future<Output = ()>;
        }

        /// Runs a case of this group on a store that has its traits.
        pub trait $has<S> {
            /// Runs `case` (see [`run_case`](super::run_case)).
            fn $method<C: $case, T, TF>(
                &self,
                path: &'static str,
                store: Option<S>,
                hooks: Hooks<S>,
                case: C,
                teardown: T,
            ) -> impl Future<Output = ()>
            where
                T: FnOnce(S) -> TF,
                TF: Future<Output = ()>;
        }

        impl<S: $($bound)+ + Clone + 'static> $has<S> for &Probe<S> {
            async fn $method<C: $case, T, TF>(
                &self,
                path: &'static str,
                store: Option<S>,
                hooks: Hooks<S>,
                case: C,
                teardown: T,
            ) where
                T: FnOnce(S) -> TF,
                TF: Future<Output = ()>,
            {
                super::run_case(path, store, move |store| case.run(store, hooks), teardown).await;
            }
        }

        /// Says `skipped` for a case of this group on a store that lacks its traits.
        pub trait $lacks<S> {
            /// Tears the store down and says which trait it lacks.
            fn $method<C: $case, T, TF>(
                &self,
                path: &'static str,
                store: Option<S>,
                hooks: Hooks<S>,
                case: C,
                teardown: T,
            ) -> impl Future<Output = ()>
            where
                T: FnOnce(S) -> TF,
                TF: Future<Output = ()>;
        }

        impl<S> $lacks<S> for Probe<S> {
            async fn $method<C: $case, T, TF>(
                &self,
                path: &'static str,
                store: Option<S>,
                _hooks: Hooks<S>,
                _case: C,
                teardown: T,
            ) where
                T: FnOnce(S) -> TF,
                TF: Future<Output = ()>,
            {
                skip(path, store, teardown, $name).await;
            }
        }
    };
}

capability!(
    /// A case that needs only the event log.
    LogCase, HasLog, LacksLog, run_log_case, [EventLog], "EventLog"
);
capability!(
    /// A case that needs inspection (the command layer's `find_event`, counts).
    InspectCase, HasInspect, LacksInspect, run_inspect_case, [Inspect], "Inspect"
);
capability!(
    /// A case that needs snapshots (and inspection, for the command layer).
    SnapshotCase, HasSnapshots, LacksSnapshots, run_snapshot_case, [SnapshotStore + Inspect],
    "SnapshotStore (with Inspect)"
);
capability!(
    /// A case that needs checkpoints.
    CheckpointCase, HasCheckpoints, LacksCheckpoints, run_checkpoint_case,
    [EventLog + CheckpointStore], "CheckpointStore"
);
capability!(
    /// A case that needs every capability.
    FullCase, HasAll, LacksSome, run_full_case, [EventStore],
    "every store trait (SnapshotStore, CheckpointStore and Inspect)"
);

/// The unit types of the cases, one per case, named after it (generated from the one list
/// of cases in [`store_conformance_tests!`](crate::store_conformance_tests)).
pub mod cases {
    use super::{CheckpointCase, FullCase, Hooks, InspectCase, LogCase, SnapshotCase};

    crate::store_conformance_tests!(@list types []);
}
