//! The consumer over the in-memory inbox: the inbox conformance suite, and what only an
//! in-memory inbox can show (a database outage dead-letters nothing).

use std::time::Duration;

use cqrs_core::conformance::inbox::{CONSUMER, Tick, tick_message};
use cqrs_core::{
    BoxError, Consumer, ConsumerConfig, Envelope, InMemoryInbox, InMemoryPublisher,
    OutboundMessage, Projection, Publisher, RetryPolicy, StreamId,
};

async fn fresh_inbox() -> Option<InMemoryInbox> {
    Some(InMemoryInbox::new())
}

cqrs_core::inbox_conformance_tests!(fresh_inbox);

#[derive(Debug, Default)]
struct Count(u64);

impl Projection for Count {
    type Event = Tick;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<Tick>]) -> Result<(), BoxError> {
        self.0 += batch.len() as u64;
        Ok(())
    }
}

#[tokio::test]
async fn an_inbox_outage_is_waited_out_and_dead_letters_nothing() {
    let broker = InMemoryPublisher::new();
    let inbox = InMemoryInbox::new();
    let mut subscription = broker.subscribe();
    let mut config = ConsumerConfig::default().with_attempts(1);
    config.backoff = RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
    };
    let mut consumer = Consumer::new(inbox.clone(), Count::default()).with_config(config);
    let stream = StreamId::new("ticker", "outage").unwrap();
    inbox.set_unavailable(true);
    let batch: Vec<_> = (1..=10).map(|v| tick(&stream, v)).collect();
    for result in broker.publish(&batch).await {
        result.unwrap();
    }
    let down = inbox.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        down.set_unavailable(false);
    });
    let run = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            consumer.drain(&mut subscription).await.unwrap();
            if consumer.projection().0 == 10 {
                break;
            }
        }
    });
    run.await
        .expect("the consumer applies everything once the inbox is back");
    assert_eq!(
        consumer.stats().dead_lettered,
        0,
        "an outage dead-letters nothing"
    );
    assert_eq!(inbox.stream(&stream).version, 10);
    assert_eq!(
        subscription.acks(),
        10,
        "each message acknowledged after its commit"
    );
}

fn tick(stream: &StreamId, version: u64) -> OutboundMessage {
    tick_message(stream, version, version)
}
