//! The publisher: a topic exchange, publisher confirms, persistent messages.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cqrs_core::{Ack, OutboundMessage, PublishError, Publisher};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::Mutex;

use crate::Result;
use crate::topology::{self, MAX_SHORT_STRING, QueueSettings};

/// AMQP delivery mode 2: the broker writes the message to disk (in a durable queue).
const PERSISTENT: u8 = 2;

/// The connection and the confirming channel the publisher sends on.
struct Link {
    connection: Connection,
    channel: Channel,
}

/// A [`Publisher`] to a RabbitMQ topic exchange, with publisher confirms.
///
/// Each message is published to the exchange with its subject as the routing key
/// (`<prefix>.<type>.<id>`, which topic bindings such as `<prefix>.#` match), as a
/// persistent message (delivery mode 2) with `message-id` set to the event id,
/// `content-type: application/json`, the `Cqrs-*` envelope as long strings in the header
/// table, and the payload as the body. It is published `mandatory`, so a message that
/// no queue is bound for comes back instead of vanishing.
///
/// A batch is sent in one go on one channel (in confirm mode), and then every confirm
/// is awaited (each within [`confirm_timeout`](Self::with_confirm_timeout), 10 s by
/// default):
///
/// | broker's answer | result |
/// |---|---|
/// | ack | `Ok(Ack { duplicate: false })` |
/// | ack of a returned message (no queue bound for its routing key) | [`PublishError::Refused`] |
/// | nack (a queue over its length limit with `reject-publish`, a broker fault) | [`PublishError::Refused`] |
/// | a channel error (the exchange does not exist, a message over `max_message_size`) | [`PublishError::Refused`] |
/// | no confirm in time, the connection lost or refused | [`PublishError::Unavailable`] |
///
/// RabbitMQ does not deduplicate by message id: a republished event (the relay
/// restarted after a crash) is stored and delivered again, and `Ack::duplicate` is
/// always `false` ("cannot tell"). The consumer's inbox drops the second copy.
///
/// When the connection is lost (the broker restarted), the publisher connects again on
/// the next [`publish`](Publisher::publish): until that works, each publish fails with
/// [`PublishError::Unavailable`], which the relay retries with backoff.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{InMemoryEventStore, Relay, SubjectScheme};
/// use cqrs_rabbitmq::{AmqpPublisher, QueueSettings};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let scheme = SubjectScheme::new("bank")?;
/// let publisher = AmqpPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "bank").await?;
/// publisher.ensure_exchange().await?;
/// // The consuming service's queue, declared before anything is published to it.
/// publisher.ensure_queue(&QueueSettings::new("ledger.bank", "bank", &scheme)).await?;
///
/// let store = InMemoryEventStore::new();
/// let mut relay = Relay::new("bank", &store, publisher, scheme);
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // send to stop it
/// relay.run_until(async { let _ = stopped.await; }).await?;
/// # Ok(())
/// # }
/// ```
pub struct AmqpPublisher {
    url: String,
    exchange: String,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    /// Whether [`ensure_exchange`](Self::ensure_exchange) was called: a new connection
    /// declares the exchange again (a broker whose definitions were reset).
    declares_exchange: AtomicBool,
    link: Mutex<Option<Link>>,
}

impl fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("url", &crate::error::redact(&self.url))
            .field("exchange", &self.exchange)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish_non_exhaustive()
    }
}

impl AmqpPublisher {
    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`, the vhost
    /// percent-encoded: `%2f` for `/`) to publish to the topic exchange `exchange`.
    ///
    /// # Errors
    /// [`Error::Connect`](crate::Error::Connect) if the broker cannot be reached or
    /// refuses the login (within 5 s); [`Error::Topology`](crate::Error::Topology) if it
    /// refuses a channel in confirm mode, or the exchange name is over 255 bytes.
    pub async fn connect(url: &str, exchange: impl Into<String>) -> Result<Self> {
        let exchange = exchange.into();
        topology::short("naming the exchange", &exchange)?;
        let publisher = AmqpPublisher {
            url: url.to_owned(),
            exchange,
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            declares_exchange: AtomicBool::new(false),
            link: Mutex::new(None),
        };
        let link = publisher.open().await?;
        *publisher.link.lock().await = Some(link);
        Ok(publisher)
    }

    /// Waits at most `timeout` for each confirm (then the message is
    /// [`Unavailable`](PublishError::Unavailable): it may have been stored).
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Gives up (re)connecting, and declaring, after `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The exchange it publishes to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Declares the exchange: durable, of type `topic` (nothing changes if it exists
    /// so). Every later reconnection declares it again.
    ///
    /// # Errors
    /// [`Error::Topology`](crate::Error::Topology) if the broker refuses (an exchange of
    /// that name with other settings); [`Error::Connect`](crate::Error::Connect) if it
    /// cannot be reached.
    pub async fn ensure_exchange(&self) -> Result<()> {
        let channel = self.channel().await?;
        topology::declare_exchange(&channel, &self.exchange, self.connect_timeout).await?;
        self.declares_exchange.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Declares a consuming service's durable queue and binds it to the exchange
    /// (declaring the exchange too), so that messages published from now on are kept
    /// for it. The [`AmqpSubscription`](crate::AmqpSubscription) declares the same; a
    /// deployment declares it here, before the relay publishes, so that nothing
    /// published before the consumer's first start is lost.
    ///
    /// # Errors
    /// [`Error::Topology`](crate::Error::Topology) if the broker refuses (a queue of that
    /// name with other arguments); [`Error::Connect`](crate::Error::Connect) if it cannot
    /// be reached.
    pub async fn ensure_queue(&self, settings: &QueueSettings) -> Result<()> {
        let channel = self.channel().await?;
        topology::declare_queue(&channel, settings, self.connect_timeout).await
    }

    /// A channel for management (declaring, deleting, reading a queue back: the lapin
    /// client's own, for what this crate does not wrap), on the publisher's connection.
    /// Not in confirm mode; do not publish on it.
    ///
    /// # Errors
    /// [`Error::Connect`](crate::Error::Connect) if the broker cannot be reached;
    /// [`Error::Topology`](crate::Error::Topology) if it refuses a channel.
    pub async fn management_channel(&self) -> Result<Channel> {
        let mut link = self.link.lock().await;
        let current = match link.take() {
            Some(current) if current.connection.status().connected() => current,
            _ => self.open().await?,
        };
        let channel = topology::declaring(
            "opening a channel",
            self.connect_timeout,
            current.connection.create_channel(),
        )
        .await;
        *link = Some(current);
        channel
    }

    /// Opens a connection and a channel in confirm mode (declaring the exchange if it
    /// was ensured before).
    async fn open(&self) -> Result<Link> {
        let connection =
            topology::connect(&self.url, self.connect_timeout, "cqrs-rabbitmq publisher").await?;
        let channel = self.confirming_channel(&connection).await?;
        if self.declares_exchange.load(Ordering::Relaxed) {
            topology::declare_exchange(&channel, &self.exchange, self.connect_timeout).await?;
        }
        Ok(Link {
            connection,
            channel,
        })
    }

    async fn confirming_channel(&self, connection: &Connection) -> Result<Channel> {
        let channel = topology::declaring(
            "opening a channel",
            self.connect_timeout,
            connection.create_channel(),
        )
        .await?;
        topology::declaring(
            "selecting publisher confirms",
            self.connect_timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(channel)
    }

    /// The confirming channel: the one there, or a new one (on a new connection if
    /// the old one is lost).
    async fn channel(&self) -> Result<Channel> {
        let mut link = self.link.lock().await;
        if let Some(current) = link.as_mut() {
            if current.channel.status().connected() {
                return Ok(current.channel.clone());
            }
            if current.connection.status().connected() {
                // The broker closed the channel (a channel error): open another.
                current.channel = self.confirming_channel(&current.connection).await?;
                return Ok(current.channel.clone());
            }
            tracing::info!(exchange = %self.exchange, "the connection to RabbitMQ is lost; reconnecting");
        }
        // Drop (and so close) the old connection first.
        *link = None;
        let fresh = self.open().await?;
        let channel = fresh.channel.clone();
        *link = Some(fresh);
        Ok(channel)
    }

    /// Sends one message; the confirm to await, or why it was not sent.
    async fn send(
        &self,
        channel: &Channel,
        message: &OutboundMessage,
    ) -> Result<PublisherConfirm, PublishError> {
        if message.subject.len() > MAX_SHORT_STRING {
            return Err(PublishError::Refused {
                source: format!(
                    "the routing key {}... is {} bytes; AMQP carries at most 255",
                    message.subject.get(..64).unwrap_or_default(),
                    message.subject.len()
                )
                .into(),
            });
        }
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(message.message_id.to_string()))
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(topology::header_table(&message.headers));
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(message.subject.as_str()),
                options,
                &message.payload,
                properties,
            )
            .await
            .map_err(client_error)
    }
}

/// A client error: the broker's refusal on the channel (a soft error: no such exchange,
/// a message too large) or an unavailable broker (everything else).
fn client_error(error: lapin::Error) -> PublishError {
    if error.is_amqp_soft_error() {
        PublishError::Refused {
            source: error.into(),
        }
    } else {
        PublishError::Unavailable {
            source: error.into(),
        }
    }
}

/// The result of one confirm.
fn confirmed(confirmation: Confirmation) -> Result<Ack, PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(Ack { duplicate: false }),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishError::Refused {
                source: format!(
                    "the broker returned the message: {} {} (no queue is bound for routing key {})",
                    returned.reply_code, returned.reply_text, returned.delivery.routing_key
                )
                .into(),
            })
        }
        Confirmation::Nack(None) => Err(PublishError::Refused {
            source: "the broker did not store the message (negative confirm)".into(),
        }),
        Confirmation::NotRequested => Err(PublishError::Unavailable {
            source: "the channel is not in confirm mode".into(),
        }),
    }
}

impl Publisher for AmqpPublisher {
    async fn publish<'a>(&'a self, batch: &'a [OutboundMessage]) -> Vec<Result<Ack, PublishError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(error) => {
                let error: cqrs_core::BoxError = error.into();
                let text = error.to_string();
                let mut results = Vec::with_capacity(batch.len());
                results.push(Err(PublishError::Unavailable { source: error }));
                results.extend(batch[1..].iter().map(|_| {
                    Err(PublishError::Unavailable {
                        source: text.clone().into(),
                    })
                }));
                return results;
            }
        };
        // Send all first (in order, on one channel), then await the confirms together.
        let mut pending = Vec::with_capacity(batch.len());
        for message in batch {
            pending.push(self.send(&channel, message).await);
        }
        let confirm_timeout = self.confirm_timeout;
        let confirms = pending.into_iter().map(|sent| async move {
            match tokio::time::timeout(confirm_timeout, sent?).await {
                Ok(Ok(confirmation)) => confirmed(confirmation),
                Ok(Err(error)) => Err(client_error(error)),
                Err(_) => Err(PublishError::Unavailable {
                    source: format!("no confirm within {confirm_timeout:?}").into(),
                }),
            }
        });
        futures::future::join_all(confirms).await
    }
}
