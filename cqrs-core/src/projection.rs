//! Projections: read models built from the global log.

use std::future::Future;

use uuid::Uuid;

use crate::{BoxError, DomainEvent, Envelope, Error, Position, RecordedEvent, StreamId};

/// A read model kept up to date from the global log by a
/// [`ProjectionRunner`](crate::ProjectionRunner).
///
/// The runner reads the log from the projection's checkpoint, keeps the records it
/// [`wants`](Projection::wants), decodes them (after upcasting) and hands them over in
/// batches to [`apply`](Projection::apply), then stores the checkpoint. Three ways to keep
/// a read model:
///
/// - **external** (the default): any sink. The runner saves the checkpoint in the event
///   store after `apply` succeeds, so after a crash a batch may be applied again
///   (at-least-once); deduplicate with [`Envelope::event_id`] or make `apply` idempotent.
/// - **transactional**: the read model lives in the event store's database (sled trees,
///   PostgreSQL tables). Set [`OWNS_CHECKPOINT`](Projection::OWNS_CHECKPOINT), write the
///   `checkpoint` given to `apply` in the same transaction as the read model, and return
///   it from [`load_checkpoint`](Projection::load_checkpoint): exactly-once. The backend
///   crates provide adapters.
/// - **inline** (PostgreSQL): updated in the append's own transaction; see
///   `cqrs-postgres`.
///
/// # Examples
/// ```
/// use std::collections::HashMap;
/// use cqrs_core::{BoxError, DomainEvent, Envelope, Position, Projection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
///
/// /// Totals per counter, in memory.
/// #[derive(Debug, Default)]
/// struct Totals(HashMap<String, u64>);
///
/// impl Projection for Totals {
///     type Event = CounterEvent;
///
///     fn name(&self) -> &str {
///         "totals"
///     }
///
///     async fn apply(&mut self, batch: &[Envelope<CounterEvent>], _: Position) -> Result<(), BoxError> {
///         for e in batch {
///             let CounterEvent::Incremented { by } = e.event;
///             *self.0.entry(e.stream.id().to_owned()).or_default() += by;
///         }
///         Ok(())
///     }
///
///     async fn reset(&mut self) -> Result<(), BoxError> {
///         self.0.clear();
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + 'static {
    /// The events this projection decodes.
    type Event: DomainEvent;

    /// Whether the projection stores its own checkpoint, in the same transaction as its
    /// read model (exactly-once). When `false` (the default), the runner stores it in the
    /// event store.
    const OWNS_CHECKPOINT: bool = false;

    /// The projection's stable name: the key of its checkpoint.
    fn name(&self) -> &str;

    /// Whether the projection wants this record (after upcasting). The default takes the
    /// records whose type is one of `Self::Event::EVENT_TYPES`; narrow it, for example by
    /// `record.stream.aggregate_type()`, when two aggregates share type names.
    fn wants(&self, record: &RecordedEvent) -> bool {
        Self::Event::EVENT_TYPES.contains(&record.event_type.as_str())
    }

    /// Applies a batch of wanted events, in log order. `checkpoint` is the position the
    /// batch ends at (possibly after records the projection did not want); a projection
    /// that [owns its checkpoint](Projection::OWNS_CHECKPOINT) stores it with the batch.
    /// The batch may be empty (only the checkpoint moved).
    ///
    /// # Errors
    /// Any error: the runner retries the batch with backoff, then narrows the failure
    /// down to one event and stops, naming it ([`ProjectionError::Stopped`]).
    fn apply(
        &mut self,
        batch: &[Envelope<Self::Event>],
        checkpoint: Position,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Clears the read model before a rebuild (and, for a projection that owns its
    /// checkpoint, the checkpoint). The default does nothing.
    ///
    /// # Errors
    /// Any error stops the rebuild.
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// The stored checkpoint of a projection that [owns it](Projection::OWNS_CHECKPOINT).
    /// Not called otherwise. The default returns `None`.
    ///
    /// # Errors
    /// Any error is retried, then stops the runner.
    fn load_checkpoint(
        &mut self,
    ) -> impl Future<Output = Result<Option<Position>, BoxError>> + Send {
        async { Ok(None) }
    }
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
    /// The store kept failing (reading the log, saving the checkpoint).
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
    /// The projection's [`reset`](Projection::reset) or
    /// [`load_checkpoint`](Projection::load_checkpoint) failed.
    #[error("projection {projection:?}: {operation} failed")]
    Projection {
        /// The projection's name.
        projection: String,
        /// `"reset"`, `"load_checkpoint"`, or `"apply (checkpoint only)"` (an empty batch
        /// that only moves an owned checkpoint kept failing).
        operation: &'static str,
        /// The projection's error.
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
