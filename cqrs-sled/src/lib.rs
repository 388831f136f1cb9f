#![doc = include_str!("../README.md")]

mod append;
mod config;
mod contain;
mod error;
mod flush;
mod mark;
mod open;
mod projection;
mod read_model;
mod record;
mod store;

pub use config::{DamagedLog, Durability, SledConfig};
pub use contain::SledPanicked;
pub use error::{OpenError, Result};
pub use projection::{CheckpointMoved, ReadModelTx, TransactionalCheckpoint};
pub use read_model::{ReadModel, ReadModelCheck};
pub use store::SledEventStore;
