//! The consumer's inbox in sled: the inbox conformance suite, and a read model whose
//! writes commit with the inbox (or not at all), surviving a reopen.

use std::time::Duration;

use cqrs_core::conformance::inbox::{CONSUMER, Tick, tick_message as tick};
use cqrs_core::{
    BoxError, Consumer, ConsumerConfig, Envelope, InMemoryPublisher, Inbox, Projection, Publisher,
    RetryPolicy, StreamId,
};
use cqrs_sled::{ReadModelTx, SledEventStore, SledInbox};

async fn fresh_inbox() -> Option<SledInbox> {
    let store = SledEventStore::temporary().expect("a temporary sled store");
    Some(SledInbox::new(store, CONSUMER).expect("an inbox"))
}

cqrs_core::inbox_conformance_tests!(fresh_inbox);

/// Sums ticks per stream in the tree `sums`; fails, after writing, on tick 13.
#[derive(Debug)]
struct Sums;

impl Projection<ReadModelTx> for Sums {
    type Event = Tick;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<Tick>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let Tick::Tick { n } = e.event;
            let key = e.stream.id().as_bytes();
            let old = match tx.get("sums", key)? {
                Some(bytes) => u64::from_be_bytes(bytes.try_into().map_err(|_| "not 8 bytes")?),
                None => 0,
            };
            tx.insert("sums", key, &(old + n).to_be_bytes());
            if n == 13 {
                return Err("thirteen is unlucky".into());
            }
        }
        Ok(())
    }
}

fn sum(store: &SledEventStore, stream: &StreamId) -> u64 {
    let sums = store.read_model(CONSUMER, "sums").unwrap();
    sums.get(stream.id().as_bytes())
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

#[tokio::test]
async fn read_model_and_inbox_commit_together_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let broker = InMemoryPublisher::new();
    let (a, b) = (
        StreamId::new("ticker", "a").unwrap(),
        StreamId::new("ticker", "b").unwrap(),
    );
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        let inbox = SledInbox::new(store.clone(), CONSUMER).unwrap();
        let mut config = ConsumerConfig::default().with_attempts(2);
        config.backoff = RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
        let mut consumer = Consumer::new(inbox, Sums).with_config(config);
        let mut subscription = broker.subscribe();
        // a: 1, 2, 13 (fails after writing: nothing of it kept), 4 (parked behind it).
        let batch = [
            tick(&a, 1, 1),
            tick(&b, 1, 10),
            tick(&a, 2, 2),
            tick(&a, 3, 13),
            tick(&a, 4, 4),
            tick(&b, 2, 20),
        ];
        for result in broker.publish(&batch).await {
            result.unwrap();
        }
        let stats =
            tokio::time::timeout(Duration::from_secs(30), consumer.drain(&mut subscription))
                .await
                .expect("drained within 30 s")
                .unwrap();
        assert_eq!((stats.applied, stats.dead_lettered), (4, 2), "{stats:?}");
        assert_eq!(
            sum(&store, &a),
            3,
            "the failed event's write was rolled back"
        );
        assert_eq!(sum(&store, &b), 30);
        assert_eq!(
            subscription.acks(),
            6,
            "every message acknowledged after the flush"
        );
    }
    // Reopened: the inbox remembers versions, dead letters and the parked stream.
    let store = SledEventStore::open(dir.path()).unwrap();
    let mut inbox = SledInbox::new(store.clone(), CONSUMER).unwrap();
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.streams, stats.parked, stats.dead_letters),
        (2, 1, 2),
        "{stats:?}"
    );
    let letters = inbox.dead_letters(0, 10).await.unwrap();
    assert!(
        letters[0].reason.contains("thirteen is unlucky"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        letters.iter().map(|l| l.version).collect::<Vec<_>>(),
        [Some(3), Some(4)]
    );
    let mut consumer = Consumer::new(inbox, Sums);
    let mut subscription = broker.subscribe();
    broker.redeliver_all();
    let stats = tokio::time::timeout(Duration::from_secs(30), consumer.drain(&mut subscription))
        .await
        .expect("drained within 30 s")
        .unwrap();
    assert_eq!(
        stats.applied, 0,
        "redeliveries after a reopen apply nothing: {stats:?}"
    );
    assert_eq!((sum(&store, &a), sum(&store, &b)), (3, 30));
}
