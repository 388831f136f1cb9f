//! The consumer: messages from a [`Subscription`] applied once to a projection through
//! an [`Inbox`], with dead letters for what cannot be applied.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::consume::{Delivery, Inbox, ReceivedMessage, SubscribeError, Subscription};
use crate::{
    BoxError, Codec, JsonCodec, Projection, RecordedEvent, RetryPolicy, StreamId, telemetry,
};

use parse::{Item, Parsed, chain, parse};

use control::Request;
pub use control::{ConsumerControl, NotRunning};

/// Runs `$op` (a `Result<T, BoxError>` expression, evaluated again for each attempt)
/// until it succeeds, with the consumer's backoff: the inbox's database is down, and
/// nothing is dead-lettered for that.
macro_rules! until_ok {
    ($this:ident, $op:expr) => {{
        let mut failures = 0u32;
        loop {
            match $op {
                Ok(value) => break value,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(consumer = %$this.projection.name(), %error,
                        "the inbox's database failed; retrying");
                    tokio::time::sleep($this.config.backoff.delay(failures)).await;
                }
            }
        }
    }};
}

mod apply;
mod control;
mod parse;
mod redrive;

pub use redrive::RedriveReport;

/// How a [`Consumer`] retries and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Attempts at applying one event before it goes to the dead letters (at least 1).
    pub attempts: u32,
    /// The delays between those attempts, and before retrying the inbox's database or
    /// the broker when they fail (retried without limit: an outage dead-letters nothing).
    pub backoff: RetryPolicy,
    /// How long an event that arrived ahead of a missing one (a version gap) is held,
    /// unacknowledged, waiting for the missing one to be delivered; after it, the gap is
    /// dead-lettered and the stream parked. Keep it longer than the broker's delay
    /// before it redelivers unacknowledged messages (JetStream's `ack_wait`): after a
    /// consumer crash, the events it had in hand come back only then.
    pub gap_wait: Duration,
    /// The most messages applied in one transaction (those already received).
    pub max_batch: usize,
    /// Accept a stream's first event at any version (the consumer subscribed after the
    /// broker dropped the stream's beginning). Off by default: a stream must start at
    /// version 1, so that nothing is silently missing.
    pub start_mid_stream: bool,
}

impl Default for ConsumerConfig {
    /// Three attempts, delays up to 1 s, a 30-second gap wait, batches of up to 256.
    fn default() -> Self {
        ConsumerConfig {
            attempts: 3,
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_secs(1),
            },
            gap_wait: Duration::from_secs(30),
            max_batch: 256,
            start_mid_stream: false,
        }
    }
}

impl ConsumerConfig {
    /// `attempts` attempts per event before it is dead-lettered.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Holds events ahead of a gap for `wait` before dead-lettering them.
    pub fn with_gap_wait(mut self, wait: Duration) -> Self {
        self.gap_wait = wait;
        self
    }

    /// Applies at most `max_batch` messages per transaction.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Accepts a stream's first event at any version.
    pub fn with_start_mid_stream(mut self, on: bool) -> Self {
        self.start_mid_stream = on;
        self
    }
}

/// What a [`Consumer`] did with the messages it received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Events applied to the projection.
    pub applied: u64,
    /// Events recorded as seen without calling the projection (it does not
    /// [`want`](Projection::wants) their type).
    pub skipped: u64,
    /// Deliveries of events already applied: acknowledged without effect.
    pub duplicates: u64,
    /// Messages sent to the dead letters.
    pub dead_lettered: u64,
    /// Events that arrived ahead of a missing one and were held.
    pub held: u64,
}

/// Why a [`Consumer`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The subscription is gone for good.
    #[error("consumer {consumer:?}: the subscription is closed")]
    Closed {
        /// The consumer's name.
        consumer: String,
        /// The subscription's error.
        #[source]
        source: SubscribeError,
    },
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Skipped,
    Duplicate,
    DeadLettered,
    /// Ahead of a missing event: hold it.
    Gap {
        expected: u64,
    },
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Duplicate => "duplicate",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Gap { .. } => "held",
        }
    }
}

/// Events held ahead of a gap, by stream and version.
type HeldMap<D, E> = BTreeMap<StreamId, BTreeMap<u64, Held<D, E>>>;

/// An event held ahead of a gap.
struct Held<D, E> {
    item: Item<D, E>,
    since: Instant,
    expected: u64,
}

/// The applying of a batch failed on one item (the projection's error), or the inbox
/// failed (its database).
enum BatchError {
    Apply { source: BoxError },
    Inbox(BoxError),
}

/// Applies the events another service published to a [`Projection`] of this service,
/// each once, through an [`Inbox`] in the projection's own database.
///
/// For each message from the [`Subscription`], in order: the envelope is decoded from
/// its headers ([`decode_message`](crate::decode_message)), and in one transaction of the inbox the event's
/// version is compared with the last one applied for its stream:
///
/// | version | what happens | acknowledged |
/// |---|---|---|
/// | already applied | nothing (a redelivery) | yes |
/// | the next one | applied by the projection, the stream's version recorded, both in the transaction | after the commit |
/// | beyond the next one (a gap) | held, unacknowledged, for [`gap_wait`](ConsumerConfig::gap_wait) while the missing events may still come; then dead-lettered | when applied or dead-lettered |
/// | any, stream parked | dead-lettered behind the earlier one, to keep the stream's order | after the commit |
///
/// Events the projection does not [`want`](Projection::wants) are recorded as seen (the
/// stream's version moves) without calling it. Messages already received are applied
/// in batches of up to [`max_batch`](ConsumerConfig::max_batch), one transaction each;
/// the inbox is [flushed](Inbox::flush) before the acknowledgements.
///
/// **Dead letters.** A message that is not one of ours, or whose payload does not
/// decode, goes to the inbox's dead letters at once, with the reason; an event the
/// projection fails on goes there after [`attempts`](ConsumerConfig::attempts) tries.
/// Its stream is then *parked*: its later events follow it into the dead letters, in
/// order, until an operator [redrives](Consumer::redrive) them; other streams go on.
/// A failing database or broker is retried without limit and dead-letters nothing.
///
/// # Examples
/// ```
/// use cqrs_core::{Consumer, InMemoryInbox, InMemoryPublisher, Publisher, OutboundMessage, SubjectScheme};
/// # use cqrs_core::{BoxError, DomainEvent, Envelope, Projection, RecordedEvent, Metadata, Position, StreamId};
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// # #[derive(Debug, Default)]
/// # struct Total(u64);
/// # impl Projection for Total {
/// #     type Event = CounterEvent;
/// #     fn name(&self) -> &str { "total" }
/// #     async fn apply(&mut self, _: &mut (), batch: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
/// #         for e in batch { let CounterEvent::Incremented { by } = e.event; self.0 += by; }
/// #         Ok(())
/// #     }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let record = RecordedEvent {
/// #     event_id: uuid::Uuid::now_v7(), stream: StreamId::new("counter", "c1")?,
/// #     version: 1, position: Position::new(0, 1), event_type: "Incremented".into(),
/// #     schema_version: 1, recorded_at: std::time::SystemTime::now(),
/// #     payload: br#"{"Incremented":{"by":3}}"#.to_vec(), metadata: Metadata::new(),
/// # };
/// // The broker, in memory: a message published twice is delivered twice.
/// let broker = InMemoryPublisher::new();
/// let message = OutboundMessage::from_record(&record, &SubjectScheme::new("counters")?);
/// let mut subscription = broker.subscribe();
/// broker.publish(std::slice::from_ref(&message)).await;
/// broker.redeliver_all();
///
/// let mut consumer = Consumer::new(InMemoryInbox::new(), Total::default());
/// consumer.drain(&mut subscription).await?;
/// assert_eq!(consumer.projection().0, 3); // applied once
/// assert_eq!(consumer.stats().duplicates, 1);
/// # Ok(())
/// # }
/// ```
pub struct Consumer<I: Inbox, P: Projection<I::Context>, C = JsonCodec> {
    inbox: I,
    projection: P,
    codec: C,
    config: ConsumerConfig,
    stats: ConsumerStats,
    requests: mpsc::Receiver<Request>,
    control: ConsumerControl,
}

impl<I: Inbox, P: Projection<I::Context>, C> fmt::Debug for Consumer<I, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.projection.name())
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<I: Inbox, P: Projection<I::Context>> Consumer<I, P> {
    /// A consumer applying to `projection` through `inbox`, decoding with the
    /// [`JsonCodec`], with the default [`ConsumerConfig`]. Its name (in logs, metrics
    /// and errors) is the projection's.
    pub fn new(inbox: I, projection: P) -> Self {
        let (sender, requests) = mpsc::channel(16);
        Consumer {
            inbox,
            projection,
            codec: JsonCodec::default(),
            config: ConsumerConfig::default(),
            stats: ConsumerStats::default(),
            requests,
            control: ConsumerControl { requests: sender },
        }
    }
}

impl<I: Inbox, P: Projection<I::Context>, C: Codec> Consumer<I, P, C> {
    /// Uses another codec (for example a [`JsonCodec`] with upcasters).
    pub fn with_codec<C2: Codec>(self, codec: C2) -> Consumer<I, P, C2> {
        Consumer {
            inbox: self.inbox,
            projection: self.projection,
            codec,
            config: self.config,
            stats: self.stats,
            requests: self.requests,
            control: self.control,
        }
    }

    /// Uses `config`.
    pub fn with_config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The inbox.
    pub fn inbox_mut(&mut self) -> &mut I {
        &mut self.inbox
    }

    /// What it did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// A handle to list and redrive dead letters while [`run_until`](Self::run_until)
    /// runs.
    pub fn control(&self) -> ConsumerControl {
        self.control.clone()
    }

    fn name(&self) -> String {
        self.projection.name().to_owned()
    }

    /// Consumes `subscription` until `shutdown` completes (then returns what it did) or
    /// the subscription closes. An unavailable broker or inbox is retried with backoff.
    ///
    /// # Errors
    /// [`ConsumerError::Closed`] when the subscription is gone for good.
    pub async fn run_until<S>(
        &mut self,
        subscription: &mut S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ConsumerStats, ConsumerError>
    where
        S: Subscription,
    {
        let mut shutdown = pin!(shutdown);
        let mut held: HeldMap<S::Delivery, P::Event> = BTreeMap::new();
        let mut failures = 0u32;
        loop {
            let deadline = held
                .values()
                .flat_map(BTreeMap::values)
                .map(|h| h.since + self.config.gap_wait)
                .min();
            let first = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(self.stats),
                Some(request) = self.requests.recv() => {
                    self.answer(request).await;
                    continue;
                }
                () = sleep_until(deadline) => {
                    self.expire_gaps(&mut held).await;
                    continue;
                }
                next = subscription.next() => next,
            };
            let first = match first {
                Ok(delivery) => delivery,
                Err(SubscribeError::Closed { source }) => {
                    return Err(ConsumerError::Closed {
                        consumer: self.name(),
                        source: SubscribeError::Closed { source },
                    });
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(consumer = %self.name(), %error, "subscription failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => return Ok(self.stats),
                        () = tokio::time::sleep(self.config.backoff.delay(failures)) => {}
                    }
                    continue;
                }
            };
            failures = 0;
            let mut deliveries = vec![first];
            while deliveries.len() < self.config.max_batch {
                match subscription.next().now_or_never() {
                    Some(Ok(delivery)) => deliveries.push(delivery),
                    _ => break,
                }
            }
            let items = deliveries
                .into_iter()
                .map(|delivery| self.item(ReceivedMessage::of(&delivery), Some(delivery)))
                .collect();
            self.handle(items, &mut held).await;
        }
    }

    /// Consumes what `subscription` has now, until it has nothing for a moment (50 ms),
    /// then returns. For tests and examples; services use
    /// [`run_until`](Self::run_until).
    ///
    /// # Errors
    /// As for [`run_until`](Self::run_until).
    pub async fn drain<S: Subscription>(
        &mut self,
        subscription: &mut S,
    ) -> Result<ConsumerStats, ConsumerError> {
        loop {
            let before = self.stats;
            let quiet = tokio::time::sleep(Duration::from_millis(50));
            let stats = self.run_until(subscription, quiet).await?;
            if stats == before {
                return Ok(stats);
            }
        }
    }

    /// Parses a received message.
    fn item<D>(&self, message: ReceivedMessage, delivery: Option<D>) -> Item<D, P::Event> {
        let parsed = parse(&self.codec, &self.projection, &message);
        Item {
            message,
            parsed,
            delivery,
            held_since: None,
        }
    }

    /// Applies a batch of received messages, holds those ahead of a gap, applies held
    /// ones that became next, and acknowledges what is done.
    async fn handle<D: Delivery>(
        &mut self,
        items: Vec<Item<D, P::Event>>,
        held: &mut HeldMap<D, P::Event>,
    ) {
        let mut queue = items;
        while !queue.is_empty() {
            let outcomes = self.apply_all(&queue).await;
            let mut done = Vec::new();
            let mut advanced = Vec::new();
            for (mut item, outcome) in queue.drain(..).zip(outcomes) {
                if !matches!(outcome, Outcome::Gap { .. }) || item.held_since.is_none() {
                    // Counted once, not again each time a held event is tried.
                    self.count(outcome, item.parsed.record());
                }
                if let (Outcome::Gap { expected }, Some(record)) = (outcome, item.parsed.record()) {
                    let (stream, version) = (record.stream.clone(), record.version);
                    tracing::info!(consumer = %self.name(), %stream, version, expected,
                        "event ahead of a missing one: held");
                    let since = *item.held_since.get_or_insert_with(Instant::now);
                    let entry = Held {
                        item,
                        since,
                        expected,
                    };
                    held.entry(stream).or_default().insert(version, entry);
                    continue;
                }
                if let (Outcome::Applied | Outcome::Skipped, Some(record)) =
                    (outcome, item.parsed.record())
                {
                    advanced.push(record.stream.clone());
                }
                done.push(item);
            }
            self.acknowledge(done).await;
            // Held events that may now be next: try them again (the oldest first).
            for stream in advanced {
                if let Some(waiting) = held.remove(&stream) {
                    queue.extend(waiting.into_values().map(|h| h.item));
                }
            }
        }
    }

    /// Dead-letters the held events whose wait is over, with their stream's later held
    /// events, and acknowledges them.
    async fn expire_gaps<D: Delivery>(&mut self, held: &mut HeldMap<D, P::Event>) {
        let now = Instant::now();
        let expired: Vec<StreamId> = held
            .iter()
            .filter(|(_, waiting)| {
                waiting
                    .values()
                    .any(|h| h.since + self.config.gap_wait <= now)
            })
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in expired {
            let Some(waiting) = held.remove(&stream) else {
                continue;
            };
            let mut items = Vec::new();
            for (version, h) in waiting {
                let waited = now.saturating_duration_since(h.since).as_secs();
                let reason = format!(
                    "version gap: {stream} expected version {}, got {version} \
                     (waited {waited} s for the missing events)",
                    h.expected
                );
                items.push((h.item, reason));
            }
            let letters: Vec<_> = items.iter().map(|(i, r)| (i, r.as_str(), 0)).collect();
            until_ok!(self, self.bury(&letters).await);
            for _ in &items {
                self.count(Outcome::DeadLettered, None);
            }
            self.acknowledge(items.into_iter().map(|(i, _)| i).collect())
                .await;
        }
    }

    /// Flushes the inbox, then acknowledges each item's delivery.
    async fn acknowledge<D: Delivery>(&mut self, items: Vec<Item<D, P::Event>>) {
        if items.iter().all(|i| i.delivery.is_none()) {
            return;
        }
        until_ok!(self, self.inbox.flush().await);
        let acks = items
            .iter()
            .filter_map(|i| i.delivery.as_ref())
            .map(Delivery::ack);
        for result in futures::future::join_all(acks).await {
            if let Err(error) = result {
                // Delivered again later, and then recognised as a duplicate.
                tracing::warn!(consumer = %self.name(), %error, "acknowledgement failed");
            }
        }
    }

    fn count(&mut self, outcome: Outcome, record: Option<&RecordedEvent>) {
        match outcome {
            Outcome::Applied => self.stats.applied += 1,
            Outcome::Skipped => self.stats.skipped += 1,
            Outcome::Duplicate => self.stats.duplicates += 1,
            Outcome::DeadLettered => self.stats.dead_lettered += 1,
            Outcome::Gap { .. } => self.stats.held += 1,
        }
        telemetry::consumed(
            self.projection.name(),
            outcome.label(),
            record.map(|r| r.recorded_at),
        );
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
