//! `Bank`: the store chosen by URL, the repositories, the read model and the transfer
//! process manager, and the commands and reads that the command line and the HTTP API
//! call.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::{
    Aggregate, BoxEventStore, EventLog, ProjectionRunner, Repository, RetryPolicy, SnapshotPolicy,
    StoreCheckpoint, StreamId,
};
use cqrs_postgres::{PostgresEventStore, WorkerConfig, WorkerLock};
use cqrs_sled::SledEventStore;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::{Account, AccountCommand, AccountError, AccountServices, Cents};
use crate::domain::{Transfer, TransferCommand, TransferError, TransferStatus};
use crate::error::BankError;
use crate::read_model::{ACCOUNTS, AccountRow, HistoryRow, ReadModel};
use crate::transfer_process::{TRANSFERS, TransferProcess};

/// How long a command waits for the projections to apply its effects (the read model,
/// or a transfer's end) before it fails with [`BankError::NotCaughtUp`].
pub const WAIT: Duration = Duration::from_secs(30);

/// The snapshot policy of accounts: a snapshot every 50 events.
pub const SNAPSHOT_EVERY: u64 = 50;

/// How many account states the command side keeps in memory
/// ([`Repository::with_cache`]): a command on a recently used account skips its load.
pub const ACCOUNT_CACHE: usize = 10_000;

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferOutcome {
    /// The transfer's id.
    pub transfer_id: Uuid,
    /// `completed` or `failed` (or `pending` if it has not finished).
    pub status: TransferStatus,
    /// Why it failed.
    pub reason: Option<String>,
}

/// The bank: commands, reads, and the projections behind them.
///
/// A command returns once the read model shows it, so a read after it, in this process
/// or another, sees it (read-your-writes). That needs the projections running in some
/// process: [`start`](Self::start) them in the background.
#[derive(Debug, Clone)]
pub struct Bank {
    store: BoxEventStore,
    accounts: Repository<Account, BoxEventStore>,
    transfers: Repository<Transfer, BoxEventStore>,
    read_model: Arc<dyn ReadModel>,
    /// On PostgreSQL, for the worker locks that keep each projection in one process.
    postgres: Option<PostgresEventStore>,
    background: Arc<Mutex<Option<Background>>>,
}

/// The running projections: how to stop them, and their tasks.
type Background = (oneshot::Sender<()>, Vec<JoinHandle<Result<(), BankError>>>);

impl Bank {
    /// Opens the bank on the store named by `url`: `sled:<path>`, `postgres://…` (with
    /// `?schema=NAME`, default `bank`), or `memory:` (a temporary sled database, deleted
    /// when the bank is dropped). The projections are not started.
    ///
    /// # Errors
    /// [`BankError::InvalidInput`] for an unknown URL, [`BankError::Store`] if the store
    /// cannot be opened.
    pub async fn open(url: &str, services: AccountServices) -> Result<Bank, BankError> {
        let (store, read_model, postgres): (_, Arc<dyn ReadModel>, _) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let pg = crate::postgres::open(url).await?;
                let store = pg.store().clone();
                (BoxEventStore::new(store.clone()), Arc::new(pg), Some(store))
            } else {
                let sled = match url.strip_prefix("sled:") {
                    Some("") => Err("sled: needs a path, e.g. sled:./bank-data"),
                    Some(path) => Ok(SledEventStore::open(path)),
                    None if url == "memory:" => Ok(SledEventStore::temporary()),
                    None => Err("unknown store URL: use sled:<path>, postgres://… or memory:"),
                };
                let sled = sled.map_err(|e| BankError::InvalidInput(e.into()))?;
                let sled = sled.map_err(BankError::store)?;
                let read_model = crate::sled::SledAccounts::new(sled.clone());
                (BoxEventStore::new(sled), Arc::new(read_model), None)
            };
        let retry = RetryPolicy::attempts(20);
        Ok(Bank {
            accounts: Repository::new(store.clone(), services)
                .with_snapshots(SnapshotPolicy::EveryEvents(SNAPSHOT_EVERY))
                .with_retry(retry)
                .with_cache(ACCOUNT_CACHE),
            transfers: Repository::new(store.clone(), ()).with_retry(retry),
            store,
            read_model,
            postgres,
            background: Arc::default(),
        })
    }

    /// The event store.
    pub fn store(&self) -> &BoxEventStore {
        &self.store
    }

    /// The accounts repository.
    pub fn accounts(&self) -> &Repository<Account, BoxEventStore> {
        &self.accounts
    }

    /// The accounts read model.
    pub fn read_model(&self) -> &dyn ReadModel {
        &*self.read_model
    }

    /// A fresh runner of the transfer process manager (its checkpoint in the store).
    pub fn transfer_runner(
        &self,
    ) -> ProjectionRunner<BoxEventStore, TransferProcess, StoreCheckpoint<BoxEventStore>> {
        let process = TransferProcess::new(self.accounts.clone(), self.transfers.clone());
        let checkpoint = StoreCheckpoint::new(self.store.clone());
        ProjectionRunner::with_strategy(self.store.clone(), process, checkpoint)
    }

    /// Starts the read model and the process manager in the background, unless they
    /// run already. On PostgreSQL the process manager runs in one process at a time (a
    /// worker lock); another takes over when that one dies.
    pub fn start(&self) {
        let mut background = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if background.is_some() {
            return;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = stopped.map(|_| ()).shared();
        let read_model = tokio::spawn(self.read_model.run(shutdown.clone().boxed()));
        let (mut saga, postgres) = (self.transfer_runner(), self.postgres.clone());
        let saga = tokio::spawn(async move {
            let ran = match postgres {
                Some(pg) => {
                    pg.run_exclusive(&mut saga, shutdown, WorkerConfig::default())
                        .await
                }
                None => saga.run_until(shutdown).await,
            };
            ran.map_err(BankError::store)
        });
        *background = Some((stop, vec![read_model, saga]));
    }

    /// Stops the background projections (at their next batch boundary).
    ///
    /// # Errors
    /// [`BankError::Store`] if a projection had stopped with an error.
    pub async fn stop(&self) -> Result<(), BankError> {
        let background = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((stop, tasks)) = background else {
            return Ok(());
        };
        let _ = stop.send(());
        for task in tasks {
            task.await.map_err(BankError::store)??;
        }
        Ok(())
    }

    /// The operations subcommand over this bank's store, aggregates and projections.
    pub fn operations(&self) -> cqrs_cli::Operations<BoxEventStore> {
        // Transfers are short streams (three events at most) loaded without snapshots:
        // only accounts are worth snapshotting.
        let ops = cqrs_cli::Operations::new(self.store.clone()).aggregate(self.accounts.clone());
        let bank = self.clone();
        self.read_model
            .register(ops)
            .projection(move || bank.transfer_runner())
    }

    /// On PostgreSQL, takes the worker locks of both projections (for a replay), failing
    /// if another process (a `bank serve`) runs them; elsewhere there is nothing to lock
    /// (one process owns a sled database). Dropping the locks releases them.
    ///
    /// # Errors
    /// [`BankError::Store`], also when another process holds a lock.
    pub async fn lock_projections(&self) -> Result<Vec<WorkerLock>, BankError> {
        let mut locks = Vec::new();
        for name in [TRANSFERS, ACCOUNTS] {
            let Some(pg) = &self.postgres else { break };
            match pg.try_lock_worker(name).await.map_err(BankError::store)? {
                Some(lock) => locks.push(lock),
                None => {
                    return Err(BankError::store(format!(
                        "projection {name} runs elsewhere"
                    )));
                }
            }
        }
        Ok(locks)
    }

    /// Executes an account command and returns the account's row once the read model
    /// shows it.
    ///
    /// # Errors
    /// [`BankError::is_rejected`] and [`BankError::is_not_found`] for the domain's
    /// refusals, [`BankError::is_invalid_input`] for a bad id, [`BankError::NotCaughtUp`].
    pub async fn execute(
        &self,
        id: &str,
        command: AccountCommand,
    ) -> Result<AccountRow, BankError> {
        let done = self.accounts.execute(id, &command).await?;
        if let Some(position) = done.position {
            self.read_model.wait_for(position).await?;
        }
        self.balance(id).await
    }

    /// Requests a transfer and returns its id; the process manager carries it out.
    ///
    /// # Errors
    /// [`BankError::is_rejected`] for a transfer to the same account,
    /// [`BankError::is_invalid_input`] for bad ids.
    pub async fn request_transfer(
        &self,
        from: &str,
        to: &str,
        amount: Cents,
    ) -> Result<Uuid, BankError> {
        // Validate both ids before anything is written.
        for id in [from, to] {
            StreamId::new(Account::TYPE, id).map_err(|e| BankError::InvalidInput(e.into()))?;
        }
        let transfer_id = Uuid::new_v4();
        let (from, to) = (from.to_owned(), to.to_owned());
        let command = TransferCommand::Request { from, to, amount };
        self.transfers
            .execute(&transfer_id.to_string(), &command)
            .await?;
        Ok(transfer_id)
    }

    /// Transfers money and waits until the transfer ends: completed, or failed (with the
    /// source refunded if it had been debited).
    ///
    /// # Errors
    /// As for [`request_transfer`](Self::request_transfer) and [`finished`](Self::finished).
    pub async fn transfer(
        &self,
        from: &str,
        to: &str,
        amount: Cents,
    ) -> Result<TransferOutcome, BankError> {
        let transfer_id = self.request_transfer(from, to, amount).await?;
        self.finished(transfer_id).await
    }

    /// Waits until a transfer has ended and the read model shows its effects. It wakes on
    /// the store's append notifications, not by polling.
    ///
    /// # Errors
    /// [`BankError::NotCaughtUp`] if that takes longer than [`WAIT`].
    pub async fn finished(&self, transfer_id: Uuid) -> Result<TransferOutcome, BankError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut appended = self.store.watch();
        loop {
            appended.mark_seen();
            let outcome = self.transfer_outcome(transfer_id).await?;
            if outcome.status != TransferStatus::Pending {
                // The transfer's last event comes after its debit, credit or refund.
                let stream = StreamId::new(Transfer::TYPE, transfer_id.to_string());
                let stream = stream.map_err(BankError::store)?;
                let events = self.store.read_stream(&stream, 1).collect::<Vec<_>>().await;
                let last = events.into_iter().next_back().transpose();
                if let Some(last) = last.map_err(BankError::store)? {
                    self.read_model.wait_for(last.position).await?;
                }
                return Ok(outcome);
            }
            if tokio::time::timeout_at(deadline, appended.changed())
                .await
                .is_err()
            {
                return Err(BankError::NotCaughtUp { waited: WAIT });
            }
        }
    }

    /// A transfer's current outcome.
    ///
    /// # Errors
    /// [`BankError::is_not_found`] for an unknown transfer.
    pub async fn transfer_outcome(&self, transfer_id: Uuid) -> Result<TransferOutcome, BankError> {
        let loaded = self.transfers.load(&transfer_id.to_string()).await;
        let transfer = loaded.map_err(BankError::store)?.state;
        if transfer.status == TransferStatus::Unknown {
            return Err(TransferError::Unknown.into());
        }
        let (status, reason) = (transfer.status, transfer.failure);
        Ok(TransferOutcome {
            transfer_id,
            status,
            reason,
        })
    }

    /// An account's row in the read model.
    ///
    /// # Errors
    /// [`BankError::is_not_found`] if there is none.
    pub async fn balance(&self, id: &str) -> Result<AccountRow, BankError> {
        let row = self.read_model.account(id).await?;
        row.ok_or(BankError::Account(AccountError::Unknown))
    }

    /// An account's history from the read model, oldest first.
    ///
    /// # Errors
    /// [`BankError::is_not_found`] if there is no such account.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryRow>, BankError> {
        self.balance(id).await?;
        self.read_model.history(id).await
    }

    /// Every account in the read model.
    ///
    /// # Errors
    /// [`BankError::Store`] if the read model cannot be read.
    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>, BankError> {
        self.read_model.accounts().await
    }
}
