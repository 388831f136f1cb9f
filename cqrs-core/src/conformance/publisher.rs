//! The publisher conformance suite: every contract of [`Publisher`], written once and
//! run by every broker crate with
//! [`publisher_conformance_tests!`](crate::publisher_conformance_tests).
//!
//! Each case is a `pub async fn case<H: PublisherHarness>(harness: &H)` that panics,
//! naming the contract, when the publisher breaks it. A harness is one publisher on a
//! fresh, empty destination (a JetStream stream of its own, say) plus a way to read back
//! what the broker stored.
//!
//! | contract | case |
//! |---|---|
//! | acknowledged messages are stored, with their subject, headers and payload | [`publish_and_ack`] |
//! | the message id is the event id | [`message_id_is_event_id`] |
//! | a republished id is deduplicated by the broker (or, on one that cannot, stored again under the same id) | [`republished_id_is_deduplicated`] |
//! | one subject keeps the publishing order; odd stream ids get distinct subjects | [`per_stream_order`] |
//! | one refused message does not fail the rest of its batch | [`batch_partly_refused`] |

use std::future::Future;
use std::time::SystemTime;

use uuid::Uuid;

use crate::{
    BoxError, Metadata, OutboundMessage, Position, PublishError, Publisher, RecordedEvent,
    StreamId, SubjectScheme, decode_message,
};

/// A message as the broker stored it, read back by a [`PublisherHarness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The broker's message id (JetStream `Nats-Msg-Id`, AMQP `message-id`).
    pub message_id: String,
    /// The subject or routing key.
    pub subject: String,
    /// The headers, by name.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the suite needs of a broker crate: a publisher on a fresh destination, its
/// subject scheme, a payload size the broker refuses, and a read-back of what it stored.
pub trait PublisherHarness: Send + Sync {
    /// The publisher under test.
    type Publisher: Publisher;

    /// The publisher, publishing to this harness's own destination.
    fn publisher(&self) -> &Self::Publisher;

    /// The subject scheme the destination takes (its prefix is the harness's own).
    fn scheme(&self) -> &SubjectScheme;

    /// A payload length the broker refuses (over its message size limit).
    fn refused_payload_len(&self) -> usize;

    /// Every message the destination holds, in the order the broker stored them.
    fn stored(&self) -> impl Future<Output = Result<Vec<StoredMessage>, BoxError>> + Send + '_;

    /// Whether the broker drops a message whose id it saw recently (JetStream does;
    /// RabbitMQ does not). On a broker that does not, a republished message is stored
    /// again with the same message id, and the consumer's inbox drops the second copy;
    /// [`republished_id_is_deduplicated`] checks that instead.
    fn deduplicates(&self) -> bool {
        true
    }
}

fn record(stream: &StreamId, version: u64, payload: &[u8]) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::now_v7(),
        stream: stream.clone(),
        version,
        position: Position::new(0, version),
        event_type: "ConformanceEvent".into(),
        schema_version: 1,
        recorded_at: SystemTime::now(),
        payload: payload.to_vec(),
        metadata: Metadata::new().with_value("case", "publisher"),
    }
}

fn stream(label: &str) -> StreamId {
    StreamId::new("conformance", format!("{label}-{}", Uuid::new_v4()))
        .expect("a conformance stream id is valid")
}

async fn publish_ok<H: PublisherHarness>(harness: &H, batch: &[OutboundMessage]) {
    let results = harness.publisher().publish(batch).await;
    assert_eq!(
        results.len(),
        batch.len(),
        "one result per message of the batch"
    );
    for (message, result) in batch.iter().zip(results) {
        if let Err(error) = result {
            panic!(
                "publishing {} (subject {}) must be acknowledged, got {error:?}",
                message.message_id, message.subject
            );
        }
    }
}

async fn stored<H: PublisherHarness>(harness: &H) -> Vec<StoredMessage> {
    match harness.stored().await {
        Ok(stored) => stored,
        Err(error) => panic!("reading back the broker's messages failed: {error}"),
    }
}

/// Acknowledged messages are stored with their subject, headers and payload, and the
/// envelope decodes back from the stored headers.
pub async fn publish_and_ack<H: PublisherHarness>(harness: &H) {
    let records: Vec<_> = (1..=3)
        .map(|i| record(&stream("ack"), 1, format!("{{\"n\":{i}}}").as_bytes()))
        .collect();
    let batch: Vec<_> = records
        .iter()
        .map(|r| OutboundMessage::from_record(r, harness.scheme()))
        .collect();
    publish_ok(harness, &batch).await;
    let stored = stored(harness).await;
    assert_eq!(stored.len(), 3, "three acknowledged messages are stored");
    for record in &records {
        let found = stored
            .iter()
            .find(|m| m.header(crate::headers::EVENT_ID) == Some(&record.event_id.to_string()))
            .unwrap_or_else(|| panic!("event {} was acknowledged but not stored", record.event_id));
        assert_eq!(found.subject, harness.scheme().subject(&record.stream));
        let decoded = decode_message(|name| found.header(name), &found.payload)
            .expect("a stored message decodes back to its event");
        let mut expected = record.clone();
        // Brokers carry microseconds, as stores do.
        expected.recorded_at = decoded.recorded_at;
        assert_eq!(decoded, expected, "the envelope survives the broker");
    }
}

/// The broker's message id is the event id.
pub async fn message_id_is_event_id<H: PublisherHarness>(harness: &H) {
    let record = record(&stream("id"), 1, b"{}");
    publish_ok(
        harness,
        &[OutboundMessage::from_record(&record, harness.scheme())],
    )
    .await;
    let stored = stored(harness).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].message_id,
        record.event_id.to_string(),
        "the message id is the event id"
    );
}

/// A message republished with the same id (a relay restarted after a crash) is
/// acknowledged and not stored twice; on a broker that does not
/// [deduplicate](PublisherHarness::deduplicates), it is acknowledged (not as a
/// duplicate: the broker cannot tell) and stored twice with the same message id.
pub async fn republished_id_is_deduplicated<H: PublisherHarness>(harness: &H) {
    let record = record(&stream("dedupe"), 1, b"{}");
    let message = OutboundMessage::from_record(&record, harness.scheme());
    publish_ok(harness, std::slice::from_ref(&message)).await;
    let again = harness
        .publisher()
        .publish(std::slice::from_ref(&message))
        .await;
    let deduplicates = harness.deduplicates();
    match again.first() {
        Some(Ok(ack)) => assert_eq!(
            ack.duplicate, deduplicates,
            "the republish is acknowledged as a duplicate if and only if the broker \
             deduplicates"
        ),
        other => panic!("a republished message must be acknowledged, got {other:?}"),
    }
    let stored = stored(harness).await;
    if deduplicates {
        assert_eq!(stored.len(), 1, "the broker stored it once");
    } else {
        assert_eq!(
            stored.len(),
            2,
            "a broker without deduplication stores it twice"
        );
        for copy in &stored {
            assert_eq!(
                copy.message_id,
                record.event_id.to_string(),
                "both copies carry the event id, for the consumer's inbox to drop one"
            );
        }
    }
}

/// Events of one stream, published one after another (as the relay does: one in flight
/// per stream) and interleaved with another stream's, are stored in version order;
/// stream ids with `.`, `*`, `>` and spaces get their own subjects and decode back.
pub async fn per_stream_order<H: PublisherHarness>(harness: &H) {
    let odd = StreamId::new("conformance", format!("a.b *> {}", Uuid::new_v4()))
        .expect("a valid stream id");
    let plain = stream("order");
    for version in 1..=10 {
        let batch = [
            OutboundMessage::from_record(&record(&odd, version, b"{}"), harness.scheme()),
            OutboundMessage::from_record(&record(&plain, version, b"{}"), harness.scheme()),
        ];
        publish_ok(harness, &batch).await;
    }
    let stored = stored(harness).await;
    for stream in [&odd, &plain] {
        let subject = harness.scheme().subject(stream);
        assert_eq!(harness.scheme().stream_of(&subject).as_ref(), Some(stream));
        let versions: Vec<u64> = stored
            .iter()
            .filter(|m| m.subject == subject)
            .filter_map(|m| m.header(crate::headers::VERSION)?.parse().ok())
            .collect();
        assert_eq!(
            versions,
            (1..=10).collect::<Vec<_>>(),
            "{stream}'s events are stored in version order on subject {subject}"
        );
    }
}

/// One message of a batch that the broker refuses (too large) fails alone: the others
/// are acknowledged and stored.
pub async fn batch_partly_refused<H: PublisherHarness>(harness: &H) {
    let big = vec![b'x'; harness.refused_payload_len()];
    let records = [
        record(&stream("partly-a"), 1, b"{}"),
        record(&stream("partly-big"), 1, &big),
        record(&stream("partly-b"), 1, b"{}"),
    ];
    let batch: Vec<_> = records
        .iter()
        .map(|r| OutboundMessage::from_record(r, harness.scheme()))
        .collect();
    let results = harness.publisher().publish(&batch).await;
    assert_eq!(results.len(), 3, "one result per message of the batch");
    assert!(
        results[0].is_ok(),
        "the first message is acknowledged: {:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(PublishError::Refused { .. })),
        "the oversized message is refused, got {:?}",
        results[1]
    );
    assert!(
        results[2].is_ok(),
        "the last message is acknowledged: {:?}",
        results[2]
    );
    let ids: Vec<String> = stored(harness)
        .await
        .iter()
        .map(|m| m.message_id.clone())
        .collect();
    assert_eq!(
        ids,
        [&records[0], &records[2]].map(|r| r.event_id.to_string()),
        "only the acknowledged messages are stored"
    );
}

/// The harness of one publisher case, or `None` after saying `skipped` when the factory
/// gave none. The case then runs on it; its `Drop` cleans up, also after a panic.
#[doc(hidden)]
pub fn available<H: PublisherHarness>(path: &'static str, harness: Option<H>) -> Option<H> {
    if harness.is_none() {
        super::say(&format!(
            "skipped: {path}: the broker is not available here (its factory said why)"
        ));
    }
    harness
}

/// Runs the [publisher conformance suite](crate::conformance::publisher) against a
/// broker crate: one `#[tokio::test]` per case, named after the case.
///
/// The argument is the path of an `async fn() -> Option<H>` (with
/// `H: PublisherHarness`) that makes a harness on a fresh destination for one case;
/// `None` means "skip" (no broker here), and each test then says `skipped`. Clean the
/// destination up in the harness's `Drop`, which also runs when a case fails.
///
/// ```no_run
/// mod in_memory {
///     # use cqrs_core::conformance::publisher::{PublisherHarness, StoredMessage};
///     # use cqrs_core::{InMemoryPublisher, SubjectScheme};
///     # struct Harness(InMemoryPublisher, SubjectScheme);
///     # impl PublisherHarness for Harness {
///     #     type Publisher = InMemoryPublisher;
///     #     fn publisher(&self) -> &InMemoryPublisher { &self.0 }
///     #     fn scheme(&self) -> &SubjectScheme { &self.1 }
///     #     fn refused_payload_len(&self) -> usize { 1025 }
///     #     async fn stored(&self) -> Result<Vec<StoredMessage>, cqrs_core::BoxError> { Ok(vec![]) }
///     # }
///     async fn fresh_harness() -> Option<Harness> {
///         let publisher = InMemoryPublisher::new().with_max_payload(1024);
///         Some(Harness(publisher, SubjectScheme::new("test").ok()?))
///     }
///
///     cqrs_core::publisher_conformance_tests!(fresh_harness);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! publisher_conformance_tests {
    ($fresh_harness:path $(,)?) => {
        $crate::publisher_conformance_tests!(@cases $fresh_harness:
            publish_and_ack,
            message_id_is_event_id,
            republished_id_is_deduplicated,
            per_stream_order,
            batch_partly_refused,
        );
    };
    (@cases $fresh_harness:path: $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(harness) = $crate::conformance::publisher::available(
                    concat!(module_path!(), "::", stringify!($case)),
                    $fresh_harness().await,
                ) {
                    $crate::conformance::publisher::$case(&harness).await;
                }
            }
        )+
    };
}
