//! Projections: read models built from the global log.

use std::future::Future;

use uuid::Uuid;

use crate::{BoxError, DomainEvent, Envelope, Error, Position, RecordedEvent, StreamId};

/// A read model kept up to date from the global log by a
/// [`ProjectionRunner`](crate::ProjectionRunner).
///
/// The runner reads the log from the projection's checkpoint, keeps the records it
/// [`wants`](Projection::wants), decodes them (after upcasting) and hands them over in
/// batches to [`apply`](Projection::apply). Where the checkpoint is kept is not the
/// projection's business: it is the [`CheckpointStrategy`](crate::CheckpointStrategy)
/// chosen when the runner is built, and that strategy also decides the context `Cx`
/// that `apply` gets:
///
/// | read model | strategy | `Cx` | delivery |
/// |---|---|---|---|
/// | in memory | [`InMemoryCheckpoint`](crate::InMemoryCheckpoint) (the default) | `()` | rebuilt by each new runner |
/// | external sink, process manager | [`StoreCheckpoint`](crate::StoreCheckpoint) | `()` | at-least-once |
/// | PostgreSQL tables | `cqrs_postgres::TransactionalCheckpoint` | `PgConnection` (the open transaction) | exactly-once |
/// | sled trees | `cqrs_sled::TransactionalCheckpoint` | `cqrs_sled::ReadModelTx` | exactly-once |
///
/// A PostgreSQL projection can also run *inline*, in each append's own transaction
/// (`PostgresEventStoreBuilder::inline_projection`): the same trait, the same context.
///
/// # Examples
/// An in-memory read model, as a cheap handle its readers clone (so it can be read
/// while its runner runs):
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, PoisonError, RwLock};
/// use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
///
/// /// Totals per counter, in memory.
/// #[derive(Debug, Clone, Default)]
/// struct Totals(Arc<RwLock<HashMap<String, u64>>>);
///
/// impl Projection for Totals {
///     type Event = CounterEvent;
///
///     fn name(&self) -> &str {
///         "totals"
///     }
///
///     async fn apply(&mut self, _: &mut (), batch: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
///         let mut totals = self.0.write().unwrap_or_else(PoisonError::into_inner);
///         for e in batch {
///             let CounterEvent::Incremented { by } = e.event;
///             *totals.entry(e.stream.id().to_owned()).or_default() += by;
///         }
///         Ok(())
///     }
///
///     async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
///         self.0.write().unwrap_or_else(PoisonError::into_inner).clear();
///         Ok(())
///     }
/// }
/// ```
pub trait Projection<Cx = ()>: Send + 'static {
    /// The events this projection decodes.
    type Event: DomainEvent;

    /// The projection's stable name: the key of its checkpoint (for the strategies that
    /// store one), in errors and logs.
    fn name(&self) -> &str;

    /// Whether the projection wants this record (after upcasting). The default takes the
    /// records whose type is one of `Self::Event::EVENT_TYPES`; narrow it, for example by
    /// `record.stream.aggregate_type()`, when two aggregates share type names.
    fn wants(&self, record: &RecordedEvent) -> bool {
        Self::Event::EVENT_TYPES.contains(&record.event_type.as_str())
    }

    /// Applies a batch of wanted events, in log order, with the context `cx` that the
    /// runner's [`CheckpointStrategy`](crate::CheckpointStrategy) provides (`()`, or an
    /// open transaction that the strategy commits together with the checkpoint: do not
    /// commit or roll it back). The batch may be empty (only the checkpoint moved).
    ///
    /// # Errors
    /// Any error: the runner retries the batch with backoff, then narrows the failure
    /// down to one event and stops, naming it ([`ProjectionError::Stopped`]). A
    /// transactional strategy rolls the batch back first.
    fn apply(
        &mut self,
        cx: &mut Cx,
        batch: &[Envelope<Self::Event>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Clears the read model, before a rebuild (and, with
    /// [`InMemoryCheckpoint`](crate::InMemoryCheckpoint), when a new runner starts), in
    /// the same context as `apply`. The strategy resets the checkpoint itself. The
    /// default does nothing: right for a process manager, wrong for a read model that
    /// holds data.
    ///
    /// # Errors
    /// Any error stops the rebuild (a transactional strategy rolls it back).
    fn reset(&mut self, cx: &mut Cx) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }
}

/// Whether `projection` takes `record`: what runners and consumers ask before decoding.
///
/// It is [`Projection::wants`], except for a tombstone ([`STREAM_DELETED`](crate::STREAM_DELETED)):
/// only a projection whose event type lists that type gets it, whatever its `wants`
/// says. So a `wants` that takes every record of a stream type does not make a
/// projection stop on a tombstone it cannot decode.
pub fn projection_takes<P: Projection<Cx>, Cx>(projection: &P, record: &RecordedEvent) -> bool {
    if crate::StreamDeleted::is_tombstone(record)
        && !P::Event::EVENT_TYPES.contains(&crate::STREAM_DELETED)
    {
        return false;
    }
    projection.wants(record)
}

/// Why a projection runner stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// An event could not be decoded, or the projection kept failing on it. The event is
    /// named; the checkpoint is just before it, so a restart resumes there.
    ///
    /// Handling: fix the code or the data and restart; nothing is skipped silently.
    #[error(
        "projection {projection:?} stopped at event {event_id} ({stream} version {version}, \
         position {position}) after {attempts} attempt(s)"
    )]
    Stopped {
        /// The projection's name.
        projection: String,
        /// The failing event's id.
        event_id: Uuid,
        /// The failing event's stream.
        stream: StreamId,
        /// The failing event's version in its stream.
        version: u64,
        /// The failing event's position in the log.
        position: Position,
        /// How many times it was tried.
        attempts: u32,
        /// The last error.
        #[source]
        source: BoxError,
    },
    /// The store kept failing: reading the log, or loading or saving the checkpoint
    /// (the strategy's storage failed with an [`Error`]).
    ///
    /// Handling: the checkpoint is intact; restart when the store is back.
    #[error("projection {projection:?}: the event store kept failing")]
    Store {
        /// The projection's name.
        projection: String,
        /// The store's last error.
        #[source]
        source: Error,
    },
    /// The projection's [`reset`](Projection::reset) failed, or its checkpoint strategy
    /// failed with an error of its own (not a store [`Error`]).
    ///
    /// Handling: fix the cause and restart; the checkpoint did not move.
    #[error("projection {projection:?}: {operation} failed")]
    Projection {
        /// The projection's name.
        projection: String,
        /// `"reset"`, `"start"` (the strategy's preparation of a run, such as
        /// finishing an interrupted reset), `"load_checkpoint"`, `"save_checkpoint"`,
        /// or `"apply (checkpoint only)"` (an empty batch that only moves the checkpoint
        /// kept failing).
        operation: &'static str,
        /// The error.
        #[source]
        source: BoxError,
    },
    /// The task running the projection panicked.
    #[error("projection {projection:?} panicked: {message}")]
    Panicked {
        /// The projection's name.
        projection: String,
        /// The panic's message.
        message: String,
    },
}
