//! Domain events, the records a store keeps, and their metadata.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Position, StreamId};

/// An event of a domain: something that happened, named in the past tense.
///
/// Each event has a stable [`event_type`](DomainEvent::event_type) name, stored with the
/// record: it is how old records are found by upcasters and projections long after the
/// Rust type was renamed or moved, so never derive it from a Rust type path. Each type
/// name has a [`schema_version`](DomainEvent::schema_version); bump it when the payload's
/// shape changes and register an upcaster ([`Upcasters`](crate::Upcasters)) that lifts
/// the old shape.
///
/// # Deriving it
///
/// With the `derive` feature of `cqrs-core`, `#[derive(DomainEvent)]` writes the impl, so
/// each name is written once, beside the variant it names:
///
/// - On an enum, each variant is one event type, named after the variant, or by
///   `#[event(name = "...")]` on it. [`EVENT_TYPES`](DomainEvent::EVENT_TYPES) lists the
///   names in declaration order and [`event_type`](DomainEvent::event_type) matches on
///   the variant, so the two cannot disagree.
/// - On a struct, the struct is one event type, named after it or by
///   `#[event(name = "...")]` on the struct.
/// - `#[event(schema_version = N)]` sets that type's
///   [`schema_version`](DomainEvent::schema_version); the others stay at 1.
///
/// The names are stored with every event: before renaming a variant whose events are
/// stored, pin its old name with `name`. Two variants with one name, an empty name, an
/// unknown key, a `schema_version` that is not an integer from 1, and a union are
/// compile errors. The macro's own documentation has the details.
///
/// ```
/// use cqrs_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum AccountEvent {
///     #[event(name = "AccountOpened")]
///     Opened { owner: String },
///     #[event(name = "MoneyDeposited", schema_version = 2)]
///     Deposited { amount_cents: i64 },
///     Closed,
/// }
///
/// assert_eq!(AccountEvent::EVENT_TYPES, ["AccountOpened", "MoneyDeposited", "Closed"]);
/// let deposit = AccountEvent::Deposited { amount_cents: 500 };
/// assert_eq!(deposit.event_type(), "MoneyDeposited");
/// assert_eq!(deposit.schema_version(), 2);
/// assert_eq!(AccountEvent::Closed.schema_version(), 1);
/// ```
///
/// # Implementing it by hand
///
/// Without the feature, or for names the derive cannot express, write the impl. This one
/// is what the derive above generates; keep `EVENT_TYPES` and `event_type` in step (the
/// [test kit](crate::testkit) checks every event it sees against the list).
///
/// ```
/// use cqrs_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount_cents: i64 },
///     Closed,
/// }
///
/// impl DomainEvent for AccountEvent {
///     const EVENT_TYPES: &'static [&'static str] = &["AccountOpened", "MoneyDeposited", "Closed"];
///
///     fn event_type(&self) -> &'static str {
///         match self {
///             AccountEvent::Opened { .. } => "AccountOpened",
///             AccountEvent::Deposited { .. } => "MoneyDeposited",
///             AccountEvent::Closed => "Closed",
///         }
///     }
///
///     fn schema_version(&self) -> u32 {
///         match self {
///             AccountEvent::Deposited { .. } => 2,
///             _ => 1,
///         }
///     }
/// }
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every type name this Rust type decodes (the current names, after upcasting).
    ///
    /// A record whose type is not listed is reported as
    /// [`Error::UnknownEventType`](crate::Error::UnknownEventType) when a stream is loaded,
    /// and skipped by projections over this type.
    const EVENT_TYPES: &'static [&'static str];

    /// The stable name of this event's type, one of [`Self::EVENT_TYPES`].
    fn event_type(&self) -> &'static str;

    /// The version of this event type's payload shape. Starts at 1 (the default).
    fn schema_version(&self) -> u32 {
        1
    }

    /// This type's value for a tombstone (the record a
    /// [`delete_stream`](crate::StreamLifecycle::delete_stream) leaves), when
    /// [`Self::EVENT_TYPES`] lists [`STREAM_DELETED`](crate::STREAM_DELETED): how a
    /// projection is told that a stream was deleted. The default has none.
    ///
    /// The derive writes it for the variant named `"$stream-deleted"`, which must hold
    /// one [`StreamDeleted`](crate::StreamDeleted) (see there).
    fn from_stream_deleted(deleted: crate::StreamDeleted) -> Option<Self> {
        let _ = deleted;
        None
    }
}

/// Metadata recorded with every event: correlation and causation ids, plus free
/// key/value pairs (user id, request id, tenant, ...).
///
/// The command layer sets `causation_id` to the command id and `correlation_id` to the
/// caller's correlation id (or the command id), so a chain of commands and events can be
/// followed across aggregates and process managers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Groups every message caused, directly or not, by one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the message (command or event) that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Free key/value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Adds a free key/value pair.
    pub fn with_value(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }
}

/// A serialized event on its way into a store: what [`EventLog::append`] takes.
///
/// [`EventLog::append`]: crate::EventLog::append
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// Unique id; re-appending the same ids is a no-op (idempotent append).
    pub event_id: Uuid,
    /// Stable type name.
    pub event_type: String,
    /// Version of the payload's shape.
    pub schema_version: u32,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// Correlation, causation and free key/values.
    pub metadata: Metadata,
}

impl EventData {
    /// A new event with a fresh time-ordered (v7) id, schema version 1 and empty metadata.
    ///
    /// A UUIDv7 starts with the Unix time in milliseconds, and the ids this process makes
    /// sort in the order it made them, so a store's event-id index grows at one end
    /// instead of taking inserts at random places (ADR 0012). The id reveals when the
    /// event was made; it is an identifier, not a secret.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        EventData {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload: payload.into(),
            metadata: Metadata::default(),
        }
    }

    /// Sets the event id.
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// An event as a store recorded it: the envelope of contract 6 on [`EventStore`](crate::EventStore), payload still
/// serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Unique id given at append time.
    pub event_id: Uuid,
    /// The stream (aggregate type and id) the event belongs to.
    pub stream: StreamId,
    /// Version within the stream: 1, 2, 3, ... without holes.
    pub version: u64,
    /// Position in the global log.
    pub position: Position,
    /// Stable type name.
    pub event_type: String,
    /// Version of the payload's shape.
    pub schema_version: u32,
    /// When the store recorded the event (UTC; backends keep at least microseconds).
    pub recorded_at: SystemTime,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// Correlation, causation and free key/values.
    pub metadata: Metadata,
}

/// A decoded event with its envelope: what aggregates' callers and projections see.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<E> {
    /// Unique id given at append time (use it to deduplicate in at-least-once sinks).
    pub event_id: Uuid,
    /// The stream the event belongs to.
    pub stream: StreamId,
    /// Version within the stream.
    pub version: u64,
    /// Position in the global log.
    pub position: Position,
    /// When the store recorded the event.
    pub recorded_at: SystemTime,
    /// Correlation, causation and free key/values.
    pub metadata: Metadata,
    /// The decoded (and upcast) event.
    pub event: E,
}
