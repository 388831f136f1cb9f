//! The publisher: an idempotent producer with `acks=all`, partitioned by stream.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use cqrs_core::{Ack, OutboundMessage, PublishError, Publisher};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::error::{Error, Result, bootstrap_servers};

/// A [`Publisher`] to one Kafka topic, each message acknowledged by every in-sync
/// replica (`acks=all`) before its result is `Ok`.
///
/// - **Partition key = the subject** (`<prefix>.<type>.<id>`, one per stream), so every
///   event of a stream goes to one partition and is stored in the order sent; the
///   relay has at most one message of a stream in flight (ADR 0022).
/// - **Message id = event id**, in the header `Cqrs-Event-Id` (Kafka has no message id
///   of its own); the rest of the envelope travels in the other `Cqrs-*` headers, in
///   order, and the payload is the body.
/// - **Idempotent producer** (`enable.idempotence=true`): the client's own retries
///   (a lost connection, a leader change) never store a message twice nor out of
///   order. A relay that restarts republishes with a new producer id, which Kafka does
///   not deduplicate: `Ack::duplicate` is always `false`, and the consumer's inbox
///   drops the second copy by its stream version.
///
/// | outcome | result |
/// |---|---|
/// | stored and replicated | `Ok(Ack { duplicate: false })` |
/// | over the message size limit, an invalid or unknown topic, a record the broker rejects | [`PublishError::Refused`] |
/// | no acknowledgement within the [delivery timeout](Self::with_delivery_timeout) (30 s), the client's queue full, a broker down | [`PublishError::Unavailable`] |
///
/// A batch is handed to the client in one go (librdkafka batches and pipelines it) and
/// then every acknowledgement is awaited. The client reconnects by itself; while the
/// broker is down, messages wait in its queue until the delivery timeout.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{InMemoryEventStore, Relay, SubjectScheme};
/// use cqrs_kafka::KafkaPublisher;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = KafkaPublisher::connect("kafka://127.0.0.1:9092", "bank-events")?;
/// publisher.ensure_topic(3).await?; // 3 partitions, if it does not exist
///
/// let store = InMemoryEventStore::new();
/// let mut relay = Relay::new("bank", &store, publisher, SubjectScheme::new("bank")?);
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // send to stop it
/// relay.run_until(async { let _ = stopped.await; }).await?;
/// # Ok(())
/// # }
/// ```
pub struct KafkaPublisher {
    brokers: String,
    topic: String,
    max_message_bytes: usize,
    delivery_timeout: Duration,
    config: ClientConfig,
    /// Replaced when the idempotent producer fails for good (a fatal error).
    producer: Mutex<FutureProducer>,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish_non_exhaustive()
    }
}

/// The default limit of a message's size (Kafka's own default, `message.max.bytes`).
const MAX_MESSAGE_BYTES: usize = 1_000_000;

impl KafkaPublisher {
    /// A publisher to `topic` on the brokers of `url` (`kafka://HOST:PORT[,HOST:PORT...]`).
    /// The client connects in the background: an unreachable broker shows as
    /// [`PublishError::Unavailable`] on publishing, not here.
    ///
    /// # Errors
    /// [`Error::Url`] for a URL that is not `kafka://…`; [`Error::Connect`] if
    /// librdkafka refuses the configuration.
    pub fn connect(url: &str, topic: impl Into<String>) -> Result<Self> {
        let brokers = bootstrap_servers(url)?;
        Self::build(
            brokers,
            topic.into(),
            MAX_MESSAGE_BYTES,
            Duration::from_secs(30),
        )
    }

    fn build(
        brokers: String,
        topic: String,
        max_message_bytes: usize,
        delivery_timeout: Duration,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("client.id", "cqrs-kafka-relay")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Batches of the relay's window go out together, without waiting for more.
            .set("linger.ms", "1")
            .set("message.max.bytes", max_message_bytes.to_string())
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        let producer = config
            .create::<FutureProducer>()
            .map_err(|e| Error::Connect {
                brokers: brokers.clone(),
                source: e.into(),
            })?;
        Ok(KafkaPublisher {
            brokers,
            topic,
            max_message_bytes,
            delivery_timeout,
            config,
            producer: Mutex::new(producer),
        })
    }

    /// Refuses (as [`PublishError::Refused`]) messages over `bytes` (payload, key and
    /// headers; at least 1,000) instead of Kafka's default 1,000,000. Keep it at or
    /// under the broker's and the topic's limit.
    ///
    /// # Errors
    /// [`Error::Connect`] if librdkafka refuses the configuration.
    pub fn with_max_message_bytes(self, bytes: usize) -> Result<Self> {
        Self::build(
            self.brokers,
            self.topic,
            bytes.max(1_000),
            self.delivery_timeout,
        )
    }

    /// Fails a message [`Unavailable`](PublishError::Unavailable) when it is not
    /// acknowledged within `timeout` (30 s by default), counting the client's own
    /// retries.
    ///
    /// # Errors
    /// [`Error::Connect`] if librdkafka refuses the configuration.
    pub fn with_delivery_timeout(self, timeout: Duration) -> Result<Self> {
        Self::build(self.brokers, self.topic, self.max_message_bytes, timeout)
    }

    /// The topic it publishes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Creates the topic with `partitions` partitions (at least 1) and a replication
    /// factor of 1, unless it exists (then it is left as it is). Waits at most 30 s,
    /// asking again while the broker is away or not ready (a restart, say).
    ///
    /// More partitions let more consumers of a group share the work; each stream stays
    /// in one partition, so its order holds with any number.
    ///
    /// # Errors
    /// [`Error::Topic`] if the broker refuses or does not answer in time.
    pub async fn ensure_topic(&self, partitions: u16) -> Result<()> {
        ensure_topic(&self.brokers, &self.topic, partitions).await
    }

    /// The producer, a new one if the last failed for good: an idempotent producer
    /// that hit a fatal error (a sequence gap the broker cannot accept) sends nothing
    /// more, and the relay's retries would spin on it. The messages it had in flight
    /// failed, so the relay publishes them again, in order, on the new one.
    fn producer(&self) -> Result<FutureProducer, Error> {
        let mut producer = self
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(topic = %self.topic, ?code, %reason,
                "the Kafka producer failed for good; making a new one");
            *producer = self.config.create().map_err(|e| Error::Connect {
                brokers: self.brokers.clone(),
                source: e.into(),
            })?;
        }
        Ok(producer.clone())
    }

    /// Sends one message; the acknowledgement to await, or why it was not sent.
    fn send(
        producer: &FutureProducer,
        topic: &str,
        message: &OutboundMessage,
    ) -> Result<rdkafka::producer::DeliveryFuture, PublishError> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(message.subject.as_bytes())
            .payload(&message.payload)
            .headers(headers);
        producer
            .send_result(record)
            .map_err(|(error, _)| classify(error))
    }
}

/// Creates `topic` unless it exists (see [`KafkaPublisher::ensure_topic`]).
///
/// A broker that drops the connection or is not ready yet (restarting, electing a
/// controller) is asked again, with backoff, until 30 s have passed: a relay started
/// while its broker restarts waits for it rather than exiting.
pub(crate) async fn ensure_topic(brokers: &str, topic: &str, partitions: u16) -> Result<()> {
    let failed = |operation: &'static str, source: cqrs_core::BoxError| Error::Topic {
        operation,
        topic: topic.to_owned(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| Error::Connect {
            brokers: brokers.to_owned(),
            source: e.into(),
        })?;
    let new = NewTopic::new(
        topic,
        i32::from(partitions.max(1)),
        TopicReplication::Fixed(1),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let options = AdminOptions::new()
            .request_timeout(Some(left.max(Duration::from_secs(1))))
            .operation_timeout(Some(left.max(Duration::from_secs(1))));
        let asked = tokio::time::timeout(
            left + Duration::from_secs(5),
            admin.create_topics(std::slice::from_ref(&new), &options),
        )
        .await
        .map_err(|_| failed("creating", "no answer within 35 s".into()))?;
        let code = match asked {
            Ok(results) => match results.into_iter().find_map(Result::err) {
                None | Some((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(()),
                Some((_, code)) => code,
            },
            // (`rdkafka_error_code` says nothing of an admin operation's code.)
            Err(KafkaError::AdminOp(code)) if transient(code) => code,
            Err(e) => return Err(failed("creating", e.into())),
        };
        if !transient(code) || tokio::time::Instant::now() + backoff > deadline {
            return Err(failed("creating", KafkaError::AdminOp(code).into()));
        }
        tracing::debug!(%topic, ?code, "the broker could not create the topic yet; asking again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Whether an admin request failed because the broker was away or not ready (worth
/// asking again), not because it refused.
fn transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NotController
    )
}

/// Whether the client's error is the broker's (or the client's own, final) refusal of
/// the message, or a broker that did not answer.
fn classify(error: KafkaError) -> PublishError {
    let code = match &error {
        KafkaError::MessageProduction(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    let refused = matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRequiredAcks
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::PolicyViolation
        )
    );
    if refused {
        PublishError::Refused {
            source: error.into(),
        }
    } else {
        PublishError::Unavailable {
            source: error.into(),
        }
    }
}

impl Publisher for KafkaPublisher {
    async fn publish<'a>(&'a self, batch: &'a [OutboundMessage]) -> Vec<Result<Ack, PublishError>> {
        let producer = match self.producer() {
            Ok(producer) => producer,
            Err(error) => {
                let text = error.to_string();
                return batch
                    .iter()
                    .map(|_| {
                        Err(PublishError::Unavailable {
                            source: text.clone().into(),
                        })
                    })
                    .collect();
            }
        };
        // Hand all to the client first (in order: one partition keeps it), then await
        // the acknowledgements together.
        let pending: Vec<_> = batch
            .iter()
            .map(|message| Self::send(&producer, &self.topic, message))
            .collect();
        let timeout = self.delivery_timeout + Duration::from_secs(5);
        let acks = pending.into_iter().map(|sent| async move {
            let future = sent?;
            match tokio::time::timeout(timeout, future).await {
                Ok(Ok(Ok(_delivery))) => Ok(Ack { duplicate: false }),
                Ok(Ok(Err((error, _message)))) => Err(classify(error)),
                Ok(Err(_canceled)) => Err(PublishError::Unavailable {
                    source: "the producer was dropped before the acknowledgement".into(),
                }),
                Err(_) => Err(PublishError::Unavailable {
                    source: format!("no acknowledgement within {timeout:?}").into(),
                }),
            }
        });
        futures::future::join_all(acks).await
    }
}
