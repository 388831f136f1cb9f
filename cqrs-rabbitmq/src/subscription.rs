//! The subscription: a durable queue consumed with manual acknowledgements.

use std::fmt;
use std::time::Duration;

use cqrs_core::{BoxError, Delivery, SubscribeError, Subscription};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel, Connection};
use tokio::task::JoinHandle;

use crate::Result;
use crate::topology::{self, QueueSettings};

/// One message from an [`AmqpSubscription`], not yet acknowledged.
///
/// Dropped without [`ack`](Delivery::ack), it stays with the broker, which delivers it
/// again when the subscription's channel closes (a reconnection, the process ending).
pub struct AmqpDelivery {
    routing_key: String,
    message_id: Option<String>,
    redelivered: bool,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    acker: Acker,
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("routing_key", &self.routing_key)
            .field("message_id", &self.message_id)
            .field("redelivered", &self.redelivered)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl AmqpDelivery {
    fn new(delivery: lapin::message::Delivery) -> Self {
        let properties = &delivery.properties;
        AmqpDelivery {
            routing_key: delivery.routing_key.as_str().to_owned(),
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            redelivered: delivery.redelivered,
            headers: topology::header_pairs(properties.headers().as_ref()),
            payload: delivery.data,
            acker: delivery.acker,
        }
    }

    /// The AMQP `message-id` (the event id, for messages of an
    /// [`AmqpPublisher`](crate::AmqpPublisher)).
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// Whether the broker delivered it before (to this or another consumer) without an
    /// acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }
}

impl Delivery for AmqpDelivery {
    fn subject(&self) -> &str {
        &self.routing_key
    }

    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        found.next().map(|(_, v)| v.as_str())
    }

    /// The string entries of the AMQP header table, ordered by name (a header table is
    /// a map: the order they were sent in is not kept).
    fn headers(&self) -> Vec<(String, String)> {
        self.headers.clone()
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }

    async fn ack(&self) -> Result<(), SubscribeError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SubscribeError::Unavailable {
                source: "the channel closed before the acknowledgement (or it was sent already)"
                    .into(),
            }),
            Err(error) => Err(SubscribeError::Unavailable {
                source: error.into(),
            }),
        }
    }
}

/// A live consumer: its connection, channel and stream of deliveries.
struct Live {
    /// Dropping it closes the connection.
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

enum State {
    /// Not connected: the next `next` starts connecting (after the backoff delay).
    Idle,
    /// Connecting in a task of its own, so that a `next` cancelled meanwhile loses
    /// nothing (the next `next` awaits the same task).
    Connecting(JoinHandle<Result<Live>>),
    Live(Box<Live>),
    /// The broker cancelled the consumer (the queue was deleted): for good.
    Closed,
}

/// A [`Subscription`] to a durable RabbitMQ queue: each message is delivered until it
/// is acknowledged ([`Delivery::ack`] is `basic.ack`), with at most a
/// [prefetch](Self::connect_with_prefetch) of messages (256 by default) delivered and not
/// yet acknowledged at a time.
///
/// Each (re)connection declares the exchange, the queue and its binding
/// ([`QueueSettings`]), sets the prefetch and starts consuming. When the connection
/// drops (the broker restarts), [`next`](Subscription::next) fails with
/// [`SubscribeError::Unavailable`] and the following calls connect again, with a
/// growing delay between failed attempts (100 ms doubling up to 5 s, see
/// [`with_backoff`](Self::with_backoff)); the messages not acknowledged on the old
/// connection are delivered again, which the consumer's inbox recognises.
///
/// When the queue is deleted (the broker cancels the consumer and a passive declaration
/// finds no queue), `next` fails with [`SubscribeError::Closed`], and keeps failing so:
/// declaring the queue again would hide that the messages in it were lost.
///
/// `next` is cancel safe: a message is taken from the client's buffer only when `next`
/// returns it, and a connection being made goes on in a task of its own.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{Consumer, InMemoryInbox, SubjectScheme};
/// use cqrs_rabbitmq::{AmqpSubscription, QueueSettings};
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
/// let scheme = SubjectScheme::new("bank")?;
/// let queue = QueueSettings::new("ledger.bank", "bank", &scheme);
/// let mut subscription =
///     AmqpSubscription::connect("amqp://guest:guest@127.0.0.1:5672/%2f", queue).await?;
///
/// let mut consumer = Consumer::new(InMemoryInbox::new(), Balances::default());
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // send to stop it
/// consumer.run_until(&mut subscription, async { let _ = stopped.await; }).await?;
/// # Ok(())
/// # }
/// ```
pub struct AmqpSubscription {
    url: String,
    settings: QueueSettings,
    prefetch: u16,
    connect_timeout: Duration,
    backoff: (Duration, Duration),
    /// Connection attempts failed (or connections lost) in a row.
    failures: u32,
    /// Connections made after the first.
    reconnections: u64,
    state: State,
}

impl fmt::Debug for AmqpSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Idle => "idle",
            State::Connecting(_) => "connecting",
            State::Live(_) => "consuming",
            State::Closed => "closed",
        };
        f.debug_struct("AmqpSubscription")
            .field("url", &crate::error::redact(&self.url))
            .field("queue", &self.settings)
            .field("prefetch", &self.prefetch)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl AmqpSubscription {
    /// Connects to the broker at `url`, declares the queue (and the exchange and the
    /// binding) of `settings`, and starts consuming it with a prefetch of 256.
    ///
    /// # Errors
    /// [`Error::Connect`](crate::Error::Connect) if the broker cannot be reached (within
    /// 5 s), [`Error::Topology`](crate::Error::Topology) if it refuses a declaration.
    pub async fn connect(url: &str, settings: QueueSettings) -> Result<Self> {
        Self::connect_with_prefetch(url, settings, 256).await
    }

    /// As [`connect`](Self::connect), with at most `prefetch` messages delivered and
    /// not yet acknowledged at a time (at least 1).
    ///
    /// # Errors
    /// As for [`connect`](Self::connect).
    pub async fn connect_with_prefetch(
        url: &str,
        settings: QueueSettings,
        prefetch: u16,
    ) -> Result<Self> {
        let mut subscription = AmqpSubscription {
            url: url.to_owned(),
            settings,
            prefetch: prefetch.max(1),
            connect_timeout: Duration::from_secs(5),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            failures: 0,
            reconnections: 0,
            state: State::Idle,
        };
        let live = open(
            subscription.url.clone(),
            subscription.settings.clone(),
            subscription.prefetch,
            subscription.connect_timeout,
        )
        .await?;
        subscription.state = State::Live(Box::new(live));
        Ok(subscription)
    }

    /// Waits `base` before the first reconnection attempt after a failure, doubling
    /// with each failure up to `max`.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = (base, max.max(base));
        self
    }

    /// The queue's settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// How many times it connected again (after a lost connection or a
    /// [`disconnect`](Self::disconnect)): for health checks and tests.
    pub fn reconnections(&self) -> u64 {
        self.reconnections
    }

    /// Closes the connection: the messages delivered and not acknowledged go back to
    /// the queue, to be delivered again; the next [`next`](Subscription::next)
    /// connects again (at once).
    pub async fn disconnect(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Idle);
        match state {
            State::Live(live) => {
                let closing = live.connection.close(200, ShortString::from("disconnect"));
                if tokio::time::timeout(self.connect_timeout, closing)
                    .await
                    .is_err()
                {
                    tracing::warn!(queue = %self.settings.name, "closing the connection timed out");
                }
            }
            State::Connecting(task) => task.abort(),
            State::Closed => self.state = State::Closed,
            State::Idle => {}
        }
        self.failures = 0;
    }

    fn delay(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let (base, max) = self.backoff;
        base.saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(max)
    }

    fn unavailable(&mut self, source: BoxError) -> SubscribeError {
        self.failures = self.failures.saturating_add(1);
        self.state = State::Idle;
        tracing::warn!(queue = %self.settings.name, error = %source,
            "the RabbitMQ subscription is down; reconnecting");
        SubscribeError::Unavailable { source }
    }
}

impl Drop for AmqpSubscription {
    fn drop(&mut self) {
        if let State::Connecting(task) = &self.state {
            task.abort();
        }
    }
}

/// Connects, declares the topology, sets the prefetch and starts consuming.
async fn open(
    url: String,
    settings: QueueSettings,
    prefetch: u16,
    timeout: Duration,
) -> Result<Live> {
    let connection = topology::connect(&url, timeout, "cqrs-rabbitmq subscription").await?;
    let channel =
        topology::declaring("opening a channel", timeout, connection.create_channel()).await?;
    topology::declare_queue(&channel, &settings, timeout).await?;
    topology::declaring(
        "setting the prefetch",
        timeout,
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let consumer = topology::declaring(
        "starting the consumer",
        timeout,
        channel.basic_consume(
            ShortString::from(settings.name.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(Live {
        connection,
        channel,
        consumer,
    })
}

/// Whether the broker says the queue does not exist (a passive declaration answered
/// with 404) on a channel that is still open.
async fn queue_is_gone(live: &Live, queue: &str, timeout: Duration) -> bool {
    if !(live.connection.status().connected() && live.channel.status().connected()) {
        return false;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared =
        live.channel
            .queue_declare(ShortString::from(queue), passive, FieldTable::default());
    match tokio::time::timeout(timeout, declared).await {
        Ok(Err(error)) => matches!(
            error.kind(),
            lapin::ErrorKind::ProtocolError(amqp)
                if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
        ),
        _ => false,
    }
}

impl Subscription for AmqpSubscription {
    type Delivery = AmqpDelivery;

    async fn next(&mut self) -> Result<AmqpDelivery, SubscribeError> {
        loop {
            match &mut self.state {
                State::Closed => {
                    return Err(SubscribeError::Closed {
                        source: Some("the broker cancelled the consumer".into()),
                    });
                }
                State::Idle => {
                    let delay = self.delay();
                    let (url, settings) = (self.url.clone(), self.settings.clone());
                    let (prefetch, timeout) = (self.prefetch, self.connect_timeout);
                    self.state = State::Connecting(tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        open(url, settings, prefetch, timeout).await
                    }));
                }
                State::Connecting(task) => match task.await {
                    Ok(Ok(live)) => {
                        tracing::info!(queue = %self.settings.name, "the RabbitMQ subscription is consuming again");
                        self.reconnections = self.reconnections.saturating_add(1);
                        self.state = State::Live(Box::new(live));
                    }
                    Ok(Err(error)) => return Err(self.unavailable(error.into())),
                    Err(error) => return Err(self.unavailable(error.into())),
                },
                State::Live(live) => match live.consumer.next().await {
                    Some(Ok(delivery)) => {
                        self.failures = 0;
                        return Ok(AmqpDelivery::new(delivery));
                    }
                    Some(Err(error)) => return Err(self.unavailable(error.into())),
                    None => {
                        // The consumer ended: the channel closed, or the broker cancelled
                        // it. Only a queue that is gone ends the subscription for good.
                        if queue_is_gone(live, &self.settings.name, self.connect_timeout).await {
                            self.state = State::Closed;
                            tracing::warn!(queue = %self.settings.name,
                                "the queue was deleted: the subscription is closed");
                        } else {
                            return Err(self.unavailable("the consumer ended".into()));
                        }
                    }
                },
            }
        }
    }
}
