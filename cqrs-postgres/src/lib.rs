#![doc = include_str!("../README.md")]

mod append;
mod batch;
mod builder;
mod checkpoints;
mod checksum;
mod conn;
mod error;
mod inbox;
mod inline;
mod keys;
mod lifecycle;
mod listen;
mod migrate;
mod projection;
mod reader;
mod row;
mod schema;
mod store;
mod tenants;
mod worker;

pub use builder::PostgresEventStoreBuilder;
pub use error::{Error, Result};
pub use inbox::PgInbox;
pub use keys::PostgresKeyStore;
pub use projection::TransactionalCheckpoint;
pub use store::PostgresEventStore;
pub use tenants::PostgresTenantStores;
pub use worker::{WorkerConfig, WorkerLock};

/// The `sqlx` this crate is built on: use it for read-model queries in projections
/// (`Projection<PgConnection>`, run with a [`TransactionalCheckpoint`] or inline), so
/// the versions match.
pub use sqlx;
