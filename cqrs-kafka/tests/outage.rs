//! A broker restart: the private tansu broker (its data in a file) is killed with
//! SIGKILL while the relay publishes and the consumer group consumes, and started again
//! on the same data; every event is applied once, in order per stream, none lost.
//! (In a binary of its own, like RabbitMQ's, so that a broken broker cannot disturb the
//! other tests.)

mod common;

use std::time::Duration;

use common::ledger::{
    Ledger, TurnInbox, append_round, assert_exactly_once, streams, total, wait_until,
};
use common::{PrivateKafka, Storage};
use cqrs_core::{Consumer, InMemoryEventStore, Relay, RelayConfig, SubjectScheme};
use cqrs_kafka::{GroupSettings, KafkaPublisher, KafkaSubscription};
use tokio::sync::oneshot;

const TOPIC: &str = "bank-events";
const STREAMS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_applied_twice_across_a_broker_restart() {
    let Some(mut broker) = PrivateKafka::start(Storage::File) else {
        return;
    };
    let publisher = KafkaPublisher::connect(&broker.url(), TOPIC).expect("a publisher");
    publisher.ensure_topic(3).await.expect("creating the topic");
    let store = InMemoryEventStore::new();
    let streams = streams(STREAMS);
    for round in 0..3 {
        append_round(&store, &streams, round).await;
    }

    // The relay and the consumer run in tasks of their own throughout.
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay_store = store.clone();
    let relay = tokio::spawn(async move {
        let config = RelayConfig {
            window: 8,
            ..RelayConfig::default()
        };
        let scheme = SubjectScheme::new("bank").expect("a valid prefix");
        let mut relay =
            Relay::new("kafka-outage", &relay_store, &publisher, scheme).with_config(config);
        let shutdown = async {
            let _ = relay_stopped.await;
        };
        relay
            .run_until(shutdown)
            .await
            .expect("the relay runs until stopped")
    });
    let settings = GroupSettings::new(TOPIC, "ledger")
        .with_session_timeout(Duration::from_secs(6))
        .with_commit_interval(Duration::from_millis(100));
    let mut subscription =
        KafkaSubscription::connect(&broker.url(), settings).expect("subscribing");
    let ledger = Ledger::default();
    let applied = ledger.applied.clone();
    let mut consumer = Consumer::new(TurnInbox::default(), ledger);
    let (stop_consumer, consumer_stopped) = oneshot::channel::<()>();
    let consuming = tokio::spawn(async move {
        let shutdown = async {
            let _ = consumer_stopped.await;
        };
        consumer
            .run_until(&mut subscription, shutdown)
            .await
            .expect("the subscription stays open")
    });
    let limit = Duration::from_secs(90);
    let first = STREAMS as u64 * 3;
    wait_until("the first rounds applied", limit, || {
        total(&applied) == first
    })
    .await;

    // The broker dies; the bank goes on appending; the broker comes back on its data.
    broker.kill();
    for round in 3..6 {
        append_round(&store, &streams, round).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart();
    for round in 6..8 {
        append_round(&store, &streams, round).await;
    }
    let all = STREAMS as u64 * 8;
    wait_until("every event applied after the restart", limit, || {
        total(&applied) >= all
    })
    .await;
    assert_exactly_once(&applied, &streams, 8);

    let _ = stop_relay.send(());
    let relay_stats = tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("the relay stops within 30 s")
        .expect("the relay's task");
    let _ = stop_consumer.send(());
    let stats = tokio::time::timeout(Duration::from_secs(30), consuming)
        .await
        .expect("the consumer stops within 30 s")
        .expect("the consumer's task");
    assert_eq!(stats.applied, all, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert!(relay_stats.published >= all, "{relay_stats:?}");
    assert_exactly_once(&applied, &streams, 8);
}

/// A topic asked for while the broker is down (restarting) is created once it is back:
/// `ensure_topic` asks again instead of failing at the first dropped connection (a
/// relay started during a broker restart used to exit with "Broker transport failure").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topic_waits_for_a_broker_that_is_restarting() {
    let Some(mut broker) = PrivateKafka::start(Storage::Memory) else {
        return;
    };
    broker.kill();
    let publisher =
        KafkaPublisher::connect(&broker.url(), "made-after-restart").expect("a publisher");
    let ensured = tokio::spawn(async move { publisher.ensure_topic(2).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !ensured.is_finished(),
        "ensure_topic gave up while the broker was down"
    );
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .expect("restarting the broker");
    let ensured = tokio::time::timeout(Duration::from_secs(60), ensured)
        .await
        .expect("ensure_topic answers within its 30 s (and the 60 s of this test)")
        .expect("the task ran");
    ensured.expect("the topic is created once the broker is back");
    drop(broker);
}
