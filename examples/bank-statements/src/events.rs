//! The bank's account events as this service reads them: the same type names and JSON
//! shape as the bank's own `AccountEvent`, declared here so that the two services share
//! a wire format, not code.

use cqrs_core::{DomainEvent, Personal, StreamDeleted};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The aggregate type of the bank's accounts (the `account` in `bank.account.<id>`).
pub const ACCOUNT: &str = "account";

/// An account event of the bank. Amounts are integer cents. The stored type names
/// (`#[event(name = "…")]`, or the variant's name) are the bank's; a field this service
/// does not need is not declared (serde ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum AccountEvent {
    /// The account was opened.
    #[event(name = "AccountOpened")]
    Opened {
        /// The owner's name: personal data of the account, as the bank's relay publishes
        /// it (opened; erased once the bank forgot the account; a bare string in events
        /// written before it was personal).
        owner: Personal<String>,
    },
    /// Money was deposited.
    #[event(name = "MoneyDeposited")]
    Deposited {
        /// How much, in cents.
        amount: i64,
    },
    /// Money was withdrawn.
    #[event(name = "MoneyWithdrawn")]
    Withdrawn {
        /// How much, in cents.
        amount: i64,
    },
    /// The account was closed.
    #[event(name = "AccountClosed")]
    Closed,
    /// Money left for a transfer (the bank's transfer process debits the source).
    TransferDebited {
        /// The transfer.
        transfer_id: Uuid,
        /// The destination account.
        to: String,
        /// How much, in cents.
        amount: i64,
    },
    /// Money arrived from a transfer (credited to the destination).
    TransferCredited {
        /// The transfer.
        transfer_id: Uuid,
        /// The source account.
        from: String,
        /// How much, in cents.
        amount: i64,
    },
    /// A failed transfer's debit was given back to the source.
    TransferRefunded {
        /// The transfer.
        transfer_id: Uuid,
        /// How much, in cents.
        amount: i64,
    },
    /// The bank deleted or archived the account's stream (its tombstone): the service
    /// drops the account's statement.
    #[event(name = "$stream-deleted")]
    Deleted(StreamDeleted),
}

impl AccountEvent {
    /// The money this event moves: `(in, out)` in cents. Deposits, transfer credits and
    /// refunds are money in; withdrawals and transfer debits are money out.
    pub fn money(&self) -> (i64, i64) {
        match self {
            AccountEvent::Deposited { amount }
            | AccountEvent::TransferCredited { amount, .. }
            | AccountEvent::TransferRefunded { amount, .. } => (*amount, 0),
            AccountEvent::Withdrawn { amount } | AccountEvent::TransferDebited { amount, .. } => {
                (0, *amount)
            }
            AccountEvent::Opened { .. } | AccountEvent::Closed | AccountEvent::Deleted(_) => (0, 0),
        }
    }
}

/// Whether `record` is one of the bank's account events this service reads.
pub(crate) fn is_account_event(record: &cqrs_core::RecordedEvent) -> bool {
    use cqrs_core::DomainEvent;
    record.stream.aggregate_type() == ACCOUNT
        && AccountEvent::EVENT_TYPES.contains(&record.event_type.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bank's payloads, as its store holds them.
    #[test]
    fn decodes_the_banks_json() {
        let cases = [
            (r#"{"Opened":{"owner":"ada"}}"#, (0, 0)),
            (r#"{"Deposited":{"amount":1250}}"#, (1250, 0)),
            (r#"{"Withdrawn":{"amount":500,"day":20000}}"#, (0, 500)),
            (r#""Closed""#, (0, 0)),
            (
                r#"{"TransferDebited":{"transfer_id":"0192a0c4-7e4e-7000-8000-000000000001","to":"b","amount":300}}"#,
                (0, 300),
            ),
            (
                r#"{"TransferCredited":{"transfer_id":"0192a0c4-7e4e-7000-8000-000000000001","from":"a","amount":300}}"#,
                (300, 0),
            ),
            (
                r#"{"TransferRefunded":{"transfer_id":"0192a0c4-7e4e-7000-8000-000000000001","amount":300,"reason":"closed"}}"#,
                (300, 0),
            ),
        ];
        for (json, money) in cases {
            let event: AccountEvent = serde_json::from_str(json).expect(json);
            assert_eq!(event.money(), money, "{json}");
        }
    }

    #[test]
    fn the_type_names_are_the_banks() {
        assert_eq!(
            AccountEvent::EVENT_TYPES,
            [
                "AccountOpened",
                "MoneyDeposited",
                "MoneyWithdrawn",
                "AccountClosed",
                "TransferDebited",
                "TransferCredited",
                "TransferRefunded",
                cqrs_core::STREAM_DELETED,
            ]
        );
    }
}
