//! Relay throughput to RabbitMQ with publisher confirms, against raw `lapin`.
//!
//! Events (about 200 bytes of JSON, round robin over 1,000 streams) are appended to an
//! in-memory store; then, alternately, (a) the `Relay` with `AmqpPublisher` publishes
//! them all until its checkpoint is the end of the log, and (b) raw `lapin` publishes the
//! same messages (routing key, message id, the `Cqrs-*` headers, payload, persistent,
//! mandatory) on one confirming channel with the same window in flight (256), each
//! built in the loop, awaiting every confirm. Each side gets a fresh exchange and queue
//! in a vhost of the bench's own (deleted at the end). Prints events/s and the ratio.
//!
//! Run: `cargo bench -p cqrs-rabbitmq --bench relay` (100,000 events, 3 runs);
//! `-- --quick` for 10,000 events and 1 run. Needs RabbitMQ at 127.0.0.1:5672 and
//! `rabbitmqctl`; says `skipped` without them.

use std::process::Command;
use std::time::{Duration, Instant};

use cqrs_core::{
    EventData, EventLog, ExpectedVersion, InMemoryEventStore, OutboundMessage, Position, Relay,
    RelayConfig, StreamId, SubjectScheme,
};
use cqrs_rabbitmq::{AmqpPublisher, QueueSettings};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

const WINDOW: usize = 256;

type Failure = Box<dyn std::error::Error>;

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The bench's vhost; deleted on drop.
struct Vhost(String);

impl Drop for Vhost {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.0]);
    }
}

fn main() -> Result<(), Failure> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, runs) = if quick { (10_000, 1) } else { (100_000, 3) };
    let vhost = Vhost(format!("cqrs_bench_{}", uuid::Uuid::new_v4().simple()));
    let up = std::net::TcpStream::connect("127.0.0.1:5672").is_ok()
        && rabbitmqctl(&["add_vhost", &vhost.0])
        && rabbitmqctl(&["set_permissions", "-p", &vhost.0, "guest", ".*", ".*", ".*"]);
    if !up {
        println!("skipped: RabbitMQ (or rabbitmqctl) is not available");
        return Ok(());
    }
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(&url, events, runs))
}

async fn run(url: &str, events: u64, runs: usize) -> Result<(), Failure> {
    let store = InMemoryEventStore::new();
    let payload = format!(
        "{{\"MoneyDeposited\":{{\"amount_cents\":12345,\"reference\":\"{}\",\"note\":\"{}\"}}}}",
        uuid::Uuid::new_v4(),
        "x".repeat(120)
    );
    for i in 0..events {
        let stream = StreamId::new("account", format!("acc-{}", i % 1000))?;
        let event = EventData::new("MoneyDeposited", payload.clone().into_bytes());
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await?;
    }
    println!(
        "relay to RabbitMQ with publisher confirms: {events} events, window {WINDOW}, {runs} run(s)"
    );
    let mut ratios = Vec::new();
    for run in 0..runs {
        let relay = relay_side(url, &store, run).await?;
        let raw = raw_side(url, &store, run).await?;
        let ratio = relay / raw;
        println!(
            "run {run}: relay {relay:.0} events/s, raw lapin {raw:.0} events/s, ratio {ratio:.2}"
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "RATIO relay/raw (median of {runs}): {:.2} (goal: at least 0.7)",
        ratios[ratios.len() / 2]
    );
    Ok(())
}

/// A fresh exchange and a queue bound to it, for one side of one run.
async fn destination(
    url: &str,
    name: &str,
) -> Result<(AmqpPublisher, SubjectScheme, QueueSettings), Failure> {
    let scheme = SubjectScheme::new(format!("bench-{name}"))?;
    let publisher = AmqpPublisher::connect(url, format!("x-{name}")).await?;
    publisher.ensure_exchange().await?;
    let queue = QueueSettings::new(format!("q-{name}"), format!("x-{name}"), &scheme);
    publisher.ensure_queue(&queue).await?;
    Ok((publisher, scheme, queue))
}

async fn drop_queue(url: &str, queue: &QueueSettings) -> Result<(), Failure> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(
            ShortString::from(queue.name.as_str()),
            QueueDeleteOptions::default(),
        )
        .await?;
    Ok(())
}

async fn relay_side(url: &str, store: &InMemoryEventStore, run: usize) -> Result<f64, Failure> {
    let (publisher, scheme, queue) = destination(url, &format!("relay-{run}")).await?;
    let config = RelayConfig {
        window: WINDOW,
        ..RelayConfig::default()
    };
    let mut relay =
        Relay::new(format!("bench-{run}"), store, publisher, scheme).with_config(config);
    let started = Instant::now();
    let stats = relay.catch_up().await?;
    let elapsed = started.elapsed();
    drop_queue(url, &queue).await?;
    Ok(per_second(stats.published, elapsed))
}

async fn raw_side(url: &str, store: &InMemoryEventStore, run: usize) -> Result<f64, Failure> {
    let (_publisher, scheme, queue) = destination(url, &format!("raw-{run}")).await?;
    let mut records = std::pin::pin!(store.read_all(Position::START, None));
    let mut messages = Vec::new();
    while let Some(record) = records.next().await {
        messages.push(OutboundMessage::from_record(&record?, &scheme));
    }
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = queue.exchange.clone();
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut confirmed = 0u64;
    for message in &messages {
        if in_flight.len() >= WINDOW {
            confirmed += check(in_flight.next().await)?;
        }
        let mut headers = FieldTable::default();
        for (name, value) in &message.headers {
            headers.insert(
                ShortString::from(*name),
                AMQPValue::LongString(LongString::from(value.as_bytes())),
            );
        }
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(message.message_id.to_string()))
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange.as_str()),
                ShortString::from(message.subject.as_str()),
                options,
                &message.payload,
                properties,
            )
            .await?;
        in_flight.push(confirm);
    }
    while !in_flight.is_empty() {
        confirmed += check(in_flight.next().await)?;
    }
    let elapsed = started.elapsed();
    drop_queue(url, &queue).await?;
    Ok(per_second(confirmed, elapsed))
}

fn check(confirm: Option<lapin::Result<Confirmation>>) -> Result<u64, Failure> {
    match confirm {
        Some(Ok(Confirmation::Ack(None))) => Ok(1),
        other => Err(format!("a raw publish was not confirmed: {other:?}").into()),
    }
}

#[allow(clippy::cast_precision_loss)]
fn per_second(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}
