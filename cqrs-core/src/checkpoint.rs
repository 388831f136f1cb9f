//! Checkpoint strategies: where a projection's checkpoint is kept, chosen when its
//! runner is built.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use crate::{BoxError, CheckpointStore, Envelope, Position, Projection};

/// Where a [`ProjectionRunner`](crate::ProjectionRunner) keeps its projection's
/// checkpoint, and so what delivery the read model gets. Chosen when the runner is built
/// ([`ProjectionRunner::with_strategy`](crate::ProjectionRunner::with_strategy)); the
/// projection itself knows nothing of it.
///
/// A strategy also provides the [`Context`](Self::Context) that
/// [`Projection::apply`] gets: `()` when the read model and the checkpoint are written
/// separately, an open transaction when they are written together.
///
/// | strategy | checkpoint | after a restart | delivery |
/// |---|---|---|---|
/// | [`InMemoryCheckpoint`] | in memory, beside an in-memory read model | the read model is rebuilt from the start | once per checkpoint |
/// | [`StoreCheckpoint`] | in the event store, saved after `apply` | resumes after the last saved batch | at-least-once |
/// | `cqrs_postgres::TransactionalCheckpoint` | in the read model's PostgreSQL transaction | resumes where the read model is | exactly-once |
/// | `cqrs_sled::TransactionalCheckpoint` | in the read model's sled transaction | resumes where the read model is | exactly-once |
///
/// Only a read model that survives a restart may use a durable checkpoint: an in-memory
/// read model with a checkpoint in the store would resume from where an earlier
/// process stopped, and silently miss everything before. That is why
/// [`ProjectionRunner::new`](crate::ProjectionRunner::new) keeps the checkpoint in memory.
///
/// The runner calls the methods in this order: [`start`](Self::start) once per run
/// ([`catch_up`](crate::ProjectionRunner::catch_up),
/// [`run_until`](crate::ProjectionRunner::run_until)), then [`apply`](Self::apply)
/// followed by [`save`](Self::save) for each batch. A
/// [`rebuild`](crate::ProjectionRunner::rebuild) calls [`reset`](Self::reset), then
/// `apply` and `save` for each batch of the whole log, then
/// [`finish_rebuild`](Self::finish_rebuild) once the new read model is complete. It
/// retries each call under its [`RetryPolicy`](crate::RetryPolicy).
///
/// A strategy may build the new read model *beside* the old one (blue/green): readers
/// keep the old model and checkpoint until `finish_rebuild` switches to the new one, so
/// a rebuild that fails half-way (a poisoned event, a crash, a full disk) leaves the old
/// read model serving. Both transactional strategies do; [`InMemoryCheckpoint`] and
/// [`StoreCheckpoint`] rebuild in place (the projection's own
/// [`reset`](Projection::reset) decides what a reader sees meanwhile).
pub trait CheckpointStrategy: Send + 'static {
    /// What [`Projection::apply`] and [`Projection::reset`] get: `()`, or the open
    /// transaction that the batch is written in.
    type Context;

    /// The stored checkpoint, `None` if there is none; for reports. It changes nothing.
    ///
    /// # Errors
    /// A store [`Error`](crate::Error) (reported as [`ProjectionError::Store`]), or any
    /// other error (reported as [`ProjectionError::Projection`]); retried first.
    ///
    /// [`ProjectionError::Store`]: crate::ProjectionError::Store
    /// [`ProjectionError::Projection`]: crate::ProjectionError::Projection
    fn load(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Position>, BoxError>> + Send;

    /// Prepares a run and returns where it starts. The default returns the
    /// [`load`](Self::load)ed checkpoint, or [`Position::START`].
    ///
    /// # Errors
    /// As for [`load`](Self::load).
    fn start<P: Projection<Self::Context>>(
        &mut self,
        projection: &mut P,
    ) -> impl Future<Output = Result<Position, BoxError>> + Send {
        async move {
            let stored = self.load(projection.name()).await?;
            Ok(stored.unwrap_or(Position::START))
        }
    }

    /// Applies one batch, whose log position ends at `checkpoint`. A transactional
    /// strategy writes `checkpoint` in the batch's transaction.
    ///
    /// # Errors
    /// The projection's error, or the transaction's; nothing of the batch is kept by a
    /// transactional strategy. The runner retries, then isolates the failing event.
    fn apply<P: Projection<Self::Context>>(
        &mut self,
        projection: &mut P,
        batch: &[Envelope<P::Event>],
        checkpoint: Position,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Records `checkpoint` after [`apply`](Self::apply) succeeded. The default does
    /// nothing (a transactional strategy already wrote it).
    ///
    /// # Errors
    /// As for [`load`](Self::load).
    fn save(
        &mut self,
        name: &str,
        checkpoint: Position,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (name, checkpoint);
        async { Ok(()) }
    }

    /// Starts a rebuild: from here until [`finish_rebuild`](Self::finish_rebuild), the
    /// read model being built is empty ([`Projection::reset`] ran on it) and its
    /// checkpoint is at the start. A blue/green strategy starts a new model beside the
    /// one readers see; others clear the model in place.
    ///
    /// # Errors
    /// The projection's or the store's error.
    fn reset<P: Projection<Self::Context>>(
        &mut self,
        projection: &mut P,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Ends a rebuild whose batches were all applied: a blue/green strategy switches
    /// readers to the new read model (at once, with its checkpoint) and discards the old
    /// one. The default does nothing (the model was rebuilt in place).
    ///
    /// A rebuild that fails never calls it: a blue/green strategy's readers keep the old
    /// model, and the next [`start`](Self::start) or [`reset`](Self::reset) discards
    /// the unfinished one.
    ///
    /// # Errors
    /// The projection's or the store's error; the old model then stays.
    fn finish_rebuild<P: Projection<Self::Context>>(
        &mut self,
        projection: &mut P,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = projection;
        async { Ok(()) }
    }
}

/// The checkpoint of an in-memory read model, kept in memory beside it: what
/// [`ProjectionRunner::new`](crate::ProjectionRunner::new) uses.
///
/// A runner with a new `InMemoryCheckpoint` starts by [resetting](Projection::reset) the
/// read model and replays the whole log; after that it resumes from where it is. So a
/// read model in memory is never left partial by a checkpoint that another runner or
/// another process saved in the store, and a model handed to a second runner with a new
/// checkpoint is rebuilt, not applied twice (give such a model a
/// [`reset`](Projection::reset) that clears it).
///
/// Clones share the checkpoint. An application that keeps a read-model handle (to read
/// it) and makes runners for it on demand keeps one `InMemoryCheckpoint` beside the
/// handle and gives each runner a clone: each resumes where the model is. Run one such
/// runner at a time.
///
/// # Examples
/// ```
/// use cqrs_core::{CheckpointStrategy, InMemoryCheckpoint, Position};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cqrs_core::BoxError> {
/// let mut checkpoint = InMemoryCheckpoint::new();
/// assert_eq!(checkpoint.load("balances").await?, None); // nothing applied yet
/// checkpoint.save("balances", Position::new(0, 7)).await?;
/// // A clone (kept beside the read model, for the next runner) sees it.
/// assert_eq!(checkpoint.clone().load("balances").await?, Some(Position::new(0, 7)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpoint {
    at: Arc<Mutex<Option<Position>>>,
}

impl InMemoryCheckpoint {
    /// A checkpoint with nothing applied yet: the runner rebuilds the read model.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self) -> Option<Position> {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, position: Position) {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner) = Some(position);
    }
}

impl CheckpointStrategy for InMemoryCheckpoint {
    type Context = ();

    async fn load(&mut self, _name: &str) -> Result<Option<Position>, BoxError> {
        Ok(self.get())
    }

    async fn start<P: Projection>(&mut self, projection: &mut P) -> Result<Position, BoxError> {
        match self.get() {
            Some(at) => Ok(at),
            None => {
                // Whatever the model holds was not applied under this checkpoint: start
                // over.
                projection.reset(&mut ()).await?;
                self.set(Position::START);
                Ok(Position::START)
            }
        }
    }

    async fn apply<P: Projection>(
        &mut self,
        projection: &mut P,
        batch: &[Envelope<P::Event>],
        _checkpoint: Position,
    ) -> Result<(), BoxError> {
        projection.apply(&mut (), batch).await
    }

    async fn save(&mut self, _name: &str, checkpoint: Position) -> Result<(), BoxError> {
        self.set(checkpoint);
        Ok(())
    }

    async fn reset<P: Projection>(&mut self, projection: &mut P) -> Result<(), BoxError> {
        projection.reset(&mut ()).await?;
        self.set(Position::START);
        Ok(())
    }
}

/// The checkpoint in the event store, under the projection's name, saved after each
/// batch's `apply`: for read models outside the store (another database, a search
/// index, a message broker) and for process managers.
///
/// A crash between `apply` and the save applies the batch again on restart:
/// **at-least-once**. Make `apply` idempotent, or deduplicate with
/// [`Envelope::event_id`]. Do not use it for a read model in memory: after a restart the
/// model would be empty while the checkpoint says it is up to date.
///
/// Progress is saved with [`CheckpointStore::advance_checkpoint`] (a crash of the
/// database may take the last saves back: more of the same redelivery); a reset saves
/// the start durably before it resets the read model.
///
/// # Examples
/// ```
/// # use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// /// Forwards every increment to another system.
/// struct Forwarder;
///
/// impl Projection for Forwarder {
///     type Event = CounterEvent;
///     fn name(&self) -> &str { "forwarder" }
///     async fn apply(&mut self, _: &mut (), batch: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
///         // send each event, keyed by `event_id` so the receiver can drop duplicates
///         Ok(())
///     }
/// }
///
/// use cqrs_core::{CheckpointStore, EventData, EventLog, ExpectedVersion, InMemoryEventStore, Position};
/// use cqrs_core::{ProjectionRunner, StoreCheckpoint, StreamId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new("counter", "c1")?;
/// let event = EventData::new("Incremented", br#"{"Incremented":{"by":3}}"#.to_vec());
/// store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
///
/// let checkpoint = StoreCheckpoint::new(store.clone());
/// let mut runner = ProjectionRunner::with_strategy(store.clone(), Forwarder, checkpoint);
/// runner.catch_up().await?;
/// assert_eq!(store.load_checkpoint("forwarder").await?, Some(Position::new(0, 1)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StoreCheckpoint<S> {
    store: S,
}

impl<S> StoreCheckpoint<S> {
    /// Keeps the checkpoint in `store`.
    pub fn new(store: S) -> Self {
        StoreCheckpoint { store }
    }

    /// The store holding the checkpoint.
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S: CheckpointStore + 'static> CheckpointStrategy for StoreCheckpoint<S> {
    type Context = ();

    async fn load(&mut self, name: &str) -> Result<Option<Position>, BoxError> {
        Ok(self.store.load_checkpoint(name).await?)
    }

    async fn apply<P: Projection>(
        &mut self,
        projection: &mut P,
        batch: &[Envelope<P::Event>],
        _checkpoint: Position,
    ) -> Result<(), BoxError> {
        projection.apply(&mut (), batch).await
    }

    /// Saves progress with [`advance_checkpoint`](CheckpointStore::advance_checkpoint):
    /// at least once allows a database crash to take the last ones back.
    async fn save(&mut self, name: &str, checkpoint: Position) -> Result<(), BoxError> {
        Ok(self.store.advance_checkpoint(name, checkpoint).await?)
    }

    /// Moves the checkpoint back to the start first (durably), then resets the read
    /// model: a crash in between replays everything onto the old model (at least once),
    /// never resumes the cleared model from the old checkpoint.
    async fn reset<P: Projection>(&mut self, projection: &mut P) -> Result<(), BoxError> {
        self.store
            .save_checkpoint(projection.name(), Position::START)
            .await?;
        projection.reset(&mut ()).await
    }
}
