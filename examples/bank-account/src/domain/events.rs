//! What happened to accounts and transfers.

use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Cents;

/// An account's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// The owner's name.
        owner: String,
    },
    /// Money was deposited.
    Deposited {
        /// How much.
        amount: Cents,
    },
    /// Money was withdrawn.
    Withdrawn {
        /// How much.
        amount: Cents,
    },
    /// The account was closed.
    Closed,
    /// Money left for a transfer.
    TransferDebited {
        /// The transfer.
        transfer_id: Uuid,
        /// The destination account.
        to: String,
        /// How much.
        amount: Cents,
    },
    /// Money arrived from a transfer.
    TransferCredited {
        /// The transfer.
        transfer_id: Uuid,
        /// The source account.
        from: String,
        /// How much.
        amount: Cents,
    },
    /// A failed transfer's debit was given back.
    TransferRefunded {
        /// The transfer.
        transfer_id: Uuid,
        /// How much.
        amount: Cents,
        /// Why the transfer failed.
        reason: String,
    },
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &[
        "AccountOpened",
        "MoneyDeposited",
        "MoneyWithdrawn",
        "AccountClosed",
        "TransferDebited",
        "TransferCredited",
        "TransferRefunded",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "AccountOpened",
            AccountEvent::Deposited { .. } => "MoneyDeposited",
            AccountEvent::Withdrawn { .. } => "MoneyWithdrawn",
            AccountEvent::Closed => "AccountClosed",
            AccountEvent::TransferDebited { .. } => "TransferDebited",
            AccountEvent::TransferCredited { .. } => "TransferCredited",
            AccountEvent::TransferRefunded { .. } => "TransferRefunded",
        }
    }
}

impl AccountEvent {
    /// How the event changes the balance, in cents.
    pub fn balance_change(&self) -> i64 {
        match self {
            AccountEvent::Deposited { amount }
            | AccountEvent::TransferCredited { amount, .. }
            | AccountEvent::TransferRefunded { amount, .. } => amount.get(),
            AccountEvent::Withdrawn { amount } | AccountEvent::TransferDebited { amount, .. } => {
                -amount.get()
            }
            AccountEvent::Opened { .. } | AccountEvent::Closed => 0,
        }
    }
}

/// A transfer's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferEvent {
    /// A transfer was asked for.
    Requested {
        /// The source account.
        from: String,
        /// The destination account.
        to: String,
        /// How much.
        amount: Cents,
    },
    /// The money arrived.
    Completed,
    /// The transfer failed; the source was refunded if it had been debited.
    Failed {
        /// Why.
        reason: String,
    },
}

impl DomainEvent for TransferEvent {
    const EVENT_TYPES: &'static [&'static str] =
        &["TransferRequested", "TransferCompleted", "TransferFailed"];

    fn event_type(&self) -> &'static str {
        match self {
            TransferEvent::Requested { .. } => "TransferRequested",
            TransferEvent::Completed => "TransferCompleted",
            TransferEvent::Failed { .. } => "TransferFailed",
        }
    }
}
