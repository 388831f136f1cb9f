//! The service's store (sled or PostgreSQL, chosen by URL) and its consumer: the bank's
//! account events from JetStream, applied once to the statements read model.

use std::time::Duration;

use cqrs_core::{
    Consumer, ConsumerControl, ConsumerStats, DeadLetter, Inbox, InboxStats, Projection,
    RedriveReport,
};
use cqrs_kafka::{GroupSettings, KafkaSubscription};
use cqrs_nats::{JetStreamSubscription, SubscriptionSettings};
use cqrs_postgres::{PgInbox, PostgresEventStore};
use cqrs_rabbitmq::{AmqpSubscription, QueueSettings};
use cqrs_sled::{SledEventStore, SledInbox};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::postgres::PgStatements;
use crate::sled::SledStatements;
use crate::statement::Statement;
use crate::{Error, Result};

/// The consumer's name: its inbox's, its read model's (on sled) and its projection's.
pub const CONSUMER: &str = "statements";

/// How many dead letters one page holds when they are all listed.
const PAGE: usize = 500;

/// Where the bank's events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The broker: `nats://HOST:PORT` (NATS JetStream), `amqp://USER:PASS@HOST:PORT/VHOST`
    /// (RabbitMQ) or `kafka://HOST:PORT` (Kafka).
    pub url: String,
    /// The JetStream stream, the RabbitMQ topic exchange, or the Kafka topic, the bank's
    /// relay publishes to.
    pub stream: String,
    /// The durable consumer's name on the broker (on RabbitMQ, the queue's; on Kafka,
    /// the consumer group's).
    pub durable: String,
    /// The bank's subject prefix: account events are `<prefix>.account.<id>`.
    pub prefix: String,
    /// On Kafka, this process's static member id in the group (`group.instance.id`):
    /// a restarted process takes its partitions back at once. `None`: a dynamic member.
    pub instance: Option<String>,
}

impl Source {
    /// Checks the broker URL's scheme (`nats://`, `amqp://` or `kafka://`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for another scheme.
    pub fn check(&self) -> Result<()> {
        match self.url.split_once("://") {
            Some(("nats" | "amqp" | "kafka", _)) => Ok(()),
            _ => Err(Error::invalid(format!(
                "unsupported broker URL scheme in {:?}: use nats://HOST:PORT, \
                 amqp://USER:PASS@HOST:PORT/VHOST or kafka://HOST:PORT",
                self.url
            ))),
        }
    }
}

/// The service's own database.
#[derive(Debug, Clone)]
pub enum StatementsStore {
    /// A sled database (one process at a time).
    Sled(SledEventStore),
    /// A PostgreSQL schema (any number of processes).
    Postgres(PostgresEventStore),
}

/// Splits a `schema=NAME` query parameter off a PostgreSQL URL (sqlx would refuse it):
/// the URL without it, and the schema (default `statements`).
fn split_schema(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query.split('&').filter(|p| !p.is_empty());
    let (schema, kept): (Vec<&str>, Vec<&str>) = pairs.partition(|p| p.starts_with("schema="));
    let schema = schema
        .last()
        .map_or("statements", |p| &p["schema=".len()..]);
    if kept.is_empty() {
        return (base.to_owned(), schema.to_owned());
    }
    (format!("{base}?{}", kept.join("&")), schema.to_owned())
}

impl StatementsStore {
    /// Opens `sled:PATH` or `postgres://…[?schema=NAME]` (default schema `statements`;
    /// its tables are created if missing).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for another URL or a bad schema name; [`Error::Store`] if
    /// the database cannot be opened (a sled database held by another process, say).
    pub async fn open(url: &str) -> Result<StatementsStore> {
        if let Some(path) = url.strip_prefix("sled:") {
            if path.is_empty() {
                return Err(Error::invalid(
                    "sled: needs a path, e.g. sled:./statements-data",
                ));
            }
            let store = SledEventStore::open(path).map_err(|e| {
                let context = format!(
                    "opening {url} (if a `statements consume` or `serve` holds it, \
                     ask the server: --server http://ADDR)"
                );
                Error::store(context, e)
            })?;
            return Ok(StatementsStore::Sled(store));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (url, schema) = split_schema(url);
            let pool = PostgresEventStore::connect_pool(&url, 8).await;
            let pool = pool.map_err(|e| Error::store("connecting to PostgreSQL", e))?;
            let store = PostgresEventStore::builder(pool).schema(schema).build();
            let store = store.map_err(|e| Error::invalid(crate::error::full_chain(&e)))?;
            let migrated = store.migrate().await;
            migrated.map_err(|e| Error::store("migrating the statements schema", e))?;
            PgStatements::create(&store).await?;
            return Ok(StatementsStore::Postgres(store));
        }
        Err(Error::invalid(format!(
            "unknown store URL {url:?}: use sled:PATH or postgres://…?schema=NAME"
        )))
    }

    /// The statement of `account`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the service has seen no event of the account;
    /// [`Error::Store`] if the database fails.
    pub async fn statement(&self, account: &str) -> Result<Statement> {
        let found = match self {
            StatementsStore::Sled(store) => crate::sled::statement(store, account)?,
            StatementsStore::Postgres(store) => crate::postgres::statement(store, account).await?,
        };
        found.ok_or_else(|| Error::NotFound(format!("no statement for account {account:?}")))
    }

    /// Every dead letter, in order (read directly from the inbox).
    ///
    /// # Errors
    /// [`Error::Store`] if the database fails.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        match self {
            StatementsStore::Sled(store) => all_letters(&mut self.sled_inbox(store)?).await,
            StatementsStore::Postgres(store) => all_letters(&mut self.pg_inbox(store)?).await,
        }
    }

    /// The inbox's counts (read directly).
    ///
    /// # Errors
    /// [`Error::Store`] if the database fails.
    pub async fn stats(&self) -> Result<InboxStats> {
        let stats = match self {
            StatementsStore::Sled(store) => self.sled_inbox(store)?.stats().await,
            StatementsStore::Postgres(store) => self.pg_inbox(store)?.stats().await,
        };
        stats.map_err(|e| Error::store("reading the inbox's counts", e))
    }

    /// Applies the dead letters again, from this process (on PostgreSQL, safe while a
    /// consumer runs elsewhere: the inbox locks each stream's row).
    ///
    /// # Errors
    /// [`Error::Store`] if the database fails.
    pub async fn redrive(&self) -> Result<RedriveReport> {
        let report = match self {
            StatementsStore::Sled(store) => {
                let inbox = self.sled_inbox(store)?;
                Consumer::new(inbox, SledStatements).redrive(None).await
            }
            StatementsStore::Postgres(store) => {
                let (inbox, projection) = (self.pg_inbox(store)?, PgStatements::create(store));
                Consumer::new(inbox, projection.await?).redrive(None).await
            }
        };
        report.map_err(|e| Error::store("redriving the dead letters", e))
    }

    fn sled_inbox(&self, store: &SledEventStore) -> Result<SledInbox> {
        SledInbox::new(store.clone(), CONSUMER).map_err(|e| Error::store("opening the inbox", e))
    }

    fn pg_inbox(&self, store: &PostgresEventStore) -> Result<PgInbox> {
        PgInbox::new(store.clone(), CONSUMER).map_err(|e| Error::store("opening the inbox", e))
    }
}

async fn all_letters<I: Inbox>(inbox: &mut I) -> Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    loop {
        let after = letters.last().map_or(0, |l: &DeadLetter| l.id);
        let page = inbox.dead_letters(after, PAGE).await;
        let page = page.map_err(|e| Error::store("reading the dead letters", e))?;
        if page.is_empty() {
            return Ok(letters);
        }
        letters.extend(page);
    }
}

/// The consumer running in the background.
#[derive(Debug)]
pub struct Service {
    control: ConsumerControl,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ConsumerStats>>,
}

impl Service {
    /// Connects to the broker and starts consuming into `store` in a task. If the
    /// bank's stream does not exist yet, the task waits for it (trying every second).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a broker URL that is not `nats://…`, `amqp://…` or a
    /// valid `kafka://…`;
    /// [`Error::Broker`] if the broker cannot be reached.
    pub async fn start(store: &StatementsStore, source: &Source) -> Result<Service> {
        source.check()?;
        let broker = Broker::connect(source).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (control, task) = match store.clone() {
            StatementsStore::Sled(sled) => {
                let inbox = SledInbox::new(sled, CONSUMER);
                let inbox = inbox.map_err(|e| Error::store("opening the inbox", e))?;
                spawn(Consumer::new(inbox, SledStatements), broker, stopped)
            }
            StatementsStore::Postgres(pg) => {
                let inbox = PgInbox::new(pg.clone(), CONSUMER);
                let inbox = inbox.map_err(|e| Error::store("opening the inbox", e))?;
                let projection = PgStatements::create(&pg).await?;
                spawn(Consumer::new(inbox, projection), broker, stopped)
            }
        };
        Ok(Service {
            control,
            stop,
            task,
        })
    }

    /// Lists and redrives dead letters through the running consumer.
    pub fn control(&self) -> ConsumerControl {
        self.control.clone()
    }

    /// Runs until `shutdown` completes (then stops the consumer) or the consumer stops
    /// by itself, and returns what it did.
    ///
    /// # Errors
    /// As [`stop`](Self::stop).
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<ConsumerStats> {
        tokio::select! {
            () = shutdown => self.stop().await,
            joined = &mut self.task => {
                joined.map_err(|e| Error::store("the consumer's task failed", e))?
            }
        }
    }

    /// Stops the consumer between two batches and returns what it did.
    ///
    /// # Errors
    /// [`Error::Broker`] if it had stopped because its subscription was closed.
    pub async fn stop(self) -> Result<ConsumerStats> {
        let _ = self.stop.send(());
        let joined = self.task.await;
        joined.map_err(|e| Error::store("the consumer's task failed", e))?
    }
}

/// The broker to subscribe to, one variant per URL scheme.
enum Broker {
    /// NATS JetStream: a durable pull consumer on the bank's stream.
    Nats {
        client: async_nats::Client,
        settings: SubscriptionSettings,
    },
    /// RabbitMQ: a durable queue bound to the bank's exchange.
    Amqp { url: String, queue: QueueSettings },
    /// Kafka: a member of the consumer group `durable` on the bank's topic (it joins
    /// the group when first asked for a message, and waits while the topic is missing).
    Kafka(Box<KafkaSubscription>),
}

impl Broker {
    async fn connect(source: &Source) -> Result<Broker> {
        if source.url.starts_with("amqp://") {
            let scheme = cqrs_core::SubjectScheme::new(&source.prefix)
                .map_err(|e| Error::invalid(e.to_string()))?;
            let mut queue = QueueSettings::new(&source.durable, &source.stream, &scheme);
            // Account events only: `<prefix>.account.*`.
            queue.binding_key = format!("{}.account.*", source.prefix);
            return Ok(Broker::Amqp {
                url: source.url.clone(),
                queue,
            });
        }
        if source.url.starts_with("kafka://") {
            let mut settings = GroupSettings::new(&source.stream, &source.durable)
                .with_filter(format!("{}.account.*", source.prefix));
            if let Some(instance) = &source.instance {
                settings = settings.with_instance(instance);
            }
            let subscription = KafkaSubscription::connect(&source.url, settings);
            let subscription = subscription.map_err(|e| match e {
                cqrs_kafka::Error::Url { .. } => Error::invalid(e.to_string()),
                e => Error::broker(format!("connecting to {}", source.url), e),
            })?;
            return Ok(Broker::Kafka(Box::new(subscription)));
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(&source.url)
            .await
            .map_err(|e| Error::broker(format!("connecting to {}", source.url), e))?;
        let settings = SubscriptionSettings::new(&source.stream, &source.durable)
            .with_filter(format!("{}.account.*", source.prefix));
        Ok(Broker::Nats { client, settings })
    }

    /// Subscribes, trying every second until it works (the bank's relay may not have
    /// created the stream or exchange yet); `None` if `stopped` fires first.
    async fn subscribe<T, F, Fut, E>(
        what: &str,
        stopped: &mut oneshot::Receiver<()>,
        attempt: F,
    ) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: std::error::Error + 'static,
    {
        loop {
            tokio::select! {
                _ = &mut *stopped => return None,
                subscribed = attempt() => match subscribed {
                    Ok(subscription) => return Some(subscription),
                    Err(e) => tracing::warn!(source = %what,
                        error = %crate::error::full_chain(&e),
                        "cannot subscribe (has the bank's relay created the stream?); retrying in 1 s"),
                },
            }
            tokio::select! {
                _ = &mut *stopped => return None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

fn spawn<I, P>(
    mut consumer: Consumer<I, P>,
    broker: Broker,
    stopped: oneshot::Receiver<()>,
) -> (ConsumerControl, JoinHandle<Result<ConsumerStats>>)
where
    I: Inbox,
    P: Projection<I::Context> + Send + 'static,
    I::Context: Send,
{
    let control = consumer.control();
    let task = tokio::spawn(async move {
        let mut stopped = stopped;
        match broker {
            Broker::Nats { client, settings } => {
                let attempt = || JetStreamSubscription::new(client.clone(), settings.clone());
                let Some(mut subscription) =
                    Broker::subscribe(&settings.stream, &mut stopped, attempt).await
                else {
                    return Ok(ConsumerStats::default());
                };
                tracing::info!(stream = %settings.stream, durable = %settings.durable,
                    filter = ?settings.filter, "consuming");
                consume(&mut consumer, &mut subscription, stopped).await
            }
            Broker::Amqp { url, queue } => {
                let attempt = || AmqpSubscription::connect(&url, queue.clone());
                let Some(mut subscription) =
                    Broker::subscribe(&queue.exchange, &mut stopped, attempt).await
                else {
                    return Ok(ConsumerStats::default());
                };
                tracing::info!(exchange = %queue.exchange, queue = %queue.name,
                    binding = %queue.binding_key, "consuming");
                consume(&mut consumer, &mut subscription, stopped).await
            }
            Broker::Kafka(mut subscription) => {
                let settings = subscription.settings();
                tracing::info!(topic = %settings.topic, group = %settings.group,
                    filter = ?settings.filter, "consuming");
                consume(&mut consumer, &mut *subscription, stopped).await
            }
        }
    });
    (control, task)
}

async fn consume<I, P, S>(
    consumer: &mut Consumer<I, P>,
    subscription: &mut S,
    stopped: oneshot::Receiver<()>,
) -> Result<ConsumerStats>
where
    I: Inbox,
    P: Projection<I::Context>,
    S: cqrs_core::Subscription,
{
    let shutdown = async {
        let _ = stopped.await;
    };
    let ran = consumer.run_until(subscription, shutdown).await;
    let stats = ran.map_err(|e| Error::broker("consuming", e))?;
    tracing::info!(
        applied = stats.applied,
        skipped = stats.skipped,
        duplicates = stats.duplicates,
        dead_lettered = stats.dead_lettered,
        held = stats.held,
        "consumer stopped"
    );
    Ok(stats)
}
