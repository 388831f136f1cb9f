//! The accounts read model in sled trees of the event store's own database: rows and
//! checkpoint written in one sled transaction (exactly-once), by a runner in this
//! process that publishes each committed position to the readers waiting for it.

use cqrs_cli::Operations;
use cqrs_core::{BoxError, BoxEventStore, CheckpointStrategy, Envelope, Position, Projection};
use cqrs_core::{ProjectionRunner, RecordedEvent};
use cqrs_sled::{ReadModelTx, SledEventStore, TransactionalCheckpoint};
use futures::future::{BoxFuture, FutureExt, ready};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::bank::WAIT;
use crate::domain::AccountEvent;
use crate::error::{BankError, Result};
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
        let applied = watch::Sender::new(Position::START);
        SledAccounts { store, applied }
    }

    fn runner(&self) -> ProjectionRunner<BoxEventStore, Accounts, Published> {
        let inner = TransactionalCheckpoint::new(self.store.clone());
        let strategy = Published {
            inner,
            applied: self.applied.clone(),
        };
        ProjectionRunner::with_strategy(self.store(), Accounts, strategy)
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

    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<()>> {
        let mut applied = self.applied.subscribe();
        let reached = async move { applied.wait_for(|at| *at >= position).await.map(drop) };
        let timed = tokio::time::timeout(WAIT, reached);
        timed
            .map(|reached| match reached {
                Ok(Ok(())) => Ok(()),
                _ => Err(BankError::NotCaughtUp(WAIT)),
            })
            .boxed()
    }

    fn run(&self, shutdown: BoxFuture<'static, ()>) -> BoxFuture<'static, Result<()>> {
        let mut runner = self.runner();
        async move { runner.run_until(shutdown).await.map_err(BankError::store) }.boxed()
    }

    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore> {
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

/// The sled transactional checkpoint, publishing each committed position.
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

    async fn start<P: Projection<ReadModelTx>>(&mut self, p: &mut P) -> Result<Position, BoxError> {
        let at = self.inner.start(p).await?;
        self.applied.send_replace(at);
        Ok(at)
    }

    async fn apply<P: Projection<ReadModelTx>>(
        &mut self,
        p: &mut P,
        batch: &[Envelope<P::Event>],
        checkpoint: Position,
    ) -> Result<(), BoxError> {
        // The batch and its checkpoint are committed when this returns.
        self.inner.apply(p, batch, checkpoint).await?;
        self.applied.send_replace(checkpoint);
        Ok(())
    }

    async fn reset<P: Projection<ReadModelTx>>(&mut self, p: &mut P) -> Result<(), BoxError> {
        self.inner.reset(p).await?;
        self.applied.send_replace(Position::START);
        Ok(())
    }
}
