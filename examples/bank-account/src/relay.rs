//! `bank relay` and `bank serve --relay-to`: the bank's events published to a broker by
//! the framework's relay, as a process of its own or inside `serve`.
//!
//! The broker is chosen by the URL's scheme ([`Broker::connect`]); each broker's arm
//! hands its publisher to the one generic [`relay`], so adding one (as `amqp://` and
//! `kafka://` were) is a new arm there, nothing else.

use std::time::Duration;

use clap::Args;
use cqrs_core::{BoxError, Publisher, Relay, RelayStats, SubjectScheme, Supervisor};
use cqrs_kafka::KafkaPublisher;
use cqrs_nats::{JetStreamPublisher, StreamSettings};
use cqrs_rabbitmq::AmqpPublisher;
use example_bank_account::{Bank, full_chain};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Failure;

/// The relay's name: its checkpoint is `relay:bank`, and on PostgreSQL so is its worker
/// lock.
const NAME: &str = "bank";

/// How often a relay waiting for the PostgreSQL worker lock tries again, and how often
/// the holder checks that it still holds it.
const LOCK_INTERVAL: Duration = Duration::from_secs(1);

/// The partitions of the Kafka topic when the relay creates it: an account's events
/// stay in one partition (the key is the account's subject), so up to three members of
/// a consumer group share the work.
const KAFKA_PARTITIONS: u16 = 3;

/// Where `bank relay` publishes.
#[derive(Debug, Clone, Args)]
pub(crate) struct RelayArgs {
    /// The broker: `nats://HOST:PORT` (NATS JetStream),
    /// `amqp://USER:PASS@HOST:PORT/VHOST` (RabbitMQ) or `kafka://HOST:PORT` (Kafka).
    #[arg(long, value_name = "URL")]
    to: String,
    /// The broker-side stream that keeps the events (JetStream), the topic exchange
    /// they are published to (RabbitMQ), or the topic (Kafka; 3 partitions), created if
    /// missing.
    #[arg(long, default_value = "BANK_EVENTS")]
    stream: String,
    /// The subjects' prefix: an account's events go to `<prefix>.account.<id>`.
    #[arg(long, default_value = "bank")]
    prefix: String,
}

/// `serve`'s options for a relay running inside it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeRelayArgs {
    /// Also run the relay in this process, publishing to this broker (`nats://HOST:PORT`,
    /// `amqp://…` or `kafka://HOST:PORT`).
    /// On sled, the way to run the relay while serving: one process opens the database.
    #[arg(long, value_name = "URL")]
    relay_to: Option<String>,
    /// The relay's broker-side stream (see `bank relay --stream`).
    #[arg(long, default_value = "BANK_EVENTS", requires = "relay_to")]
    relay_stream: String,
    /// The relay's subject prefix (see `bank relay --prefix`).
    #[arg(long, default_value = "bank", requires = "relay_to")]
    relay_prefix: String,
}

impl ServeRelayArgs {
    /// The relay's target, if `--relay-to` was given.
    pub(crate) fn target(&self) -> Option<RelayArgs> {
        let to = self.relay_to.clone()?;
        Some(RelayArgs {
            to,
            stream: self.relay_stream.clone(),
            prefix: self.relay_prefix.clone(),
        })
    }
}

/// A connected broker, one variant per supported URL scheme.
enum Broker {
    /// NATS JetStream (`nats://`).
    Nats(Box<JetStreamPublisher>),
    /// RabbitMQ (`amqp://`): a topic exchange. Its consumers' queues must exist (a
    /// consumer declares its own on connecting): until one is bound, the broker refuses
    /// the messages as unroutable and the relay retries.
    Amqp(std::sync::Arc<AmqpPublisher>),
    /// Kafka (`kafka://`): a topic, keyed by the account's subject.
    Kafka(std::sync::Arc<KafkaPublisher>),
}

impl Broker {
    /// Connects to the broker at `url` and makes sure it keeps the events published
    /// under `scheme`. Fails with exit code 2 for an unsupported scheme, 3 if the broker
    /// cannot be reached or refuses the stream.
    async fn connect(args: &RelayArgs, scheme: &SubjectScheme) -> Result<Broker, Failure> {
        let (kind, _) = args.to.split_once("://").unwrap_or(("", ""));
        let broker = |e: &(dyn std::error::Error + 'static)| Failure(3, full_chain(e));
        match kind {
            "nats" => {
                let publisher = JetStreamPublisher::connect(&args.to).await;
                let publisher = publisher.map_err(|e| broker(&e))?;
                let settings = StreamSettings::new(&args.stream, scheme);
                let ensured = publisher.ensure_stream(&settings).await;
                ensured.map_err(|e| broker(&e))?;
                tracing::info!(url = %args.to, stream = %args.stream, subjects = %settings.subjects,
                    "relay: connected to NATS JetStream");
                Ok(Broker::Nats(Box::new(publisher)))
            }
            "amqp" => {
                let publisher = AmqpPublisher::connect(&args.to, &args.stream).await;
                let publisher = publisher.map_err(|e| broker(&e))?;
                publisher.ensure_exchange().await.map_err(|e| broker(&e))?;
                tracing::info!(exchange = %args.stream, "relay: connected to RabbitMQ");
                Ok(Broker::Amqp(std::sync::Arc::new(publisher)))
            }
            "kafka" => {
                let publisher = KafkaPublisher::connect(&args.to, &args.stream);
                let publisher = publisher.map_err(|e| match e {
                    cqrs_kafka::Error::Url { .. } => Failure(2, full_chain(&e)),
                    e => broker(&e),
                })?;
                let ensured = publisher.ensure_topic(KAFKA_PARTITIONS).await;
                ensured.map_err(|e| broker(&e))?;
                tracing::info!(topic = %args.stream, "relay: connected to Kafka");
                Ok(Broker::Kafka(std::sync::Arc::new(publisher)))
            }
            _ => Err(Failure(
                2,
                format!(
                    "unsupported broker URL scheme in {:?}: use nats://HOST:PORT, \
                     amqp://USER:PASS@HOST:PORT/VHOST or kafka://HOST:PORT",
                    args.to
                ),
            )),
        }
    }
}

/// Runs the relay from `bank`'s store to the broker until `shutdown` completes: under
/// a [`Supervisor`] (restarted from its checkpoint with backoff if it fails) and, on
/// PostgreSQL, only while holding the worker lock `relay:bank`, so one relay runs per
/// store whatever the number of `bank relay` processes.
///
/// # Errors
/// Only before it starts: a bad URL or prefix (exit code 2), a broker that cannot be
/// reached (3).
pub(crate) async fn run(
    bank: &Bank,
    args: &RelayArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Failure> {
    let scheme = SubjectScheme::new(&args.prefix).map_err(|e| Failure(2, full_chain(&e)))?;
    let broker = Broker::connect(args, &scheme).await?;
    eprintln!("bank: relaying to {}; Ctrl-C or SIGTERM stops", args.to);
    match broker {
        Broker::Nats(publisher) => relay(bank, *publisher, scheme, shutdown).await,
        Broker::Amqp(publisher) => relay(bank, publisher, scheme, shutdown).await,
        Broker::Kafka(publisher) => relay(bank, publisher, scheme, shutdown).await,
    }
    Ok(())
}

/// The relay in the background, for `serve`: [`stop`](Self::stop) ends it.
#[derive(Debug)]
pub(crate) struct Background {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Background {
    /// Connects (failing as [`run`] does) and starts the relay in a task.
    pub(crate) async fn start(bank: &Bank, args: &RelayArgs) -> Result<Background, Failure> {
        let scheme = SubjectScheme::new(&args.prefix).map_err(|e| Failure(2, full_chain(&e)))?;
        let broker = Broker::connect(args, &scheme).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let bank = bank.clone();
        let stopped = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            match broker {
                Broker::Nats(publisher) => relay(&bank, *publisher, scheme, stopped).await,
                Broker::Amqp(publisher) => relay(&bank, publisher, scheme, stopped).await,
                Broker::Kafka(publisher) => relay(&bank, publisher, scheme, stopped).await,
            }
        });
        Ok(Background { stop, task })
    }

    /// Stops the relay at its next batch boundary and waits for it.
    pub(crate) async fn stop(self) -> Result<(), Failure> {
        let _ = self.stop.send(());
        let joined = self.task.await;
        joined.map_err(|e| Failure(3, format!("the relay's task failed: {e}")))
    }
}

/// The relay loop, for any publisher.
async fn relay<P: Publisher + Clone + 'static>(
    bank: &Bank,
    publisher: P,
    scheme: SubjectScheme,
    shutdown: impl Future<Output = ()> + Send,
) {
    let supervisor = Supervisor::new(format!("relay:{NAME}"));
    let job = |stop: cqrs_core::StopSignal| {
        let (bank, publisher, scheme) = (bank.clone(), publisher.clone(), scheme.clone());
        async move {
            let mut relay = Relay::new(NAME, bank.store().clone(), publisher, scheme);
            // The error's whole chain in one message, for the supervisor's log.
            let chained = |e: &(dyn std::error::Error + 'static)| BoxError::from(full_chain(e));
            let stopped = stop.stopped();
            match bank.postgres().cloned() {
                None => {
                    tracing::info!("relay: running");
                    let ran = relay.run_until(stopped).await;
                    log_stopped(relay.stats());
                    ran.map(drop).map_err(|e| chained(&e))
                }
                Some(pg) => {
                    let mut stopped = std::pin::pin!(stopped);
                    let lock_name = format!("relay:{NAME}");
                    loop {
                        tracing::info!("relay: waiting for the worker lock relay:{NAME}");
                        let mut lock = tokio::select! {
                            () = &mut stopped => return Ok(()),
                            lock = pg.lock_worker(&lock_name, LOCK_INTERVAL) => {
                                lock.map_err(|e| chained(&e))?
                            }
                        };
                        tracing::info!("relay: worker lock taken; running");
                        let mut stopping = false;
                        let ran = relay
                            .run_until(async {
                                tokio::select! {
                                    () = &mut stopped => stopping = true,
                                    () = lock.lost(LOCK_INTERVAL) => {}
                                }
                            })
                            .await;
                        log_stopped(relay.stats());
                        ran.map_err(|e| chained(&e))?;
                        if stopping {
                            let released = lock.release().await;
                            return released.map_err(|e| chained(&e));
                        }
                        tracing::warn!("relay: worker lock lost; waiting to take it again");
                    }
                }
            }
        }
    };
    supervisor.run(job, shutdown).await;
    tracing::info!("relay: stopped");
}

fn log_stopped(stats: RelayStats) {
    tracing::info!(
        published = stats.published,
        duplicates = stats.duplicates,
        failures = stats.failures,
        checkpoint = %stats.checkpoint,
        "relay: stopping"
    );
}
