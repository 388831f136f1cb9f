//! Relay throughput against raw `async-nats`: the same messages to JetStream, the same
//! in-flight window, every `PubAck` awaited, in the same run, reported as ratios.
//!
//! ```sh
//! cargo bench -p cqrs-nats --bench relay              # 100,000 events, 3 runs each
//! cargo bench -p cqrs-nats --bench relay -- --quick   # 10,000 events, 1 run (smoke test)
//! ```
//!
//! Options (after `--`): `--quick`, `--events N` (default 100,000; also
//! `CQRS_RELAY_BENCH_EVENTS`), `--streams N` (default 1,000), `--runs N` (default 3),
//! `--window N` (default 256, `RelayConfig::default()`'s), `--store memory|sled|both`
//! (default both), `--only relay|raw|raw-prebuilt` (one side alone, for a
//! profiler).
//!
//! The events (about 200-byte JSON payloads) are appended to the store one at a time,
//! round robin over the streams, as many concurrent aggregates would write them. Then,
//! alternately:
//!
//! - **relay**: a `Relay` (fresh name, so no checkpoint) publishes the log to a fresh
//!   JetStream stream with `catch_up`, until its checkpoint is the end of the log;
//! - **raw**: one `async-nats` JetStream context publishes the same messages (subjects,
//!   headers, payloads, `Nats-Msg-Id`, built before the clock starts) to a fresh stream,
//!   keeping `window` publishes in flight and refilling as each `PubAck` arrives.
//!
//! It reads `NATS_URL` (default `nats://127.0.0.1:4222`); each run's stream is deleted
//! afterwards, also when the run fails. Without a server it prints `skipped` and exits 0
//! (with `CQRS_REQUIRE_NATS=1`, it fails).
#![allow(missing_docs)]

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use cqrs_core::{
    CheckpointStore, EventData, EventLog, ExpectedVersion, OutboundMessage, Position, Relay,
    RelayConfig, StreamId, SubjectScheme,
};
use cqrs_nats::{JetStreamPublisher, StreamSettings};
use cqrs_sled::{Durability, SledConfig, SledEventStore};
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[derive(Debug, Clone)]
struct Options {
    events: usize,
    streams: usize,
    runs: usize,
    window: usize,
    stores: Vec<&'static str>,
    /// `relay`, `raw` or `raw-prebuilt`: run only that side (for a profiler).
    only: Option<&'static str>,
}

fn options() -> Options {
    let mut options = Options {
        events: std::env::var("CQRS_RELAY_BENCH_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100_000),
        streams: 1_000,
        runs: 3,
        window: RelayConfig::default().window,
        stores: vec!["memory", "sled"],
        only: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let number = |i: usize| -> usize {
        args.get(i + 1)
            .and_then(|n| n.replace('_', "").parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number", args[i]))
    };
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => {
                options.events = 10_000;
                options.runs = 1;
            }
            "--events" => {
                options.events = number(i);
                i += 1;
            }
            "--streams" => {
                options.streams = number(i);
                i += 1;
            }
            "--runs" => {
                options.runs = number(i);
                i += 1;
            }
            "--window" => {
                options.window = number(i);
                i += 1;
            }
            "--store" => {
                options.stores = match args.get(i + 1).map(String::as_str) {
                    Some("memory") => vec!["memory"],
                    Some("sled") => vec!["sled"],
                    Some("both") => vec!["memory", "sled"],
                    other => panic!("--store memory|sled|both, not {other:?}"),
                };
                i += 1;
            }
            "--only" => {
                options.only = match args.get(i + 1).map(String::as_str) {
                    Some("relay") => Some("relay"),
                    Some("raw") => Some("raw"),
                    Some("raw-prebuilt") => Some("raw-prebuilt"),
                    other => panic!("--only relay|raw|raw-prebuilt, not {other:?}"),
                };
                i += 1;
            }
            // `cargo bench` passes `--bench`; criterion-style filters are ignored.
            _ => {}
        }
        i += 1;
    }
    options.streams = options.streams.clamp(1, options.events.max(1));
    options
}

/// A JetStream stream of one run, deleted when this is dropped (also while a failed run
/// unwinds).
struct StreamGuard {
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Drop cannot await, and may run on the benchmark's runtime: a thread of its own
        // with its own runtime and connection, within a deadline.
        let name = self.name.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), async {
                    JetStreamPublisher::connect(&url())
                        .await?
                        .delete_stream(&name)
                        .await
                })
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the deleting thread panicked".to_owned()));
        if let Err(reason) = deleted {
            eprintln!(
                "could not delete the benchmark stream {}: {reason}",
                self.name
            );
        }
    }
}

/// A fresh stream (own name, own subject prefix) on `publisher`'s server.
async fn fresh_stream(publisher: &JetStreamPublisher, tag: &str) -> (StreamGuard, SubjectScheme) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let scheme = SubjectScheme::new(format!("bench-{id}")).expect("a valid prefix");
    let name = format!("CQRS_BENCH_{tag}_{id}");
    let guard = StreamGuard { name: name.clone() };
    publisher
        .ensure_stream(&StreamSettings::new(&name, &scheme))
        .await
        .expect("creating the run's stream");
    (guard, scheme)
}

/// A realistic event body: about 200 bytes of JSON.
fn payload(stream: usize, n: usize) -> String {
    format!(
        concat!(
            r#"{{"account":"acc-{:06}","amount_cents":{},"currency":"EUR","#,
            r#""reference":"invoice 2026-{:06}","booked_by":"clerk-{:03}","#,
            r#""channel":"branch","note":"monthly deposit, standing order {:04}"}}"#
        ),
        stream,
        1_000 + (n * 7_919) % 100_000,
        n,
        n % 997,
        n % 10_000,
    )
}

/// Appends `events` one-event appends, round robin over `streams` streams.
async fn populate<S: EventLog>(store: &S, events: usize, streams: usize) {
    let ids: Vec<StreamId> = (0..streams)
        .map(|i| StreamId::new("account", format!("acc-{i:06}")).expect("an id"))
        .collect();
    for n in 0..events {
        let stream = n % streams;
        let event = EventData::new("MoneyDeposited", payload(stream, n));
        store
            .append(&ids[stream], ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
    }
}

/// (a) The relay: `catch_up` from an empty checkpoint to the end of the log.
async fn run_relay<S>(store: &S, options: &Options, run: usize) -> f64
where
    S: EventLog + CheckpointStore,
{
    let publisher = JetStreamPublisher::connect(&url())
        .await
        .expect("connect the relay's publisher");
    let (_guard, scheme) = fresh_stream(&publisher, "RELAY").await;
    let name = format!("bench-{run}-{}", uuid::Uuid::new_v4().simple());
    let config = RelayConfig {
        window: options.window,
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(name, store, publisher, scheme).with_config(config);
    let started = Instant::now();
    let stats = tokio::time::timeout(Duration::from_secs(600), relay.catch_up())
        .await
        .expect("the relay catches up within 10 minutes")
        .expect("the relay catches up");
    let elapsed = started.elapsed();
    assert_eq!(
        stats.published, options.events as u64,
        "every event published once"
    );
    assert_eq!(stats.checkpoint, end_of_log(store).await);
    options.events as f64 / elapsed.as_secs_f64()
}

async fn end_of_log<S: EventLog>(store: &S) -> Position {
    store
        .read_all(Position::START, None)
        .try_fold(
            Position::START,
            |_, record| async move { Ok(record.position) },
        )
        .await
        .expect("read the log")
}

/// How the raw publisher gets its `async-nats` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Built in the publishing loop from the messages' parts (subject, header names and
    /// values, payload, id), moved, not copied: what a hand-written publisher does.
    Built,
    /// Built before the clock starts: only `send_publish` and the `PubAck` are timed.
    Prebuilt,
}

/// (b) Raw `async-nats`: the same messages, `window` in flight, every `PubAck` awaited.
async fn run_raw<S: EventLog>(store: &S, options: &Options, raw: Raw) -> f64 {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url())
        .await
        .expect("connect the raw publisher");
    let context = jetstream::new(client);
    let (_guard, scheme) = fresh_stream(&JetStreamPublisher::new(context.client()), "RAW").await;
    // The same messages the relay sends, read and made before the clock starts.
    let records: Vec<_> = store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .expect("read the log");
    let outbound: Vec<OutboundMessage> = records
        .iter()
        .map(|record| OutboundMessage::from_record(record, &scheme))
        .collect();
    drop(records);
    let build = |message: OutboundMessage| {
        let mut publish = PublishMessage::build()
            .payload(message.payload.into())
            .message_id(message.message_id.to_string());
        for (name, value) in message.headers {
            publish = publish.header(name, value);
        }
        (message.subject, publish)
    };
    let mut prebuilt = Vec::new();
    let mut to_build = Vec::new();
    match raw {
        Raw::Prebuilt => prebuilt = outbound.into_iter().map(build).collect(),
        Raw::Built => to_build = outbound,
    }
    let mut messages = prebuilt.into_iter().chain(to_build.into_iter().map(build));
    let window = options.window.max(1);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0usize;
    loop {
        while in_flight.len() < window {
            let Some((subject, publish)) = messages.next() else {
                break;
            };
            let ack = context
                .send_publish(subject, publish)
                .await
                .expect("send a publish");
            in_flight.push(ack.into_future());
        }
        match in_flight.next().await {
            Some(ack) => {
                let ack = ack.expect("a PubAck");
                assert!(!ack.duplicate);
                acked += 1;
            }
            None => break,
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(acked, options.events);
    options.events as f64 / elapsed.as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

async fn compare<S>(label: &str, store: &S, options: &Options, settle: impl FnOnce())
where
    S: EventLog + CheckpointStore,
{
    let started = Instant::now();
    populate(store, options.events, options.streams).await;
    settle();
    println!(
        "{label}: {} events in {} streams appended in {:.1} s",
        options.events,
        options.streams,
        started.elapsed().as_secs_f64()
    );
    let sides = ["relay", "raw", "raw-prebuilt"];
    let run_side = |side: &str, run: usize| {
        let side = side.to_owned();
        async move {
            match side.as_str() {
                "relay" => run_relay(store, options, run).await,
                "raw" => run_raw(store, options, Raw::Built).await,
                _ => run_raw(store, options, Raw::Prebuilt).await,
            }
        }
    };
    if let Some(only) = options.only {
        for run in 0..options.runs {
            let rate = run_side(only, run).await;
            println!("  run {}: {only} {rate:>8.0} events/s", run + 1);
        }
        return;
    }
    // rates[side][run]
    let mut rates = vec![Vec::with_capacity(options.runs); sides.len()];
    for run in 0..options.runs {
        // Rotate which goes first, so none always runs on a warmer (or busier) server.
        let mut row = [0.0; 3];
        for k in 0..sides.len() {
            let side = (run + k) % sides.len();
            row[side] = run_side(sides[side], run).await;
        }
        for (side, rate) in row.iter().enumerate() {
            rates[side].push(*rate);
        }
        let [a, b, c] = row;
        println!(
            "  run {}: relay {a:>7.0}/s   raw {b:>7.0}/s   raw prebuilt {c:>7.0}/s   \
             relay/raw {:.2}   relay/prebuilt {:.2}",
            run + 1,
            a / b,
            a / c
        );
    }
    let ratios = |other: usize| -> Vec<f64> {
        rates[0]
            .iter()
            .zip(&rates[other])
            .map(|(a, b)| a / b)
            .collect()
    };
    let show = |values: &[f64]| {
        values
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (to_raw, to_prebuilt) = (ratios(1), ratios(2));
    let medians: Vec<f64> = rates.iter_mut().map(|side| median(side)).collect();
    println!(
        "RATIO relay/{label} window {}: relay {:.0} events/s; raw async-nats {:.0} events/s, \
         median ratio {:.2} (runs: {}); raw prebuilt {:.0} events/s, median ratio {:.2} (runs: {})",
        options.window,
        medians[0],
        medians[1],
        median(&mut to_raw.clone()),
        show(&to_raw),
        medians[2],
        median(&mut to_prebuilt.clone()),
        show(&to_prebuilt),
    );
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let url = url();
        let reachable =
            tokio::time::timeout(Duration::from_secs(5), JetStreamPublisher::connect(&url)).await;
        if !matches!(reachable, Ok(Ok(_))) {
            if std::env::var("CQRS_REQUIRE_NATS").as_deref() == Ok("1") {
                panic!("CQRS_REQUIRE_NATS=1 but NATS at {url} is not available");
            }
            println!("skipped: NATS at {url} is not available");
            return;
        }
        println!(
            "relay vs raw async-nats: {} events, {} streams, window {}, {} run(s) each",
            options.events, options.streams, options.window, options.runs
        );
        for store in &options.stores {
            match *store {
                "memory" => {
                    let store = cqrs_core::InMemoryEventStore::new();
                    compare("memory", &store, &options, || {}).await;
                }
                _ => {
                    // Appends are buffered: only the relay's reads are measured here.
                    let store = SledConfig::temporary()
                        .durability(Durability::Buffered)
                        .open()
                        .expect("a temporary sled store");
                    // Flushed after populating, so sled's background flush does not
                    // run during the first runs.
                    let flush = || store.flush().expect("flush the sled store");
                    compare("sled", &store, &options, flush).await;
                    drop::<SledEventStore>(store);
                }
            }
        }
    });
}
