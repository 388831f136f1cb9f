//! The store conformance suite of `cqrs-core`, against PostgreSQL with the options that
//! are not the default: group commit off (ADR 0027) and the global log decoded on a task
//! of its own (ADR 0034; the suite runs on a multi-threaded runtime, where the task is
//! used). `conformance.rs` runs it with the defaults. Each case in a fresh schema,
//! dropped after the case (also when it fails).

mod common;

use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe};

async fn fresh_store() -> Option<PostgresEventStore> {
    common::store_with(|b| b.group_commit(false).read_on_task(true)).await
}

async fn drop_schema(store: PostgresEventStore) {
    common::drop_schema(&store).await;
}

/// Damages a stream's snapshot row below the API: a negative version cannot be a
/// snapshot's.
async fn damage_snapshot(store: PostgresEventStore, stream: cqrs_core::StreamId) -> bool {
    let updated = sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{}\".snapshots SET version = -7 WHERE aggregate_type = $1 AND aggregate_id = $2",
        store.schema()
    )))
    .bind(stream.aggregate_type())
    .bind(stream.id())
    .execute(store.pool())
    .await
    .expect("damage the snapshot row");
    assert_eq!(
        updated.rows_affected(),
        1,
        "the snapshot row to damage exists"
    );
    true
}

cqrs_core::store_conformance_tests!(
    fresh_store,
    teardown = drop_schema,
    damage_snapshot = damage_snapshot
);
