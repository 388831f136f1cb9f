//! The publisher conformance suite of `cqrs-core`, against Kafka: each case on a
//! private tansu broker, read back from the topic's start.

mod common;

use common::{PrivateKafka, Storage};
use cqrs_core::conformance::publisher::{PublisherHarness, StoredMessage};
use cqrs_core::{BoxError, SubjectScheme};
use cqrs_kafka::KafkaPublisher;

const TOPIC: &str = "events";

/// The publisher's message size limit in the tests.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

struct Harness {
    publisher: KafkaPublisher,
    scheme: SubjectScheme,
    // Dropped last: after the publisher's client.
    broker: PrivateKafka,
}

impl PublisherHarness for Harness {
    type Publisher = KafkaPublisher;

    fn publisher(&self) -> &KafkaPublisher {
        &self.publisher
    }

    fn scheme(&self) -> &SubjectScheme {
        &self.scheme
    }

    fn refused_payload_len(&self) -> usize {
        2 * MAX_MESSAGE_BYTES
    }

    async fn stored(&self) -> Result<Vec<StoredMessage>, BoxError> {
        self.broker.stored(TOPIC).await
    }

    fn deduplicates(&self) -> bool {
        false
    }
}

async fn fresh_harness() -> Option<Harness> {
    let broker = PrivateKafka::start(Storage::Memory)?;
    let publisher = KafkaPublisher::connect(&broker.url(), TOPIC)
        .and_then(|p| p.with_max_message_bytes(MAX_MESSAGE_BYTES))
        .expect("a publisher");
    // One partition: the suite compares the order of messages of different streams
    // (the relay round trip in tests/relay.rs runs over three).
    publisher.ensure_topic(1).await.expect("creating the topic");
    Some(Harness {
        publisher,
        scheme: SubjectScheme::new("test").expect("a valid prefix"),
        broker,
    })
}

cqrs_core::publisher_conformance_tests!(fresh_harness);
