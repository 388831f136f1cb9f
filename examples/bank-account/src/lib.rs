//! The bank-account example of the cqrs framework: accounts, transfers driven by a
//! process manager, read models, and the operations subcommand. The binary `bank` (see
//! `main.rs`) is its command line.

pub mod app;
pub mod domain;
pub mod error;
pub mod http;
pub mod postgres;
pub mod projections;
mod queries;

pub use app::{Bank, TransferOutcome};
pub use error::{BankError, full_chain};
