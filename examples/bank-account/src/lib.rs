//! The bank-account example of the cqrs framework: accounts, transfers driven by a
//! process manager, a read model on sled or PostgreSQL, an HTTP API, and the operations
//! subcommand. The binary `bank` (see `main.rs`) is its command line.

pub mod bank;
pub mod domain;
pub mod error;
pub mod http;
pub mod read_model;
pub mod tenants;
pub mod transfer_process;

pub use bank::{Bank, TransferOutcome};
pub use error::{BankError, full_chain};
