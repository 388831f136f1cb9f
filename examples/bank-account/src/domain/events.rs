//! What happened to accounts and transfers.

use cqrs_core::{DomainEvent, Personal, StreamDeleted};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Cents;

/// An account's events.
///
/// The stored type names (`#[event(name = "...")]`, or the variant's name) are persisted
/// with every event: never change them. The test below pins them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum AccountEvent {
    /// The account was opened.
    #[event(name = "AccountOpened")]
    Opened {
        /// The owner's name: personal data of the account (its subject is the account
        /// id), sealed in the store and erased by `bank forget`. Events stored before it
        /// was personal hold a bare string ([`Personal::Unmarked`]), which a forget
        /// cannot erase.
        owner: Personal<String>,
    },
    /// Money was deposited.
    #[event(name = "MoneyDeposited")]
    Deposited {
        /// How much.
        amount: Cents,
    },
    /// Money was withdrawn.
    #[event(name = "MoneyWithdrawn")]
    Withdrawn {
        /// How much.
        amount: Cents,
        /// The day of the withdrawal, from the clock service (days since 1970-01-01,
        /// UTC; 0 in events written before the daily limit existed).
        #[serde(default)]
        day: u32,
    },
    /// The account was closed.
    #[event(name = "AccountClosed")]
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
    /// The account's stream was deleted (`bank delete` or `bank archive`): its tombstone,
    /// written by the store, never by a command. The read model drops the account.
    #[event(name = "$stream-deleted")]
    Deleted(StreamDeleted),
}

impl AccountEvent {
    /// How the event changes the balance, in cents.
    pub fn balance_change(&self) -> i64 {
        match self {
            AccountEvent::Deposited { amount }
            | AccountEvent::TransferCredited { amount, .. }
            | AccountEvent::TransferRefunded { amount, .. } => amount.get(),
            AccountEvent::Withdrawn { amount, .. }
            | AccountEvent::TransferDebited { amount, .. } => -amount.get(),
            AccountEvent::Opened { .. } | AccountEvent::Closed | AccountEvent::Deleted(_) => 0,
        }
    }
}

/// A transfer's events. Their stored type names are persisted too (see [`AccountEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum TransferEvent {
    /// A transfer was asked for.
    #[event(name = "TransferRequested")]
    Requested {
        /// The source account.
        from: String,
        /// The destination account.
        to: String,
        /// How much.
        amount: Cents,
    },
    /// The money arrived.
    #[event(name = "TransferCompleted")]
    Completed,
    /// The transfer failed; the source was refunded if it had been debited.
    #[event(name = "TransferFailed")]
    Failed {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawal_stored_before_the_daily_limit_decodes_with_day_0() {
        let old: AccountEvent = serde_json::from_str(r#"{"Withdrawn":{"amount":5}}"#).unwrap();
        let amount = Cents::new(5).unwrap();
        assert_eq!(old, AccountEvent::Withdrawn { amount, day: 0 });
    }

    /// An owner stored before it was personal data still decodes, as an unmarked value.
    #[test]
    fn an_owner_stored_as_a_bare_string_decodes_unmarked() {
        let old: AccountEvent = serde_json::from_str(r#"{"Opened":{"owner":"Ada"}}"#).unwrap();
        let owner = Personal::Unmarked("Ada".to_owned());
        assert_eq!(old, AccountEvent::Opened { owner });
    }

    /// The stored type names, as they were written by hand before the derive: events in
    /// existing stores carry them, so they must never change.
    #[test]
    fn stored_type_names_never_change() {
        let amount = Cents::new(1).unwrap();
        let transfer_id = Uuid::nil();
        let accounts = [
            (
                AccountEvent::Opened {
                    owner: Personal::new("ada", "Ada".to_owned()),
                },
                "AccountOpened",
            ),
            (AccountEvent::Deposited { amount }, "MoneyDeposited"),
            (AccountEvent::Withdrawn { amount, day: 0 }, "MoneyWithdrawn"),
            (AccountEvent::Closed, "AccountClosed"),
            (
                AccountEvent::TransferDebited {
                    transfer_id,
                    to: "bo".into(),
                    amount,
                },
                "TransferDebited",
            ),
            (
                AccountEvent::TransferCredited {
                    transfer_id,
                    from: "ada".into(),
                    amount,
                },
                "TransferCredited",
            ),
            (
                AccountEvent::TransferRefunded {
                    transfer_id,
                    amount,
                    reason: "no such account".into(),
                },
                "TransferRefunded",
            ),
            (
                AccountEvent::Deleted(StreamDeleted::new(3)),
                cqrs_core::STREAM_DELETED,
            ),
        ];
        let names: Vec<_> = accounts.iter().map(|(_, name)| *name).collect();
        assert_eq!(AccountEvent::EVENT_TYPES, names);
        for (event, name) in &accounts {
            assert_eq!(event.event_type(), *name, "{event:?}");
            assert_eq!(event.schema_version(), 1, "{event:?}");
        }

        let transfers = [
            (
                TransferEvent::Requested {
                    from: "ada".into(),
                    to: "bo".into(),
                    amount,
                },
                "TransferRequested",
            ),
            (TransferEvent::Completed, "TransferCompleted"),
            (
                TransferEvent::Failed {
                    reason: "no such account".into(),
                },
                "TransferFailed",
            ),
        ];
        let names: Vec<_> = transfers.iter().map(|(_, name)| *name).collect();
        assert_eq!(TransferEvent::EVENT_TYPES, names);
        for (event, name) in &transfers {
            assert_eq!(event.event_type(), *name, "{event:?}");
            assert_eq!(event.schema_version(), 1, "{event:?}");
        }
    }
}
