//! The bank-account example of the cqrs framework: accounts, transfers driven by a
//! process manager, read models, and the operations subcommand. The binary `bank` (see
//! `main.rs`) is its command line.

pub mod app;
pub mod domain;
pub mod http;
pub mod postgres;
pub mod projections;

pub use app::{Bank, BankError, TransferOutcome};
