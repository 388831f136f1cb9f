#![doc = include_str!("../README.md")]

mod error;
mod listen;
mod migrate;
mod projection;
mod row;
mod schema;
mod store;
mod worker;

pub use error::{Error, Result};
pub use projection::{InlineProjection, Transactional, TransactionalProjection};
pub use store::{PostgresEventStore, PostgresEventStoreBuilder};
pub use worker::{WorkerConfig, WorkerLock};

/// The `sqlx` this crate is built on: use it for read-model queries in
/// [`TransactionalProjection`]s and [`InlineProjection`]s, so the versions match.
pub use sqlx;
