//! From a store through JetStream into another service's read model: the relay
//! publishes, a `JetStreamSubscription` feeds a `Consumer`, and every event is applied
//! once, also across redeliveries and a broker killed and restarted mid-run.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::TestStream;
use common::server::PrivateNats;
use cqrs_core::conformance::inbox::Tick;
use cqrs_core::{
    BoxError, Consumer, Envelope, EventData, EventLog, ExpectedVersion, InMemoryEventStore,
    InMemoryInbox, Projection, Relay, RelayConfig, StreamId,
};
use cqrs_nats::{JetStreamSubscription, SubscriptionSettings};
use tokio::time::Instant;

/// Every tick applied, per stream, in order of application.
#[derive(Debug, Clone, Default)]
struct Applied(Arc<Mutex<BTreeMap<String, Vec<u64>>>>);

impl Applied {
    fn total(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    fn snapshot(&self) -> BTreeMap<String, Vec<u64>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Projection for Applied {
    type Event = Tick;

    fn name(&self) -> &str {
        "nats-consumer"
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<Tick>]) -> Result<(), BoxError> {
        let mut applied = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for e in batch {
            let Tick::Tick { n } = e.event;
            applied.entry(e.stream.id().to_owned()).or_default().push(n);
        }
        Ok(())
    }
}

async fn append_ticks(
    store: &InMemoryEventStore,
    streams: usize,
    per_stream: u64,
    pause: Duration,
) {
    for n in 1..=per_stream {
        for s in 0..streams {
            let stream = StreamId::new("ticker", format!("t.{s}")).expect("id");
            let event = EventData::new("Tick", format!("{{\"Tick\":{{\"n\":{n}}}}}"));
            store
                .append(&stream, ExpectedVersion::Exact(n - 1), vec![event])
                .await
                .expect("append");
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn expect_exact(applied: &Applied, streams: usize, per_stream: u64) {
    let seen = applied.snapshot();
    assert_eq!(seen.len(), streams, "every stream reached the read model");
    for (stream, ticks) in seen {
        assert_eq!(
            ticks,
            (1..=per_stream).collect::<Vec<_>>(),
            "{stream}: each event once, in order"
        );
    }
}

/// Runs the consumer in short slices until `done` holds (at most `within`).
async fn consume_until(
    consumer: &mut Consumer<InMemoryInbox, Applied>,
    subscription: &mut JetStreamSubscription,
    within: Duration,
    done: impl Fn(&Consumer<InMemoryInbox, Applied>) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(consumer) {
        assert!(
            Instant::now() < deadline,
            "not done within {within:?}: {:?}",
            consumer.stats()
        );
        consumer
            .run_until(subscription, tokio::time::sleep(Duration::from_millis(100)))
            .await
            .expect("the subscription stays open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_applied_once_through_jetstream() {
    let Some(test) = TestStream::new(None).await else {
        return;
    };
    let store = InMemoryEventStore::new();
    append_ticks(&store, 20, 5, Duration::ZERO).await;
    let mut relay = Relay::new(
        "nats-consume",
        &store,
        test.publisher.clone(),
        test.scheme.clone(),
    );
    tokio::time::timeout(Duration::from_secs(60), relay.catch_up())
        .await
        .expect("the relay catches up within 60 s")
        .expect("the relay catches up");

    let client = async_nats::connect(common::nats_url())
        .await
        .expect("connect");
    let settings = SubscriptionSettings::new(&test.name, "first");
    let mut subscription = JetStreamSubscription::new(client.clone(), settings)
        .await
        .expect("subscribe");
    let applied = Applied::default();
    let mut consumer = Consumer::new(InMemoryInbox::new(), applied.clone());
    consume_until(
        &mut consumer,
        &mut subscription,
        Duration::from_secs(30),
        |_| applied.total() == 100,
    )
    .await;
    expect_exact(&applied, 20, 5);

    // A second durable consumer delivers everything again: all recognised.
    let settings = SubscriptionSettings::new(&test.name, "second")
        .with_filter(format!("{}.ticker.*", test.scheme.prefix()));
    let mut again = JetStreamSubscription::new(client, settings)
        .await
        .expect("subscribe");
    consume_until(&mut consumer, &mut again, Duration::from_secs(30), |c| {
        c.stats().duplicates == 100
    })
    .await;
    expect_exact(&applied, 20, 5);
    assert_eq!(consumer.stats().applied, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_run_loses_nothing_and_applies_nothing_twice() {
    let Some(mut server) = PrivateNats::start() else {
        return;
    };
    let Some(test) = TestStream::on(&server.url(), None).await else {
        return;
    };
    let (streams, per_stream) = (10, 30);
    let store = InMemoryEventStore::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let appending = {
        let store = store.clone();
        tokio::spawn(async move {
            append_ticks(&store, streams, per_stream, Duration::from_millis(3)).await
        })
    };
    let relaying = {
        let (store, publisher, scheme) =
            (store.clone(), test.publisher.clone(), test.scheme.clone());
        let shutdown = until_stopped(stopped.clone());
        tokio::spawn(async move {
            let config = RelayConfig {
                window: 16,
                ..RelayConfig::default()
            };
            let mut relay = Relay::new("nats-outage", store, publisher, scheme).with_config(config);
            relay.run_until(shutdown).await
        })
    };
    let applied = Applied::default();
    let consuming = {
        let (url, name, applied) = (server.url(), test.name.clone(), applied.clone());
        let shutdown = until_stopped(stopped.clone());
        tokio::spawn(async move {
            let client = async_nats::connect(url).await.expect("connect");
            let settings = SubscriptionSettings::new(name, "outage");
            let mut subscription = JetStreamSubscription::new(client, settings)
                .await
                .expect("subscribe");
            let mut consumer = Consumer::new(InMemoryInbox::new(), applied);
            let stats = consumer.run_until(&mut subscription, shutdown).await;
            (stats, consumer.stats())
        })
    };

    // Kill the broker while events flow, keep it down a moment, start it again.
    let total = streams * usize::try_from(per_stream).expect("small");
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied.total() < total / 4 {
        assert!(Instant::now() < deadline, "a quarter applied within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();

    tokio::time::timeout(Duration::from_secs(60), appending)
        .await
        .expect("appends end")
        .expect("appender");
    let deadline = Instant::now() + Duration::from_secs(90);
    while applied.total() < total {
        assert!(
            Instant::now() < deadline,
            "all {total} applied within 90 s, got {}",
            applied.total()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let relay = tokio::time::timeout(Duration::from_secs(30), relaying)
        .await
        .expect("relay stops")
        .expect("relay task");
    relay.expect("the relay ends cleanly");
    let (run, stats) = tokio::time::timeout(Duration::from_secs(30), consuming)
        .await
        .expect("consumer stops")
        .expect("consumer task");
    run.expect("the consumer ends cleanly");
    expect_exact(&applied, streams, per_stream);
    assert_eq!(stats.applied, total as u64, "{stats:?}");
    assert_eq!(
        stats.dead_lettered, 0,
        "an outage dead-letters nothing: {stats:?}"
    );
    eprintln!("broker outage: {total} events, {stats:?}");
}
