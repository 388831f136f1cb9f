//! The store conformance suite: every contract of [`EventStore`], written once and run
//! by every backend.
//!
//! Each case is a `pub async fn case<S: EventStore + Clone + 'static>(store: S)` that
//! panics, with a message naming the contract it checks, when the store breaks it. A
//! backend runs them all with [`store_conformance_tests!`](crate::store_conformance_tests),
//! which expands to one `#[tokio::test]` per case, so a failure names its case:
//!
//! ```no_run
//! // tests/conformance.rs of a backend crate
//! async fn fresh_store() -> Option<cqrs_core::InMemoryEventStore> {
//!     // Return `None` (after printing why) when the backend is not available, for
//!     // example when no database URL is set: each case then passes without checks.
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
//!   [`list_streams_and_stats`]) assume the store
//!   they get is fresh and empty.
//! - Cases spawn tasks: run them on a multi-thread Tokio runtime (the macro does).
//! - Outcomes are deterministic: concurrency cases assert invariants, never speeds, and
//!   the only timeouts guard against hangs.
//!
//! # The cases, by contract (see `DESIGN.md`)
//! | contract | cases |
//! |---|---|
//! | 1. streams | [`read_empty_stream`], [`stream_ids_do_not_collide`] |
//! | 2. atomic append with an expected version | [`expected_version_any`], [`expected_version_no_stream`], [`expected_version_stream_exists`], [`expected_version_exact`], [`concurrent_appenders_one_winner_per_version`], [`atomic_multi_event_append`] |
//! | 3. idempotent append | [`idempotent_reappend`], [`count_events_and_find_event`] |
//! | 4. global log in commit order | [`read_all_concurrent_writers`], [`count_events_and_find_event`] |
//! | 5. streaming reads | [`stream_large_in_bounded_memory`] |
//! | 6. envelope | [`append_and_read_round_trip`] |
//! | 7. snapshots | [`snapshots_round_trip`], [`read_stream_from_snapshot_yields_snapshot_then_tail`], [`stale_or_undecodable_snapshot_replays`] |
//! | 8. checkpoints | [`checkpoints_round_trip`] |
//! | 9. bad data gives errors | [`unknown_event_type_and_bad_payload_are_typed_errors`], [`invalid_event_types_are_refused`] (and the invalid batches of [`idempotent_reappend`]) |
//! | upcasting, live reads | [`upcasters_apply_on_load_and_read_all`], [`watch_wakes_on_append`] |
//! | operations support | [`list_streams_and_stats`] |
//!
//! [`EventStore`]: crate::EventStore

mod append;
mod batches;
mod concurrency;
mod decoding;
mod reads;
mod snapshots;
mod support;
mod tally;

pub use append::{
    append_and_read_round_trip, atomic_multi_event_append, expected_version_any,
    expected_version_exact, expected_version_no_stream, expected_version_stream_exists,
};
pub use batches::{idempotent_reappend, invalid_event_types_are_refused};
pub use concurrency::{concurrent_appenders_one_winner_per_version, read_all_concurrent_writers};
pub use decoding::{
    unknown_event_type_and_bad_payload_are_typed_errors, upcasters_apply_on_load_and_read_all,
};
pub use reads::{
    count_events_and_find_event, list_streams_and_stats, read_empty_stream,
    stream_ids_do_not_collide, stream_large_in_bounded_memory, watch_wakes_on_append,
};
pub use snapshots::{
    checkpoints_round_trip, read_stream_from_snapshot_yields_snapshot_then_tail,
    snapshots_round_trip, stale_or_undecodable_snapshot_replays,
};

/// Runs the whole [store conformance suite](crate::conformance) against a backend: one
/// `#[tokio::test]` (multi-thread, 4 workers) per case, named after the case.
///
/// The argument is the path of an `async fn() -> Option<S>` (with
/// `S: EventStore + Clone + 'static`) that makes a fresh, empty store for one case.
/// `None` means "skip": the backend is not available here (no database, say) and the
/// factory has already printed why; each test then returns without checking anything.
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
/// A backend that needs a server skips when it has none:
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
/// cqrs_core::store_conformance_tests!(fresh_store);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    // The one list of cases: a case added here runs against every backend.
    ($fresh_store:path $(,)?) => {
        $crate::store_conformance_tests!(@cases $fresh_store;
            append_and_read_round_trip,
            read_empty_stream,
            expected_version_any,
            expected_version_no_stream,
            expected_version_stream_exists,
            expected_version_exact,
            concurrent_appenders_one_winner_per_version,
            atomic_multi_event_append,
            idempotent_reappend,
            invalid_event_types_are_refused,
            read_all_concurrent_writers,
            stream_large_in_bounded_memory,
            snapshots_round_trip,
            read_stream_from_snapshot_yields_snapshot_then_tail,
            stale_or_undecodable_snapshot_replays,
            checkpoints_round_trip,
            unknown_event_type_and_bad_payload_are_typed_errors,
            upcasters_apply_on_load_and_read_all,
            stream_ids_do_not_collide,
            count_events_and_find_event,
            watch_wakes_on_append,
            list_streams_and_stats,
        );
    };
    (@cases $fresh_store:path; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(store) = $fresh_store().await else {
                    return;
                };
                $crate::conformance::$case(store).await;
            }
        )+
    };
}
