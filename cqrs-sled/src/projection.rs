//! Transactional projections: read models in sled trees, exactly-once.

use std::collections::BTreeMap;
use std::fmt;

use cqrs_core::{BoxError, CheckpointStrategy, Envelope, Error, Position, Projection};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use crate::SledEventStore;
use crate::contain::{guard, guard_next};
use crate::record::{decode_position, encode_position};
use crate::store::store_error;

/// Prefix of the sled trees that hold read models.
const READ_MODEL_PREFIX: &str = "cqrs.rm.";
/// Prefix (in the checkpoints tree) of a "reset in progress" marker; projection names
/// have no NUL, so these keys never clash with a checkpoint.
const RESET_MARKER: &[u8] = b"\0reset\0";

fn tree_prefix(projection: &str) -> String {
    // The projection name has no NUL (checked): NUL separates it from the tree name.
    format!("{READ_MODEL_PREFIX}{projection}\0")
}

fn tree_name(projection: &str, tree: &str) -> String {
    format!("{}{tree}", tree_prefix(projection))
}

/// What a sled read model's [`Projection::apply`] gets: its trees, as of the last
/// committed batch, plus the batch's own writes. [`TransactionalCheckpoint`] commits the
/// writes and the checkpoint in one sled transaction after `apply` returns, or drops them
/// if it fails.
///
/// Trees are named by the projection (any name; they live in the store's database under
/// the projection's name, and are opened on first use). Read them for queries with
/// [`SledEventStore::read_model`].
pub struct ReadModelTx {
    db: sled::Db,
    projection: String,
    /// The trees opened so far, by name.
    trees: BTreeMap<String, sled::Tree>,
    /// The batch's writes per tree: a value, or `None` for a removal.
    writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl fmt::Debug for ReadModelTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadModelTx")
            .field("projection", &self.projection)
            .field("trees", &self.trees.keys().collect::<Vec<_>>())
            .field(
                "writes",
                &self.writes.values().map(BTreeMap::len).sum::<usize>(),
            )
            .finish()
    }
}

impl ReadModelTx {
    fn new(db: sled::Db, projection: String) -> Self {
        ReadModelTx {
            db,
            projection,
            trees: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    fn open(&mut self, tree: &str) -> cqrs_core::Result<&sled::Tree> {
        if !self.trees.contains_key(tree) {
            let opened = guard(|| {
                self.db
                    .open_tree(tree_name(&self.projection, tree))
                    .map_err(store_error)
            })?;
            self.trees.insert(tree.to_owned(), opened);
        }
        self.trees
            .get(tree)
            .ok_or_else(|| Error::corrupt(format!("tree {tree:?}"), "not open"))
    }

    /// The value of `key` in `tree`, including this batch's writes.
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails.
    pub fn get(&mut self, tree: &str, key: &[u8]) -> cqrs_core::Result<Option<Vec<u8>>> {
        if let Some(written) = self.writes.get(tree).and_then(|w| w.get(key)) {
            return Ok(written.clone());
        }
        let tree = self.open(tree)?;
        let value = guard(|| tree.get(key).map_err(store_error))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Sets `key` in `tree` to `value`, when the batch commits.
    pub fn insert(&mut self, tree: &str, key: &[u8], value: &[u8]) {
        self.write(tree, key, Some(value.to_vec()));
    }

    /// Removes `key` from `tree`, when the batch commits.
    pub fn remove(&mut self, tree: &str, key: &[u8]) {
        self.write(tree, key, None);
    }

    fn write(&mut self, tree: &str, key: &[u8], value: Option<Vec<u8>>) {
        self.writes
            .entry(tree.to_owned())
            .or_default()
            .insert(key.to_vec(), value);
    }
}

/// The [`CheckpointStrategy`] of a read model kept in sled trees of the event store's own
/// database: each batch's writes and the checkpoint are one sled transaction, so every
/// event is applied exactly once, even across crashes and restarts.
///
/// The projection implements [`Projection<ReadModelTx>`](Projection): its `apply` reads
/// and writes its trees through the [`ReadModelTx`] (the same shape as a PostgreSQL read
/// model, whose `apply` gets the open transaction). The checkpoint is stored in the
/// store's checkpoint tree under the projection's name, so
/// [`CheckpointStore::load_checkpoint`](cqrs_core::CheckpointStore::load_checkpoint) shows it too
/// (for lag reports). Each commit checks that the checkpoint is still where this runner
/// left it, so a second runner of the same projection cannot apply a batch twice.
/// [`reset`](CheckpointStrategy::reset) (a rebuild) marks the reset first, so a crash in
/// the middle of it finishes the reset on the next start instead of replaying onto a
/// half-cleared read model.
///
/// # Examples
/// ```
/// use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
/// use cqrs_sled::ReadModelTx;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
///
/// /// Totals per counter, in the tree `totals`.
/// #[derive(Debug)]
/// struct Totals;
///
/// impl Projection<ReadModelTx> for Totals {
///     type Event = CounterEvent;
///
///     fn name(&self) -> &str {
///         "totals"
///     }
///
///     async fn apply(&mut self, tx: &mut ReadModelTx, batch: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
///         for e in batch {
///             let CounterEvent::Incremented { by } = e.event;
///             let key = e.stream.id().as_bytes();
///             let old = tx.get("totals", key)?.map_or(Ok(0), |v| v.try_into().map(u64::from_be_bytes));
///             let old = old.map_err(|_| "a total is not 8 bytes")?;
///             tx.insert("totals", key, &(old + by).to_be_bytes());
///         }
///         Ok(())
///     }
/// }
///
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, ProjectionRunner, StreamId};
/// use cqrs_sled::{SledEventStore, TransactionalCheckpoint};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SledEventStore::temporary()?;
/// let stream = StreamId::new("counter", "c1")?;
/// let event = EventData::new("Incremented", br#"{"Incremented":{"by":3}}"#.to_vec());
/// store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
///
/// let checkpoint = TransactionalCheckpoint::new(store.clone());
/// ProjectionRunner::with_strategy(store.clone(), Totals, checkpoint).catch_up().await?;
/// let totals = store.read_model("totals", "totals")?;
/// assert_eq!(totals.get(b"c1")?, Some(3u64.to_be_bytes().to_vec()));
/// # Ok(())
/// # }
/// ```
pub struct TransactionalCheckpoint {
    store: SledEventStore,
    /// The context, kept across batches for its open trees (created at the first use).
    tx: Option<ReadModelTx>,
    /// Where this runner left the checkpoint (`None` before it read it).
    at: Option<Position>,
}

impl fmt::Debug for TransactionalCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalCheckpoint")
            .field("checkpoint", &self.at)
            .finish_non_exhaustive()
    }
}

/// The checkpoint of a sled read model is not where this runner left it: another runner
/// of the same projection moved it. The batch was not applied.
///
/// Handling: run one runner per projection; restart this one to resume from the
/// checkpoint.
#[derive(Debug, thiserror::Error)]
#[error(
    "checkpoint of projection {projection:?} is at {found}, not at {expected} where this \
     runner left it: another runner is running it"
)]
pub struct CheckpointMoved {
    /// The projection's name.
    pub projection: String,
    /// Where this runner left the checkpoint.
    pub expected: Position,
    /// Where it is.
    pub found: Position,
}

impl TransactionalCheckpoint {
    /// Keeps the checkpoint in `store`'s checkpoint tree, written with each batch of the
    /// read model's trees (in the same database).
    pub fn new(store: SledEventStore) -> Self {
        TransactionalCheckpoint {
            store,
            tx: None,
            at: None,
        }
    }

    /// The context for `name`, with no pending writes.
    fn context(&mut self, name: &str) -> cqrs_core::Result<&mut ReadModelTx> {
        cqrs_core::validate_checkpoint_name(name)?;
        let db = self.store.db().clone();
        let tx = self
            .tx
            .get_or_insert_with(|| ReadModelTx::new(db, name.to_owned()));
        tx.writes.clear();
        Ok(tx)
    }

    fn marker(name: &str) -> Vec<u8> {
        [RESET_MARKER, name.as_bytes()].concat()
    }

    /// Clears the read model and the checkpoint. The marker written first makes a crash
    /// in the middle resume the reset, never a replay onto a half-cleared model.
    fn clear(&self, name: &str) -> Result<(), BoxError> {
        guard(|| self.clear_now(name))
    }

    fn clear_now(&self, name: &str) -> Result<(), BoxError> {
        let checkpoints = self.store.checkpoints_tree();
        let marker = Self::marker(name);
        checkpoints.insert(&marker[..], &[1u8][..])?;
        checkpoints.flush()?;
        let prefix = tree_prefix(name);
        for tree in self.store.db().tree_names() {
            if tree.starts_with(prefix.as_bytes()) {
                self.store.db().open_tree(&tree)?.clear()?;
            }
        }
        checkpoints.remove(name.as_bytes())?;
        checkpoints.flush()?;
        checkpoints.remove(&marker[..])?;
        Ok(())
    }

    /// Commits the context's writes with `checkpoint`, if the stored checkpoint is still
    /// `expected` (when known). `Ok(false)`: the stored checkpoint is already
    /// `checkpoint` (the batch is applied), nothing written.
    fn commit(
        &mut self,
        name: &str,
        expected: Option<Position>,
        checkpoint: Position,
    ) -> Result<bool, BoxError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(Error::corrupt(format!("projection {name:?}"), "no context").into());
        };
        let mut trees = vec![self.store.checkpoints_tree().clone()];
        let mut writes = Vec::with_capacity(tx.writes.len());
        for (tree, tree_writes) in std::mem::take(&mut tx.writes) {
            trees.push(tx.open(&tree)?.clone());
            writes.push(tree_writes);
        }
        let key = name.as_bytes();
        let position = encode_position(checkpoint);
        let outcome = guard(|| {
            Ok::<_, Error>(trees[..].transaction(|views: &Vec<TransactionalTree>| {
                let (checkpoints, read_model) = views
                    .split_first()
                    .ok_or(ConflictableTransactionError::Abort(None))?;
                if let Some(expected) = expected {
                    let found = match checkpoints.get(key)? {
                        Some(bytes) => decode_position(&bytes, name)
                            .map_err(|e| ConflictableTransactionError::Abort(Some(e.into())))?,
                        None => Position::START,
                    };
                    if found == checkpoint && found != expected {
                        return Ok(false);
                    }
                    if found != expected {
                        let moved = CheckpointMoved {
                            projection: name.to_owned(),
                            expected,
                            found,
                        };
                        return Err(ConflictableTransactionError::Abort(Some(moved.into())));
                    }
                }
                for (view, tree_writes) in read_model.iter().zip(&writes) {
                    for (k, v) in tree_writes {
                        match v {
                            Some(v) => view.insert(&k[..], &v[..])?,
                            None => view.remove(&k[..])?,
                        };
                    }
                }
                checkpoints.insert(key, &position[..])?;
                Ok(true)
            }))
        })?;
        match outcome {
            Ok(written) => Ok(written),
            Err(TransactionError::Abort(reason)) => {
                Err(reason.unwrap_or_else(|| "no checkpoint tree".into()))
            }
            Err(TransactionError::Storage(e)) => Err(Box::new(store_error(e))),
        }
    }
}

impl CheckpointStrategy for TransactionalCheckpoint {
    type Context = ReadModelTx;

    async fn load(&mut self, name: &str) -> Result<Option<Position>, BoxError> {
        cqrs_core::validate_checkpoint_name(name)?;
        let checkpoints = self.store.checkpoints_tree();
        let stored = guard(|| checkpoints.get(name.as_bytes()).map_err(store_error))?;
        Ok(stored
            .map(|bytes| decode_position(&bytes, name))
            .transpose()?)
    }

    async fn start<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
    ) -> Result<Position, BoxError> {
        let name = projection.name().to_owned();
        cqrs_core::validate_checkpoint_name(&name)?;
        if self
            .store
            .checkpoints_tree()
            .contains_key(Self::marker(&name))?
        {
            tracing::warn!(projection = %name, "finishing an interrupted reset");
            self.reset(projection).await?;
        }
        let at = self.load(&name).await?.unwrap_or(Position::START);
        self.at = Some(at);
        Ok(at)
    }

    async fn apply<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
        batch: &[Envelope<P::Event>],
        checkpoint: Position,
    ) -> Result<(), BoxError> {
        let name = projection.name().to_owned();
        let tx = self.context(&name)?;
        projection.apply(tx, batch).await?;
        self.commit(&name, self.at, checkpoint)?;
        self.at = Some(checkpoint);
        Ok(())
    }

    async fn reset<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
    ) -> Result<(), BoxError> {
        let name = projection.name().to_owned();
        self.clear(&name)?;
        // The projection may clear state of its own, or write a fresh start.
        let tx = self.context(&name)?;
        projection.reset(tx).await?;
        self.commit(&name, None, Position::START)?;
        self.at = Some(Position::START);
        Ok(())
    }
}

/// A read-model tree of a sled projection, for queries.
#[derive(Debug, Clone)]
pub struct ReadModel {
    tree: sled::Tree,
}

impl SledEventStore {
    /// The tree `tree` of the projection `projection`, for reading the read model.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad projection name; [`Error::Store`] if sled fails.
    pub fn read_model(&self, projection: &str, tree: &str) -> cqrs_core::Result<ReadModel> {
        cqrs_core::validate_checkpoint_name(projection)?;
        let tree = guard(|| {
            self.db()
                .open_tree(tree_name(projection, tree))
                .map_err(store_error)
        })?;
        Ok(ReadModel { tree })
    }
}

impl ReadModel {
    /// The value of `key`.
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails.
    pub fn get(&self, key: &[u8]) -> cqrs_core::Result<Option<Vec<u8>>> {
        let value = guard(|| self.tree.get(key).map_err(store_error))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// The entries whose key starts with `prefix`, in key order, read lazily.
    ///
    /// # Errors
    /// Items are [`Error::Store`] if sled fails.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = cqrs_core::Result<(Vec<u8>, Vec<u8>)>> + Send + use<> {
        let mut entries = self.tree.scan_prefix(prefix);
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let item = guard_next(&mut entries)?;
            failed = item.is_err();
            Some(item.map(|(k, v)| (k.to_vec(), v.to_vec())))
        })
    }

    /// The number of entries (walks the tree).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}
