//! What a received message means to a consumer.

use tokio::time::Instant;

use crate::consume::ReceivedMessage;
use crate::{Codec, Envelope, Projection, RecordedEvent, decode_message};

/// A message as the consumer understands it. Its `record` is the envelope without
/// the payload (the received message holds that).
pub(super) enum Parsed<E> {
    /// Not one of ours: no valid envelope.
    Foreign { reason: String },
    /// Ours, but its payload cannot be upcast or decoded.
    Undecodable {
        record: RecordedEvent,
        reason: String,
    },
    /// An event; `envelope` is `None` when the projection does not want it.
    Event {
        record: RecordedEvent,
        envelope: Option<Envelope<E>>,
    },
}

impl<E> Parsed<E> {
    pub(super) fn record(&self) -> Option<&RecordedEvent> {
        match self {
            Parsed::Foreign { .. } => None,
            Parsed::Undecodable { record, .. } | Parsed::Event { record, .. } => Some(record),
        }
    }
}

/// A message in hand: what was received, what it means, and its delivery (none when it
/// comes from a dead letter being redriven).
pub(super) struct Item<D, E> {
    pub(super) message: ReceivedMessage,
    pub(super) parsed: Parsed<E>,
    pub(super) delivery: Option<D>,
    /// When it was first held ahead of a gap.
    pub(super) held_since: Option<Instant>,
}

/// Reads a message's envelope and decodes its event for `projection`.
pub(super) fn parse<C: Codec, P: Projection<Cx>, Cx>(
    codec: &C,
    projection: &P,
    message: &ReceivedMessage,
) -> Parsed<P::Event> {
    let record = match decode_message(|name| message.header(name), &message.payload) {
        Ok(record) => record,
        Err(error) => {
            return Parsed::Foreign {
                reason: error.to_string(),
            };
        }
    };
    // What the inbox and the dead letters need of the record is its envelope; the
    // payload moves on to the codec (the received message keeps its own copy).
    let mut record = record;
    let payload = std::mem::take(&mut record.payload);
    let full = RecordedEvent {
        payload,
        ..record.clone()
    };
    let upcast = match codec.upcast(full) {
        Ok(upcast) => upcast,
        Err(error) => {
            let reason = chain(&error);
            return Parsed::Undecodable { record, reason };
        }
    };
    if !crate::projection_takes(projection, &upcast) {
        return Parsed::Event {
            record,
            envelope: None,
        };
    }
    match codec.decode_upcast_envelope(upcast) {
        Ok(envelope) => Parsed::Event {
            record,
            envelope: Some(envelope),
        },
        Err(error) => {
            let reason = chain(&error);
            Parsed::Undecodable { record, reason }
        }
    }
}

/// An error and its sources, joined with `": "`.
pub(super) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
