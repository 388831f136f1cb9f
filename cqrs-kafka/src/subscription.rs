//! The subscription: a consumer group member whose offsets move only over what the
//! consumer acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cqrs_core::{Delivery, SubscribeError, Subscription};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result, bootstrap_servers};

/// What a [`KafkaSubscription`] consumes: a topic, as a member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// The topic the publishing service's relay writes to.
    pub topic: String,
    /// The consumer group (`group.id`): one per consuming service. Its members share
    /// the topic's partitions, and the group's committed offsets say where a new
    /// member starts.
    pub group: String,
    /// Only messages whose key (the subject) matches this pattern reach the consumer
    /// (`.`-separated tokens, `*` one token, `>` the rest, as in NATS); the others are
    /// acknowledged as they arrive. `None`: all.
    pub filter: Option<String>,
    /// How long the group waits for a silent member before giving its partitions to
    /// the others (`session.timeout.ms`; 10 s by default). A member killed without
    /// leaving holds its partitions that long.
    pub session_timeout: Duration,
    /// How often the acknowledged offsets are committed to the group
    /// (`auto.commit.interval.ms`; 500 ms by default). A crash loses at most that much
    /// of commits: the events after the last commit are delivered again, and the
    /// inbox drops them.
    pub commit_interval: Duration,
    /// The member's static identity in the group (`group.instance.id`, KIP-345), or
    /// `None` for a dynamic member. A member that restarts with the same id takes its
    /// former self's place and partitions at once, instead of waiting for the group to
    /// notice the dead member; give each process of a service its own stable id.
    pub instance: Option<String>,
}

impl GroupSettings {
    /// Consumes `topic` in group `group`, from the topic's start for a new group.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        GroupSettings {
            topic: topic.into(),
            group: group.into(),
            filter: None,
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(500),
            instance: None,
        }
    }

    /// Only messages whose subject matches `pattern` (for example `bank.account.*`).
    pub fn with_filter(mut self, pattern: impl Into<String>) -> Self {
        self.filter = Some(pattern.into());
        self
    }

    /// Sets [`session_timeout`](Self::session_timeout).
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets [`instance`](Self::instance): a static member of the group.
    pub fn with_instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Sets [`commit_interval`](Self::commit_interval).
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }
}

/// Whether `subject` matches the NATS-style `pattern`.
fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (expected, Some(actual)) if expected == actual => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// What one partition of this member has delivered and not yet acknowledged.
#[derive(Debug, Default)]
struct Track {
    /// Which assignment of the partition this is: an acknowledgement of a delivery
    /// from an earlier one is ignored (the partition was revoked in between, and its
    /// new owner starts from the committed offset, which delivers it again).
    generation: u64,
    /// Offsets delivered and not acknowledged.
    outstanding: BTreeSet<i64>,
    /// The offset after the last one delivered.
    next: i64,
    /// The offset last stored for commit.
    stored: i64,
}

impl Track {
    /// The offset to commit: the first one not acknowledged, or the next to deliver.
    fn commit_point(&self) -> i64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }
}

/// The member's partitions, shared by the rebalance callbacks and the deliveries.
#[derive(Debug, Default)]
struct Tracker {
    partitions: HashMap<i32, Track>,
    generations: u64,
}

/// The client context: keeps the [`Tracker`] in step with the group's assignments.
#[derive(Debug)]
struct GroupContext {
    tracker: Mutex<Tracker>,
}

impl GroupContext {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut tracker = self.tracker();
            for element in list.elements() {
                tracker.partitions.remove(&element.partition());
            }
            tracing::info!(partitions = list.count(), "kafka: partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut tracker = self.tracker();
            for element in list.elements() {
                tracker.generations += 1;
                let generation = tracker.generations;
                tracker.partitions.insert(
                    element.partition(),
                    Track {
                        generation,
                        ..Track::default()
                    },
                );
            }
            tracing::info!(partitions = list.count(), "kafka: partitions assigned");
        }
    }
}

/// The consumer and what the deliveries need to acknowledge.
struct Shared {
    consumer: StreamConsumer<GroupContext>,
    topic: String,
}

impl Shared {
    /// Records that `offset` of `partition` was delivered; the partition's generation.
    fn delivered(&self, partition: i32, offset: i64) -> u64 {
        let mut tracker = self.consumer.context().tracker();
        let tracker = &mut *tracker;
        let track = tracker.partitions.entry(partition).or_insert_with(|| {
            // Not announced by a rebalance callback (a partition assigned before the
            // context saw it): tracked from here.
            tracker.generations += 1;
            Track {
                generation: tracker.generations,
                ..Track::default()
            }
        });
        if track.outstanding.is_empty() && track.next == 0 {
            track.stored = offset;
        }
        track.outstanding.insert(offset);
        track.next = track.next.max(offset + 1);
        track.generation
    }

    /// Records the acknowledgement of `offset`, and stores the new commit point of the
    /// partition if it moved (the client commits stored offsets every commit
    /// interval, and before giving a partition up).
    fn acknowledged(
        &self,
        partition: i32,
        offset: i64,
        generation: u64,
    ) -> Result<(), SubscribeError> {
        let mut tracker = self.consumer.context().tracker();
        let Some(track) = tracker.partitions.get_mut(&partition) else {
            return Ok(()); // revoked: its new owner delivers it again
        };
        if track.generation != generation {
            return Ok(());
        }
        track.outstanding.remove(&offset);
        let point = track.commit_point();
        if point <= track.stored {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        let added = list.add_partition_offset(&self.topic, partition, Offset::Offset(point));
        let stored = added.and_then(|()| self.consumer.store_offsets(&list));
        // Under the tracker's lock, so two acknowledgements store in order.
        match stored {
            Ok(()) => {
                track.stored = point;
                Ok(())
            }
            Err(error) => Err(SubscribeError::Unavailable {
                source: error.into(),
            }),
        }
    }
}

/// One message from a [`KafkaSubscription`], not yet acknowledged.
///
/// Dropped without [`ack`](Delivery::ack), its offset is never committed: the group
/// delivers it again when its partition is next assigned (this member restarts, or
/// another one takes the partition over). Kafka does not deliver it again while this
/// member keeps the partition, and later offsets of the partition are not committed
/// either, however many are acknowledged.
pub struct KafkaDelivery {
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
    generation: u64,
    shared: Arc<Shared>,
}

impl fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaDelivery")
            .field("subject", &self.subject)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    /// Its partition of the topic.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

impl Delivery for KafkaDelivery {
    /// The message's key: the subject it was published under.
    fn subject(&self) -> &str {
        &self.subject
    }

    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        found.next().map(|(_, v)| v.as_str())
    }

    fn headers(&self) -> Vec<(String, String)> {
        self.headers.clone()
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Marks the offset done. The partition's committed offset moves over every
    /// offset acknowledged without a gap, at the next commit (every
    /// [`commit_interval`](GroupSettings::commit_interval), and when the partition is
    /// revoked or the subscription closes).
    async fn ack(&self) -> Result<(), SubscribeError> {
        self.shared
            .acknowledged(self.partition, self.offset, self.generation)
    }
}

/// A [`Subscription`] to a Kafka topic as a member of a consumer group
/// ([`GroupSettings`]): the group shares the topic's partitions among its members,
/// and each partition's messages are delivered in order.
///
/// **Offsets are committed only over acknowledged messages.** Automatic offset storing
/// is off: an offset is stored for commit when its message and every earlier one of
/// its partition were [acknowledged](Delivery::ack), which the
/// [`Consumer`](cqrs_core::Consumer) does only after its inbox's transaction
/// committed. The client commits the stored offsets every
/// [`commit_interval`](GroupSettings::commit_interval) and before a partition is
/// revoked. So a crash, a rebalance or a lost member means redeliveries from the last
/// commit, never a skipped message; the inbox drops the redelivered events by their
/// stream version. As the relay keys each message by its stream, a stream lives in
/// one partition, and its events arrive in order whichever member owns it.
///
/// A partition revoked while its messages are in hand: their acknowledgements are
/// ignored, and its new owner (maybe this member again) starts over from the committed
/// offset.
///
/// The client reconnects by itself; while no broker answers, or the topic does not
/// exist yet, [`next`](Subscription::next) fails with [`SubscribeError::Unavailable`]
/// (the consumer retries with backoff). It never fails with
/// [`SubscribeError::Closed`]: a deleted topic looks like one not created yet.
///
/// `next` is cancel safe.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{Consumer, InMemoryInbox};
/// use cqrs_kafka::{GroupSettings, KafkaSubscription};
/// # use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// # enum AccountEvent { Deposited { amount: u64 } }
/// # impl DomainEvent for AccountEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Deposited"];
/// #     fn event_type(&self) -> &'static str { "Deposited" }
/// # }
/// # #[derive(Debug, Default)]
/// # struct Balances(u64);
/// # impl Projection for Balances {
/// #     type Event = AccountEvent;
/// #     fn name(&self) -> &str { "balances" }
/// #     async fn apply(&mut self, _: &mut (), batch: &[Envelope<AccountEvent>]) -> Result<(), BoxError> {
/// #         for e in batch { let AccountEvent::Deposited { amount } = e.event; self.0 += amount; }
/// #         Ok(())
/// #     }
/// # }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let settings = GroupSettings::new("bank-events", "ledger").with_filter("bank.account.*");
/// let mut subscription = KafkaSubscription::connect("kafka://127.0.0.1:9092", settings)?;
///
/// let mut consumer = Consumer::new(InMemoryInbox::new(), Balances::default());
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // send to stop it
/// consumer.run_until(&mut subscription, async { let _ = stopped.await; }).await?;
/// # Ok(())
/// # }
/// ```
pub struct KafkaSubscription {
    brokers: String,
    settings: GroupSettings,
    shared: Arc<Shared>,
}

impl fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("brokers", &self.brokers)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    /// Joins the group of `settings` on the brokers of `url`
    /// (`kafka://HOST:PORT[,HOST:PORT...]`) and subscribes to its topic. The client
    /// connects in the background: an unreachable broker shows in
    /// [`next`](Subscription::next). Call it inside a Tokio runtime: the client
    /// spawns its wake-ups there (rdkafka panics without one).
    ///
    /// # Errors
    /// [`Error::Url`] for a URL that is not `kafka://…`; [`Error::Connect`] if
    /// librdkafka refuses the configuration or the subscription.
    pub fn connect(url: &str, settings: GroupSettings) -> Result<Self> {
        let brokers = bootstrap_servers(url)?;
        let connect_error = |source: rdkafka::error::KafkaError| Error::Connect {
            brokers: brokers.clone(),
            source: source.into(),
        };
        let context = GroupContext {
            tracker: Mutex::new(Tracker::default()),
        };
        let mut config = ClientConfig::new();
        if let Some(instance) = &settings.instance {
            config.set("group.instance.id", instance);
        }
        let consumer: StreamConsumer<GroupContext> = config
            .set("bootstrap.servers", &brokers)
            .set("group.id", &settings.group)
            .set("client.id", "cqrs-kafka-consumer")
            .set("auto.offset.reset", "earliest")
            // Offsets are stored by the acknowledgements only, and the stored ones
            // committed by the client in the background.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                settings.commit_interval.as_millis().max(1).to_string(),
            )
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .create_with_context(context)
            .map_err(connect_error)?;
        consumer
            .subscribe(&[settings.topic.as_str()])
            .map_err(connect_error)?;
        let shared = Arc::new(Shared {
            consumer,
            topic: settings.topic.clone(),
        });
        Ok(KafkaSubscription {
            brokers,
            settings,
            shared,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// The partitions this member holds now (empty before the group assigned any).
    pub fn assignment(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self
            .shared
            .consumer
            .context()
            .tracker()
            .partitions
            .keys()
            .copied()
            .collect();
        partitions.sort_unstable();
        partitions
    }
}

impl Subscription for KafkaSubscription {
    type Delivery = KafkaDelivery;

    async fn next(&mut self) -> Result<KafkaDelivery, SubscribeError> {
        loop {
            // Cancel safe: `recv` is, and nothing after it awaits.
            let message = self.shared.consumer.recv().await.map_err(|error| {
                tracing::warn!(topic = %self.settings.topic, %error, "kafka: no message");
                SubscribeError::Unavailable {
                    source: error.into(),
                }
            })?;
            let (partition, offset) = (message.partition(), message.offset());
            let generation = self.shared.delivered(partition, offset);
            let subject = message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .unwrap_or_default();
            if let Some(filter) = &self.settings.filter
                && !matches(filter, &subject)
            {
                self.shared.acknowledged(partition, offset, generation)?;
                continue;
            }
            let headers = message.headers().map_or_else(Vec::new, |headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            });
            let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
            return Ok(KafkaDelivery {
                subject,
                headers,
                payload,
                partition,
                offset,
                generation,
                shared: Arc::clone(&self.shared),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Track, matches};

    #[test]
    fn filters_match_like_nats_subjects() {
        assert!(matches("bank.account.*", "bank.account.a1"));
        assert!(!matches("bank.account.*", "bank.account.a1.x"));
        assert!(!matches("bank.account.*", "bank.transfer.t1"));
        assert!(!matches("bank.account.*", "bank.account"));
        assert!(matches("bank.>", "bank.account.a1"));
        assert!(!matches("bank.>", "bank"));
        assert!(matches("bank.account.a1", "bank.account.a1"));
    }

    #[test]
    fn the_commit_point_waits_for_the_first_unacknowledged_offset() {
        let mut track = Track::default();
        for offset in 10..15 {
            track.outstanding.insert(offset);
            track.next = offset + 1;
        }
        track.outstanding.remove(&12);
        track.outstanding.remove(&11);
        assert_eq!(track.commit_point(), 10, "10 is still in hand");
        track.outstanding.remove(&10);
        assert_eq!(track.commit_point(), 13, "10 to 12 are done");
        track.outstanding.remove(&14);
        track.outstanding.remove(&13);
        assert_eq!(track.commit_point(), 15, "all done: the next offset");
    }
}
