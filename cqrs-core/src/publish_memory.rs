//! A publisher that keeps what it is sent in memory: for tests of relays and consumers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::consume::{Delivery, ReceivedMessage, SubscribeError, Subscription};
use crate::{Ack, OutboundMessage, PublishError, Publisher};

/// A [`Publisher`] that stores messages in memory, in the order it acknowledged them,
/// and behaves like a broker: it deduplicates by message id, refuses payloads over a
/// size limit, and can be told to refuse given ids or to be unavailable.
///
/// Clones share the stored messages.
///
/// # Examples
/// ```
/// use cqrs_core::{InMemoryPublisher, OutboundMessage, Publisher, SubjectScheme};
/// # use cqrs_core::{Metadata, Position, RecordedEvent, StreamId};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let record = RecordedEvent {
/// #     event_id: uuid::Uuid::now_v7(), stream: StreamId::new("account", "1")?,
/// #     version: 1, position: Position::new(0, 1), event_type: "Opened".into(),
/// #     schema_version: 1, recorded_at: std::time::SystemTime::now(),
/// #     payload: b"{}".to_vec(), metadata: Metadata::new(),
/// # };
/// let broker = InMemoryPublisher::new();
/// let message = OutboundMessage::from_record(&record, &SubjectScheme::new("bank")?);
/// let mut first = broker.publish(std::slice::from_ref(&message)).await;
/// let mut again = broker.publish(std::slice::from_ref(&message)).await;
/// assert!(!first.remove(0)?.duplicate);
/// assert!(again.remove(0)?.duplicate); // deduplicated by the event id
/// assert_eq!(broker.messages().len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryPublisher {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    stored: Vec<OutboundMessage>,
    seen: HashSet<Uuid>,
    max_payload: Option<usize>,
    refusals: HashMap<Uuid, u32>,
    unavailable: bool,
    batches: u64,
    subscriptions: Vec<Weak<Queue>>,
}

/// What one subscription has yet to deliver.
#[derive(Debug, Default)]
struct Queue {
    messages: Mutex<VecDeque<ReceivedMessage>>,
    arrived: Notify,
    acks: AtomicU64,
}

impl Queue {
    fn push(&self, message: ReceivedMessage) {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(message);
        self.arrived.notify_one();
    }
}

fn received(message: &OutboundMessage) -> ReceivedMessage {
    ReceivedMessage {
        subject: message.subject.clone(),
        headers: message
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
        payload: message.payload.clone(),
    }
}

#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("payload of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("refused on purpose (fault injection)")]
    Injected,
    #[error("the in-memory broker is down (fault injection)")]
    Down,
}

impl InMemoryPublisher {
    /// An empty broker with no size limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses payloads longer than `bytes`.
    pub fn with_max_payload(self, bytes: usize) -> Self {
        self.lock().max_payload = Some(bytes);
        self
    }

    /// Refuses the next `times` publishes of message `id`.
    pub fn refuse(&self, id: Uuid, times: u32) {
        self.lock().refusals.insert(id, times);
    }

    /// Makes every publish fail as [`PublishError::Unavailable`] (`true`) or work again.
    pub fn set_unavailable(&self, down: bool) {
        self.lock().unavailable = down;
    }

    /// The stored messages, in the order they were acknowledged.
    pub fn messages(&self) -> Vec<OutboundMessage> {
        self.lock().stored.clone()
    }

    /// How many batches [`publish`](Publisher::publish) was called with.
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }

    /// A subscription to every message stored from now on, in order (a consumer's view
    /// of this broker).
    pub fn subscribe(&self) -> InMemorySubscription {
        let queue = Arc::new(Queue::default());
        self.lock().subscriptions.push(Arc::downgrade(&queue));
        InMemorySubscription { queue }
    }

    /// Delivers every stored message again to every subscription, after what they have
    /// yet to deliver: a broker that lost its acknowledgements.
    pub fn redeliver_all(&self) {
        let state = self.lock();
        for queue in state.subscriptions.iter().filter_map(Weak::upgrade) {
            for message in &state.stored {
                queue.push(received(message));
            }
        }
    }

    /// Delivers `message` to every subscription, as if someone else had published it
    /// (a foreign or damaged message).
    pub fn inject(&self, message: ReceivedMessage) {
        for queue in self.lock().subscriptions.iter().filter_map(Weak::upgrade) {
            queue.push(message.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_one(state: &mut State, message: &OutboundMessage) -> Result<Ack, PublishError> {
        if state.unavailable {
            return Err(PublishError::Unavailable {
                source: Fault::Down.into(),
            });
        }
        if let Some(left) = state.refusals.get_mut(&message.message_id)
            && *left > 0
        {
            *left -= 1;
            return Err(PublishError::Refused {
                source: Fault::Injected.into(),
            });
        }
        if let Some(max) = state.max_payload
            && message.payload.len() > max
        {
            return Err(PublishError::Refused {
                source: Fault::TooLarge(message.payload.len(), max).into(),
            });
        }
        if !state.seen.insert(message.message_id) {
            return Ok(Ack { duplicate: true });
        }
        state.stored.push(message.clone());
        state.subscriptions.retain(|q| q.strong_count() > 0);
        for queue in state.subscriptions.iter().filter_map(Weak::upgrade) {
            queue.push(received(message));
        }
        Ok(Ack { duplicate: false })
    }
}

impl Publisher for InMemoryPublisher {
    async fn publish<'a>(&'a self, batch: &'a [OutboundMessage]) -> Vec<Result<Ack, PublishError>> {
        let mut state = self.lock();
        state.batches += 1;
        batch
            .iter()
            .map(|message| Self::publish_one(&mut state, message))
            .collect()
    }
}

/// A [`Subscription`] to an [`InMemoryPublisher`]: every message stored after it was
/// made, then whatever [`redeliver_all`](InMemoryPublisher::redeliver_all) and
/// [`inject`](InMemoryPublisher::inject) add.
#[derive(Debug)]
pub struct InMemorySubscription {
    queue: Arc<Queue>,
}

impl InMemorySubscription {
    /// How many deliveries were acknowledged.
    pub fn acks(&self) -> u64 {
        self.queue.acks.load(Ordering::Relaxed)
    }
}

/// A message delivered by an [`InMemorySubscription`].
#[derive(Debug)]
pub struct InMemoryDelivery {
    message: ReceivedMessage,
    queue: Arc<Queue>,
}

impl Delivery for InMemoryDelivery {
    fn subject(&self) -> &str {
        &self.message.subject
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.message.header(name)
    }

    fn headers(&self) -> Vec<(String, String)> {
        self.message.headers.clone()
    }

    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    async fn ack(&self) -> Result<(), SubscribeError> {
        self.queue.acks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Subscription for InMemorySubscription {
    type Delivery = InMemoryDelivery;

    async fn next(&mut self) -> Result<InMemoryDelivery, SubscribeError> {
        loop {
            let arrived = self.queue.arrived.notified();
            let next = self
                .queue
                .messages
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            if let Some(message) = next {
                return Ok(InMemoryDelivery {
                    message,
                    queue: self.queue.clone(),
                });
            }
            arrived.await;
        }
    }
}
