//! The store conformance suite of `cqrs-core`, against PostgreSQL: each case in a fresh
//! schema.

mod common;

async fn fresh_store() -> Option<cqrs_postgres::PostgresEventStore> {
    common::store().await
}

cqrs_core::store_conformance_tests!(fresh_store);
