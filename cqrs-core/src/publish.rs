//! The publishing contract: how recorded events leave the service through a broker.
//!
//! A [`Relay`](crate::Relay) reads the global log and hands [`OutboundMessage`]s to a
//! [`Publisher`]; one crate per broker implements the trait (`cqrs-nats` for NATS
//! JetStream). The message format is the broker-neutral part, defined once here: the
//! subject ([`SubjectScheme`]), the message id (the event id), the headers
//! ([`headers`]) and the payload (the stored payload's bytes, unchanged).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use uuid::Uuid;

use crate::{BoxError, Metadata, Position, RecordedEvent, StreamId};

/// The names of the headers every published message carries: the envelope of the
/// event, so a consumer in another service rebuilds the [`RecordedEvent`] with
/// [`decode_message`].
///
/// Values are ASCII: free text (types, ids, metadata JSON) is percent-encoded as by
/// [`escape_token`]. The message id (the event id) is also a header of its own,
/// [`EVENT_ID`](headers::EVENT_ID), so a consumer never depends on a broker's id field.
pub mod headers {
    /// The event id (a UUID, hyphenated).
    pub const EVENT_ID: &str = "Cqrs-Event-Id";
    /// The stream's aggregate type (percent-encoded).
    pub const STREAM_TYPE: &str = "Cqrs-Stream-Type";
    /// The stream's aggregate id (percent-encoded).
    pub const STREAM_ID: &str = "Cqrs-Stream-Id";
    /// The event's version in its stream (decimal).
    pub const VERSION: &str = "Cqrs-Version";
    /// The event's position in the publishing store's global log (`N` or `N:M`).
    pub const POSITION: &str = "Cqrs-Position";
    /// The event type name (percent-encoded).
    pub const EVENT_TYPE: &str = "Cqrs-Event-Type";
    /// The payload's schema version (decimal).
    pub const SCHEMA_VERSION: &str = "Cqrs-Schema-Version";
    /// When the store recorded the event: microseconds since the Unix epoch (decimal).
    pub const RECORDED_AT: &str = "Cqrs-Recorded-At";
    /// The metadata as JSON (percent-encoded); absent when the metadata is empty.
    pub const METADATA: &str = "Cqrs-Metadata";
}

/// Percent-encodes `text` so that it is one token of a NATS subject or an AMQP routing
/// key, and a valid header value: ASCII letters, digits, `-` and `_` stay; every other
/// byte (`.`, `*`, `>`, `#`, `%`, spaces, controls, each byte of a non-ASCII
/// character) becomes `%XX` with upper-case hex digits.
///
/// The encoding is injective, so two different ids never share a subject, and
/// [`unescape_token`] reverses it.
///
/// # Examples
/// ```
/// use cqrs_core::{escape_token, unescape_token};
///
/// assert_eq!(escape_token("acc-42"), "acc-42");
/// assert_eq!(escape_token("a.b *>"), "a%2Eb%20%2A%3E");
/// assert_eq!(unescape_token("a%2Eb%20%2A%3E").as_deref(), Some("a.b *>"));
/// ```
pub fn escape_token(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    out
}

/// Reverses [`escape_token`]; `None` for text it cannot have made (a stray `%`, a bad
/// hex digit, bytes that are not UTF-8).
pub fn unescape_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How a stream maps to a subject (NATS) or routing key (AMQP):
/// `<prefix>.<aggregate type>.<aggregate id>`, the type and the id each one token,
/// [percent-encoded](escape_token).
///
/// So every event of a stream goes to one subject, a consumer of one aggregate type
/// subscribes to `<prefix>.<type>.*` (NATS) or binds `<prefix>.<type>.*` (AMQP topic
/// exchange), and a stream id holding `.`, `*`, `>` or spaces stays one token.
///
/// The prefix is one or more dot-separated tokens of ASCII letters, digits, `-` and
/// `_`, such as `bank` or `bank.events`: name it after the publishing service.
///
/// # Examples
/// ```
/// use cqrs_core::{StreamId, SubjectScheme};
///
/// let scheme = SubjectScheme::new("bank")?;
/// let stream = StreamId::new("account", "acc.42 *")?;
/// assert_eq!(scheme.subject(&stream), "bank.account.acc%2E42%20%2A");
/// assert_eq!(scheme.stream_of("bank.account.acc%2E42%20%2A"), Some(stream));
/// assert_eq!(scheme.all_subjects(), "bank.>");
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectScheme {
    prefix: Arc<str>,
}

impl SubjectScheme {
    /// A scheme whose subjects start with `prefix`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) if the prefix is empty, has
    /// an empty token, or a character other than ASCII letters, digits, `-`, `_` and the
    /// `.` between tokens.
    pub fn new(prefix: impl AsRef<str>) -> crate::Result<Self> {
        let prefix = prefix.as_ref();
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if prefix.len() > 128 || !prefix.split('.').all(token_ok) {
            return Err(crate::Error::invalid_input(format!(
                "a subject prefix is 1 to 128 bytes of dot-separated tokens of ASCII \
                 letters, digits, '-' and '_', got {prefix:?}"
            )));
        }
        Ok(SubjectScheme {
            prefix: prefix.into(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject of `stream`'s events. At most `prefix + 3 × (128 + 1024) + 2` bytes
    /// (the longest type and id, every byte encoded).
    pub fn subject(&self, stream: &StreamId) -> String {
        format!(
            "{}.{}.{}",
            self.prefix,
            escape_token(stream.aggregate_type()),
            escape_token(stream.id())
        )
    }

    /// The subject filter of every subject of this scheme: `<prefix>.>` (a NATS
    /// wildcard; on AMQP topic exchanges write `<prefix>.#`).
    pub fn all_subjects(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The stream a subject of this scheme names; `None` if it is not one of them.
    pub fn stream_of(&self, subject: &str) -> Option<StreamId> {
        let rest = subject.strip_prefix(&*self.prefix)?.strip_prefix('.')?;
        let (aggregate_type, id) = rest.split_once('.')?;
        if id.contains('.') {
            return None;
        }
        StreamId::new(unescape_token(aggregate_type)?, unescape_token(id)?).ok()
    }
}

/// One event on its way to a broker: what a [`Publisher`] sends.
///
/// Made by [`OutboundMessage::from_record`]; publishers send [`payload`](Self::payload)
/// as the body, [`headers`](Self::headers) as headers (or AMQP header table entries),
/// and [`message_id`](Self::message_id) as the broker's message id (JetStream
/// `Nats-Msg-Id`, AMQP `message-id`) so the broker deduplicates a republished event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The message id: the event id.
    pub message_id: Uuid,
    /// The subject or routing key ([`SubjectScheme::subject`] of the stream).
    pub subject: String,
    /// The envelope, as [`headers`] names and ASCII values.
    pub headers: Vec<(&'static str, String)>,
    /// The event's payload, as the store holds it.
    pub payload: Vec<u8>,
    /// The stream the event belongs to (not sent: the subject and headers carry it).
    pub stream: StreamId,
    /// The event's version in its stream (sent in a header).
    pub version: u64,
    /// The event's position in the publishing store's log (sent in a header).
    pub position: Position,
}

impl OutboundMessage {
    /// The message of a recorded event under a subject scheme.
    pub fn from_record(record: &RecordedEvent, scheme: &SubjectScheme) -> Self {
        let micros = record
            .recorded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let mut headers = vec![
            (headers::EVENT_ID, record.event_id.to_string()),
            (
                headers::STREAM_TYPE,
                escape_token(record.stream.aggregate_type()),
            ),
            (headers::STREAM_ID, escape_token(record.stream.id())),
            (headers::VERSION, record.version.to_string()),
            (headers::POSITION, record.position.to_string()),
            (headers::EVENT_TYPE, escape_token(&record.event_type)),
            (headers::SCHEMA_VERSION, record.schema_version.to_string()),
            (headers::RECORDED_AT, micros.to_string()),
        ];
        if record.metadata != Metadata::default() {
            // Metadata serializes infallibly (strings, UUIDs and a map of strings).
            if let Ok(json) = serde_json::to_string(&record.metadata) {
                headers.push((headers::METADATA, escape_token(&json)));
            }
        }
        OutboundMessage {
            message_id: record.event_id,
            subject: scheme.subject(&record.stream),
            headers,
            payload: record.payload.clone(),
            stream: record.stream.clone(),
            version: record.version,
            position: record.position,
        }
    }
}

/// A message that does not carry a valid envelope: which header is missing or bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cqrs event message: header {header} is {problem}")]
pub struct MessageError {
    /// The header at fault (one of [`headers`]).
    pub header: &'static str,
    /// `"missing"` or what is wrong with its value.
    pub problem: &'static str,
}

/// Rebuilds the recorded event from a received message's headers (looked up by name)
/// and payload: the inverse of [`OutboundMessage::from_record`], for consumers.
///
/// # Errors
/// [`MessageError`] naming the first header that is missing or does not decode.
///
/// # Examples
/// ```
/// use cqrs_core::{OutboundMessage, SubjectScheme, decode_message};
/// # use cqrs_core::{Metadata, Position, RecordedEvent, StreamId};
/// # let record = RecordedEvent {
/// #     event_id: uuid::Uuid::now_v7(), stream: StreamId::new("account", "a.1")?,
/// #     version: 3, position: Position::new(0, 9), event_type: "Deposited".into(),
/// #     schema_version: 1, recorded_at: std::time::UNIX_EPOCH, payload: b"{}".to_vec(),
/// #     metadata: Metadata::new().with_value("user", "ada"),
/// # };
/// let message = OutboundMessage::from_record(&record, &SubjectScheme::new("bank")?);
/// let lookup = |name: &str| {
///     message.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
/// };
/// assert_eq!(decode_message(lookup, &message.payload)?, record);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_message<'h>(
    header: impl Fn(&str) -> Option<&'h str>,
    payload: &[u8],
) -> Result<RecordedEvent, MessageError> {
    let get = |name: &'static str| {
        header(name).ok_or(MessageError {
            header: name,
            problem: "missing",
        })
    };
    let bad = |name: &'static str, problem: &'static str| MessageError {
        header: name,
        problem,
    };
    let text = |name: &'static str| {
        get(name).and_then(|v| unescape_token(v).ok_or(bad(name, "not percent-encoded UTF-8")))
    };
    let number = |name: &'static str| {
        get(name).and_then(|v| v.parse::<u64>().map_err(|_| bad(name, "not a number")))
    };
    let event_id = get(headers::EVENT_ID)?
        .parse::<Uuid>()
        .map_err(|_| bad(headers::EVENT_ID, "not a UUID"))?;
    let stream = StreamId::new(text(headers::STREAM_TYPE)?, text(headers::STREAM_ID)?)
        .map_err(|_| bad(headers::STREAM_ID, "not a valid stream id"))?;
    let position = get(headers::POSITION)?
        .parse::<Position>()
        .map_err(|_| bad(headers::POSITION, "not a log position"))?;
    let schema_version = u32::try_from(number(headers::SCHEMA_VERSION)?)
        .map_err(|_| bad(headers::SCHEMA_VERSION, "out of range"))?;
    let micros = number(headers::RECORDED_AT)?;
    let metadata = match header(headers::METADATA) {
        None => Metadata::default(),
        Some(_) => serde_json::from_str(&text(headers::METADATA)?)
            .map_err(|_| bad(headers::METADATA, "not metadata JSON"))?,
    };
    Ok(RecordedEvent {
        event_id,
        stream,
        version: number(headers::VERSION)?,
        position,
        event_type: text(headers::EVENT_TYPE)?,
        schema_version,
        recorded_at: UNIX_EPOCH + Duration::from_micros(micros),
        payload: payload.to_vec(),
        metadata,
    })
}

/// The broker stored a message and said so (JetStream `PubAck`, an AMQP confirm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The broker already had a message with this id and dropped this one
    /// (deduplication); `false` when it cannot tell.
    pub duplicate: bool,
}

/// Why one message of a batch was not acknowledged.
///
/// Handling: the [`Relay`](crate::Relay) retries both with backoff; it gives up on a
/// message only after [`RelayConfig::refused_attempts`](crate::RelayConfig) refusals.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker answered and refused the message (too large, no stream for its
    /// subject, storage full, ...). Retrying may help (storage freed), or not.
    #[error("the broker refused the message")]
    Refused {
        /// The broker's answer.
        #[source]
        source: BoxError,
    },
    /// No answer: the broker is unreachable, or the acknowledgement did not come in time.
    /// The message may have been stored; republishing it is safe (deduplicated by id).
    #[error("the broker is unavailable")]
    Unavailable {
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

impl PublishError {
    /// Whether the broker answered with a refusal (rather than not answering).
    pub fn is_refused(&self) -> bool {
        matches!(self, PublishError::Refused { .. })
    }
}

/// A broker client that publishes messages and reports, per message, whether the
/// broker acknowledged it: the one trait a broker crate implements.
///
/// # Contract (checked by the [publisher conformance suite](crate::conformance::publisher))
/// - [`publish`](Publisher::publish) sends every message of the batch (pipelined, not
///   one round trip each) and returns one result per message, in the batch's order,
///   only once each one is acknowledged or failed: `Ok` means the broker stored it.
/// - The message id is [`OutboundMessage::message_id`]; a message whose id the broker
///   saw recently (its deduplication window) is acknowledged and not stored again.
/// - Messages published one after another to one subject are stored in that order.
/// - One message refused does not fail the others of its batch.
///
/// A caller never puts two messages of one stream in a batch (the relay keeps one in
/// flight per stream), so a publisher may send a batch's messages concurrently.
///
/// # Cancel safety
/// Dropping the future leaves each message published or not; republishing the same
/// ids is safe.
pub trait Publisher: Send + Sync {
    /// Publishes `batch` and waits for the broker's answer to each message.
    fn publish<'a>(
        &'a self,
        batch: &'a [OutboundMessage],
    ) -> impl Future<Output = Vec<Result<Ack, PublishError>>> + Send + 'a;
}

impl<P: Publisher + ?Sized> Publisher for &P {
    fn publish<'a>(
        &'a self,
        batch: &'a [OutboundMessage],
    ) -> impl Future<Output = Vec<Result<Ack, PublishError>>> + Send + 'a {
        (**self).publish(batch)
    }
}

impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    fn publish<'a>(
        &'a self,
        batch: &'a [OutboundMessage],
    ) -> impl Future<Output = Vec<Result<Ack, PublishError>>> + Send + 'a {
        (**self).publish(batch)
    }
}
