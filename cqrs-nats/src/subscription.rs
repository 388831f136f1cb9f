//! The JetStream subscription: a durable pull consumer feeding a [`Consumer`].
//!
//! [`Consumer`]: cqrs_core::Consumer

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::pull::MessagesErrorKind};
use cqrs_core::{Delivery, SubscribeError, Subscription};
use futures::StreamExt;

use crate::{Error, Result};

/// Where a [`JetStreamSubscription`] reads: a durable consumer on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// The JetStream stream that holds the events (the publisher's
    /// [`StreamSettings::name`](crate::StreamSettings::name)).
    pub stream: String,
    /// The durable consumer's name: the consuming service's, one per read model (no
    /// spaces, `.`, `*` or `>`). JetStream remembers what it acknowledged.
    pub durable: String,
    /// The subjects it takes, e.g. `bank.account.*`; `None` for the whole stream.
    pub filter: Option<String>,
    /// How long JetStream waits for an acknowledgement before delivering a message
    /// again. Keep it well under the [`Consumer`](cqrs_core::Consumer)'s `gap_wait`
    /// (30 s by default): when a consumer dies with messages delivered and not
    /// acknowledged, JetStream delivers them again only after `ack_wait`, and the
    /// restarted consumer holds the later events it receives meanwhile for `gap_wait`,
    /// waiting for them; were `ack_wait` longer, the wait would end first and the gap
    /// be dead-lettered. (A held event is itself delivered again after `ack_wait`: the
    /// consumer keeps the newer copy.) Default 10 s.
    pub ack_wait: Duration,
    /// The most messages delivered and not yet acknowledged. Default 10,000.
    pub max_ack_pending: i64,
}

impl SubscriptionSettings {
    /// A durable consumer `durable` of every subject of `stream`.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        SubscriptionSettings {
            stream: stream.into(),
            durable: durable.into(),
            filter: None,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 10_000,
        }
    }

    /// Takes only the subjects matching `filter` (a NATS wildcard subject).
    pub fn with_filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }
}

/// A [`Subscription`] to a JetStream durable pull consumer, created on the stream if it
/// does not exist. Messages come in the stream's order; each is delivered until it is
/// acknowledged (after `ack_wait`, again), so a consumer that crashes loses nothing.
///
/// When the connection breaks, [`next`](Subscription::next) fails with
/// [`SubscribeError::Unavailable`] while the client reconnects, then resumes: the
/// durable consumer on the server remembers what was acknowledged.
///
/// # Examples
/// ```no_run
/// use cqrs_nats::{JetStreamSubscription, SubscriptionSettings};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let settings = SubscriptionSettings::new("BANK_EVENTS", "statements")
///     .with_filter("bank.account.*");
/// let subscription = JetStreamSubscription::new(client, settings).await?;
/// # Ok(())
/// # }
/// ```
pub struct JetStreamSubscription {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    messages: Option<pull::Stream>,
}

impl std::fmt::Debug for JetStreamSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSubscription")
            .field("open", &self.messages.is_some())
            .finish_non_exhaustive()
    }
}

impl JetStreamSubscription {
    /// Creates (or finds) the durable consumer and subscribes to it.
    ///
    /// # Errors
    /// [`Error::JetStream`] if the stream does not exist or the consumer cannot be
    /// created (an existing one with other settings, say).
    pub async fn new(client: async_nats::Client, settings: SubscriptionSettings) -> Result<Self> {
        let context = jetstream::new(client);
        let stream = context
            .get_stream(&settings.stream)
            .await
            .map_err(|source| Error::JetStream {
                operation: "finding the stream to subscribe to",
                source: source.into(),
            })?;
        let config = pull::Config {
            durable_name: Some(settings.durable.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_ack_pending: settings.max_ack_pending,
            filter_subject: settings.filter.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&settings.durable, config)
            .await
            .map_err(|source| Error::JetStream {
                operation: "creating or finding the durable consumer",
                source: source.into(),
            })?;
        Ok(JetStreamSubscription {
            consumer,
            messages: None,
        })
    }
}

fn unavailable(source: impl Into<cqrs_core::BoxError>) -> SubscribeError {
    SubscribeError::Unavailable {
        source: source.into(),
    }
}

impl Subscription for JetStreamSubscription {
    type Delivery = JetStreamDelivery;

    async fn next(&mut self) -> std::result::Result<JetStreamDelivery, SubscribeError> {
        if self.messages.is_none() {
            let messages = self.consumer.messages().await.map_err(unavailable)?;
            self.messages = Some(messages);
        }
        let Some(messages) = self.messages.as_mut() else {
            return Err(unavailable("no message stream"));
        };
        match messages.next().await {
            Some(Ok(message)) => Ok(JetStreamDelivery { message }),
            Some(Err(error)) => {
                let kind = error.kind();
                if kind == MessagesErrorKind::ConsumerDeleted {
                    return Err(SubscribeError::Closed {
                        source: Some(error.into()),
                    });
                }
                // A missed heartbeat or a failed pull: start a fresh pull stream.
                self.messages = None;
                Err(unavailable(error))
            }
            None => {
                self.messages = None;
                Err(unavailable("the message stream ended"))
            }
        }
    }
}

/// A message from a [`JetStreamSubscription`].
#[derive(Debug)]
pub struct JetStreamDelivery {
    message: jetstream::Message,
}

impl Delivery for JetStreamDelivery {
    fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    fn header(&self, name: &str) -> Option<&str> {
        let headers = self.message.headers.as_ref()?;
        headers.get(name).map(AsRef::as_ref)
    }

    fn headers(&self) -> Vec<(String, String)> {
        let Some(headers) = self.message.headers.as_ref() else {
            return Vec::new();
        };
        let mut all: Vec<(String, String)> = headers
            .iter()
            .flat_map(|(name, values)| {
                let name = name.to_string();
                values
                    .iter()
                    .map(move |v| (name.clone(), AsRef::<str>::as_ref(v).to_owned()))
            })
            .collect();
        all.sort();
        all
    }

    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    async fn ack(&self) -> std::result::Result<(), SubscribeError> {
        self.message.ack().await.map_err(unavailable)
    }
}
