#![doc = include_str!("../README.md")]

mod append;
mod check;
mod chunk;
mod config;
mod contain;
mod error;
mod flush;
mod holes;
mod inbox;
mod keys;
mod lifecycle;
mod lookup;
mod mark;
mod open;
mod projection;
mod read_model;
mod record;
mod snapshots;
mod store;
mod stream_read;
mod tenants;

pub use check::RecordCheck;
pub use config::{DamagedLog, Durability, SledConfig};
pub use contain::SledPanicked;
pub use error::{OpenError, Result};
pub use inbox::SledInbox;
pub use keys::SledKeyStore;
pub use projection::{CheckpointMoved, ReadModelTx, TransactionalCheckpoint};
pub use read_model::ReadModel;
pub use store::SledEventStore;
pub use tenants::SledTenantStores;
