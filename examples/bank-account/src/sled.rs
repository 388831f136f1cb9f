//! The accounts read model in sled trees of the event store's own database: rows and
//! checkpoint written in one sled transaction (exactly-once) by a runner in this
//! process, which a command waiting for its write catches up.

use std::sync::Arc;

use cqrs_cli::Operations;
use cqrs_core::{
    BoxError, BoxEventStore, Envelope, EventLog, Position, Projection, ProjectionRunner,
};
use cqrs_sled::{ReadModelTx, SledEventStore, TransactionalCheckpoint};
use futures::future::{BoxFuture, FutureExt, ready};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::bank::WAIT;
use crate::domain::AccountEvent;
use crate::error::{BankError, Result};
use crate::read_model::{ACCOUNTS, AccountRow, HistoryRow, ReadModel, fold, is_account_event};

/// The tree of account rows (key: account id; value: JSON [`AccountRow`]).
const ROWS: &str = "accounts";
/// The tree of history lines (key: account id, NUL, big-endian version; value: JSON
/// [`HistoryRow`]). Account ids hold no NUL, so keys never collide.
const HISTORY: &str = "history";

/// The runner of the accounts projection on sled.
type Runner = ProjectionRunner<BoxEventStore, Accounts, TransactionalCheckpoint>;

/// The accounts read model on sled.
#[derive(Debug, Clone)]
pub struct SledAccounts {
    store: SledEventStore,
    /// Applies the log to the read model; a command waiting for its write catches it up.
    runner: Arc<Mutex<Runner>>,
}

impl SledAccounts {
    /// The read model in `store`'s database.
    pub fn new(store: SledEventStore) -> Self {
        let runner = Arc::new(Mutex::new(Self::runner(&store)));
        SledAccounts { store, runner }
    }

    fn runner(store: &SledEventStore) -> Runner {
        let checkpoint = TransactionalCheckpoint::new(store.clone());
        ProjectionRunner::with_strategy(BoxEventStore::new(store.clone()), Accounts, checkpoint)
    }

    fn scan<T: DeserializeOwned>(&self, tree: &str, prefix: &[u8]) -> Result<Vec<T>> {
        let tree = self
            .store
            .read_model(ACCOUNTS, tree)
            .map_err(BankError::store)?;
        let decode = |(_, value): (Vec<u8>, Vec<u8>)| serde_json::from_slice(&value);
        let rows = tree.scan_prefix(prefix).map(|entry| Ok(decode(entry?)?));
        rows.collect::<Result<_, BoxError>>()
            .map_err(BankError::Store)
    }
}

impl ReadModel for SledAccounts {
    fn store(&self) -> BoxEventStore {
        BoxEventStore::new(self.store.clone())
    }

    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<AccountRow>>> {
        let row = self
            .store
            .read_model(ACCOUNTS, ROWS)
            .and_then(|tree| tree.get(id.as_bytes()));
        let decode = |row: Vec<u8>| serde_json::from_slice(&row).map_err(BankError::store);
        ready(
            row.map_err(BankError::store)
                .and_then(|row| row.map(decode).transpose()),
        )
        .boxed()
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>>> {
        ready(self.scan(HISTORY, &[id.as_bytes(), b"\0"].concat())).boxed()
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountRow>>> {
        ready(self.scan(ROWS, b"")).boxed()
    }

    /// Catches the runner up (one caller at a time: the first applies what the others
    /// wait for too) until it is past `position`, woken by the store's notifications
    /// while `position` is not readable yet (durable) in the log.
    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<()>> {
        let caught_up = async move {
            let mut appended = self.store.watch();
            loop {
                appended.mark_seen();
                let mut runner = self.runner.lock().await;
                runner.catch_up().await.map_err(BankError::store)?;
                if runner.checkpoint().await.map_err(BankError::store)? >= position {
                    return Ok(());
                }
                drop(runner);
                appended.changed().await;
            }
        };
        let timed = tokio::time::timeout(WAIT, caught_up);
        timed
            .map(|done| done.unwrap_or(Err(BankError::NotCaughtUp(WAIT))))
            .boxed()
    }

    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore> {
        let store = self.store.clone();
        ops.projection(move || Self::runner(&store))
    }
}

/// The accounts projection on sled.
#[derive(Debug, Clone, Copy)]
struct Accounts;

impl Projection<ReadModelTx> for Accounts {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &cqrs_core::RecordedEvent) -> bool {
        is_account_event(record)
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let id = e.stream.id().as_bytes();
            let row = tx
                .get(ROWS, id)?
                .map(|row| serde_json::from_slice(&row))
                .transpose()?;
            let (row, line) = fold(row, e);
            tx.insert(ROWS, id, &serde_json::to_vec(&row)?);
            let key = [id, b"\0", &e.version.to_be_bytes()].concat();
            tx.insert(HISTORY, &key, &serde_json::to_vec(&line)?);
        }
        Ok(())
    }
}
