//! What a command is run with and what it returns: options (command id, metadata), the
//! loaded aggregate, the outcome, and the errors a caller tells apart.

use uuid::Uuid;

use crate::{Error, Metadata, Position, SnapshotIgnored, StreamId};

/// Per-command options: the command id (for idempotency) and metadata.
///
/// With a command id, the events' ids are derived from it (UUIDv5 of the stream and the
/// event's index), so running the same command again — a client retry, an at-least-once
/// message redelivered to a process manager — changes nothing and reports
/// [`Executed::already_applied`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// Makes the command idempotent; also the causation id of its events.
    pub command_id: Option<Uuid>,
    /// Correlation id of the events (defaults to the command id).
    pub correlation_id: Option<Uuid>,
    /// Free key/values copied into every event's metadata.
    pub metadata: Metadata,
}

impl CommandOptions {
    /// No command id, empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the command id.
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = Some(command_id);
        self
    }

    /// The command id for a client's idempotency key (an HTTP `Idempotency-Key` header, a
    /// `--command-id` flag): the key itself if it is a UUID, else the UUIDv5 of its text
    /// in a namespace of its own ([`KEY_NAMESPACE`](Self::KEY_NAMESPACE)). The same key
    /// always gives the same id, so a retried command is recognised as applied.
    pub fn id_from_key(key: &str) -> Uuid {
        Uuid::parse_str(key).unwrap_or_else(|_| Uuid::new_v5(&Self::KEY_NAMESPACE, key.as_bytes()))
    }

    /// The UUIDv5 namespace of [`id_from_key`](Self::id_from_key): fixed, so keys map to
    /// the same ids in every process and version.
    pub const KEY_NAMESPACE: Uuid = Uuid::from_u128(0xdba6_4e26_6bed_4feb_8bf1_46e0_37da_8c5a);

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Sets the metadata (its ids are overridden by the command and correlation ids).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Options for a command that a process manager sends in reaction to `trigger`: the
    /// command id is derived from the triggering event's id and `step` (a name for the
    /// reaction, so one event can trigger several commands), and the correlation id is
    /// carried over. A redelivered event then sends the same command id, which the
    /// repository recognises as already applied.
    pub fn caused_by<E>(trigger: &crate::Envelope<E>, step: &str) -> Self {
        CommandOptions {
            command_id: Some(Uuid::new_v5(&trigger.event_id, step.as_bytes())),
            correlation_id: Some(trigger.metadata.correlation_id.unwrap_or(trigger.event_id)),
            metadata: Metadata::default(),
        }
    }

    pub(crate) fn event_id(&self, stream: &StreamId, index: usize) -> Uuid {
        match self.command_id {
            Some(command_id) => Uuid::new_v5(&command_id, format!("{stream}#{index}").as_bytes()),
            None => Uuid::now_v7(),
        }
    }

    pub(crate) fn event_metadata(&self) -> Metadata {
        let mut metadata = self.metadata.clone();
        if self.command_id.is_some() {
            metadata.causation_id = self.command_id;
        }
        metadata.correlation_id = self
            .correlation_id
            .or(self.command_id)
            .or(metadata.correlation_id);
        metadata
    }
}

/// An aggregate loaded from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state after the last event.
    pub state: A,
    /// The stream's version (0 if it has no events).
    pub version: u64,
    /// The version of the snapshot the load started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// Why a stored snapshot was ignored (damaged, ahead of the stream, another schema
    /// version, not decodable), if it was.
    pub snapshot_ignored: Option<SnapshotIgnored>,
    /// How many events were applied on top of the snapshot (or from the start).
    pub events_replayed: u64,
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The stream's version afterwards.
    pub version: u64,
    /// The global position of the last event appended (`None` if nothing was appended).
    pub position: Option<Position>,
    /// How many events the command appended.
    pub events: usize,
    /// The command (same command id) had already been applied; nothing was written,
    /// and `version` and `position` are those of the earlier run. This is also the
    /// outcome of a duplicate that raced with its original and lost: the store reports
    /// its append as a duplicate ([`AppendResult::duplicate`](crate::AppendResult)).
    pub already_applied: bool,
    /// How many attempts it took (1 without a conflict).
    pub attempts: u32,
    /// Whether a snapshot was taken (or scheduled, in the background) after the append.
    pub snapshot_taken: bool,
}

/// Why a command failed: a domain rejection, a conflict that outlasted the retries, bad
/// input, or a store failure — kept apart so a caller can answer 422, 409, 400 or 503
/// without parsing text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command. Nothing was written. Handling: report it (422).
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Concurrent writers kept winning for `attempts` attempts. Nothing was written.
    /// Handling: try again later (409).
    #[error("conflict on {stream} after {attempts} attempts")]
    Conflict {
        /// The contended stream.
        stream: StreamId,
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: Error,
    },
    /// The input could not be used (bad aggregate id, an event that does not encode,
    /// personal data of a forgotten subject).
    /// Nothing was written. Handling: fix the input (400).
    #[error("invalid command input")]
    Invalid(#[source] Error),
    /// The store failed, or what it holds could not be decoded. Handling: retry later or
    /// report the store as unavailable (503).
    #[error("event store failure while executing a command")]
    Store(#[source] Error),
}

impl<E> CommandError<E> {
    /// Whether the aggregate refused the command ([`CommandError::Rejected`]).
    pub fn is_rejected(&self) -> bool {
        matches!(self, CommandError::Rejected(_))
    }

    /// Whether concurrent writers kept winning ([`CommandError::Conflict`]).
    pub fn is_conflict(&self) -> bool {
        matches!(self, CommandError::Conflict { .. })
    }

    /// Whether the input could not be used ([`CommandError::Invalid`]).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, CommandError::Invalid(_))
    }

    /// Whether the store failed or holds what cannot be read ([`CommandError::Store`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CommandError::Store(_))
    }

    /// The domain rejection, if the aggregate refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<Error> for CommandError<E> {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidStreamId { .. }
            | Error::InvalidInput { .. }
            | Error::Encode { .. }
            | Error::SubjectForgotten { .. }
            | Error::UnknownSubject { .. }
            | Error::StreamDeleted { .. }
            | Error::StreamNotFound { .. }
            | Error::Unsupported { .. } => CommandError::Invalid(error),
            other => CommandError::Store(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_is_its_uuid_or_a_stable_uuidv5() {
        let id = Uuid::now_v7();
        assert_eq!(CommandOptions::id_from_key(&id.to_string()), id);
        let key = CommandOptions::id_from_key("order-42/retry");
        assert_eq!(key, CommandOptions::id_from_key("order-42/retry"));
        assert_eq!(key.get_version_num(), 5);
        assert_ne!(key, CommandOptions::id_from_key("order-43/retry"));
    }
}
