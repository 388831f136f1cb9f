//! `Bank`: the store chosen by URL, the repositories, the read model and the transfer
//! process manager, and the commands and reads that the command line and HTTP call.

use std::sync::{Arc, Mutex, PoisonError};

use cqrs_core::{Aggregate, BoxEventStore, EventLog, ProjectionRunner, Repository, RetryPolicy};
use cqrs_core::{SnapshotPolicy, StoreCheckpoint, StreamId};
use cqrs_postgres::{PostgresEventStore, WorkerConfig, WorkerLock};
use cqrs_sled::SledEventStore;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::{Account, AccountCommand, AccountError, AccountServices, AccountStatus, Cents};
use crate::domain::{Field, Transfer, TransferCommand, TransferError, TransferStatus};
use crate::error::{BankError, Result};
use crate::read_model::{AccountRow, HistoryRow, ReadModel, WAIT};
use crate::transfer_process::{TRANSFERS, TransferProcess};

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
/// or another, sees it (read-your-writes). A transfer needs the process manager running
/// in some process: [`start`](Self::start) it in the background.
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

/// The process manager running in the background: how to stop it, and its task.
type Background = (oneshot::Sender<()>, JoinHandle<Result<()>>);

impl Bank {
    /// Opens the bank on `sled:<path>`, `postgres://…?schema=NAME` (default `bank`), or
    /// `memory:` (a temporary sled database), without starting the process manager.
    pub async fn open(url: &str, services: AccountServices) -> Result<Bank> {
        let (read_model, store, postgres): (Arc<dyn ReadModel>, _, _) =
            if url.starts_with("postgres") {
                let pg = crate::read_model::open_postgres(url).await?;
                let store = pg.store().clone();
                (Arc::new(pg), BoxEventStore::new(store.clone()), Some(store))
            } else {
                let sled = match url.strip_prefix("sled:") {
                    Some("") => Err("sled: needs a path, e.g. sled:./bank-data"),
                    Some(path) => Ok(SledEventStore::open(path)),
                    None if url == "memory:" => Ok(SledEventStore::temporary()),
                    None => Err("unknown store URL: use sled:<path>, postgres://… or memory:"),
                };
                let sled = sled.map_err(|e| BankError::InvalidInput(e.into()))?;
                let sled = sled.map_err(BankError::store)?;
                let read_model = Arc::new(crate::read_model::SledAccounts::new(sled.clone()));
                read_model.catch_up().await?;
                (read_model, BoxEventStore::new(sled), None)
            };
        // Accounts: a snapshot every 50 events, and the states of the 10,000 most recently
        // used accounts in memory (a command on one of them skips its load).
        let accounts = Repository::new(store.clone(), services)
            .with_snapshots(SnapshotPolicy::EveryEvents(50))
            .with_cache(10_000);
        let retry = RetryPolicy::attempts(20);
        Ok(Bank {
            accounts: accounts.with_retry(retry),
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
        let (accounts, transfers) = (self.accounts.clone(), self.transfers.clone());
        let process = TransferProcess {
            accounts,
            transfers,
        };
        let checkpoint = StoreCheckpoint::new(self.store.clone());
        ProjectionRunner::with_strategy(self.store.clone(), process, checkpoint)
    }

    fn background(&self) -> std::sync::MutexGuard<'_, Option<Background>> {
        self.background
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the transfer process manager in the background, unless it runs already.
    /// On PostgreSQL it runs in one process at a time (a worker lock); another takes
    /// over when that one dies.
    pub fn start(&self) {
        let mut background = self.background();
        if background.is_none() {
            let (stop, stopped) = oneshot::channel::<()>();
            let (mut saga, postgres) = (self.transfer_runner(), self.postgres.clone());
            let task = tokio::spawn(async move {
                let (stopped, config) = (stopped.map(drop), WorkerConfig::default());
                let ran = match postgres {
                    Some(pg) => pg.run_exclusive(&mut saga, stopped, config).await,
                    None => saga.run_until(stopped).await,
                };
                ran.map_err(BankError::store)
            });
            *background = Some((stop, task));
        }
    }

    /// Stops the process manager (at its next batch boundary); fails with
    /// [`BankError::Store`] if it had stopped with an error.
    pub async fn stop(&self) -> Result<()> {
        let background = self.background().take();
        let Some((stop, task)) = background else {
            return Ok(());
        };
        let _ = stop.send(());
        task.await.map_err(BankError::store)?
    }

    /// The operations subcommand over this bank's store, accounts and projections.
    /// (Transfers, three events at most, are not worth snapshotting.)
    pub fn operations(&self) -> cqrs_cli::Operations<BoxEventStore> {
        let ops = cqrs_cli::Operations::new(self.store.clone()).aggregate(self.accounts.clone());
        let bank = self.clone();
        let ops = self.read_model.register(ops);
        ops.projection(move || bank.transfer_runner())
    }

    /// On PostgreSQL, takes the process manager's worker lock, which a running `bank`
    /// process holds, for a replay that must run alone (appends write the read model);
    /// fails with [`BankError::Store`] while another process holds it.
    pub async fn lock_out_others(&self) -> Result<Option<WorkerLock>> {
        let Some(pg) = &self.postgres else {
            return Ok(None);
        };
        let lock = pg
            .try_lock_worker(TRANSFERS)
            .await
            .map_err(BankError::store)?;
        let running = || BankError::store("another bank process is running: stop it first");
        lock.map(Some).ok_or_else(running)
    }

    /// Executes an account command and returns the account's row once the read model
    /// shows it. Fails with the domain's refusal ([`BankError::is_rejected`]), for a bad
    /// id ([`BankError::is_invalid_input`]), or with [`BankError::NotCaughtUp`].
    pub async fn execute(&self, id: &str, command: AccountCommand) -> Result<AccountRow> {
        let id = &Field::Account.normalize(id)?;
        let done = self.accounts.execute(id, &command).await?;
        if let Some(position) = done.position {
            self.read_model.wait_for(position).await?;
        }
        self.balance(id).await
    }

    /// Requests a transfer and returns its id; the process manager carries it out. Fails
    /// for a transfer to the same account ([`BankError::is_rejected`]), from or to an
    /// account that was never opened ([`BankError::is_not_found`]), and for bad ids.
    pub async fn request_transfer(&self, from: &str, to: &str, amount: Cents) -> Result<Uuid> {
        let (from, to) = (&Field::From.normalize(from)?, &Field::To.normalize(to)?);
        // Validate both ids before anything is written.
        for id in [from, to] {
            StreamId::new(Account::TYPE, id).map_err(|e| BankError::InvalidInput(e.into()))?;
            // Refused before anything is written, as a deposit to an unknown account is.
            if self.accounts.load(id).await?.state.status == AccountStatus::Unknown {
                return Err(AccountError::Unknown.into());
            }
        }
        let transfer_id = Uuid::new_v4();
        let command = TransferCommand::Request(from.to_owned(), to.to_owned(), amount);
        self.transfers
            .execute(&transfer_id.to_string(), &command)
            .await?;
        Ok(transfer_id)
    }

    /// Transfers money and waits until the transfer ends: completed, or failed (with the
    /// source refunded if it had been debited). Fails as the two steps do.
    pub async fn transfer(&self, from: &str, to: &str, amount: Cents) -> Result<TransferOutcome> {
        let transfer_id = self.request_transfer(from, to, amount).await?;
        self.finished(transfer_id).await
    }

    /// Waits until a transfer has ended and the read model shows its effects, woken by
    /// the store's append notifications; fails with [`BankError::NotCaughtUp`] after
    /// [`WAIT`].
    pub async fn finished(&self, transfer_id: Uuid) -> Result<TransferOutcome> {
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
                if let Some(last) = events.into_iter().next_back() {
                    self.read_model.wait_for(last?.position).await?;
                }
                return Ok(outcome);
            }
            let woken = tokio::time::timeout_at(deadline, appended.changed()).await;
            woken.map_err(|_| BankError::NotCaughtUp(WAIT))?;
        }
    }

    /// A transfer's current outcome; fails with [`BankError::is_not_found`] if unknown.
    pub async fn transfer_outcome(&self, transfer_id: Uuid) -> Result<TransferOutcome> {
        let Transfer { status, failure } =
            self.transfers.load(&transfer_id.to_string()).await?.state;
        match status {
            TransferStatus::Unknown => Err(TransferError::Unknown.into()),
            status => Ok(TransferOutcome {
                transfer_id,
                status,
                reason: failure,
            }),
        }
    }

    /// An account's row in the read model; fails with [`BankError::is_not_found`].
    pub async fn balance(&self, id: &str) -> Result<AccountRow> {
        let id = &Field::Account.normalize(id)?;
        let row = self.read_model.account(id).await?;
        row.ok_or(BankError::Account(AccountError::Unknown))
    }

    /// An account's history, oldest first; fails with [`BankError::is_not_found`].
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryRow>> {
        let id = &Field::Account.normalize(id)?;
        self.balance(id).await?;
        self.read_model.history(id).await
    }
}
