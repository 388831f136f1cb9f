//! The relay's bookkeeping of the events read ahead: which may be sent now (the oldest
//! unacknowledged event of its stream, not in flight), which are in flight, and how far
//! the acknowledged prefix of the log reaches.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::{OutboundMessage, Position, StreamId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// An earlier event of its stream is not acknowledged yet.
    Blocked,
    /// May be sent (in [`Pending::ready`]).
    Ready,
    /// Sent; its message is with the publish call.
    InFlight,
    /// Acknowledged by the broker.
    Acked,
}

#[derive(Debug)]
struct Slot {
    position: Position,
    /// `None` while the message is in flight (moved into the publish call) or acknowledged.
    message: Option<OutboundMessage>,
    state: State,
    refusals: u32,
    /// The next event of the same stream that was read, if any.
    next_in_stream: Option<u64>,
}

/// The events read ahead of the checkpoint, in log order, each identified by its index
/// in the order read (`base` is the index of the oldest still held).
#[derive(Debug, Default)]
pub(super) struct Pending {
    base: u64,
    slots: VecDeque<Slot>,
    /// Indices of the `Ready` slots, in log order.
    ready: BTreeSet<u64>,
    /// Per stream with an unacknowledged event here (by the stream's [`StreamKey`]), the
    /// index of its last one read.
    tails: HashMap<u64, u64, BuildHasherDefault<Passthrough>>,
    in_flight: usize,
}

impl Pending {
    /// How many events are held (read and not yet dropped with the acknowledged prefix).
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many messages are in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a message may be sent now.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Adds the next event of the log: ready if its stream has nothing unacknowledged
    /// here, otherwise behind the stream's previous event.
    pub(super) fn push(&mut self, message: OutboundMessage) {
        let index = self.base + self.slots.len() as u64;
        let key = stream_key(&message.stream);
        let state = match self.tails.get_mut(&key) {
            Some(tail) => {
                let previous = *tail;
                *tail = index;
                if let Some(slot) = self.slot_mut(previous) {
                    slot.next_in_stream = Some(index);
                }
                State::Blocked
            }
            None => {
                self.tails.insert(key, index);
                self.ready.insert(index);
                State::Ready
            }
        };
        self.slots.push_back(Slot {
            position: message.position,
            message: Some(message),
            state,
            refusals: 0,
            next_in_stream: None,
        });
    }

    /// Takes up to `max` ready messages, oldest first, and marks them in flight: their
    /// indices and the messages themselves (moved out, not cloned).
    pub(super) fn take(&mut self, max: usize) -> (Vec<u64>, Vec<OutboundMessage>) {
        let count = max.min(self.ready.len());
        let mut indices = Vec::with_capacity(count);
        let mut messages = Vec::with_capacity(count);
        while indices.len() < count {
            let Some(index) = self.ready.pop_first() else {
                break;
            };
            let Some(slot) = self.slot_mut(index) else {
                continue;
            };
            let Some(message) = slot.message.take() else {
                continue;
            };
            slot.state = State::InFlight;
            indices.push(index);
            messages.push(message);
        }
        self.in_flight += indices.len();
        (indices, messages)
    }

    /// The broker acknowledged the in-flight message `index` (`message` is the one
    /// [`take`](Self::take) gave out): the next event of its stream becomes ready.
    pub(super) fn acked(&mut self, index: u64, message: &OutboundMessage) {
        let Some(slot) = self.slot_mut(index) else {
            return;
        };
        if slot.state != State::InFlight {
            return;
        }
        slot.state = State::Acked;
        let next = slot.next_in_stream;
        self.in_flight -= 1;
        match next {
            Some(next) => {
                if let Some(slot) = self.slot_mut(next) {
                    slot.state = State::Ready;
                    self.ready.insert(next);
                }
            }
            None => {
                let key = stream_key(&message.stream);
                if self.tails.get(&key) == Some(&index) {
                    self.tails.remove(&key);
                }
            }
        }
    }

    /// The in-flight message `index` failed: it is ready again (its stream stays held
    /// behind it). Returns how many times it has been refused, counting this failure if
    /// `refused`.
    pub(super) fn failed(&mut self, index: u64, message: OutboundMessage, refused: bool) -> u32 {
        let Some(slot) = self.slot_mut(index) else {
            return 0;
        };
        if slot.state != State::InFlight {
            return slot.refusals;
        }
        if refused {
            slot.refusals = slot.refusals.saturating_add(1);
        }
        slot.state = State::Ready;
        slot.message = Some(message);
        let refusals = slot.refusals;
        self.in_flight -= 1;
        self.ready.insert(index);
        refusals
    }

    /// Drops the acknowledged prefix and returns the position of its last event (the
    /// new checkpoint), with how many events it held; `None` if the oldest event held is
    /// not acknowledged.
    pub(super) fn pop_acked_prefix(&mut self) -> Option<(Position, u64)> {
        let mut advanced = None;
        let mut count = 0;
        while self
            .slots
            .front()
            .is_some_and(|slot| slot.state == State::Acked)
        {
            advanced = self.slots.pop_front().map(|slot| slot.position);
            self.base += 1;
            count += 1;
        }
        advanced.map(|position| (position, count))
    }

    fn slot_mut(&mut self, index: u64) -> Option<&mut Slot> {
        let offset = usize::try_from(index.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(offset)
    }
}

/// A stream's key in [`Pending::tails`]: a 64-bit hash of its id, so that no id is cloned
/// per event. Two streams whose keys collide (about one chance in 2^64 per pair) share one
/// chain: each then also waits for the other's earlier events, which costs concurrency but
/// never reorders a stream.
fn stream_key(stream: &StreamId) -> u64 {
    // Fixed keys: the value only needs to be the same within one relay run.
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(stream)
}

/// The hasher of a map whose keys are already hashes.
#[derive(Debug, Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{Metadata, RecordedEvent, SubjectScheme};

    fn message(stream: &str, version: u64, position: u64) -> OutboundMessage {
        let record = RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream: StreamId::new("account", stream).expect("id"),
            version,
            position: Position::new(0, position),
            event_type: "Ev".into(),
            schema_version: 1,
            recorded_at: SystemTime::now(),
            payload: b"{}".to_vec(),
            metadata: Metadata::new(),
        };
        OutboundMessage::from_record(&record, &SubjectScheme::new("t").expect("prefix"))
    }

    fn versions(messages: &[OutboundMessage]) -> Vec<(String, u64)> {
        messages
            .iter()
            .map(|m| (m.stream.id().to_owned(), m.version))
            .collect()
    }

    #[test]
    fn one_in_flight_per_stream_and_the_next_after_its_ack() {
        let mut pending = Pending::default();
        pending.push(message("a", 1, 1));
        pending.push(message("a", 2, 2));
        pending.push(message("b", 1, 3));
        pending.push(message("a", 3, 4));
        let (indices, sent) = pending.take(10);
        assert_eq!(
            versions(&sent),
            [("a".into(), 1), ("b".into(), 1)],
            "only the first of each stream"
        );
        assert!(!pending.has_ready());
        assert_eq!(pending.in_flight(), 2);
        // b's ack first: nothing of a moves, and the prefix does not move either.
        pending.acked(indices[1], &sent[1]);
        assert!(!pending.has_ready());
        assert_eq!(pending.pop_acked_prefix(), None);
        pending.acked(indices[0], &sent[0]);
        assert_eq!(pending.pop_acked_prefix(), Some((Position::new(0, 1), 1)));
        let (indices, sent) = pending.take(10);
        assert_eq!(versions(&sent), [("a".into(), 2)]);
        pending.acked(indices[0], &sent[0]);
        // a:2 and b:1 are acknowledged: the prefix reaches position 3.
        assert_eq!(pending.pop_acked_prefix(), Some((Position::new(0, 3), 2)));
        let (indices, sent) = pending.take(10);
        assert_eq!(versions(&sent), [("a".into(), 3)]);
        pending.acked(indices[0], &sent[0]);
        assert_eq!(pending.pop_acked_prefix(), Some((Position::new(0, 4), 1)));
        assert!(pending.is_empty());
        assert!(pending.tails.is_empty(), "no stream left behind");
    }

    #[test]
    fn a_failed_message_is_ready_again_and_still_holds_its_stream() {
        let mut pending = Pending::default();
        pending.push(message("a", 1, 1));
        pending.push(message("a", 2, 2));
        let (indices, mut sent) = pending.take(1);
        let first = sent.remove(0);
        assert_eq!(pending.failed(indices[0], first, true), 1);
        assert_eq!(pending.in_flight(), 0);
        let (indices, mut sent) = pending.take(10);
        assert_eq!(versions(&sent), [("a".into(), 1)], "a:2 still waits");
        let again = sent.remove(0);
        assert_eq!(pending.failed(indices[0], again, false), 1);
        let (indices, sent) = pending.take(10);
        pending.acked(indices[0], &sent[0]);
        let (_, sent) = pending.take(10);
        assert_eq!(versions(&sent), [("a".into(), 2)]);
    }

    #[test]
    fn take_honours_its_limit_in_log_order() {
        let mut pending = Pending::default();
        for i in 1..=5 {
            pending.push(message(&format!("s{i}"), 1, i));
        }
        let (_, sent) = pending.take(3);
        assert_eq!(
            sent.iter().map(|m| m.position.sequence).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(pending.in_flight(), 3);
        assert_eq!(pending.take(10).1.len(), 2);
        assert_eq!(pending.len(), 5);
    }
}
