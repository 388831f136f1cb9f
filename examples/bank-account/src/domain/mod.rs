//! The bank's domain: accounts, transfers, their commands and events.

mod aggregate;
mod commands;
mod events;
mod text;

pub use aggregate::{
    Account, AccountError, AccountServices, AccountStatus, Transfer, TransferError, TransferStatus,
};
pub use commands::{AccountCommand, AmountError, Cents, TransferCommand, format_cents};
pub use events::{AccountEvent, TransferEvent};
pub use text::{Field, InvalidText, TextProblem};
