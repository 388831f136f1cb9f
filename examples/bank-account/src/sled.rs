//! The accounts read model in sled trees of the event store's own database: rows and
//! checkpoint written in one sled transaction (exactly-once), in this process.

use cqrs_core::{
    BoxError, BoxEventStore, CheckpointStrategy, Envelope, Position, Projection, ProjectionRunner,
    RecordedEvent,
};
use cqrs_sled::{ReadModelTx, SledEventStore, TransactionalCheckpoint};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::bank::WAIT;
use crate::domain::AccountEvent;
use crate::error::BankError;
use crate::read_model::{ACCOUNTS, AccountRow, HistoryRow, ReadModel, fold, is_account_event};

/// The tree of account rows (key: account id; value: JSON [`AccountRow`]).
const ROWS: &str = "accounts";
/// The tree of history lines (key: account id, NUL, big-endian version; value: JSON
/// [`HistoryRow`]). Account ids hold no NUL, so keys never collide.
const HISTORY: &str = "history";

/// The accounts read model on sled; clones share the applied position.
#[derive(Debug, Clone)]
pub struct SledAccounts {
    store: SledEventStore,
    applied: watch::Sender<Position>,
}

impl SledAccounts {
    /// The read model in `store`'s database.
    pub fn new(store: SledEventStore) -> Self {
        SledAccounts {
            store,
            applied: watch::Sender::new(Position::START),
        }
    }

    fn runner(&self) -> ProjectionRunner<BoxEventStore, Accounts, Published> {
        let strategy = Published {
            inner: TransactionalCheckpoint::new(self.store.clone()),
            applied: self.applied.clone(),
        };
        ProjectionRunner::with_strategy(BoxEventStore::new(self.store.clone()), Accounts, strategy)
    }

    fn tree(&self, tree: &str) -> Result<cqrs_sled::ReadModel, BankError> {
        self.store
            .read_model(ACCOUNTS, tree)
            .map_err(BankError::store)
    }

    fn scan<T: DeserializeOwned>(&self, tree: &str, prefix: &[u8]) -> Result<Vec<T>, BankError> {
        let decode = |entry: cqrs_core::Result<(Vec<u8>, Vec<u8>)>| {
            serde_json::from_slice(&entry.map_err(BankError::store)?.1).map_err(BankError::store)
        };
        self.tree(tree)?.scan_prefix(prefix).map(decode).collect()
    }
}

impl ReadModel for SledAccounts {
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<AccountRow>, BankError>> {
        let row = self.tree(ROWS).and_then(|tree| {
            let bytes = tree.get(id.as_bytes()).map_err(BankError::store)?;
            let decode = |bytes: Vec<u8>| serde_json::from_slice(&bytes).map_err(BankError::store);
            bytes.map(decode).transpose()
        });
        std::future::ready(row).boxed()
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>, BankError>> {
        std::future::ready(self.scan(HISTORY, &[id.as_bytes(), b"\0"].concat())).boxed()
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountRow>, BankError>> {
        std::future::ready(self.scan(ROWS, b"")).boxed()
    }

    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<(), BankError>> {
        let mut applied = self.applied.subscribe();
        async move {
            match tokio::time::timeout(WAIT, applied.wait_for(|at| *at >= position)).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(BankError::NotCaughtUp { waited: WAIT }),
            }
        }
        .boxed()
    }

    fn run(&self, shutdown: BoxFuture<'static, ()>) -> BoxFuture<'static, Result<(), BankError>> {
        let mut runner = self.runner();
        async move { runner.run_until(shutdown).await.map_err(BankError::store) }.boxed()
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<u64, BankError>> {
        async move {
            self.runner()
                .rebuild(|_| {})
                .await
                .map_err(BankError::store)
        }
        .boxed()
    }

    fn register(
        &self,
        ops: cqrs_cli::Operations<BoxEventStore>,
    ) -> cqrs_cli::Operations<BoxEventStore> {
        let this = self.clone();
        ops.projection(move || this.runner())
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

    fn wants(&self, record: &RecordedEvent) -> bool {
        is_account_event(record)
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let id = e.stream.id();
            let row = match tx.get(ROWS, id.as_bytes())? {
                Some(bytes) => Some(serde_json::from_slice(&bytes)?),
                None => None,
            };
            let (row, line) = fold(row, e);
            tx.insert(ROWS, id.as_bytes(), &serde_json::to_vec(&row)?);
            let key = [id.as_bytes(), b"\0", &e.version.to_be_bytes()].concat();
            tx.insert(HISTORY, &key, &serde_json::to_vec(&line)?);
        }
        Ok(())
    }
}

/// The sled transactional checkpoint, publishing each committed position to the
/// readers waiting in [`ReadModel::wait_for`].
#[derive(Debug)]
struct Published {
    inner: TransactionalCheckpoint,
    applied: watch::Sender<Position>,
}

impl CheckpointStrategy for Published {
    type Context = ReadModelTx;

    async fn load(&mut self, name: &str) -> Result<Option<Position>, BoxError> {
        self.inner.load(name).await
    }

    async fn start<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
    ) -> Result<Position, BoxError> {
        let at = self.inner.start(projection).await?;
        self.applied.send_replace(at);
        Ok(at)
    }

    async fn apply<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
        batch: &[Envelope<P::Event>],
        checkpoint: Position,
    ) -> Result<(), BoxError> {
        // The batch and its checkpoint are committed when this returns.
        self.inner.apply(projection, batch, checkpoint).await?;
        self.applied.send_replace(checkpoint);
        Ok(())
    }

    async fn reset<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
    ) -> Result<(), BoxError> {
        self.inner.reset(projection).await?;
        self.applied.send_replace(Position::START);
        Ok(())
    }
}
