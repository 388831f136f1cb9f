//! A broker outage while the relay and the consumer run: RabbitMQ's app is stopped
//! and started again (`rabbitmqctl stop_app` / `start_app`); both reconnect with
//! backoff and in the end every event is applied exactly once.
//!
//! In a test binary of its own: stopping the broker would fail the other tests.

mod common;

use std::time::{Duration, Instant};

use common::ledger::{Applied, Ledger, append_round, assert_exactly_once, streams};
use common::{TestBroker, broker_answers, rabbitmqctl};
use cqrs_core::{Consumer, InMemoryEventStore, InMemoryInbox, Relay, RelayConfig};
use cqrs_rabbitmq::AmqpSubscription;
use tokio::sync::watch;

const STREAMS: usize = 10;
const ROUNDS: u64 = 6;

/// Starts the broker's app again when dropped (also when the test panics), and waits
/// (at most 60 s) until it accepts connections.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        if let Err(why) = rabbitmqctl(&["start_app"]) {
            eprintln!("could not start RabbitMQ's app again: {why}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !broker_answers() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

async fn ctl(args: &'static [&'static str]) {
    tokio::task::spawn_blocking(move || rabbitmqctl(args))
        .await
        .expect("rabbitmqctl's thread")
        .unwrap_or_else(|why| panic!("{why}"));
}

/// Waits until `count` events are applied, at most `limit`.
async fn wait_applied(applied: &Applied, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now: usize = applied
            .lock()
            .expect("the ledger")
            .values()
            .map(Vec::len)
            .sum();
        if now >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} events applied within {limit:?}; {now} are"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_survive_a_broker_restart() {
    let Some(broker) = TestBroker::new(None).await else {
        return;
    };
    // Dropped before `broker`: the app runs again before the vhost is deleted.
    let _restart = StartAppOnDrop;

    let store = InMemoryEventStore::new();
    let streams = streams(STREAMS);
    let config = RelayConfig {
        window: 4,
        ..RelayConfig::default()
    };
    let mut relay =
        Relay::new("outage", &store, &broker.publisher, broker.scheme.clone()).with_config(config);
    let mut subscription =
        AmqpSubscription::connect_with_prefetch(&broker.vhost.url, broker.queue.clone(), 8)
            .await
            .expect("subscribing")
            .with_backoff(Duration::from_millis(100), Duration::from_secs(2));
    let ledger = Ledger::default();
    let applied = ledger.applied.clone();
    let mut consumer = Consumer::new(InMemoryInbox::new(), ledger);
    let (stop, stopped) = watch::channel(false);
    let shutdown = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };

    let total = STREAMS * usize::try_from(ROUNDS).expect("a small count");
    let driver = async {
        for round in 0..2 {
            append_round(&store, &streams, round).await;
        }
        wait_applied(&applied, 2 * STREAMS, Duration::from_secs(60)).await;

        ctl(&["stop_app"]).await;
        // Appended while the broker is down: the relay keeps retrying them.
        for round in 2..4 {
            append_round(&store, &streams, round).await;
        }
        // Let both notice the outage and fail a few times (not a timing assertion).
        tokio::time::sleep(Duration::from_secs(2)).await;
        ctl(&["start_app"]).await;

        for round in 4..ROUNDS {
            append_round(&store, &streams, round).await;
        }
        wait_applied(&applied, total, Duration::from_secs(120)).await;
        let _ = stop.send(true);
    };
    let run = async {
        tokio::join!(
            driver,
            relay.run_until(shutdown()),
            consumer.run_until(&mut subscription, shutdown()),
        )
    };
    let ((), relayed, consumed) = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the outage test ends within 240 s");
    let relayed = relayed.expect("the relay stops only when asked");
    let consumed = consumed.expect("the consumer stops only when asked");

    assert_exactly_once(&applied, &streams, ROUNDS);
    assert_eq!(
        consumed.applied,
        u64::try_from(total).expect("a small count")
    );
    assert_eq!((consumed.dead_lettered, consumed.held), (0, 0));
    assert!(
        relayed.published >= u64::try_from(total).expect("a small count"),
        "every event published at least once: {relayed:?}"
    );
    assert!(
        relayed.failures > 0,
        "the relay saw the outage: {relayed:?}"
    );
    assert!(
        subscription.reconnections() >= 1,
        "the subscription connected again"
    );
    eprintln!(
        "relay: {relayed:?}; consumer: {consumed:?}; subscription reconnections: {}",
        subscription.reconnections()
    );
}
