//! The accounts read model: its rows, the one fold that builds them, and the
//! [`ReadModel`] trait that each store implements (`sled.rs`, `postgres.rs`).

use std::time::UNIX_EPOCH;

use cqrs_cli::Operations;
use cqrs_core::{BoxEventStore, Envelope, Position, RecordedEvent};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Account, AccountEvent, AccountStatus, format_cents};
use crate::error::Result;

/// The name of the accounts read model's projection.
pub const ACCOUNTS: &str = "accounts";

/// One account in the read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    /// The account id.
    pub account: String,
    /// The owner's name.
    pub owner: String,
    /// Open or closed.
    pub status: AccountStatus,
    /// The balance in cents.
    pub balance_cents: i64,
    /// The balance with two decimals, for people.
    pub balance: String,
    /// The account stream's version this row reflects.
    pub version: u64,
}

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The event's version in the account's stream.
    pub version: u64,
    /// `opened`, `deposit`, `withdrawal`, `closed`, `transfer_out`, `transfer_in`, `refund`.
    pub kind: String,
    /// The balance change in cents (negative for money out).
    pub amount_cents: i64,
    /// The balance after it, in cents.
    pub balance_cents: i64,
    /// The other account of a transfer.
    pub counterparty: Option<String>,
    /// The transfer, for transfer legs and refunds.
    pub transfer_id: Option<Uuid>,
    /// When it was recorded (milliseconds since the Unix epoch).
    pub recorded_at_ms: u128,
}

/// Folds one account event into its row (`None` before the first) and history line: the
/// one piece of read-model logic, shared by every store.
pub fn fold(row: Option<AccountRow>, e: &Envelope<AccountEvent>) -> (AccountRow, HistoryRow) {
    let (account, status) = (e.stream.id().to_owned(), AccountStatus::Open);
    let (owner, balance) = (String::new(), String::new());
    let mut row = row.unwrap_or(AccountRow {
        account,
        owner,
        status,
        balance_cents: 0,
        balance,
        version: 0,
    });
    let change = e.event.balance_change();
    row.balance_cents += change;
    row.balance = format_cents(row.balance_cents);
    row.version = e.version;
    let (kind, counterparty, transfer_id) = match &e.event {
        AccountEvent::Opened { owner } => {
            row.owner.clone_from(owner);
            ("opened", None, None)
        }
        AccountEvent::Deposited { .. } => ("deposit", None, None),
        AccountEvent::Withdrawn { .. } => ("withdrawal", None, None),
        AccountEvent::Closed => {
            row.status = AccountStatus::Closed;
            ("closed", None, None)
        }
        AccountEvent::TransferDebited {
            transfer_id, to, ..
        } => ("transfer_out", Some(to), Some(transfer_id)),
        AccountEvent::TransferCredited {
            transfer_id, from, ..
        } => ("transfer_in", Some(from), Some(transfer_id)),
        AccountEvent::TransferRefunded { transfer_id, .. } => ("refund", None, Some(transfer_id)),
    };
    let history = HistoryRow {
        version: e.version,
        kind: kind.to_owned(),
        amount_cents: change,
        balance_cents: row.balance_cents,
        counterparty: counterparty.cloned(),
        transfer_id: transfer_id.copied(),
        recorded_at_ms: e
            .recorded_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    };
    (row, history)
}

/// Whether a record belongs to the accounts read model (the projections' `wants`).
pub fn is_account_event(record: &RecordedEvent) -> bool {
    record.stream.aggregate_type() == <Account as cqrs_core::Aggregate>::TYPE
}

/// The accounts read model, whatever store keeps it: reads, the wait that gives
/// read-your-writes, and its projection's runs. The store is picked from a URL at
/// start-up, so the bank holds an `Arc<dyn ReadModel>` and the futures are boxed. The
/// methods fail with [`BankError::Store`](crate::BankError::Store) when the store does.
pub trait ReadModel: Send + Sync + std::fmt::Debug {
    /// The event store whose log feeds the read model.
    fn store(&self) -> BoxEventStore;

    /// One account's row, `None` if there is none.
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<AccountRow>>>;

    /// One account's history, oldest first.
    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>>>;

    /// Every account, by id.
    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountRow>>>;

    /// Waits until the read model has applied the log up to `position` (a write's), so a
    /// read shows that write; after [`WAIT`](crate::bank::WAIT), fails with
    /// [`NotCaughtUp`](crate::BankError::NotCaughtUp).
    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<()>>;

    /// Registers the projection with the operations subcommand (`replay`, `stats`).
    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore>;
}
