//! End-to-end latency: an event appended in one service, applied in another's read model.
//!
//! The publishing service's sled store takes a steady 1,000 appends a second (one event
//! each, over 200 accounts); a `Relay` publishes them to JetStream; a `Consumer` with a
//! `SledInbox` in a second sled database applies them to a read model. The latency of
//! each event is what the consumer records as `cqrs_consumer_lag_seconds`: from the
//! append's `recorded_at` to the commit of the consumer's transaction. The report gives
//! p50, p90, p99 and the maximum.
//!
//! Run: `cargo bench -p cqrs-nats --bench latency` (needs NATS with JetStream at
//! `NATS_URL`, default `nats://127.0.0.1:4222`; says `skipped` without it).
//! `LATENCY_SECONDS` sets the run's length (default 20), `LATENCY_RATE` the appends a
//! second (default 1000).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::{
    BoxError, Consumer, Envelope, EventData, EventLog, ExpectedVersion, Projection, Relay,
    StreamId, SubjectScheme,
};
use cqrs_nats::{JetStreamPublisher, JetStreamSubscription, StreamSettings, SubscriptionSettings};
use cqrs_sled::{ReadModelTx, SledEventStore, SledInbox};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde::Deserialize;

/// The consumer's lag histogram, kept; every other metric dropped.
#[derive(Debug, Default)]
struct Lags(Mutex<Vec<f64>>);

impl HistogramFn for Lags {
    fn record(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }
}

#[derive(Debug)]
struct Capture(Arc<Lags>);

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match key.name() {
            "cqrs_consumer_lag_seconds" => Histogram::from_arc(self.0.clone()),
            _ => Histogram::noop(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
enum Event {
    Deposited { cents: u64 },
}

impl cqrs_core::DomainEvent for Event {
    const EVENT_TYPES: &'static [&'static str] = &["Deposited"];

    fn event_type(&self) -> &'static str {
        "Deposited"
    }
}

/// Balances per account, in the consumer's sled database.
struct Balances;

impl Projection<ReadModelTx> for Balances {
    type Event = Event;

    fn name(&self) -> &str {
        "latency"
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<Event>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let Event::Deposited { cents } = e.event;
            let key = e.stream.id().as_bytes();
            let old = match tx.get("balances", key)? {
                Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| "not 8 bytes")?),
                None => 0,
            };
            tx.insert("balances", key, &(old + cents).to_be_bytes());
        }
        Ok(())
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`-th percentile (nearest rank) of sorted samples, `p` in 1..=100.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let publisher =
        match tokio::time::timeout(Duration::from_secs(5), JetStreamPublisher::connect(&url)).await
        {
            Ok(Ok(publisher)) => publisher,
            _ => {
                println!("skipped: no NATS at {url}");
                return Ok(());
            }
        };
    let lags = Arc::new(Lags::default());
    metrics::set_global_recorder(Capture(lags.clone()))?;
    let (seconds, rate) = (
        setting("LATENCY_SECONDS", 20),
        setting("LATENCY_RATE", 1000),
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let scheme = SubjectScheme::new(format!("latency-{id}"))?;
    let stream_name = format!("CQRS_LATENCY_{id}");
    publisher
        .ensure_stream(&StreamSettings::new(&stream_name, &scheme))
        .await?;
    let outcome = measure(
        &url,
        &publisher,
        &scheme,
        &stream_name,
        seconds,
        rate,
        &lags,
    )
    .await;
    publisher.delete_stream(&stream_name).await?;
    outcome
}

async fn measure(
    url: &str,
    publisher: &JetStreamPublisher,
    scheme: &SubjectScheme,
    stream_name: &str,
    seconds: u64,
    rate: u64,
    lags: &Lags,
) -> Result<(), Box<dyn std::error::Error>> {
    let source = SledEventStore::temporary()?;
    let target = SledEventStore::temporary()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relay = {
        let (store, publisher, scheme) = (source.clone(), publisher.clone(), scheme.clone());
        let shutdown = until_stopped(stopped.clone());
        tokio::spawn(async move {
            Relay::new("latency", store, publisher, scheme)
                .run_until(shutdown)
                .await
        })
    };
    let client = async_nats::connect(url).await?;
    let mut subscription =
        JetStreamSubscription::new(client, SubscriptionSettings::new(stream_name, "latency"))
            .await?;
    let consumer = {
        let shutdown = until_stopped(stopped.clone());
        let mut consumer = Consumer::new(SledInbox::new(target.clone(), "latency")?, Balances);
        tokio::spawn(async move { consumer.run_until(&mut subscription, shutdown).await })
    };

    // Appends in ticks of 10 ms, rate / 100 events per tick, one event per append.
    let per_tick = (rate / 100).max(1);
    let total = seconds * 100 * per_tick;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let payload = br#"{"Deposited":{"cents":100}}"#;
    let mut appended = 0u64;
    while appended < total {
        tick.tick().await;
        for _ in 0..per_tick {
            let stream = StreamId::new("account", format!("acc-{}", appended % 200))?;
            let event = EventData::new("Deposited", payload.to_vec());
            source
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await?;
            appended += 1;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (lags.0.lock().unwrap_or_else(PoisonError::into_inner).len() as u64) < total {
        if tokio::time::Instant::now() > deadline {
            return Err("the consumer did not apply every event within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    relay.await??;
    consumer.await??;
    let mut sorted = lags
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    sorted.sort_by(f64::total_cmp);
    let ms = |s: f64| s * 1000.0;
    println!(
        "end-to-end latency, append in one sled store to commit in another's read model, via JetStream"
    );
    println!(
        "{total} events at {rate}/s over {seconds} s (relay -> JetStream -> consumer with SledInbox)"
    );
    println!(
        "p50 {:.1} ms | p90 {:.1} ms | p99 {:.1} ms | max {:.1} ms | goal: p99 < 50 ms",
        ms(percentile(&sorted, 50)),
        ms(percentile(&sorted, 90)),
        ms(percentile(&sorted, 99)),
        ms(sorted[sorted.len() - 1]),
    );
    Ok(())
}
