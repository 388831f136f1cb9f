//! Relay → RabbitMQ → consumer: every event applied once, in order per stream; then a
//! republish (the relay restarted from an older checkpoint) and a redelivery (the
//! subscription's connection closed without acknowledging) are recognised as
//! duplicates by the inbox.

mod common;

use std::time::Duration;

use common::TestBroker;
use common::ledger::{Ledger, append_round, assert_exactly_once, consume_until, streams};
use cqrs_core::{
    CheckpointStore, Consumer, InMemoryEventStore, InMemoryInbox, Position, Relay, RelayConfig,
    SubscribeError, Subscription,
};
use cqrs_rabbitmq::AmqpSubscription;

const STREAMS: usize = 10;
const ROUNDS: u64 = 5;
const EVENTS: u64 = STREAMS as u64 * ROUNDS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_rabbitmq_to_consumer_applies_each_event_once() {
    let Some(broker) = TestBroker::new(None).await else {
        return;
    };
    let store = InMemoryEventStore::new();
    let streams = streams(STREAMS);
    for round in 0..ROUNDS {
        append_round(&store, &streams, round).await;
    }
    let config = RelayConfig {
        window: 8,
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(
        "rabbit-test",
        &store,
        &broker.publisher,
        broker.scheme.clone(),
    )
    .with_config(config);
    let stats = tokio::time::timeout(Duration::from_secs(60), relay.catch_up())
        .await
        .expect("the relay catches up within 60 s")
        .expect("the relay catches up");
    assert_eq!((stats.published, stats.duplicates), (EVENTS, 0));
    assert_eq!(stats.checkpoint, Position::new(0, EVENTS));

    // A small prefetch, so that the consumer gets many small batches.
    let mut subscription = tokio::time::timeout(
        Duration::from_secs(20),
        AmqpSubscription::connect_with_prefetch(&broker.vhost.url, broker.queue.clone(), 16),
    )
    .await
    .expect("subscribing within 20 s")
    .expect("subscribing");
    let ledger = Ledger::default();
    let applied = ledger.applied.clone();
    let mut consumer = Consumer::new(InMemoryInbox::new(), ledger);
    let limit = Duration::from_secs(60);
    consume_until(
        &mut consumer,
        &mut subscription,
        limit,
        "every event applied",
        |s| s.applied == EVENTS,
    )
    .await;
    assert_exactly_once(&applied, &streams, ROUNDS);
    assert_eq!(
        consumer.stats().duplicates,
        0,
        "nothing was delivered twice yet"
    );

    // The relay restarts from an older checkpoint: RabbitMQ stores the last 20 again
    // (no broker-side deduplication), and the inbox drops them.
    store
        .save_checkpoint("relay:rabbit-test", Position::new(0, EVENTS - 20))
        .await
        .expect("rewind");
    let mut restarted = Relay::new(
        "rabbit-test",
        &store,
        &broker.publisher,
        broker.scheme.clone(),
    );
    let stats = tokio::time::timeout(Duration::from_secs(60), restarted.catch_up())
        .await
        .expect("the restarted relay catches up within 60 s")
        .expect("the restarted relay catches up");
    assert_eq!(
        (stats.published, stats.duplicates),
        (20, 0),
        "RabbitMQ cannot tell a republished message"
    );
    consume_until(
        &mut consumer,
        &mut subscription,
        limit,
        "the republished seen",
        |s| s.duplicates == 20,
    )
    .await;

    // Once more, and this time the messages are delivered but not acknowledged: closing
    // the connection gives them back, flagged as redelivered.
    store
        .save_checkpoint("relay:rabbit-test", Position::new(0, EVENTS - 5))
        .await
        .expect("rewind");
    let mut again = Relay::new(
        "rabbit-test",
        &store,
        &broker.publisher,
        broker.scheme.clone(),
    );
    tokio::time::timeout(Duration::from_secs(60), again.catch_up())
        .await
        .expect("the relay catches up within 60 s")
        .expect("the relay catches up");
    let mut taken = Vec::new();
    for _ in 0..5 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("a delivery within 30 s")
            .expect("a delivery");
        assert!(!delivery.redelivered(), "a first delivery");
        taken.push(delivery.message_id().expect("a message id").to_owned());
    }
    tokio::time::timeout(Duration::from_secs(30), subscription.disconnect())
        .await
        .expect("disconnecting within 30 s");
    let first = tokio::time::timeout(Duration::from_secs(30), subscription.next())
        .await
        .expect("a redelivery within 30 s")
        .expect("a redelivery");
    assert!(
        first.redelivered(),
        "delivered again after the connection closed"
    );
    assert_eq!(
        first.message_id(),
        Some(taken[0].as_str()),
        "in queue order"
    );
    drop(first); // not acknowledged: the next disconnect gives it back too
    tokio::time::timeout(Duration::from_secs(30), subscription.disconnect())
        .await
        .expect("disconnecting within 30 s");
    consume_until(
        &mut consumer,
        &mut subscription,
        limit,
        "the redelivered seen",
        |s| s.duplicates == 25,
    )
    .await;

    assert_exactly_once(&applied, &streams, ROUNDS);
    assert_eq!(subscription.reconnections(), 2, "one per disconnect");
    let stats = consumer.stats();
    assert_eq!(
        (
            stats.applied,
            stats.duplicates,
            stats.dead_lettered,
            stats.held
        ),
        (EVENTS, 25, 0, 0)
    );
    // Nothing is left in the queue: every message was acknowledged.
    let left = broker.stored().await.expect("reading the queue");
    assert!(
        left.is_empty(),
        "{} messages left unacknowledged",
        left.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_closes_the_subscription() {
    let Some(broker) = TestBroker::new(None).await else {
        return;
    };
    let mut subscription = tokio::time::timeout(
        Duration::from_secs(20),
        AmqpSubscription::connect(&broker.vhost.url, broker.queue.clone()),
    )
    .await
    .expect("subscribing within 20 s")
    .expect("subscribing");
    let channel = broker
        .publisher
        .management_channel()
        .await
        .expect("a channel");
    channel
        .queue_delete(
            broker.queue.name.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("deleting the queue");
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("an answer within 30 s");
        assert!(
            matches!(next, Err(SubscribeError::Closed { .. })),
            "a deleted queue closes the subscription for good, got {next:?}"
        );
    }
    assert_eq!(
        subscription.reconnections(),
        0,
        "it did not declare the queue again"
    );
}
