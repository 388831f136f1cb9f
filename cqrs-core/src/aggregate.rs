//! The aggregate: a consistency boundary that decides commands and applies events.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{DomainEvent, Result, StreamId};

/// A consistency boundary: it decides commands against its current state and evolves by
/// applying the events it decided.
///
/// - [`handle`](Aggregate::handle) is a pure decision: no I/O, no clock, no randomness
///   beyond what [`Services`](Aggregate::Services) injects. It returns the events to
///   append, or a domain rejection ([`Error`](Aggregate::Error)).
/// - [`apply`](Aggregate::apply) never fails: an event is a fact that already happened.
/// - `Default` is the state before the first event.
/// - The state is `Serialize + Deserialize` so it can be snapshotted; bump
///   [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) when its shape changes, and old
///   snapshots are ignored (the stream is replayed in full instead).
///
/// # Examples
/// ```
/// use cqrs_core::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Incremented { by: u64 } }
///
/// impl DomainEvent for CounterEvent {
///     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
///     fn event_type(&self) -> &'static str { "Incremented" }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot increment by zero")]
/// struct IncrementByZero;
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = IncrementByZero;
///     type Services = ();
///
///     fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, IncrementByZero> {
///         if *by == 0 { return Err(IncrementByZero); }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
///
///     fn apply(&mut self, event: CounterEvent) {
///         match event { CounterEvent::Incremented { by } => self.value += by }
///     }
/// }
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type: the first part of every stream id of this aggregate
    /// (e.g. `account`). Stable, like event type names.
    const TYPE: &'static str;

    /// The version of the state's serialized shape, recorded with each snapshot.
    const SNAPSHOT_VERSION: u32 = 1;

    /// What callers ask the aggregate to do.
    type Command: Send + Sync;
    /// What the aggregate records.
    type Event: DomainEvent;
    /// A domain rejection (insufficient funds, already open, ...).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Injected dependencies of [`handle`](Aggregate::handle); `()` when there are none.
    type Services: Send + Sync + 'static;

    /// Decides `command` against the current state.
    ///
    /// # Errors
    /// A domain rejection; nothing is appended.
    fn handle(
        &self,
        command: &Self::Command,
        services: &Self::Services,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event.
    fn apply(&mut self, event: Self::Event);

    /// The stream id of the aggregate with this id.
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`](crate::Error::InvalidStreamId) for an empty or too long
    /// id.
    fn stream_id(id: &str) -> Result<StreamId> {
        Ok(StreamId::new(Self::TYPE, id)?)
    }
}
