//! The publisher conformance suite of `cqrs-core`, against RabbitMQ: each case in a
//! vhost of its own, read back from a queue bound to the exchange with `test.#`.

mod common;

use common::TestBroker;
use cqrs_core::conformance::publisher::{PublisherHarness, StoredMessage};
use cqrs_core::{BoxError, SubjectScheme};
use cqrs_rabbitmq::AmqpPublisher;

/// The test queue refuses (`reject-publish`) a message that would take it over this
/// many bytes of bodies.
const MAX_QUEUE_BYTES: u32 = 64 * 1024;

struct Harness(TestBroker);

impl PublisherHarness for Harness {
    type Publisher = AmqpPublisher;

    fn publisher(&self) -> &AmqpPublisher {
        &self.0.publisher
    }

    fn scheme(&self) -> &SubjectScheme {
        &self.0.scheme
    }

    fn refused_payload_len(&self) -> usize {
        // Over the queue's length limit, far under the broker's max_message_size.
        2 * 64 * 1024
    }

    async fn stored(&self) -> Result<Vec<StoredMessage>, BoxError> {
        self.0.stored().await
    }

    fn deduplicates(&self) -> bool {
        false
    }
}

async fn fresh_harness() -> Option<Harness> {
    TestBroker::new(Some(MAX_QUEUE_BYTES)).await.map(Harness)
}

cqrs_core::publisher_conformance_tests!(fresh_harness);
