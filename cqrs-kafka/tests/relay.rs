//! Relay → Kafka (three partitions) → a consumer group: every event applied once, in
//! order per stream, while a second member joins the group halfway (a rebalance); then
//! a republish (the relay restarted from an older checkpoint) is recognised as
//! duplicates by the inbox.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::ledger::{
    Ledger, TurnInbox, append_round, assert_exactly_once, streams, total, wait_until,
};
use common::{PrivateKafka, Storage};
use cqrs_core::{
    CheckpointStore, Consumer, ConsumerControl, ConsumerStats, InMemoryEventStore, Position, Relay,
    RelayConfig, SubjectScheme,
};
use cqrs_kafka::{GroupSettings, KafkaPublisher, KafkaSubscription};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOPIC: &str = "bank-events";
const STREAMS: usize = 12;
const FIRST_ROUNDS: u64 = 5;

/// A member of the group `ledger`, consuming in a task until told to stop.
struct Member {
    control: ConsumerControl,
    stop: oneshot::Sender<()>,
    task: JoinHandle<ConsumerStats>,
}

impl Member {
    fn start(broker: &PrivateKafka, inbox: &TurnInbox, ledger: Ledger) -> Member {
        // Short timeouts, so that the rebalance is quick in a test.
        let settings = GroupSettings::new(TOPIC, "ledger")
            .with_filter("bank.account.*")
            .with_session_timeout(Duration::from_secs(6))
            .with_commit_interval(Duration::from_millis(100));
        let mut subscription =
            KafkaSubscription::connect(&broker.url(), settings).expect("subscribing");
        let mut consumer = Consumer::new(inbox.clone(), ledger);
        let control = consumer.control();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            consumer
                .run_until(&mut subscription, shutdown)
                .await
                .expect("the subscription stays open")
        });
        Member {
            control,
            stop,
            task,
        }
    }

    async fn counts(&self) -> ConsumerStats {
        self.control.counts().await.expect("the member runs")
    }

    async fn stop(self) -> ConsumerStats {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("a member stops within 30 s")
            .expect("the member's task ends without panicking")
    }
}

async fn relay_all(relay: &mut Relay<&InMemoryEventStore, &KafkaPublisher>) -> u64 {
    let stats = tokio::time::timeout(Duration::from_secs(60), relay.catch_up())
        .await
        .expect("the relay catches up within 60 s")
        .expect("the relay catches up");
    stats.published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_kafka_to_a_consumer_group_applies_each_event_once_across_a_rebalance() {
    let Some(broker) = PrivateKafka::start(Storage::Memory) else {
        return;
    };
    let publisher = KafkaPublisher::connect(&broker.url(), TOPIC).expect("a publisher");
    publisher.ensure_topic(3).await.expect("creating the topic");
    let store = InMemoryEventStore::new();
    let streams = streams(STREAMS);
    for round in 0..FIRST_ROUNDS {
        append_round(&store, &streams, round).await;
    }
    let config = RelayConfig {
        window: 8,
        ..RelayConfig::default()
    };
    let scheme = SubjectScheme::new("bank").expect("a valid prefix");
    let mut relay = Relay::new("kafka-test", &store, &publisher, scheme).with_config(config);
    let first = STREAMS as u64 * FIRST_ROUNDS;
    assert_eq!(relay_all(&mut relay).await, first);

    // One member takes all three partitions and applies the first rounds.
    let inbox = TurnInbox::default();
    let ledger = Ledger::default();
    let (applied, first_mine) = (ledger.applied.clone(), ledger.mine.clone());
    let second = ledger.sharing();
    let second_mine = second.mine.clone();
    let first_member = Member::start(&broker, &inbox, ledger);
    let limit = Duration::from_secs(60);
    wait_until("the first rounds applied", limit, || {
        total(&applied) == first
    })
    .await;

    // A second member joins: the group rebalances and gives it some partitions. New
    // rounds go on until it has applied some of them.
    let second_member = Member::start(&broker, &inbox, second);
    let mut rounds = FIRST_ROUNDS;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while second_mine.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second member got partitions and applied events within 90 s"
        );
        append_round(&store, &streams, rounds).await;
        rounds += 1;
        relay_all(&mut relay).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let all = STREAMS as u64 * rounds;
    wait_until("every round applied", limit, || total(&applied) >= all).await;
    assert_exactly_once(&applied, &streams, rounds);
    assert!(first_mine.load(Ordering::Relaxed) > 0);

    // The relay restarts from an older checkpoint: Kafka stores the last 20 again (no
    // deduplication across producers), and the inbox drops them.
    store
        .save_checkpoint("relay:kafka-test", Position::new(0, all - 20))
        .await
        .expect("rewinding the relay's checkpoint");
    let mut again = Relay::new(
        "kafka-test",
        &store,
        &publisher,
        SubjectScheme::new("bank").expect("a valid prefix"),
    );
    assert_eq!(relay_all(&mut again).await, 20);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (a, b) = (first_member.counts().await, second_member.counts().await);
        if a.duplicates + b.duplicates >= 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the republished events reach the members within {limit:?}: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_stats = first_member.stop().await;
    let second_stats = second_member.stop().await;
    assert_exactly_once(&applied, &streams, rounds);
    assert_eq!(
        first_stats.applied + second_stats.applied,
        all,
        "the two members applied every event once between them"
    );
    assert!(
        first_stats.duplicates + second_stats.duplicates >= 20,
        "the republished events were dropped as duplicates: {first_stats:?} {second_stats:?}"
    );
    assert_eq!(first_stats.dead_lettered + second_stats.dead_lettered, 0);
}
