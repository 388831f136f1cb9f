//! Relay throughput to Kafka with acknowledgements (`acks=all`), against raw `rdkafka`.
//!
//! Events (about 200 bytes of JSON, round robin over 1,000 streams) are appended to an
//! in-memory store; then, alternately, (a) the `Relay` with `KafkaPublisher` publishes
//! them all until its checkpoint is the end of the log, and (b) a raw `rdkafka`
//! `FutureProducer` with the same settings (idempotent, `acks=all`, `linger.ms=1`)
//! publishes the same messages (key = subject, the `Cqrs-*` headers, payload) with the
//! same window in flight (256), each built in the loop, awaiting every delivery report.
//! Each side gets a fresh topic of 3 partitions on a private tansu broker (in-memory
//! storage, killed at the end). Prints events/s and the ratio.
//!
//! Run: `cargo bench -p cqrs-kafka --bench relay` (100,000 events, 3 runs);
//! `-- --quick` for 10,000 events and 1 run. Needs `tansu` on the `PATH` or in
//! `~/.cargo/bin`; says `skipped` without it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_core::{
    EventData, EventLog, ExpectedVersion, InMemoryEventStore, OutboundMessage, Position, Relay,
    RelayConfig, StreamId, SubjectScheme,
};
use cqrs_kafka::KafkaPublisher;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const WINDOW: usize = 256;
const PARTITIONS: u16 = 3;

type Failure = Box<dyn std::error::Error>;

/// The bench's broker; killed on drop.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu() -> Option<PathBuf> {
    let works = |path: &PathBuf| {
        Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let on_path = PathBuf::from("tansu");
    if works(&on_path) {
        return Some(on_path);
    }
    let installed = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/tansu");
    works(&installed).then_some(installed)
}

fn main() -> Result<(), Failure> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, runs) = if quick { (10_000, 1) } else { (100_000, 3) };
    let Some(binary) = tansu() else {
        println!("skipped: tansu (a Kafka-compatible broker) is not installed");
        return Ok(());
    };
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listener = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(binary)
        .args(["broker", "--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("tansu did not start within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("kafka://127.0.0.1:{port}");
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
        "relay to Kafka (tansu) with acks=all: {events} events, window {WINDOW}, \
         {PARTITIONS} partitions, {runs} run(s)"
    );
    let mut ratios = Vec::new();
    for run in 0..runs {
        let relay = relay_side(url, &store, run).await?;
        let raw = raw_side(url, &store, run).await?;
        let ratio = relay / raw;
        println!(
            "run {run}: relay {relay:.0} events/s, raw rdkafka {raw:.0} events/s, ratio {ratio:.2}"
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

async fn relay_side(url: &str, store: &InMemoryEventStore, run: usize) -> Result<f64, Failure> {
    let publisher = KafkaPublisher::connect(url, format!("relay-{run}"))?;
    publisher.ensure_topic(PARTITIONS).await?;
    let config = RelayConfig {
        window: WINDOW,
        ..RelayConfig::default()
    };
    let scheme = SubjectScheme::new(format!("bench-relay-{run}"))?;
    let mut relay =
        Relay::new(format!("bench-{run}"), store, publisher, scheme).with_config(config);
    let started = Instant::now();
    let stats = relay.catch_up().await?;
    Ok(per_second(stats.published, started.elapsed()))
}

async fn raw_side(url: &str, store: &InMemoryEventStore, run: usize) -> Result<f64, Failure> {
    let topic = format!("raw-{run}");
    // The crate's publisher only creates the topic here.
    let creator = KafkaPublisher::connect(url, &topic)?;
    creator.ensure_topic(PARTITIONS).await?;
    let scheme = SubjectScheme::new(format!("bench-raw-{run}"))?;
    let mut records = std::pin::pin!(store.read_all(Position::START, None));
    let mut messages = Vec::new();
    while let Some(record) = records.next().await {
        messages.push(OutboundMessage::from_record(&record?, &scheme));
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", creator.brokers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut delivered = 0u64;
    for message in &messages {
        if in_flight.len() >= WINDOW {
            delivered += check(in_flight.next().await)?;
        }
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(&topic)
            .key(message.subject.as_bytes())
            .payload(&message.payload)
            .headers(headers);
        let sent = producer.send_result(record).map_err(|(e, _)| e)?;
        in_flight.push(sent);
    }
    while !in_flight.is_empty() {
        delivered += check(in_flight.next().await)?;
    }
    Ok(per_second(delivered, started.elapsed()))
}

type Report = Result<
    rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

fn check(report: Option<Report>) -> Result<u64, Failure> {
    match report {
        Some(Ok(Ok(_))) => Ok(1),
        other => Err(format!("a raw publish was not acknowledged: {other:?}").into()),
    }
}

#[allow(clippy::cast_precision_loss)]
fn per_second(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}
