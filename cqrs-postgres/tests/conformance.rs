//! The store conformance suite of `cqrs-core`, against PostgreSQL: each case in a fresh
//! schema, dropped after the case (also when it fails).

mod common;

use cqrs_postgres::PostgresEventStore;

async fn fresh_store() -> Option<PostgresEventStore> {
    common::store().await
}

async fn drop_schema(store: PostgresEventStore) {
    common::drop_schema(&store).await;
}

cqrs_core::store_conformance_tests!(
    fresh_store,
    teardown = drop_schema,
    damage_snapshot = common::damage_snapshot
);
