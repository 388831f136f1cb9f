//! Transactional projections: read models in sled trees, exactly-once.

use std::fmt;

use cqrs_core::{BoxError, DomainEvent, Envelope, Error, Position, Projection, RecordedEvent};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
    UnabortableTransactionError,
};

use crate::SledEventStore;
use crate::store::{decode_position, position_bytes, store_error};

/// Prefix of the sled trees that hold read models.
const READ_MODEL_PREFIX: &str = "cqrs.rm.";
/// Prefix (in the checkpoints tree) of a "reset in progress" marker; projection names
/// have no NUL, so these keys never clash with a checkpoint.
const RESET_MARKER: &[u8] = b"\0reset\0";

fn tree_name(projection: &str, tree: &str) -> String {
    // The projection name has no NUL (checked): NUL separates it from the tree name.
    format!("{READ_MODEL_PREFIX}{projection}\0{tree}")
}

/// A read model kept in sled trees of the event store's own database, updated in one
/// sled transaction with its checkpoint: every event is applied exactly once, even
/// across crashes and restarts.
///
/// Run it with [`TransactionalProjection`] under a [`cqrs_core::ProjectionRunner`]. Read
/// the read model with [`SledEventStore::read_model`].
///
/// # Examples
/// ```
/// use cqrs_core::{DomainEvent, Envelope};
/// use cqrs_sled::{ApplyError, ReadModelTx, SledProjection};
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
/// impl SledProjection for Totals {
///     type Event = CounterEvent;
///
///     fn name(&self) -> &str {
///         "totals"
///     }
///
///     fn trees(&self) -> &[&str] {
///         &["totals"]
///     }
///
///     fn apply(&self, tx: &ReadModelTx<'_>, batch: &[Envelope<CounterEvent>]) -> Result<(), ApplyError> {
///         let totals = tx.tree("totals")?;
///         for e in batch {
///             let CounterEvent::Incremented { by } = e.event;
///             let key = e.stream.id().as_bytes();
///             let old = totals.get(key)?.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
///             totals.insert(key, &(old + by).to_be_bytes())?;
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait SledProjection: Send + Sync + 'static {
    /// The events this projection decodes.
    type Event: DomainEvent;

    /// The projection's stable name: the key of its checkpoint and the namespace of its
    /// trees.
    fn name(&self) -> &str;

    /// The names of the read-model trees [`apply`](SledProjection::apply) writes.
    fn trees(&self) -> &[&str];

    /// Whether the projection wants this record; by default, the records whose type is
    /// one of `Self::Event::EVENT_TYPES`.
    fn wants(&self, record: &RecordedEvent) -> bool {
        Self::Event::EVENT_TYPES.contains(&record.event_type.as_str())
    }

    /// Applies a batch inside a sled transaction that also stores the checkpoint.
    ///
    /// sled may run this more than once for one batch (it retries a transaction on a
    /// conflict), so make it depend only on `tx` and `batch`, with no other side effect.
    ///
    /// # Errors
    /// An [`ApplyError`]: propagate the ones that `tx` returns with `?`, and wrap the
    /// projection's own failures with [`ApplyError::new`]. The transaction is rolled back
    /// (neither read model nor checkpoint change) and the runner retries the batch.
    fn apply(
        &self,
        tx: &ReadModelTx<'_>,
        batch: &[Envelope<Self::Event>],
    ) -> Result<(), ApplyError>;
}

/// The read-model trees of a [`SledProjection`] inside its transaction.
pub struct ReadModelTx<'a> {
    names: &'a [String],
    trees: &'a [TransactionalTree],
}

impl fmt::Debug for ReadModelTx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadModelTx")
            .field("trees", &self.names)
            .finish()
    }
}

impl<'a> ReadModelTx<'a> {
    /// The tree named `name` (one of [`SledProjection::trees`]).
    ///
    /// # Errors
    /// An [`ApplyError`] if the projection did not declare this tree.
    pub fn tree(&self, name: &str) -> Result<TxTree<'a>, ApplyError> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.trees.get(i))
            .map(|tree| TxTree { tree })
            .ok_or_else(|| {
                ApplyError::new(format!("tree {name:?} is not in the projection's trees()"))
            })
    }
}

/// One read-model tree inside a transaction.
pub struct TxTree<'a> {
    tree: &'a TransactionalTree,
}

impl fmt::Debug for TxTree<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxTree").finish_non_exhaustive()
    }
}

impl TxTree<'_> {
    /// The value of `key`.
    ///
    /// # Errors
    /// An [`ApplyError`] to propagate (a sled conflict or failure).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ApplyError> {
        Ok(self
            .tree
            .get(key)
            .map_err(ApplyError::tx)?
            .map(|v| v.to_vec()))
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// An [`ApplyError`] to propagate (a sled conflict or failure).
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), ApplyError> {
        self.tree.insert(key, value).map_err(ApplyError::tx)?;
        Ok(())
    }

    /// Removes `key`.
    ///
    /// # Errors
    /// An [`ApplyError`] to propagate (a sled conflict or failure).
    pub fn remove(&self, key: &[u8]) -> Result<(), ApplyError> {
        self.tree.remove(key).map_err(ApplyError::tx)?;
        Ok(())
    }
}

/// Why [`SledProjection::apply`] failed: a transaction conflict or storage failure to
/// propagate, or the projection's own error.
#[derive(Debug)]
pub struct ApplyError(ApplyErrorKind);

#[derive(Debug)]
enum ApplyErrorKind {
    Tx(UnabortableTransactionError),
    Failed(BoxError),
}

impl ApplyError {
    /// Wraps the projection's own error: the transaction is rolled back.
    pub fn new(error: impl Into<BoxError>) -> Self {
        ApplyError(ApplyErrorKind::Failed(error.into()))
    }

    fn tx(e: UnabortableTransactionError) -> Self {
        ApplyError(ApplyErrorKind::Tx(e))
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ApplyErrorKind::Tx(_) => f.write_str("read-model transaction failed"),
            ApplyErrorKind::Failed(_) => f.write_str("the projection failed"),
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            ApplyErrorKind::Tx(e) => Some(e),
            ApplyErrorKind::Failed(e) => Some(e.as_ref()),
        }
    }
}

/// Runs a [`SledProjection`] as a [`cqrs_core::Projection`] that owns its checkpoint
/// ([`OWNS_CHECKPOINT`](Projection::OWNS_CHECKPOINT)): each batch and its checkpoint are
/// one sled transaction.
///
/// The checkpoint is stored in the store's checkpoint tree under the projection's name,
/// so [`EventStore::load_checkpoint`](cqrs_core::CheckpointStore::load_checkpoint) shows it
/// too (for lag reports). [`reset`](Projection::reset) (used by a rebuild) marks the reset
/// first, so a crash in the middle of it finishes the reset on the next start instead of
/// replaying onto a half-cleared read model.
///
/// # Examples
/// ```
/// # use cqrs_core::{DomainEvent, Envelope};
/// # use cqrs_sled::{ApplyError, ReadModelTx, SledProjection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// # #[derive(Debug)]
/// # struct Count;
/// # impl SledProjection for Count {
/// #     type Event = CounterEvent;
/// #     fn name(&self) -> &str { "count" }
/// #     fn trees(&self) -> &[&str] { &["count"] }
/// #     fn apply(&self, tx: &ReadModelTx<'_>, batch: &[Envelope<CounterEvent>]) -> Result<(), ApplyError> {
/// #         let t = tx.tree("count")?;
/// #         let n = t.get(b"n")?.map_or(0, |v| v.len());
/// #         t.insert(b"n", &vec![0; n + batch.len()])
/// #     }
/// # }
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, ProjectionRunner, StreamId};
/// use cqrs_sled::{SledEventStore, TransactionalProjection};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SledEventStore::temporary()?;
/// let stream = StreamId::new("counter", "c1")?;
/// let event = EventData::new("Incremented", br#"{"Incremented":{"by":3}}"#.to_vec());
/// store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
///
/// let projection = TransactionalProjection::new(store.clone(), Count)?;
/// ProjectionRunner::new(store.clone(), projection).catch_up().await?;
/// assert_eq!(store.read_model("count", "count")?.get(b"n")?.map(|v| v.len()), Some(1));
/// # Ok(())
/// # }
/// ```
pub struct TransactionalProjection<P> {
    store: SledEventStore,
    projection: P,
    names: Vec<String>,
    /// The checkpoint tree first, then the read-model trees in `names` order.
    trees: Vec<sled::Tree>,
}

impl<P: SledProjection> fmt::Debug for TransactionalProjection<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalProjection")
            .field("name", &self.projection.name())
            .field("trees", &self.names)
            .finish_non_exhaustive()
    }
}

impl<P: SledProjection> TransactionalProjection<P> {
    /// Opens the projection's trees in `store`'s database.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad projection name (as for checkpoints) or a
    /// repeated tree name; [`Error::Store`] if sled cannot open a tree.
    pub fn new(store: SledEventStore, projection: P) -> cqrs_core::Result<Self> {
        cqrs_core::validate_checkpoint_name(projection.name())?;
        let names: Vec<String> = projection.trees().iter().map(|&n| n.to_owned()).collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(Error::invalid_input(format!(
                    "tree {name:?} is listed twice"
                )));
            }
        }
        let mut trees = vec![store.checkpoints_tree().clone()];
        for name in &names {
            trees.push(
                store
                    .db()
                    .open_tree(tree_name(projection.name(), name))
                    .map_err(store_error)?,
            );
        }
        Ok(TransactionalProjection {
            store,
            projection,
            names,
            trees,
        })
    }

    /// The wrapped projection.
    pub fn inner(&self) -> &P {
        &self.projection
    }

    fn marker(&self) -> Vec<u8> {
        [RESET_MARKER, self.projection.name().as_bytes()].concat()
    }

    /// Clears the read model and the checkpoint. The marker written first makes a crash
    /// in the middle resume the reset, never a replay onto a half-cleared model.
    fn clear(&self) -> Result<(), BoxError> {
        let checkpoints = self.store.checkpoints_tree();
        let marker = self.marker();
        checkpoints.insert(&marker[..], &[1u8][..])?;
        checkpoints.flush()?;
        for tree in &self.trees[1..] {
            tree.clear()?;
        }
        checkpoints.remove(self.projection.name().as_bytes())?;
        checkpoints.flush()?;
        checkpoints.remove(&marker[..])?;
        Ok(())
    }
}

impl<P: SledProjection> Projection for TransactionalProjection<P> {
    type Event = P::Event;
    const OWNS_CHECKPOINT: bool = true;

    fn name(&self) -> &str {
        self.projection.name()
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        self.projection.wants(record)
    }

    async fn apply(
        &mut self,
        batch: &[Envelope<P::Event>],
        checkpoint: Position,
    ) -> Result<(), BoxError> {
        let name = self.projection.name().as_bytes();
        let position = position_bytes(checkpoint);
        let outcome = self.trees[..].transaction(|views: &Vec<TransactionalTree>| {
            let (checkpoints, read_model) = views
                .split_first()
                .ok_or(ConflictableTransactionError::Abort(None))?;
            let tx = ReadModelTx {
                names: &self.names,
                trees: read_model,
            };
            match self.projection.apply(&tx, batch) {
                Ok(()) => {}
                Err(ApplyError(ApplyErrorKind::Tx(e))) => return Err(e.into()),
                Err(ApplyError(ApplyErrorKind::Failed(e))) => {
                    return Err(ConflictableTransactionError::Abort(Some(e)));
                }
            }
            checkpoints.insert(name, &position[..])?;
            Ok(())
        });
        match outcome {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(reason)) => {
                Err(reason.unwrap_or_else(|| "no checkpoint tree".into()))
            }
            Err(TransactionError::Storage(e)) => Err(Box::new(e)),
        }
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.clear()
    }

    async fn load_checkpoint(&mut self) -> Result<Option<Position>, BoxError> {
        let checkpoints = self.store.checkpoints_tree();
        if checkpoints.contains_key(self.marker())? {
            tracing::warn!(
                projection = self.projection.name(),
                "finishing an interrupted reset"
            );
            self.clear()?;
        }
        let name = self.projection.name();
        Ok(checkpoints
            .get(name.as_bytes())?
            .map(|bytes| decode_position(&bytes, name))
            .transpose()?)
    }
}

/// A read-model tree of a [`SledProjection`], for queries.
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
        let tree = self
            .db()
            .open_tree(tree_name(projection, tree))
            .map_err(store_error)?;
        Ok(ReadModel { tree })
    }
}

impl ReadModel {
    /// The value of `key`.
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails.
    pub fn get(&self, key: &[u8]) -> cqrs_core::Result<Option<Vec<u8>>> {
        Ok(self.tree.get(key).map_err(store_error)?.map(|v| v.to_vec()))
    }

    /// The entries whose key starts with `prefix`, in key order, read lazily.
    ///
    /// # Errors
    /// Items are [`Error::Store`] if sled fails.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = cqrs_core::Result<(Vec<u8>, Vec<u8>)>> + Send + use<> {
        self.tree.scan_prefix(prefix).map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(store_error)
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
