//! The store conformance suite: every contract of the store traits, written once and
//! run by every backend.
//!
//! Each case is a `pub async fn case<S>(store: S)`, bounded on the traits it checks
//! (most on [`EventLog`] alone), that panics, with a message naming the contract it
//! checks, when the store breaks it. A backend runs them all with
//! [`store_conformance_tests!`](crate::store_conformance_tests), which expands to one
//! `#[tokio::test]` per case, so a failure names its case; a case that needs a trait the
//! store does not implement says `skipped`, naming the trait:
//!
//! ```no_run
//! // tests/conformance.rs of a backend crate
//! async fn fresh_store() -> Option<cqrs_core::InMemoryEventStore> {
//!     // Return `None` (after printing why) when the backend is not available, for
//!     // example when no database URL is set: each case then says `skipped`.
//!     Some(cqrs_core::InMemoryEventStore::new())
//! }
//!
//! cqrs_core::store_conformance_tests!(fresh_store);
//! # fn main() {}
//! ```
//!
//! The backend crate needs, as dev-dependencies, `cqrs-core` with the `conformance`
//! feature and `tokio` with the `macros` and `rt-multi-thread` features.
//!
//! # What the cases assume
//! - Each case gets its own store from the factory. Cases make fresh stream ids (with a
//!   random UUID in them), projection names and aggregate ids, so they never collide,
//!   even if a backend hands several cases the same database.
//! - The cases that count the whole log ([`read_all_concurrent_writers`],
//!   [`stream_large_in_bounded_memory`], [`count_events_and_find_event`],
//!   [`list_streams_and_stats`], [`read_all_of_types_passes_other_types`]) assume the store
//!   they get is fresh and empty.
//! - Cases spawn tasks: run them on a multi-thread Tokio runtime (the macro does).
//! - Outcomes are deterministic: concurrency cases assert invariants, never speeds, and
//!   the only timeouts guard against hangs.
//!
//! # The cases, by contract and by the trait they need
//! | contract | needs | cases |
//! |---|---|---|
//! | 1. streams | `EventLog` | [`read_empty_stream`]; [`stream_ids_do_not_collide`] (with snapshots) |
//! | 2. atomic append with an expected version | `EventLog` | [`expected_version_any`], [`expected_version_no_stream`], [`expected_version_stream_exists`], [`expected_version_exact`], [`concurrent_appenders_one_winner_per_version`], [`atomic_multi_event_append`]; [`concurrent_commands_apply_once_each`] (`Inspect`) |
//! | 3. idempotent append | `EventLog` | [`idempotent_reappend`]; [`duplicate_command_race_keeps_the_stored_decision`] (snapshots) |
//! | 4. global log in commit order | `EventLog` | [`read_all_concurrent_writers`], [`read_all_keeps_stream_order`] |
//! | 5. streaming reads | `EventLog` | [`stream_large_in_bounded_memory`] |
//! | 6. envelope | `EventLog` | [`append_and_read_round_trip`] |
//! | 7. bad data gives errors | `EventLog` | [`invalid_event_types_are_refused`] (and the invalid batches of [`idempotent_reappend`]); [`unknown_event_type_and_bad_payload_are_typed_errors`] (`Inspect`) |
//! | live reads | `EventLog` | [`watch_wakes_on_append`] |
//! | inspection | `Inspect` | [`count_events_and_find_event`]; [`list_streams_and_stats`] (with snapshots) |
//! | reading by type | `Inspect` | [`read_all_of_types_passes_other_types`] |
//! | snapshots are an optimisation only | `SnapshotStore` + `Inspect` | [`snapshots_round_trip`], [`read_stream_from_snapshot_yields_snapshot_then_tail`], [`stale_or_undecodable_snapshot_replays`], [`snapshot_ahead_of_stream_is_ignored`], [`damaged_snapshot_is_ignored`] |
//! | checkpoints are stored per name | `CheckpointStore` | [`checkpoints_round_trip`] |
//! | upcasting | every trait | [`upcasters_apply_on_load_and_read_all`] |
//! | crypto-shredding | every trait, a [`KeyStore`](crate::KeyStore) | [`shredding::forget_erases_personal_data`] (run by hand: it needs the backend's bytes) |
//!
//! [`EventLog`]: crate::EventLog

mod append;
mod batches;
mod commands;
mod concurrency;
mod decoding;
#[doc(hidden)]
pub mod dispatch;
pub mod inbox;
mod inspection;
mod lifecycle;
mod memory;
pub mod publisher;
mod reads;
pub mod shredding;
mod snapshot_faults;
mod snapshots;
mod support;
mod tally;
pub mod tenants;
mod types;

pub use append::{
    append_and_read_round_trip, atomic_multi_event_append, expected_version_any,
    expected_version_exact, expected_version_no_stream, expected_version_stream_exists,
};
pub use batches::{idempotent_reappend, invalid_event_types_are_refused};
pub use commands::{
    concurrent_commands_apply_once_each, duplicate_command_race_keeps_the_stored_decision,
};
pub use concurrency::{
    concurrent_appenders_one_winner_per_version, read_all_concurrent_writers,
    read_all_keeps_stream_order, reads_are_dense_prefixes,
};
pub use decoding::{
    unknown_event_type_and_bad_payload_are_typed_errors, upcasters_apply_on_load_and_read_all,
};
pub use inspection::{count_events_and_find_event, list_streams_and_stats};
pub use lifecycle::{
    deleted_stream_is_a_tombstone, deleted_stream_restores_exactly,
    rebuild_after_delete_forgets_the_stream, truncated_stream_loads_from_its_snapshot,
};
pub use memory::stream_large_in_bounded_memory;
pub use reads::{read_empty_stream, stream_ids_do_not_collide, watch_wakes_on_append};
pub use snapshot_faults::{damaged_snapshot_is_ignored, snapshot_ahead_of_stream_is_ignored};
pub use snapshots::{
    checkpoints_round_trip, read_stream_from_snapshot_yields_snapshot_then_tail,
    snapshots_round_trip, stale_or_undecodable_snapshot_replays,
};
pub use types::read_all_of_types_passes_other_types;

tokio::task_local! {
    // The test path (`crate::module::case`) of the case running on this task, set by
    // `store_conformance_tests!`: a case that measures in a child process runs this one
    // test again there.
    static CASE_PATH: &'static str;
}

/// The harness name of the running case (its module path without the crate name), if
/// it runs under [`store_conformance_tests!`](crate::store_conformance_tests).
#[allow(dead_code)] // Used by the cases that measure in a child process.
pub(crate) fn current_case() -> Option<&'static str> {
    CASE_PATH
        .try_with(|path| *path)
        .ok()
        .map(|path| path.split_once("::").map_or(path, |(_, rest)| rest))
}

/// Writes a line straight to the process's standard error, past the test harness's
/// capture, so that a `skipped` line is seen in every run.
pub(crate) fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// A teardown that does nothing: the default of [`store_conformance_tests!`](crate::store_conformance_tests).
pub async fn no_teardown<S>(_store: S) {}

/// A snapshot-damaging hook for backends that have no stored bytes below the API to
/// damage (the in-memory store keeps typed records): returns `false`, and
/// [`damaged_snapshot_is_ignored`] then says `skipped`.
pub async fn no_snapshot_damage<S>(_store: S, _stream: crate::StreamId) -> bool {
    false
}

/// Runs one case for [`store_conformance_tests!`](crate::store_conformance_tests): says `skipped` when the factory gave
/// no store, runs the case with its test path set, then the teardown, even when the case
/// panicked (the panic is raised again afterwards).
#[doc(hidden)]
pub async fn run_case<S, C, CF, T, TF>(path: &'static str, store: Option<S>, case: C, teardown: T)
where
    S: Clone,
    C: FnOnce(S) -> CF,
    CF: std::future::Future<Output = ()>,
    T: FnOnce(S) -> TF,
    TF: std::future::Future<Output = ()>,
{
    use futures::FutureExt;

    let Some(store) = store else {
        say(&format!(
            "skipped: {path}: the backend is not available here (its factory said why)"
        ));
        return;
    };
    let kept = store.clone();
    let outcome = CASE_PATH
        .scope(
            path,
            std::panic::AssertUnwindSafe(case(store)).catch_unwind(),
        )
        .await;
    teardown(kept).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs the whole [store conformance suite](crate::conformance) against a backend: one
/// `#[tokio::test]` (multi-thread, 4 workers) per case, named after the case.
///
/// The first argument is the path of an `async fn() -> Option<S>` (with
/// `S: EventLog + Clone + 'static`) that makes a fresh, empty store for one case.
/// `None` means "skip": the backend is not available here (no database, say); each test
/// then says `skipped` on standard error and returns without checking anything.
///
/// Two optional arguments, in this order:
/// - `teardown = path`: an `async fn(S)` run after each case, also when the case failed
///   (drop the case's schema or namespace there, so a run leaves nothing behind);
/// - `damage_snapshot = path`: an `async fn(S, StreamId) -> bool` that damages the
///   stored snapshot record of a stream below the API (bytes a decoder must refuse) and
///   returns `true`, for [`damaged_snapshot_is_ignored`]; without it that case says
///   `skipped`.
///
/// Invoke it inside a module of its own: it defines one function per case there. The
/// crate that invokes it needs `tokio` (features `macros` and `rt-multi-thread`) as a
/// dependency, since the tests are `#[::tokio::test]`s.
///
/// # Examples
/// A backend's `tests/conformance.rs` (compiled here, not run: the macro generates
/// tests, which a doctest cannot run):
///
/// ```no_run
/// mod in_memory {
///     async fn fresh_store() -> Option<cqrs_core::InMemoryEventStore> {
///         Some(cqrs_core::InMemoryEventStore::new())
///     }
///
///     cqrs_core::store_conformance_tests!(fresh_store);
/// }
/// # fn main() {}
/// ```
///
/// A backend that needs a server skips when it has none, and cleans up after each case:
///
/// ```no_run
/// # use cqrs_core::InMemoryEventStore as MyServerStore;
/// async fn fresh_store() -> Option<MyServerStore> {
///     let Ok(_url) = std::env::var("MY_STORE_URL") else {
///         eprintln!("MY_STORE_URL is not set: skipping the conformance suite");
///         return None;
///     };
///     // Connect, and make a fresh schema or namespace for this one case.
///     Some(MyServerStore::new())
/// }
///
/// async fn drop_namespace(_store: MyServerStore) {
///     // Drop the case's schema or namespace.
/// }
///
/// cqrs_core::store_conformance_tests!(fresh_store, teardown = drop_namespace);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh_store:path $(,)?) => {
        $crate::store_conformance_tests!(@all $fresh_store,
            $crate::conformance::no_teardown, $crate::conformance::no_snapshot_damage);
    };
    ($fresh_store:path, teardown = $teardown:path $(,)?) => {
        $crate::store_conformance_tests!(@all $fresh_store,
            $teardown, $crate::conformance::no_snapshot_damage);
    };
    ($fresh_store:path, damage_snapshot = $damage:path $(,)?) => {
        $crate::store_conformance_tests!(@all $fresh_store,
            $crate::conformance::no_teardown, $damage);
    };
    ($fresh_store:path, teardown = $teardown:path, damage_snapshot = $damage:path $(,)?) => {
        $crate::store_conformance_tests!(@all $fresh_store, $teardown, $damage);
    };
    (@all $fresh_store:path, $teardown:path, $damage:path) => {
        $crate::store_conformance_tests!(@list tests [$fresh_store, $teardown, $damage]);
    };
    // The one list of cases, by the traits they need: a case added here gets its test
    // in every backend (`@tests`) and its unit type in `dispatch::cases` (`@types`),
    // and runs against every backend that has the traits (see `dispatch`).
    (@list $mode:ident $args:tt) => {
        $crate::store_conformance_tests!(@$mode $args LogCase, run_log_case, [$crate::EventLog]:
            expected_version_no_stream,
            expected_version_stream_exists,
            expected_version_exact,
            atomic_multi_event_append,
            idempotent_reappend,
            invalid_event_types_are_refused,
            append_and_read_round_trip,
            read_empty_stream,
            expected_version_any,
            concurrent_appenders_one_winner_per_version,
            read_all_concurrent_writers,
            read_all_keeps_stream_order,
            stream_large_in_bounded_memory,
            watch_wakes_on_append,
        );
        $crate::store_conformance_tests!(@$mode $args InspectCase, run_inspect_case, [$crate::Inspect]:
            concurrent_commands_apply_once_each,
            unknown_event_type_and_bad_payload_are_typed_errors,
            count_events_and_find_event,
            read_all_of_types_passes_other_types,
        );
        $crate::store_conformance_tests!(@$mode $args SnapshotCase, run_snapshot_case,
            [$crate::SnapshotStore + $crate::Inspect]:
            duplicate_command_race_keeps_the_stored_decision,
            snapshots_round_trip,
            read_stream_from_snapshot_yields_snapshot_then_tail,
            stale_or_undecodable_snapshot_replays,
            snapshot_ahead_of_stream_is_ignored,
            damaged_snapshot_is_ignored,
            stream_ids_do_not_collide,
            list_streams_and_stats,
        );
        $crate::store_conformance_tests!(@$mode $args CheckpointCase, run_checkpoint_case,
            [$crate::EventLog + $crate::CheckpointStore]:
            checkpoints_round_trip,
        );
        $crate::store_conformance_tests!(@$mode $args FullCase, run_full_case, [$crate::EventStore]:
            upcasters_apply_on_load_and_read_all,
            deleted_stream_is_a_tombstone,
            truncated_stream_loads_from_its_snapshot,
            deleted_stream_restores_exactly,
            rebuild_after_delete_forgets_the_stream,
        );
    };
    // The unit type of each case, implementing its group's case trait.
    (@types [] $group:ident, $run:ident, $bounds:tt: $($case:ident),+ $(,)?) => {
        $($crate::store_conformance_tests!(@type $group $bounds $case);)+
    };
    (@type $group:ident [$($bound:tt)+] damaged_snapshot_is_ignored) => {
        /// The case [`damaged_snapshot_is_ignored`](crate::conformance::damaged_snapshot_is_ignored),
        /// with the backend's damage hook.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        pub struct damaged_snapshot_is_ignored;

        impl $group for damaged_snapshot_is_ignored {
            async fn run<S: $($bound)+ + Clone + 'static>(self, store: S, hooks: Hooks<S>) {
                $crate::conformance::damaged_snapshot_is_ignored(store, |store, stream| {
                    hooks.damage_snapshot(store, stream)
                })
                .await;
            }
        }
    };
    (@type $group:ident [$($bound:tt)+] $case:ident) => {
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #[doc = concat!("The case [`", stringify!($case), "`](crate::conformance::", stringify!($case), ").")]
        pub struct $case;

        impl $group for $case {
            fn run<S: $($bound)+ + Clone + 'static>(
                self,
                store: S,
                _hooks: Hooks<S>,
            ) -> impl ::std::future::Future<Output = ()> {
                $crate::conformance::$case(store)
            }
        }
    };
    // One test per case.
    (@tests [$fresh_store:path, $teardown:path, $damage:path] $group:ident, $run:ident,
        $bounds:tt: $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                #[allow(unused_imports)]
                use $crate::conformance::dispatch::{
                    HasAll as _, HasCheckpoints as _, HasInspect as _, HasLog as _,
                    HasSnapshots as _, LacksCheckpoints as _, LacksInspect as _, LacksLog as _,
                    LacksSnapshots as _, LacksSome as _,
                };
                let store = $fresh_store().await;
                let probe = $crate::conformance::dispatch::Probe::of(&store);
                let hooks = $crate::conformance::dispatch::Hooks::new(|store, stream| {
                    ::std::boxed::Box::pin($damage(store, stream))
                });
                (&&probe)
                    .$run(
                        concat!(module_path!(), "::", stringify!($case)),
                        store,
                        hooks,
                        $crate::conformance::dispatch::cases::$case,
                        $teardown,
                    )
                    .await;
            }
        )+
    };
}
