//! `Bank`: the store chosen by URL, the repositories, the read model and the transfer
//! process manager, and the commands and reads that the command line and HTTP call.

use std::sync::{Arc, Mutex, PoisonError};

use cqrs_core::TenantId;
use cqrs_core::{Aggregate, BoxEventStore, CommandOptions, EventLog, Position, ProjectionRunner};
use cqrs_core::{BoxKeyStore, Forgotten, Shredded, Shredder, Supervisor, SupervisorStatus};
use cqrs_core::{Repository, RetryPolicy, SnapshotPolicy, StoreCheckpoint, StreamId};
use cqrs_postgres::{PostgresEventStore, PostgresKeyStore, WorkerConfig, WorkerLock};
use cqrs_sled::{DamagedLog, SledConfig, SledEventStore, SledKeyStore};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::format_cents;
use crate::domain::{Account, AccountCommand, AccountError, AccountServices, AccountStatus, Cents};
use crate::domain::{Field, Transfer, TransferCommand, TransferError, TransferStatus};
use crate::error::{BankError, Result};
use crate::read_model::{AccountRow, HistoryRow, ReadModel, StoredRow, WAIT, owner_text};
use crate::transfer_process::{TRANSFERS, TransferProcess};

/// Whether the read model shows a write yet: part of every answer, since a committed
/// command succeeds whether or not its read model has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReadModelStatus {
    /// For a command: the read model shows its effects (a read by id sees them). For a
    /// read: the read model has applied the whole log.
    pub current: bool,
    /// Events in the log that the read model has not applied yet (`null` if they could
    /// not be counted).
    pub behind_by: Option<u64>,
}

/// What an account command did: the account as the command left it, from the
/// aggregate's own state (not the read model), and whether the read model shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The account after the command, at the version the command produced.
    #[serde(flatten)]
    pub account: AccountRow,
    /// Whether the read model shows it yet.
    pub read_model: ReadModelStatus,
    /// The command (its command id) had been applied before: nothing was written, and
    /// this is the result of that first run. Not in the JSON answer, which is the same
    /// for every run of one command.
    #[serde(skip)]
    pub already_applied: bool,
}

/// What `forget` did: the account whose owner's name is erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForgetReceipt {
    /// The account.
    pub account: String,
    /// What the answers show for its owner now: `(erased)`.
    pub owner: String,
    /// `true` if the account had been forgotten before (nothing changed).
    pub already_forgotten: bool,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferOutcome {
    /// The transfer's id.
    pub transfer_id: Uuid,
    /// `completed` or `failed` (or `pending` if it has not finished).
    pub status: TransferStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// After a transfer command: whether the read model shows the transfer's effects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_model: Option<ReadModelStatus>,
}

/// The bank: commands, reads, and the projections behind them.
///
/// A command waits until the read model shows it, so a read after it, in this process
/// or another, sees it (read-your-writes); if the read model is stopped or slow, the
/// command still succeeds (it is committed) and its answer says that the read model is
/// behind. A transfer needs the process manager running in some process:
/// [`start`](Self::start) it in the background.
#[derive(Debug, Clone)]
pub struct Bank {
    /// The store, through the crypto-shredding wrapper: owners' names are sealed.
    store: BoxEventStore,
    /// Forgets accounts, and opens the sealed names the read model keeps.
    shredder: Shredder<BoxKeyStore>,
    accounts: Repository<Account, BoxEventStore>,
    transfers: Repository<Transfer, BoxEventStore>,
    read_model: Arc<dyn ReadModel>,
    /// On PostgreSQL, for the worker locks that keep each projection in one process.
    postgres: Option<PostgresEventStore>,
    background: Arc<Mutex<Option<Background>>>,
    /// Restarts the process manager when it stops with an error.
    supervisor: Supervisor,
}

/// The process manager running in the background: how to stop it, and its task.
type Background = (oneshot::Sender<()>, JoinHandle<()>);

impl Bank {
    /// Opens the bank on `sled:<path>`, `postgres://…?schema=NAME` (default `bank`), or
    /// `memory:` (a temporary sled database), without starting the process manager.
    pub async fn open(url: &str, services: AccountServices) -> Result<Bank> {
        Self::open_with(url, services, DamagedLog::Refuse).await
    }

    /// As [`open`](Self::open); a sled store whose log lost events opens as `damaged`
    /// says (`DamagedLog::Inspect` for `verify`, which then lists what was lost).
    pub async fn open_with(
        url: &str,
        services: AccountServices,
        damaged: DamagedLog,
    ) -> Result<Bank> {
        Self::open_tenant(url, None, services, damaged).await
    }

    /// As [`open_with`](Self::open_with), on a tenant's store when `tenant` is given
    /// (see [`crate::tenants`]); the tenant must have been created.
    pub async fn open_tenant(
        url: &str,
        tenant: Option<&TenantId>,
        services: AccountServices,
        damaged: DamagedLog,
    ) -> Result<Bank> {
        // The keys of the owners' names live with the events (a table, a tree); every
        // path to the events goes through the wrapper, but the read models read the
        // store as it is and keep the names sealed.
        let (read_model, store, keys, postgres): (Arc<dyn ReadModel>, _, _, _) = if url
            .starts_with("postgres")
        {
            let pg = crate::read_model::open_postgres(url, tenant).await?;
            let store = pg.store().clone();
            let keys = BoxKeyStore::new(PostgresKeyStore::new(&store));
            let shredded = BoxEventStore::new(Shredded::new(store.clone(), keys.clone()));
            (Arc::new(pg), shredded, keys, Some(store))
        } else {
            let sled = match (url.strip_prefix("sled:"), tenant) {
                (Some(""), _) => Err("sled: needs a path, e.g. sled:./bank-data"),
                (Some(path), None) => Ok(SledConfig::new(path).on_damaged_log(damaged).open()),
                (None, None) if url == "memory:" => Ok(SledEventStore::temporary()),
                (None, Some(_)) if url == "memory:" => Err("memory: has no tenants"),
                (None, _) => Err("unknown store URL: use sled:<path>, postgres://… or memory:"),
                (Some(path), Some(tenant)) => {
                    let path = std::path::Path::new(path);
                    Ok(Ok(crate::tenants::sled_store(path, tenant, damaged).await?))
                }
            };
            let sled = sled.map_err(|e| BankError::InvalidInput(e.into()))?;
            let sled = sled.map_err(BankError::store)?;
            let read_model = Arc::new(crate::read_model::SledAccounts::new(sled.clone()));
            // What a crash left unapplied; if the read model is stopped (an event it
            // cannot apply), the bank works on, and its answers say it is behind.
            if let Err(e) = read_model.catch_up().await {
                tracing::warn!(error = %crate::full_chain(&e), "the accounts read model is behind");
            }
            let keys = BoxKeyStore::new(SledKeyStore::new(&sled).map_err(BankError::store)?);
            let shredded = BoxEventStore::new(Shredded::new(sled, keys.clone()));
            (read_model, shredded, keys, None)
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
            shredder: Shredder::new(keys),
            read_model,
            postgres,
            background: Arc::default(),
            supervisor: Supervisor::new(TRANSFERS),
        })
    }

    /// The event store.
    pub fn store(&self) -> &BoxEventStore {
        &self.store
    }

    /// The PostgreSQL store, when the bank is on PostgreSQL (for its worker locks).
    pub fn postgres(&self) -> Option<&PostgresEventStore> {
        self.postgres.as_ref()
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

    /// Starts the transfer process manager in the background, unless it runs already,
    /// under a [`Supervisor`]: when it stops with an error it is logged, recorded
    /// ([`supervision`](Self::supervision)) and restarted with backoff. On PostgreSQL it
    /// runs in one process at a time (a worker lock); another takes over when that one
    /// dies.
    pub fn start(&self) {
        let mut background = self.background();
        if background.is_none() {
            let (stop, stopped) = oneshot::channel::<()>();
            let (bank, supervisor) = (self.clone(), self.supervisor.clone());
            let run = move |stop: cqrs_core::StopSignal| {
                let (mut saga, postgres) = (bank.transfer_runner(), bank.postgres.clone());
                async move {
                    let (stopped, config) = (stop.stopped(), WorkerConfig::default());
                    match postgres {
                        Some(pg) => pg.run_exclusive(&mut saga, stopped, config).await,
                        None => saga.run_until(stopped).await,
                    }
                }
            };
            let stopped = async {
                let _ = stopped.await;
            };
            let task = tokio::spawn(async move { supervisor.run(run, stopped).await });
            *background = Some((stop, task));
        }
    }

    /// The process manager's supervision: whether it runs, its restarts and last error
    /// (for a health endpoint; a stopped process manager leaves transfers pending).
    pub fn supervision(&self) -> Vec<SupervisorStatus> {
        vec![self.supervisor.status()]
    }

    /// Stops the process manager (at its next batch boundary). Its failures are not
    /// errors here (they were logged and are in [`supervision`](Self::supervision)):
    /// fails with [`BankError::Store`] only if its task panicked.
    pub async fn stop(&self) -> Result<()> {
        let background = self.background().take();
        let Some((stop, task)) = background else {
            return Ok(());
        };
        let _ = stop.send(());
        task.await.map_err(BankError::store)
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

    /// Executes an account command (no command id: not safe to retry); see
    /// [`execute_with`](Self::execute_with).
    pub async fn execute(&self, id: &str, command: AccountCommand) -> Result<Receipt> {
        self.execute_with(id, command, None).await
    }

    /// Executes an account command and returns what it did once the read model shows it,
    /// or, if the read model is stopped or does not catch up within [`WAIT`], at once,
    /// saying so: a committed command is never reported as failed. With a command id
    /// (see [`CommandOptions::id_from_key`]), a retry of an applied command writes
    /// nothing and answers that command's result. Fails with the domain's refusal
    /// ([`BankError::is_rejected`]), for a bad id ([`BankError::is_invalid_input`]), or
    /// if the store fails before the command is committed.
    pub async fn execute_with(
        &self,
        id: &str,
        mut command: AccountCommand,
        command_id: Option<Uuid>,
    ) -> Result<Receipt> {
        let id = &Field::Account.normalize(id)?;
        // The owner's name is personal data of the account it opens.
        if let AccountCommand::Open { account, .. } = &mut command {
            id.clone_into(account);
        }
        let options = CommandOptions {
            command_id,
            ..CommandOptions::default()
        };
        let done = self.accounts.execute_with(id, &command, &options).await?;
        let Account {
            status,
            owner,
            balance,
            ..
        } = self
            .accounts
            .state_at(id, done.version)
            .await?
            .ok_or_else(|| {
                BankError::store(format!("account {id} has no version {}", done.version))
            })?;
        let account = AccountRow {
            account: id.to_owned(),
            owner: owner_text(&owner),
            status,
            balance_cents: balance,
            balance: format_cents(balance),
            version: done.version,
        };
        let read_model = self.wait_for(done.position).await;
        Ok(Receipt {
            account,
            read_model,
            already_applied: done.already_applied,
        })
    }

    /// Waits until the read model shows the log up to `position`, and says whether it
    /// does; a failure is logged, not returned (what it waits for is committed).
    async fn wait_for(&self, position: Option<Position>) -> ReadModelStatus {
        let waited = match position {
            Some(position) => self.read_model.wait_for(position).await,
            None => Ok(()),
        };
        if let Err(e) = &waited {
            tracing::warn!(error = %crate::full_chain(e), "the accounts read model is behind");
        }
        let behind_by = self.read_model.lag().await.ok();
        ReadModelStatus {
            current: waited.is_ok(),
            behind_by,
        }
    }

    /// How far the read model is behind the log now.
    pub async fn read_model_status(&self) -> ReadModelStatus {
        let behind_by = self.read_model.lag().await.ok();
        ReadModelStatus {
            current: behind_by == Some(0),
            behind_by,
        }
    }

    /// `answer` (a read's JSON object) with the read model's status as `read_model`: a
    /// read never waits, it answers what the read model holds and how far behind it is.
    pub async fn with_status(&self, mut answer: Value) -> Value {
        answer["read_model"] = serde_json::json!(self.read_model_status().await);
        answer
    }

    /// Requests a transfer (no command id); see
    /// [`request_transfer_with`](Self::request_transfer_with).
    pub async fn request_transfer(&self, from: &str, to: &str, amount: Cents) -> Result<Uuid> {
        self.request_transfer_with(from, to, amount, None).await
    }

    /// Requests a transfer and returns its id; the process manager carries it out. With a
    /// command id, that is the transfer's id, so a retried request finds the transfer the
    /// first one made (and writes nothing). Fails for a transfer to the same account
    /// ([`BankError::is_rejected`]), from or to an account that was never opened
    /// ([`BankError::is_not_found`]), and for bad ids.
    pub async fn request_transfer_with(
        &self,
        from: &str,
        to: &str,
        amount: Cents,
        command_id: Option<Uuid>,
    ) -> Result<Uuid> {
        let (from, to) = (&Field::From.normalize(from)?, &Field::To.normalize(to)?);
        // Validate both ids before anything is written.
        for id in [from, to] {
            StreamId::new(Account::TYPE, id).map_err(|e| BankError::InvalidInput(e.into()))?;
            // Refused before anything is written, as a deposit to an unknown account is.
            if self.accounts.load(id).await?.state.status == AccountStatus::Unknown {
                return Err(AccountError::Unknown.into());
            }
        }
        let transfer_id = command_id.unwrap_or_else(Uuid::new_v4);
        let options = CommandOptions {
            command_id,
            ..CommandOptions::default()
        };
        let command = TransferCommand::Request(from.to_owned(), to.to_owned(), amount);
        let id = transfer_id.to_string();
        self.transfers.execute_with(&id, &command, &options).await?;
        Ok(transfer_id)
    }

    /// Transfers money (no command id); see [`transfer_with`](Self::transfer_with).
    pub async fn transfer(&self, from: &str, to: &str, amount: Cents) -> Result<TransferOutcome> {
        self.transfer_with(from, to, amount, None).await
    }

    /// Requests a transfer ([`request_transfer_with`](Self::request_transfer_with)) and
    /// waits until it ends, as [`finished`](Self::finished) does: completed, failed (with
    /// the source refunded if it had been debited), or still pending. Fails only as the
    /// request does.
    pub async fn transfer_with(
        &self,
        from: &str,
        to: &str,
        amount: Cents,
        command_id: Option<Uuid>,
    ) -> Result<TransferOutcome> {
        let transfer_id = self
            .request_transfer_with(from, to, amount, command_id)
            .await?;
        self.finished(transfer_id).await
    }

    /// Waits until a transfer has ended and the read model shows its effects, woken by
    /// the store's append notifications, and returns its outcome with the read model's
    /// status; after [`WAIT`], returns it `pending` (the process manager has not
    /// finished it). Fails if the transfer is unknown or the store fails.
    pub async fn finished(&self, transfer_id: Uuid) -> Result<TransferOutcome> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut appended = self.store.watch();
        loop {
            appended.mark_seen();
            let mut outcome = self.transfer_outcome(transfer_id).await?;
            if outcome.status != TransferStatus::Pending {
                // The transfer's last event comes after its debit, credit or refund.
                let stream = StreamId::new(Transfer::TYPE, transfer_id.to_string());
                let stream = stream.map_err(BankError::store)?;
                let events = self.store.read_stream(&stream, 1).collect::<Vec<_>>().await;
                let last = events.into_iter().next_back().transpose()?;
                outcome.read_model = Some(self.wait_for(last.map(|e| e.position)).await);
                return Ok(outcome);
            }
            if tokio::time::timeout_at(deadline, appended.changed())
                .await
                .is_err()
            {
                outcome.read_model = Some(self.read_model_status().await);
                return Ok(outcome);
            }
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
                read_model: None,
            }),
        }
    }

    /// An account's row in the read model; fails with [`BankError::is_not_found`].
    pub async fn balance(&self, id: &str) -> Result<AccountRow> {
        let id = &Field::Account.normalize(id)?;
        let row = self.read_model.account(id).await?;
        let row = row.ok_or(BankError::Account(AccountError::Unknown))?;
        self.open_row(row).await
    }

    /// Every account in the read model, by id, with the owners' names opened.
    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>> {
        let rows = self.read_model.accounts().await?;
        let mut opened = Vec::with_capacity(rows.len());
        for row in rows {
            opened.push(self.open_row(row).await?);
        }
        Ok(opened)
    }

    /// A stored row with its owner's name opened (or `(erased)`).
    async fn open_row(&self, mut row: StoredRow) -> Result<AccountRow> {
        row.owner = self.shredder.unseal(row.owner).await?;
        Ok(row.with_owner_text())
    }

    /// Forgets an account's owner (GDPR article 17): deletes the key that seals the
    /// owner's name, so every read (the account, the read model, the log, `events`, a
    /// replay) shows `(erased)` from now on, in every process; the account and its money
    /// stay. Forgetting twice is not an error. Fails with [`BankError::is_not_found`] for
    /// an account that was never opened, and [`BankError::is_invalid_input`] for a bad
    /// id or an account opened before owners' names were sealed (its name is stored in
    /// clear and cannot be erased this way); nothing is written then.
    pub async fn forget(&self, id: &str) -> Result<ForgetReceipt> {
        let id = &Field::Account.normalize(id)?;
        StreamId::new(Account::TYPE, id).map_err(|e| BankError::InvalidInput(e.into()))?;
        if self.accounts.load(id).await?.state.status == AccountStatus::Unknown {
            return Err(AccountError::Unknown.into());
        }
        let forgotten = match self.shredder.forget(id).await {
            Ok(forgotten) => forgotten,
            Err(e @ cqrs_core::Error::UnknownSubject { .. }) => {
                let legacy = format!(
                    "account {id} was opened before owners' names were sealed: \
                     its owner's name is stored in clear and cannot be forgotten"
                );
                return Err(BankError::InvalidInput(format!("{legacy} ({e})").into()));
            }
            Err(e) => return Err(e.into()),
        };
        // This process's cached state still holds the name.
        self.accounts.evict(id)?;
        Ok(ForgetReceipt {
            account: id.to_owned(),
            owner: crate::read_model::ERASED.to_owned(),
            already_forgotten: forgotten == Forgotten::Already,
        })
    }

    /// An account's history, oldest first; fails with [`BankError::is_not_found`].
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryRow>> {
        let id = &Field::Account.normalize(id)?;
        self.balance(id).await?;
        self.read_model.history(id).await
    }
}
