//! Read models (account list, balances, history) and the transfer process manager.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use cqrs_core::{
    BoxError, BoxEventStore, CommandError, CommandOptions, DomainEvent, Envelope, Position,
    Progress, Projection, ProjectionError, ProjectionGroup, ProjectionRunner, Repository,
    RunnerConfig,
};
use cqrs_sled::ReadModelTx;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    Account, AccountCommand, AccountError, AccountEvent, AccountStatus, Transfer, TransferCommand,
    TransferEvent, TransferStatus,
};

/// The name of the accounts read model's projection.
pub const ACCOUNTS: &str = "accounts";
/// The name of the transfer process manager's projection.
pub const TRANSFERS: &str = "transfers";

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
    /// The account stream's version this row reflects.
    pub version: u64,
}

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The event's version in the account's stream.
    pub version: u64,
    /// What happened: `opened`, `deposit`, `withdrawal`, `closed`, `transfer_out`,
    /// `transfer_in`, `refund`.
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
    pub recorded_at_ms: u64,
}

/// Folds one account event into its row and history line: the one piece of read-model
/// logic, shared by every backend's storage.
pub fn fold(row: Option<AccountRow>, e: &Envelope<AccountEvent>) -> (AccountRow, HistoryRow) {
    let mut row = row.unwrap_or_else(|| AccountRow {
        account: e.stream.id().to_owned(),
        owner: String::new(),
        status: AccountStatus::Open,
        balance_cents: 0,
        version: 0,
    });
    let change = e.event.balance_change();
    row.balance_cents += change;
    row.version = e.version;
    let (kind, counterparty, transfer_id) = match &e.event {
        AccountEvent::Opened { owner } => {
            row.owner.clone_from(owner);
            row.status = AccountStatus::Open;
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
        } => ("transfer_out", Some(to.clone()), Some(*transfer_id)),
        AccountEvent::TransferCredited {
            transfer_id, from, ..
        } => ("transfer_in", Some(from.clone()), Some(*transfer_id)),
        AccountEvent::TransferRefunded { transfer_id, .. } => ("refund", None, Some(*transfer_id)),
    };
    let history = HistoryRow {
        version: e.version,
        kind: kind.to_owned(),
        amount_cents: change,
        balance_cents: row.balance_cents,
        counterparty,
        transfer_id,
        recorded_at_ms: e
            .recorded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    (row, history)
}

/// Whether a record belongs to the accounts read model.
pub fn is_account_event(stream_type: &str) -> bool {
    stream_type == <Account as cqrs_core::Aggregate>::TYPE
}

#[derive(Debug, Default)]
struct MemoryState {
    accounts: BTreeMap<String, AccountRow>,
    history: HashMap<String, Vec<HistoryRow>>,
}

/// The accounts read model held in memory (for the `memory:` store); its checkpoint is
/// an [`InMemoryCheckpoint`](cqrs_core::InMemoryCheckpoint) kept beside it.
#[derive(Debug, Clone, Default)]
pub struct MemoryAccounts {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryAccounts {
    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One account's row.
    pub fn account(&self, id: &str) -> Option<AccountRow> {
        self.lock().accounts.get(id).cloned()
    }

    /// One account's history, oldest first.
    pub fn history(&self, id: &str) -> Vec<HistoryRow> {
        self.lock().history.get(id).cloned().unwrap_or_default()
    }

    /// Every account, by id.
    pub fn accounts(&self) -> Vec<AccountRow> {
        self.lock().accounts.values().cloned().collect()
    }
}

impl Projection for MemoryAccounts {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &cqrs_core::RecordedEvent) -> bool {
        is_account_event(record.stream.aggregate_type())
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let mut state = self.lock();
        for e in batch {
            let id = e.stream.id();
            let (row, line) = fold(state.accounts.get(id).cloned(), e);
            state.accounts.insert(id.to_owned(), row);
            state.history.entry(id.to_owned()).or_default().push(line);
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        *self.lock() = MemoryState::default();
        Ok(())
    }
}

/// The events the transfer process manager reacts to, from both aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SagaEvent {
    /// An account's event.
    Account(AccountEvent),
    /// A transfer's event.
    Transfer(TransferEvent),
}

impl DomainEvent for SagaEvent {
    const EVENT_TYPES: &'static [&'static str] = &[
        "TransferRequested",
        "TransferDebited",
        "TransferCredited",
        "TransferRefunded",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            SagaEvent::Account(e) => e.event_type(),
            SagaEvent::Transfer(e) => e.event_type(),
        }
    }
}

/// The transfer process manager (saga): debit the source, credit the destination, and if
/// the credit is refused, refund the source; then record the transfer's outcome.
///
/// It is a projection that sends commands. Each command's id is derived from the event
/// that triggered it, so when an event is delivered again (at-least-once), the command is
/// recognised as already applied and nothing changes twice.
#[derive(Debug, Clone)]
pub struct TransferProcess {
    accounts: Repository<Account, BoxEventStore>,
    transfers: Repository<Transfer, BoxEventStore>,
}

impl TransferProcess {
    /// A process manager sending commands through these repositories.
    pub fn new(
        accounts: Repository<Account, BoxEventStore>,
        transfers: Repository<Transfer, BoxEventStore>,
    ) -> Self {
        TransferProcess {
            accounts,
            transfers,
        }
    }

    fn options(trigger: &Envelope<SagaEvent>, step: &str) -> CommandOptions {
        CommandOptions::caused_by(trigger, step)
    }

    async fn react(&self, e: &Envelope<SagaEvent>) -> Result<(), BoxError> {
        match &e.event {
            SagaEvent::Transfer(TransferEvent::Requested { from, to, amount }) => {
                let transfer_id = transfer_id_of(e)?;
                // Redelivered after the transfer ended (it failed on the debit): a debit
                // now could succeed and move money for a failed transfer. Do nothing.
                let transfer = self.transfers.load(&transfer_id.to_string()).await?;
                if matches!(
                    transfer.state.status,
                    TransferStatus::Completed | TransferStatus::Failed
                ) {
                    return Ok(());
                }
                let debit = AccountCommand::DebitForTransfer {
                    transfer_id,
                    to: to.clone(),
                    amount: *amount,
                };
                match self
                    .accounts
                    .execute_with(from, &debit, &Self::options(e, "debit"))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(CommandError::Rejected(reason)) => {
                        self.finish(e, transfer_id, Some(source_reason(&reason)))
                            .await
                    }
                    Err(other) => Err(other.into()),
                }
            }
            SagaEvent::Account(AccountEvent::TransferDebited {
                transfer_id,
                to,
                amount,
            }) => {
                let source = e.stream.id();
                let refund_options = Self::options(e, "refund");
                // Credit and refund exclude each other: if the refund was made (the credit
                // was refused on an earlier delivery), never credit now.
                if self
                    .accounts
                    .find_applied(source, &refund_options)
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
                let credit = AccountCommand::CreditFromTransfer {
                    transfer_id: *transfer_id,
                    from: source.to_owned(),
                    amount: *amount,
                };
                match self
                    .accounts
                    .execute_with(to, &credit, &Self::options(e, "credit"))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(CommandError::Rejected(reason)) => {
                        let refund = AccountCommand::RefundTransfer {
                            transfer_id: *transfer_id,
                            amount: *amount,
                            reason: format!("destination account {to}: {reason}"),
                        };
                        self.accounts
                            .execute_with(source, &refund, &refund_options)
                            .await?;
                        Ok(())
                    }
                    Err(other) => Err(other.into()),
                }
            }
            SagaEvent::Account(AccountEvent::TransferCredited { transfer_id, .. }) => {
                self.finish(e, *transfer_id, None).await
            }
            SagaEvent::Account(AccountEvent::TransferRefunded {
                transfer_id,
                reason,
                ..
            }) => self.finish(e, *transfer_id, Some(reason.clone())).await,
            _ => Ok(()),
        }
    }

    async fn finish(
        &self,
        e: &Envelope<SagaEvent>,
        transfer_id: Uuid,
        failure: Option<String>,
    ) -> Result<(), BoxError> {
        let command = match failure {
            None => TransferCommand::Complete,
            Some(reason) => TransferCommand::Fail { reason },
        };
        match self
            .transfers
            .execute_with(
                &transfer_id.to_string(),
                &command,
                &Self::options(e, "finish"),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn source_reason(reason: &AccountError) -> String {
    format!("source account: {reason}")
}

fn transfer_id_of(e: &Envelope<SagaEvent>) -> Result<Uuid, BoxError> {
    Ok(e.stream.id().parse()?)
}

impl Projection for TransferProcess {
    type Event = SagaEvent;

    fn name(&self) -> &str {
        TRANSFERS
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<SagaEvent>]) -> Result<(), BoxError> {
        for e in batch {
            self.react(e).await?;
        }
        Ok(())
    }
}

/// The accounts read model in sled trees of the event store's own database: rows and
/// checkpoint in one sled transaction (exactly-once).
#[derive(Debug, Clone, Copy, Default)]
pub struct SledAccounts;

/// The sled tree of account rows (key: account id; value: JSON [`AccountRow`]).
pub const ACCOUNTS_TREE: &str = "accounts";
/// The sled tree of history lines (key: account id, NUL, big-endian version; value:
/// JSON [`HistoryRow`]). Account ids hold no NUL, so keys never collide.
pub const HISTORY_TREE: &str = "history";

/// The key of an account's history line in [`HISTORY_TREE`].
pub fn history_key(account: &str, version: u64) -> Vec<u8> {
    [account.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

impl Projection<ReadModelTx> for SledAccounts {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &cqrs_core::RecordedEvent) -> bool {
        is_account_event(record.stream.aggregate_type())
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let id = e.stream.id();
            let row = match tx.get(ACCOUNTS_TREE, id.as_bytes())? {
                Some(bytes) => Some(serde_json::from_slice::<AccountRow>(&bytes)?),
                None => None,
            };
            let (row, line) = fold(row, e);
            tx.insert(ACCOUNTS_TREE, id.as_bytes(), &serde_json::to_vec(&row)?);
            tx.insert(
                HISTORY_TREE,
                &history_key(id, e.version),
                &serde_json::to_vec(&line)?,
            );
        }
        Ok(())
    }
}

/// A runner of the accounts read model on whichever store the bank runs: the same
/// model, kept by the strategy that fits where it lives.
#[derive(Debug)]
pub enum AccountsRunner {
    /// In memory, with the checkpoint kept beside the model.
    Memory(ProjectionRunner<BoxEventStore, MemoryAccounts>),
    /// In sled trees, transactional.
    Sled(ProjectionRunner<BoxEventStore, SledAccounts, cqrs_sled::TransactionalCheckpoint>),
    /// In PostgreSQL tables, transactional.
    Postgres(
        ProjectionRunner<
            BoxEventStore,
            crate::postgres::PgAccounts,
            cqrs_postgres::TransactionalCheckpoint,
        >,
    ),
}

/// Calls the same method on whichever runner it is.
macro_rules! each {
    ($self:expr, $runner:ident => $call:expr) => {
        match $self {
            AccountsRunner::Memory($runner) => $call,
            AccountsRunner::Sled($runner) => $call,
            AccountsRunner::Postgres($runner) => $call,
        }
    };
}

impl AccountsRunner {
    /// Sets the runner's configuration.
    pub fn with_config(self, config: RunnerConfig) -> Self {
        match self {
            AccountsRunner::Memory(r) => AccountsRunner::Memory(r.with_config(config)),
            AccountsRunner::Sled(r) => AccountsRunner::Sled(r.with_config(config)),
            AccountsRunner::Postgres(r) => AccountsRunner::Postgres(r.with_config(config)),
        }
    }

    /// See [`ProjectionRunner::catch_up`].
    ///
    /// # Errors
    /// The runner's [`ProjectionError`].
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError> {
        each!(self, r => r.catch_up().await)
    }

    /// See [`ProjectionRunner::rebuild`].
    ///
    /// # Errors
    /// The runner's [`ProjectionError`].
    pub async fn rebuild(
        &mut self,
        progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        each!(self, r => r.rebuild(progress).await)
    }

    /// See [`ProjectionRunner::checkpoint`].
    ///
    /// # Errors
    /// The runner's [`ProjectionError`].
    pub async fn checkpoint(&mut self) -> Result<Position, ProjectionError> {
        each!(self, r => r.checkpoint().await)
    }

    /// Adds the runner to `group`.
    pub fn join(self, group: ProjectionGroup) -> ProjectionGroup {
        each!(self, r => group.with(r))
    }

    /// Runs under the projection's worker lock on `pg`: see
    /// [`PostgresEventStore::run_exclusive`](cqrs_postgres::PostgresEventStore::run_exclusive).
    ///
    /// # Errors
    /// The runner's [`ProjectionError`].
    pub async fn run_exclusive(
        &mut self,
        pg: &cqrs_postgres::PostgresEventStore,
        shutdown: impl Future<Output = ()> + Send,
        config: cqrs_postgres::WorkerConfig,
    ) -> Result<(), ProjectionError> {
        each!(self, r => pg.run_exclusive(r, shutdown, config).await)
    }
}
