//! The store conformance suite of `cqrs-core`, against PostgreSQL with the options that
//! are not the default: group commit off (ADR 0027) and the global log decoded on a task
//! of its own (ADR 0034; the suite runs on a multi-threaded runtime, where the task is
//! used). `conformance.rs` runs it with the defaults. Each case in a fresh schema,
//! dropped after the case (also when it fails).

mod common;

use cqrs_postgres::PostgresEventStore;

async fn fresh_store() -> Option<PostgresEventStore> {
    common::store_with(|b| b.group_commit(false).read_on_task(true)).await
}

async fn drop_schema(store: PostgresEventStore) {
    common::drop_schema(&store).await;
}

cqrs_core::store_conformance_tests!(
    fresh_store,
    teardown = drop_schema,
    damage_snapshot = common::damage_snapshot
);
