//! Wiring: a store chosen by URL, the repositories, the read models and the process
//! manager, behind one `Bank` facade used by the command line and the HTTP API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cqrs_core::{
    BoxEventStore, CommandError, InMemoryCheckpoint, InMemoryEventStore, Inspect, ProjectionGroup,
    ProjectionRunner, Repository, RetryPolicy, RunnerConfig, SnapshotPolicy, StoreCheckpoint,
};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{
    Account, AccountCommand, AccountError, Cents, Transfer, TransferCommand, TransferStatus,
};
use crate::error::{BankError, full_chain};
use crate::projections::{
    ACCOUNTS, AccountsRunner, MemoryAccounts, SledAccounts, TRANSFERS, TransferProcess,
};

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferOutcome {
    /// The transfer's id.
    pub transfer_id: Uuid,
    /// `completed` or `failed` (or `pending` if it could not finish).
    pub status: TransferStatus,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Where the accounts read model lives.
#[derive(Debug, Clone)]
pub(crate) enum Views {
    Memory(MemoryAccounts, InMemoryCheckpoint),
    Sled(cqrs_sled::SledEventStore),
    Postgres(cqrs_postgres::PostgresEventStore),
}

/// The bank: commands, reads, and the projections behind them.
#[derive(Debug, Clone)]
pub struct Bank {
    pub(crate) store: BoxEventStore,
    accounts: Repository<Account, BoxEventStore>,
    transfers: Repository<Transfer, BoxEventStore>,
    pub(crate) views: Views,
    description: String,
    /// Set while `run_projections` runs: reads then wait for the live runners instead of
    /// running a catch-up of their own (two runners of one projection must not overlap).
    background: Arc<AtomicBool>,
}

/// The snapshot policy of accounts: a snapshot every 50 events.
pub const SNAPSHOT_EVERY: u64 = 50;

/// How many account states the command side keeps in memory
/// ([`Repository::with_cache`]): a command on a recently used account skips its load.
pub const ACCOUNT_CACHE: usize = 10_000;

impl Bank {
    /// Opens the bank on the store named by `url`: `sled:<path>`, `postgres://…`, or
    /// `memory:`.
    ///
    /// # Errors
    /// [`BankError::BadInput`] for an unknown URL scheme, [`BankError::Store`] if the
    /// store cannot be opened.
    pub async fn open(url: &str) -> Result<Bank, BankError> {
        let (store, views, description) = if url == "memory:" {
            let views = Views::Memory(MemoryAccounts::default(), InMemoryCheckpoint::new());
            (
                BoxEventStore::new(InMemoryEventStore::new()),
                views,
                "memory".to_owned(),
            )
        } else if let Some(path) = url.strip_prefix("sled:") {
            if path.is_empty() {
                return Err(BankError::BadInput(
                    "sled: needs a path, e.g. sled:./bank-data".into(),
                ));
            }
            let store = cqrs_sled::SledEventStore::open(path)
                .map_err(|e| BankError::Store(full_chain(&e)))?;
            (
                BoxEventStore::new(store.clone()),
                Views::Sled(store),
                format!("sled at {path}"),
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let store = crate::postgres::open(url).await?;
            let description = format!("PostgreSQL, schema {}", store.schema());
            (
                BoxEventStore::new(store.clone()),
                Views::Postgres(store),
                description,
            )
        } else {
            return Err(BankError::BadInput(format!(
                "unknown store URL {url:?}: use sled:<path>, postgres://… or memory:"
            )));
        };
        Ok(Bank::with_store(store, views, description))
    }

    fn with_store(store: BoxEventStore, views: Views, description: String) -> Bank {
        let retry = RetryPolicy::attempts(20);
        let accounts = Repository::<Account, _>::new(store.clone(), ())
            .with_snapshots(SnapshotPolicy::EveryEvents(SNAPSHOT_EVERY))
            .with_retry(retry)
            .with_cache(ACCOUNT_CACHE);
        let transfers = Repository::<Transfer, _>::new(store.clone(), ()).with_retry(retry);
        Bank {
            store,
            accounts,
            transfers,
            views,
            description,
            background: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Which store this bank runs on, for messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The event store.
    pub fn store(&self) -> &BoxEventStore {
        &self.store
    }

    /// The accounts repository.
    pub fn accounts(&self) -> &Repository<Account, BoxEventStore> {
        &self.accounts
    }

    /// The transfers repository.
    pub fn transfers(&self) -> &Repository<Transfer, BoxEventStore> {
        &self.transfers
    }

    fn runner_config() -> RunnerConfig {
        RunnerConfig {
            poll_interval: Duration::from_millis(500),
            ..RunnerConfig::default()
        }
    }

    /// A fresh runner of the transfer process manager (its checkpoint in the store).
    pub fn transfer_runner(
        &self,
    ) -> ProjectionRunner<BoxEventStore, TransferProcess, StoreCheckpoint<BoxEventStore>> {
        ProjectionRunner::with_strategy(
            self.store.clone(),
            TransferProcess::new(self.accounts.clone(), self.transfers.clone()),
            StoreCheckpoint::new(self.store.clone()),
        )
        .with_config(Self::runner_config())
    }

    /// A fresh runner of the accounts read model.
    pub fn accounts_runner(&self) -> AccountsRunner {
        match &self.views {
            Views::Memory(view, checkpoint) => {
                AccountsRunner::Memory(self.memory_accounts(view, checkpoint))
            }
            Views::Sled(store) => AccountsRunner::Sled(self.sled_accounts(store)),
            Views::Postgres(store) => AccountsRunner::Postgres(self.pg_accounts(store)),
        }
    }

    fn memory_accounts(
        &self,
        view: &MemoryAccounts,
        checkpoint: &InMemoryCheckpoint,
    ) -> ProjectionRunner<BoxEventStore, MemoryAccounts> {
        ProjectionRunner::with_strategy(self.store.clone(), view.clone(), checkpoint.clone())
            .with_config(Self::runner_config())
    }

    fn sled_accounts(
        &self,
        store: &cqrs_sled::SledEventStore,
    ) -> ProjectionRunner<BoxEventStore, SledAccounts, cqrs_sled::TransactionalCheckpoint> {
        let checkpoint = cqrs_sled::TransactionalCheckpoint::new(store.clone());
        ProjectionRunner::with_strategy(self.store.clone(), SledAccounts, checkpoint)
            .with_config(Self::runner_config())
    }

    fn pg_accounts(
        &self,
        store: &cqrs_postgres::PostgresEventStore,
    ) -> ProjectionRunner<
        BoxEventStore,
        crate::postgres::PgAccounts,
        cqrs_postgres::TransactionalCheckpoint,
    > {
        let checkpoint = cqrs_postgres::TransactionalCheckpoint::new(store.clone());
        let projection = crate::postgres::PgAccounts::new(store);
        ProjectionRunner::with_strategy(self.store.clone(), projection, checkpoint)
            .with_config(Self::runner_config())
    }

    /// The operations subcommand over this bank's store, aggregates and projections.
    pub fn operations(&self) -> cqrs_cli::Operations<BoxEventStore> {
        let ops = cqrs_cli::Operations::new(self.store.clone())
            // Transfers are short streams (three events at most) loaded without snapshots:
            // only accounts are worth snapshotting.
            .aggregate(self.accounts.clone());
        let bank = self.clone();
        let ops = match self.views.clone() {
            Views::Memory(view, checkpoint) => {
                ops.projection(move || bank.memory_accounts(&view, &checkpoint))
            }
            Views::Sled(store) => ops.projection(move || bank.sled_accounts(&store)),
            Views::Postgres(store) => ops.projection(move || bank.pg_accounts(&store)),
        };
        let bank = self.clone();
        ops.projection(move || bank.transfer_runner())
    }

    /// Runs the process manager and the read model until nothing is left to do: after it
    /// returns, reads show every command that returned before it was called.
    ///
    /// # Errors
    /// [`BankError::Store`] if a projection stops.
    pub async fn sync(&self) -> Result<(), BankError> {
        if self.background.load(Ordering::SeqCst) {
            return self.wait_settled().await;
        }
        if let Views::Postgres(pg) = &self.views {
            return self.sync_shared(pg).await;
        }
        self.catch_up_saga().await?;
        self.accounts_runner()
            .catch_up()
            .await
            .map_err(BankError::store)?;
        Ok(())
    }

    async fn catch_up_saga(&self) -> Result<(), BankError> {
        let mut saga = self.transfer_runner();
        // Each pass may append events (debits, credits, refunds, outcomes) that the next
        // pass reacts to; stop when a pass finds nothing new.
        while saga.catch_up().await.map_err(BankError::store)? > 0 {}
        Ok(())
    }

    /// On a database shared by several processes: catch each projection up under its
    /// worker lock, or, if another process (a `bank serve`) holds it, wait for that one.
    async fn sync_shared(&self, pg: &cqrs_postgres::PostgresEventStore) -> Result<(), BankError> {
        match pg
            .try_lock_worker(TRANSFERS)
            .await
            .map_err(BankError::store)?
        {
            Some(lock) => {
                let caught_up = self.catch_up_saga().await;
                lock.release().await.map_err(BankError::store)?;
                caught_up?;
            }
            None => self.wait_for(TRANSFERS).await?,
        }
        match pg
            .try_lock_worker(ACCOUNTS)
            .await
            .map_err(BankError::store)?
        {
            Some(lock) => {
                let caught_up = self
                    .accounts_runner()
                    .catch_up()
                    .await
                    .map_err(BankError::store);
                lock.release().await.map_err(BankError::store)?;
                caught_up?;
            }
            None => self.wait_for(ACCOUNTS).await?,
        }
        Ok(())
    }

    /// Waits (up to 10 s) until another worker has brought `projection` to the end of the
    /// log as it is now.
    async fn wait_for(&self, projection: &str) -> Result<(), BankError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let checkpoint = if projection == TRANSFERS {
                self.transfer_runner().checkpoint().await
            } else {
                self.accounts_runner().checkpoint().await
            }
            .map_err(BankError::store)?;
            let lag = self
                .store
                .count_events(checkpoint)
                .await
                .map_err(BankError::store)?;
            if lag == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BankError::Store(format!(
                    "projection {projection} is {lag} events behind after 10 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// With the projections running in the background: waits (up to 10 s) until both have
    /// read the whole log, so reads show every command that returned before.
    async fn wait_settled(&self) -> Result<(), BankError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let saga = self
                .transfer_runner()
                .checkpoint()
                .await
                .map_err(BankError::store)?;
            let view = self
                .accounts_runner()
                .checkpoint()
                .await
                .map_err(BankError::store)?;
            let lag = self
                .store
                .count_events(saga)
                .await
                .map_err(BankError::store)?
                + self
                    .store
                    .count_events(view)
                    .await
                    .map_err(BankError::store)?;
            if lag == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BankError::Store(format!(
                    "the read model is {lag} events behind after 10 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs the process manager and the read model live until `shutdown` completes; while
    /// they run, [`sync`](Self::sync) waits for them instead of catching up itself.
    ///
    /// # Errors
    /// [`BankError::Store`] if a projection stops; [`BankError::Rejected`] if they are
    /// already running.
    pub async fn run_projections(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BankError> {
        if self.background.swap(true, Ordering::SeqCst) {
            return Err(BankError::Rejected(
                "the projections are already running".into(),
            ));
        }
        let result = match &self.views {
            Views::Postgres(pg) => self.run_exclusive(pg, shutdown).await,
            _ => self
                .accounts_runner()
                .join(ProjectionGroup::new().with(self.transfer_runner()))
                .run_until(shutdown)
                .await
                .map_err(BankError::store),
        };
        self.background.store(false, Ordering::SeqCst);
        result
    }

    /// On PostgreSQL, takes the worker locks of both projections (for a replay), failing
    /// if another process (a `bank serve`) runs them; elsewhere there is nothing to lock
    /// (one process owns a sled database). Dropping the locks releases them.
    ///
    /// # Errors
    /// [`BankError::Rejected`] if another process holds a lock; [`BankError::Store`].
    pub async fn lock_projections(&self) -> Result<Vec<cqrs_postgres::WorkerLock>, BankError> {
        let Views::Postgres(pg) = &self.views else {
            return Ok(Vec::new());
        };
        let mut locks = Vec::new();
        for name in [TRANSFERS, ACCOUNTS] {
            match pg.try_lock_worker(name).await.map_err(BankError::store)? {
                Some(lock) => locks.push(lock),
                None => {
                    return Err(BankError::Rejected(format!(
                        "projection {name} is running in another process (bank serve?): stop it first"
                    )));
                }
            }
        }
        Ok(locks)
    }

    /// Many `bank serve` processes on one database: each projection runs in at most one
    /// of them at a time (a worker lock); another takes over when the holder dies.
    async fn run_exclusive(
        &self,
        pg: &cqrs_postgres::PostgresEventStore,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BankError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let config = cqrs_postgres::WorkerConfig::default();
        let (saga_pg, mut saga, saga_stop) = (pg.clone(), self.transfer_runner(), until_stopped());
        let saga =
            tokio::spawn(async move { saga_pg.run_exclusive(&mut saga, saga_stop, config).await });
        let (view_pg, mut view, view_stop) = (pg.clone(), self.accounts_runner(), until_stopped());
        let view =
            tokio::spawn(async move { view.run_exclusive(&view_pg, view_stop, config).await });
        shutdown.await;
        let _ = stop.send(true);
        for task in [saga, view] {
            task.await
                .map_err(|e| BankError::Store(format!("a projection task failed: {e}")))?
                .map_err(BankError::store)?;
        }
        Ok(())
    }

    async fn account_command(&self, id: &str, command: AccountCommand) -> Result<u64, BankError> {
        let done = self
            .accounts
            .execute(id, &command)
            .await
            .map_err(|e| match e {
                CommandError::Rejected(AccountError::Unknown) => {
                    BankError::UnknownAccount(id.to_owned())
                }
                other => other.into(),
            })?;
        Ok(done.version)
    }

    /// Opens an account.
    ///
    /// # Errors
    /// [`BankError::Rejected`] if it exists; [`BankError::BadInput`] for a bad id.
    pub async fn open_account(&self, id: &str, owner: &str) -> Result<(), BankError> {
        self.account_command(
            id,
            AccountCommand::Open {
                owner: owner.to_owned(),
            },
        )
        .await?;
        Ok(())
    }

    /// Deposits money.
    ///
    /// # Errors
    /// [`BankError::UnknownAccount`], [`BankError::Rejected`] for a closed account.
    pub async fn deposit(&self, id: &str, amount: Cents) -> Result<(), BankError> {
        self.account_command(id, AccountCommand::Deposit { amount })
            .await?;
        Ok(())
    }

    /// Withdraws money.
    ///
    /// # Errors
    /// [`BankError::UnknownAccount`], [`BankError::Rejected`] for insufficient funds or a
    /// closed account.
    pub async fn withdraw(&self, id: &str, amount: Cents) -> Result<(), BankError> {
        self.account_command(id, AccountCommand::Withdraw { amount })
            .await?;
        Ok(())
    }

    /// Closes an account (its balance must be zero).
    ///
    /// # Errors
    /// [`BankError::UnknownAccount`], [`BankError::Rejected`].
    pub async fn close(&self, id: &str) -> Result<(), BankError> {
        self.account_command(id, AccountCommand::Close).await?;
        Ok(())
    }

    /// Requests a transfer and returns its id; the process manager carries it out.
    ///
    /// # Errors
    /// [`BankError::Rejected`] for a transfer to the same account; [`BankError::BadInput`]
    /// for bad ids.
    pub async fn request_transfer(
        &self,
        from: &str,
        to: &str,
        amount: Cents,
    ) -> Result<Uuid, BankError> {
        // Validate both ids before anything is written.
        for id in [from, to] {
            cqrs_core::StreamId::new(<Account as cqrs_core::Aggregate>::TYPE, id)
                .map_err(|e| BankError::BadInput(e.to_string()))?;
        }
        let transfer_id = Uuid::new_v4();
        let command = TransferCommand::Request {
            from: from.to_owned(),
            to: to.to_owned(),
            amount,
        };
        self.transfers
            .execute(&transfer_id.to_string(), &command)
            .await?;
        Ok(transfer_id)
    }

    /// Transfers money and waits until the transfer ends: completed, or failed (with the
    /// source refunded if it had been debited).
    ///
    /// # Errors
    /// As for [`request_transfer`](Self::request_transfer) and [`sync`](Self::sync).
    pub async fn transfer(
        &self,
        from: &str,
        to: &str,
        amount: Cents,
    ) -> Result<TransferOutcome, BankError> {
        let transfer_id = self.request_transfer(from, to, amount).await?;
        self.sync().await?;
        self.transfer_outcome(transfer_id).await
    }

    /// A transfer's current outcome.
    ///
    /// # Errors
    /// [`BankError::Store`] if it cannot be loaded.
    pub async fn transfer_outcome(&self, transfer_id: Uuid) -> Result<TransferOutcome, BankError> {
        let loaded = self
            .transfers
            .load(&transfer_id.to_string())
            .await
            .map_err(BankError::store)?;
        Ok(TransferOutcome {
            transfer_id,
            status: loaded.state.status,
            reason: loaded.state.failure,
        })
    }
}
