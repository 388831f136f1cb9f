//! Transactional projections: read models in sled trees, exactly-once, rebuilt beside
//! the live model (blue/green).

use std::collections::BTreeMap;
use std::fmt;

use cqrs_core::{BoxError, CheckpointStrategy, Envelope, Error, Position, Projection};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use crate::SledEventStore;
use crate::contain::guard;
use crate::read_model::{
    build_checkpoint_key, encode_generation, generation_prefix, generations_prefix,
    live_generation_key, parse_tree_name, seal, tree_name, unseal, validate_tree,
};
use crate::record::{decode_position, encode_position};
use crate::store::store_error;

/// Prefix (in the checkpoints tree) of the "reset in progress" marker that versions
/// before blue/green rebuilds wrote; projection names have no NUL, so these keys never
/// clash with a checkpoint.
const RESET_MARKER: &[u8] = b"\0reset\0";

/// One tree's writes: keys and sealed values (`None`: a removal).
pub(crate) type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

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
    /// The generation written (and read).
    generation: u64,
    /// The trees opened so far, by name.
    trees: BTreeMap<String, sled::Tree>,
    /// The batch's writes per tree: a value, or `None` for a removal.
    writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl fmt::Debug for ReadModelTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadModelTx")
            .field("projection", &self.projection)
            .field("generation", &self.generation)
            .field("trees", &self.trees.keys().collect::<Vec<_>>())
            .field(
                "writes",
                &self.writes.values().map(BTreeMap::len).sum::<usize>(),
            )
            .finish()
    }
}

impl ReadModelTx {
    pub(crate) fn new(db: sled::Db, projection: String, generation: u64) -> Self {
        ReadModelTx {
            db,
            projection,
            generation,
            trees: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// Opens `tree`, also one of the names starting with NUL that the crate keeps for
    /// itself (a consumer's inbox).
    pub(crate) fn open_any(&mut self, tree: &str) -> cqrs_core::Result<&sled::Tree> {
        if !self.trees.contains_key(tree) {
            let name = tree_name(&self.projection, self.generation, tree);
            let opened = guard(|| self.db.open_tree(name).map_err(store_error))?;
            self.trees.insert(tree.to_owned(), opened);
        }
        self.trees
            .get(tree)
            .ok_or_else(|| Error::corrupt(format!("tree {tree:?}"), "not open"))
    }

    /// The value of `key` in `tree`, including this batch's writes.
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails; [`Error::Corrupt`] if the stored row is damaged
    /// (its checksum does not match).
    pub fn get(&mut self, tree: &str, key: &[u8]) -> cqrs_core::Result<Option<Vec<u8>>> {
        validate_tree(&self.projection, tree)?;
        self.get_any(tree, key)
    }

    /// [`get`](Self::get) on any tree, also the crate's own.
    pub(crate) fn get_any(&mut self, tree: &str, key: &[u8]) -> cqrs_core::Result<Option<Vec<u8>>> {
        if let Some(written) = self.writes.get(tree).and_then(|w| w.get(key)) {
            return Ok(written.clone());
        }
        let checked = self.generation > 0;
        let name = format!("{}/{tree}", self.projection);
        let opened = self.open_any(tree)?;
        let value = guard(|| opened.get(key).map_err(store_error))?;
        let value = value.map(|v| match checked {
            true => unseal(&name, key, &v).map(<[u8]>::to_vec),
            false => Ok(v.to_vec()),
        });
        value.transpose()
    }

    /// Sets `key` in `tree` to `value`, when the batch commits.
    pub fn insert(&mut self, tree: &str, key: &[u8], value: &[u8]) {
        self.write(tree, key, Some(value.to_vec()));
    }

    /// Removes `key` from `tree`, when the batch commits.
    pub fn remove(&mut self, tree: &str, key: &[u8]) {
        self.write(tree, key, None);
    }

    /// The batch's writes of `tree` (a value, or `None` for a removal), not yet committed.
    pub(crate) fn pending(&self, tree: &str) -> Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        self.writes.get(tree)
    }

    /// Takes the batch's writes, sealed where the generation is checksummed, with the
    /// tree each goes to (in the same order).
    pub(crate) fn take_writes(&mut self) -> cqrs_core::Result<(Vec<sled::Tree>, Vec<Writes>)> {
        let checked = self.generation > 0;
        let mut trees = Vec::with_capacity(self.writes.len());
        let mut writes = Vec::with_capacity(self.writes.len());
        for (tree, tree_writes) in std::mem::take(&mut self.writes) {
            if !crate::inbox::RESERVED_TREES.contains(&tree.as_str()) {
                validate_tree(&self.projection, &tree)?;
            }
            trees.push(self.open_any(&tree)?.clone());
            let sealed = tree_writes.into_iter().map(|(k, v)| {
                let v = v.map(|v| if checked { seal(&k, &v) } else { v });
                (k, v)
            });
            writes.push(sealed.collect::<Vec<_>>());
        }
        Ok((trees, writes))
    }

    pub(crate) fn write(&mut self, tree: &str, key: &[u8], value: Option<Vec<u8>>) {
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
///
/// A rebuild is blue/green: [`reset`](CheckpointStrategy::reset) starts the next
/// generation of the projection's trees beside the live one, with a checkpoint of its
/// own; readers ([`SledEventStore::read_model`]) keep the live generation until
/// [`finish_rebuild`](CheckpointStrategy::finish_rebuild) switches them, in one sled
/// transaction with the checkpoint, and drops the old trees. A rebuild that fails or
/// crashes leaves the live model serving; the next rebuild discards what it had built.
/// Every row is sealed with a CRC32C of its key and value, verified on each read.
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
    /// Where this runner left the checkpoint it writes (`None` before it read it).
    at: Option<Position>,
    /// The generation a rebuild is writing, from `reset` to `finish_rebuild`.
    building: Option<u64>,
}

impl fmt::Debug for TransactionalCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalCheckpoint")
            .field("checkpoint", &self.at)
            .field("building", &self.building)
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
            building: None,
        }
    }

    /// The generation written: the one being built, or the live one.
    fn generation(&self, name: &str) -> cqrs_core::Result<u64> {
        match self.building {
            Some(generation) => Ok(generation),
            None => self.store.live_generation(name),
        }
    }

    /// The key of the checkpoint written: the rebuild's, or the live one.
    fn checkpoint_key(&self, name: &str) -> Vec<u8> {
        match self.building {
            Some(_) => build_checkpoint_key(name),
            None => name.as_bytes().to_vec(),
        }
    }

    /// The context for `name` in the generation written, with no pending writes.
    fn context(&mut self, name: &str) -> cqrs_core::Result<&mut ReadModelTx> {
        cqrs_core::validate_checkpoint_name(name)?;
        let generation = self.generation(name)?;
        if self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.generation != generation)
        {
            self.tx = None;
        }
        let db = self.store.db().clone();
        let tx = self
            .tx
            .get_or_insert_with(|| ReadModelTx::new(db, name.to_owned(), generation));
        tx.writes.clear();
        Ok(tx)
    }

    fn marker(name: &str) -> Vec<u8> {
        [RESET_MARKER, name.as_bytes()].concat()
    }

    /// The newest generation that has trees of the projection `name` (0 if none).
    fn newest_generation(&self, name: &str) -> u64 {
        let names = guard(|| Ok::<_, Error>(self.store.db().tree_names())).unwrap_or_default();
        let parsed = names.iter().filter_map(|tree| parse_tree_name(tree));
        let ours = parsed.filter(|(projection, ..)| projection == name);
        ours.map(|(_, generation, _)| generation).max().unwrap_or(0)
    }

    /// Drops every tree of the projection `name` but those of generation `keep`: what
    /// an earlier rebuild left behind, finished or not.
    fn drop_generations_except(&self, name: &str, keep: u64) -> Result<(), BoxError> {
        let kept = generation_prefix(name, keep);
        let (legacy, newer) = (generation_prefix(name, 0), generations_prefix(name));
        guard(|| {
            for tree in self.store.db().tree_names() {
                let ours = [&legacy, &newer]
                    .iter()
                    .any(|p| tree.starts_with(p.as_bytes()));
                if ours && !tree.starts_with(kept.as_bytes()) {
                    self.store.db().drop_tree(&tree).map_err(store_error)?;
                }
            }
            Ok::<_, Error>(())
        })?;
        Ok(())
    }

    /// Prepares a run of the live model: records the live generation if the store never
    /// did (so readers keep resolving it the same way), and finishes a reset that a
    /// version before blue/green rebuilds left half done (its marker is set).
    fn prepare_live(&mut self, name: &str) -> Result<(), BoxError> {
        if self.store.damage().is_some() {
            // Opened to inspect a damaged log: nothing is written.
            return Ok(());
        }
        let checkpoints = self.store.checkpoints_tree();
        let generation = self.store.live_generation(name)?;
        let key = live_generation_key(name);
        let finish = || {
            if !checkpoints.contains_key(&key)? {
                checkpoints.insert(&key[..], encode_generation(name, generation))?;
            }
            if checkpoints.contains_key(Self::marker(name))? {
                tracing::warn!(projection = %name, "finishing an interrupted reset");
                let prefix = generation_prefix(name, generation);
                for tree in self.store.db().tree_names() {
                    if tree.starts_with(prefix.as_bytes()) {
                        self.store.db().open_tree(&tree)?.clear()?;
                    }
                }
                checkpoints.remove(name.as_bytes())?;
                checkpoints.flush()?;
                checkpoints.remove(Self::marker(name))?;
            }
            Ok::<_, sled::Error>(())
        };
        guard(|| finish().map_err(store_error))?;
        Ok(())
    }

    /// Commits the context's writes with `checkpoint` under the key written, if the
    /// stored checkpoint is still `expected` (when known). `Ok(false)`: the stored
    /// checkpoint is already `checkpoint` (the batch is applied), nothing written.
    fn commit(
        &mut self,
        name: &str,
        expected: Option<Position>,
        checkpoint: Position,
    ) -> Result<bool, BoxError> {
        self.store.writable()?;
        let key = self.checkpoint_key(name);
        let Some(tx) = self.tx.as_mut() else {
            return Err(Error::corrupt(format!("projection {name:?}"), "no context").into());
        };
        let (read_model_trees, writes) = tx.take_writes()?;
        let mut trees = vec![self.store.checkpoints_tree().clone()];
        trees.extend(read_model_trees);
        let position = encode_position(checkpoint);
        let outcome = guard(|| {
            Ok::<_, Error>(trees[..].transaction(|views: &Vec<TransactionalTree>| {
                let (checkpoints, read_model) = views
                    .split_first()
                    .ok_or(ConflictableTransactionError::Abort(None))?;
                if let Some(expected) = expected {
                    let found = match checkpoints.get(&key)? {
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
                checkpoints.insert(&key[..], &position[..])?;
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

    /// The live checkpoint (a rebuild in progress has its own, which readers do not see).
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
        // A run follows the live model; an unfinished rebuild is left for the next one.
        self.building = None;
        self.prepare_live(&name)?;
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

    /// Starts the next generation beside the live one (discarding what an unfinished
    /// rebuild left there), with its own checkpoint at the start.
    async fn reset<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
    ) -> Result<(), BoxError> {
        let name = projection.name().to_owned();
        cqrs_core::validate_checkpoint_name(&name)?;
        self.store.writable()?;
        self.building = None;
        let live = match self.store.live_generation(&name) {
            Ok(live) => {
                self.prepare_live(&name)?;
                live
            }
            // A damaged generation record: the rebuild repairs it, after the newest
            // generation found (so it never writes into trees a reader may use).
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!(projection = %name, error = %e, "rebuilding past a damaged generation");
                self.newest_generation(&name)
            }
            Err(e) => return Err(e.into()),
        };
        self.drop_generations_except(&name, live)?;
        let next = live + 1;
        self.building = Some(next);
        // The projection may write a fresh start.
        let tx = self.context(&name)?;
        projection.reset(tx).await?;
        self.commit(&name, None, Position::START)?;
        self.at = Some(Position::START);
        Ok(())
    }

    /// Switches readers to the rebuilt generation and its checkpoint in one transaction,
    /// then drops the old generation's trees.
    async fn finish_rebuild<P: Projection<ReadModelTx>>(
        &mut self,
        projection: &mut P,
    ) -> Result<(), BoxError> {
        let name = projection.name().to_owned();
        let Some(next) = self.building else {
            return Ok(());
        };
        let (build, live) = (build_checkpoint_key(&name), live_generation_key(&name));
        let checkpoints = self.store.checkpoints_tree();
        let switched = guard(|| {
            Ok::<_, Error>(checkpoints.transaction(|t| {
                let at = t
                    .get(&build)?
                    .ok_or(ConflictableTransactionError::Abort(()))?;
                t.insert(name.as_bytes(), at)?;
                t.insert(&live[..], encode_generation(&name, next))?;
                t.remove(&build[..])?;
                Ok(())
            }))
        })?;
        match switched {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => {
                let lost = "the rebuild's checkpoint is gone: was the projection reset again?";
                return Err(Error::corrupt(format!("projection {name:?}"), lost).into());
            }
            Err(TransactionError::Storage(e)) => return Err(store_error(e).into()),
        }
        self.building = None;
        self.tx = None;
        guard(|| checkpoints.flush().map_err(store_error))?;
        self.drop_generations_except(&name, next)?;
        Ok(())
    }
}
