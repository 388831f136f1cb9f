//! The error type of the store, codec and loading layers.

use uuid::Uuid;

use crate::{ExpectedVersion, InvalidPosition, InvalidStreamId, StreamId};

/// A boxed error from a backend, a codec or an upcaster.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to an event store or decoding what it holds.
///
/// Every backend reports the same variants, so callers handle a concurrency conflict or a
/// corrupt record the same way on sled, PostgreSQL or the in-memory store. Each variant
/// says how a caller is expected to handle it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the version the append expected, or an idempotent re-append
    /// only partly matched what the stream holds, or (PostgreSQL's `append_in` only) the
    /// stream's last event was written by a transaction that started after the caller's:
    /// appending then would put the new event before its predecessor in the global log,
    /// so the caller's transaction must be retried as a new one (`actual` may then equal
    /// the expected version).
    ///
    /// Handling: reload the aggregate and decide again (the command layer does this for
    /// you, within its retry policy). Maps to HTTP 409.
    #[error(
        "version conflict on stream {stream}: expected {expected}, stream is at version {actual}"
    )]
    Conflict {
        /// The stream that was appended to.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused (0 if it has no events).
        actual: u64,
    },

    /// An appended event id is already used by an event of another stream.
    ///
    /// Handling: a bug in the caller (event ids must be unique across the store); nothing
    /// was written.
    #[error("event id {event_id} is already used in stream {existing_stream}")]
    DuplicateEventId {
        /// The event id that is already taken.
        event_id: Uuid,
        /// The stream that holds the event with this id.
        existing_stream: StreamId,
    },

    /// A stream id that cannot be stored: empty, too long, or containing a NUL character.
    ///
    /// Handling: bad input; report it to the user. Nothing was written. Maps to HTTP 400.
    #[error("invalid stream id: {reason}")]
    InvalidStreamId {
        /// Why the id was refused.
        reason: String,
    },

    /// An argument the store cannot accept (an empty append, a duplicate event id within
    /// one batch, a name that is empty or too long, ...).
    ///
    /// Handling: bad input; nothing was written. Maps to HTTP 400.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },

    /// A recorded event has a type that the reading code does not know (after upcasting).
    ///
    /// Handling: deploy code that knows the type, or register an upcaster. Nothing is lost:
    /// the record is still in the store.
    #[error(
        "unknown event type {event_type:?} (schema version {schema_version}) at {stream} version {version}"
    )]
    UnknownEventType {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's version in its stream.
        version: u64,
        /// The unknown type name.
        event_type: String,
        /// The record's schema version.
        schema_version: u32,
    },

    /// A recorded event's payload could not be decoded (or upcast) into the domain type.
    ///
    /// Handling: fix the codec or register an upcaster. The record is still in the store.
    #[error("cannot decode event {event_type:?} at {stream} version {version}")]
    Decode {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's version in its stream.
        version: u64,
        /// The event's type name.
        event_type: String,
        /// What the codec or upcaster reported.
        #[source]
        source: BoxError,
    },

    /// A domain event or a snapshot could not be encoded.
    ///
    /// Handling: a bug in the domain type's serialization. Nothing was written.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded (an event type name, or "snapshot").
        what: String,
        /// What the codec reported.
        #[source]
        source: BoxError,
    },

    /// A record in the store is damaged: its bytes do not form a valid record.
    ///
    /// Handling: restore the record from a backup. Other records stay readable.
    #[error("corrupt record in {location}: {reason}")]
    Corrupt {
        /// Where the damaged record is (for example `stream account/42 version 7`).
        location: String,
        /// What is wrong with it.
        reason: String,
    },

    /// [`forget`](crate::Shredded::forget) of a data subject that the key store knows
    /// nothing of (it never had personal data stored).
    ///
    /// Handling: bad input (a wrong subject id); nothing was written. Maps to HTTP 404.
    #[error("unknown data subject {subject:?}: it has no key")]
    UnknownSubject {
        /// The subject id.
        subject: String,
    },

    /// An append (or a snapshot) holds personal data of a subject that was forgotten:
    /// it would be readable again, so it is refused.
    ///
    /// Handling: bad input; nothing was written. Maps to HTTP 409 or 422.
    #[error("data subject {subject:?} was forgotten: no new personal data is stored for it")]
    SubjectForgotten {
        /// The subject id.
        subject: String,
    },

    /// The stream was deleted ([`delete_stream`](crate::StreamLifecycle::delete_stream)):
    /// it holds only its tombstone, at `version`, and takes no more events.
    ///
    /// Handling: the aggregate is gone for good; report it (HTTP 410). Nothing was
    /// written.
    #[error("stream {stream} was deleted (its tombstone is version {version})")]
    StreamDeleted {
        /// The deleted stream.
        stream: StreamId,
        /// The tombstone's version.
        version: u64,
    },

    /// An operation on a whole stream (delete, truncate) found no such stream.
    ///
    /// Handling: bad input; nothing was written. Maps to HTTP 404.
    #[error("stream {stream} has no events")]
    StreamNotFound {
        /// The stream asked for.
        stream: StreamId,
    },

    /// The store does not implement this operation (a provided body of an optional
    /// capability, such as [`StreamLifecycle`](crate::StreamLifecycle)).
    ///
    /// Handling: use a store that has it; nothing was written.
    #[error("this event store does not support {operation} (asked for stream {stream})")]
    Unsupported {
        /// The operation.
        operation: &'static str,
        /// The stream it was asked for.
        stream: StreamId,
    },

    /// The backend failed: I/O error, lost connection, full disk, ...
    ///
    /// Handling: retry later or report the store as unavailable (HTTP 503).
    #[error("event store failure")]
    Store {
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a backend error as [`Error::Store`].
    pub fn store(source: impl Into<BoxError>) -> Self {
        Error::Store {
            source: source.into(),
        }
    }

    /// Builds an [`Error::Unsupported`].
    pub fn unsupported(operation: &'static str, stream: &StreamId) -> Self {
        Error::Unsupported {
            operation,
            stream: stream.clone(),
        }
    }

    /// Builds an [`Error::InvalidInput`].
    pub fn invalid_input(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            reason: reason.into(),
        }
    }

    /// Whether this is a concurrency conflict ([`Error::Conflict`]): reload and decide
    /// again (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Whether the caller's input was refused and nothing was written
    /// ([`Error::InvalidInput`], [`Error::InvalidStreamId`], [`Error::Encode`],
    /// [`Error::DuplicateEventId`], [`Error::UnknownSubject`], [`Error::SubjectForgotten`]):
    /// fix the input (HTTP 400).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput { .. }
                | Error::InvalidStreamId { .. }
                | Error::Encode { .. }
                | Error::DuplicateEventId { .. }
                | Error::UnknownSubject { .. }
                | Error::SubjectForgotten { .. }
        )
    }

    /// Whether the backend failed ([`Error::Store`]): the store is unavailable for now;
    /// retry later (HTTP 503). The outcome of an append that failed so is unknown:
    /// re-append the same event ids to find out.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Store { .. })
    }

    /// Whether a stored record could not be read as data ([`Error::Corrupt`],
    /// [`Error::Decode`], [`Error::UnknownEventType`]): the record stays in the store;
    /// deploy code that reads it, or restore it.
    pub fn is_unreadable_record(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::Decode { .. } | Error::UnknownEventType { .. }
        )
    }
}

impl From<InvalidStreamId> for Error {
    fn from(e: InvalidStreamId) -> Self {
        Error::InvalidStreamId { reason: e.reason }
    }
}

impl From<InvalidPosition> for Error {
    fn from(e: InvalidPosition) -> Self {
        Error::invalid_input(e.to_string())
    }
}
