//! The publisher conformance suite of `cqrs-core`, against NATS JetStream.

mod common;

use common::TestStream;
use cqrs_core::BoxError;
use cqrs_core::SubjectScheme;
use cqrs_core::conformance::publisher::{PublisherHarness, StoredMessage};
use cqrs_nats::JetStreamPublisher;

/// Messages over this size are refused by the test streams.
const MAX_MESSAGE: u32 = 64 * 1024;

struct Harness(TestStream);

impl PublisherHarness for Harness {
    type Publisher = JetStreamPublisher;

    fn publisher(&self) -> &JetStreamPublisher {
        &self.0.publisher
    }

    fn scheme(&self) -> &SubjectScheme {
        &self.0.scheme
    }

    fn refused_payload_len(&self) -> usize {
        // Over the stream's limit, under the server's max_payload (1 MiB by default).
        2 * 64 * 1024
    }

    async fn stored(&self) -> Result<Vec<StoredMessage>, BoxError> {
        let mut stream = self.0.publisher.context().get_stream(&self.0.name).await?;
        let state = stream.info().await?.state.clone();
        let mut stored = Vec::new();
        if state.messages == 0 {
            return Ok(stored);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(sequence).await?;
            let headers: Vec<(String, String)> = message
                .headers
                .iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |value| (name.to_string(), value.as_str().to_owned()))
                })
                .collect();
            let message_id = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("Nats-Msg-Id"))
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            stored.push(StoredMessage {
                message_id,
                subject: message.subject.to_string(),
                headers,
                payload: message.payload.to_vec(),
            });
        }
        Ok(stored)
    }
}

async fn fresh_harness() -> Option<Harness> {
    TestStream::new(Some(MAX_MESSAGE)).await.map(Harness)
}

cqrs_core::publisher_conformance_tests!(fresh_harness);
