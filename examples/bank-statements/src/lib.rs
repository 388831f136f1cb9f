//! The statements service: a second service of the cqrs framework's examples. It owns
//! its database (sled or a PostgreSQL schema), consumes the bank's account events from
//! NATS JetStream with the framework's [`Consumer`](cqrs_core::Consumer), each applied
//! once, and keeps per account a statement: monthly totals in and out, the running
//! balance, the last event applied. The binary `statements` (see `main.rs`) is its
//! command line.
//!
//! It shares no code with the bank: it decodes the bank's events by their stored type
//! names and JSON shape ([`events::AccountEvent`]), which is the contract between the
//! two services.

pub mod client;
pub mod error;
pub mod events;
pub mod http;
pub mod postgres;
pub mod service;
pub mod sled;
pub mod statement;

pub use error::{Error, Result};
pub use service::{Service, StatementsStore};
pub use statement::Statement;
