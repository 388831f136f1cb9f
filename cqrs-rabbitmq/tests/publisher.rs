//! What the conformance suite does not cover: RabbitMQ's own refusals (an unroutable
//! message, a routing key over 255 bytes, an exchange that does not exist), each
//! `Refused` without failing the publisher for later messages.

mod common;

use std::time::{Duration, SystemTime};

use common::TestBroker;
use cqrs_core::{
    Metadata, OutboundMessage, Position, PublishError, Publisher, RecordedEvent, StreamId,
    SubjectScheme,
};
use cqrs_rabbitmq::AmqpPublisher;

fn message(scheme: &SubjectScheme, id: &str) -> OutboundMessage {
    let record = RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream: StreamId::new("account", id).expect("a valid id"),
        version: 1,
        position: Position::new(0, 1),
        event_type: "Deposited".into(),
        schema_version: 1,
        recorded_at: SystemTime::now(),
        payload: b"{}".to_vec(),
        metadata: Metadata::new(),
    };
    OutboundMessage::from_record(&record, scheme)
}

async fn publish(
    publisher: &AmqpPublisher,
    batch: &[OutboundMessage],
) -> Vec<Result<(), PublishError>> {
    tokio::time::timeout(Duration::from_secs(30), publisher.publish(batch))
        .await
        .expect("an answer within 30 s")
        .into_iter()
        .map(|result| result.map(|ack| assert!(!ack.duplicate, "RabbitMQ cannot tell")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_refused_and_the_publisher_goes_on() {
    let Some(broker) = TestBroker::new(None).await else {
        return;
    };
    // No queue is bound for `other.#`: mandatory messages come back.
    let unbound = SubjectScheme::new("other").expect("a valid prefix");
    // A stream id whose routing key is over 255 bytes (each `.` is 3 bytes encoded).
    let long_id = ".".repeat(100);
    let batch = [
        message(&broker.scheme, "a"),
        message(&unbound, "b"),
        message(&broker.scheme, &long_id),
        message(&broker.scheme, "c"),
    ];
    let results = publish(&broker.publisher, &batch).await;
    assert!(results[0].is_ok(), "routed: {:?}", results[0]);
    assert!(
        matches!(results[1], Err(PublishError::Refused { .. })),
        "unroutable: refused, got {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(PublishError::Refused { .. })),
        "a routing key over 255 bytes: refused, got {:?}",
        results[2]
    );
    assert!(results[3].is_ok(), "routed: {:?}", results[3]);
    let stored: Vec<String> = broker
        .stored()
        .await
        .expect("reading the queue")
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let expected = [&batch[0], &batch[3]].map(|m| m.message_id.to_string());
    assert_eq!(stored, expected, "only the routed messages are stored");

    // An exchange that does not exist: the broker closes the channel (404), the message
    // is refused, and the next publish opens a new channel.
    let missing = tokio::time::timeout(
        Duration::from_secs(20),
        AmqpPublisher::connect(&broker.vhost.url, "missing"),
    )
    .await
    .expect("connecting within 20 s")
    .expect("connecting");
    let results = publish(&missing, &[message(&broker.scheme, "d")]).await;
    assert!(
        matches!(results[0], Err(PublishError::Refused { .. })),
        "no such exchange: refused, got {:?}",
        results[0]
    );
    missing
        .ensure_exchange()
        .await
        .expect("declaring the exchange");
    let results = publish(&missing, &[message(&unbound, "e")]).await;
    assert!(
        matches!(results[0], Err(PublishError::Refused { .. })),
        "now the exchange exists, but no queue is bound: refused, got {:?}",
        results[0]
    );
    let mut queue = broker.queue.clone();
    queue.exchange = "missing".into();
    missing
        .ensure_queue(&queue)
        .await
        .expect("binding the queue");
    let results = publish(&missing, &[message(&broker.scheme, "f")]).await;
    assert!(results[0].is_ok(), "routed at last: {:?}", results[0]);
}
