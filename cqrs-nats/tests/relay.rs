//! The relay from a store to JetStream: everything published once, in order per
//! stream; a restart that republishes is deduplicated by JetStream.

mod common;

use common::TestStream;
use cqrs_core::{
    CheckpointStore, EventData, EventLog, ExpectedVersion, InMemoryEventStore, Position, Relay,
    RelayConfig, StreamId,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_jetstream_survives_a_restart_without_duplicates() {
    let Some(test) = TestStream::new(None).await else {
        return;
    };
    let store = InMemoryEventStore::new();
    let streams: Vec<_> = (0..20)
        .map(|i| StreamId::new("account", format!("acc.{i} >*")).expect("id"))
        .collect();
    for round in 0..5 {
        for stream in &streams {
            let event = EventData::new("Deposited", format!("{{\"round\":{round}}}"));
            store
                .append(stream, ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
        }
    }
    let config = RelayConfig {
        window: 8,
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(
        "nats-test",
        &store,
        test.publisher.clone(),
        test.scheme.clone(),
    )
    .with_config(config);
    let stats = tokio::time::timeout(std::time::Duration::from_secs(60), relay.catch_up())
        .await
        .expect("the relay catches up within 60 s")
        .expect("the relay catches up");
    assert_eq!((stats.published, stats.duplicates), (100, 0));
    assert_eq!(stats.checkpoint, Position::new(0, 100));

    // A crash before the checkpoint passed position 60: the restart republishes 61..=100.
    store
        .save_checkpoint("relay:nats-test", Position::new(0, 60))
        .await
        .expect("rewind");
    let mut restarted = Relay::new(
        "nats-test",
        &store,
        test.publisher.clone(),
        test.scheme.clone(),
    );
    let stats = tokio::time::timeout(std::time::Duration::from_secs(60), restarted.catch_up())
        .await
        .expect("the restarted relay catches up within 60 s")
        .expect("the restarted relay catches up");
    assert_eq!((stats.published, stats.duplicates), (0, 40));

    let mut stream = test
        .publisher
        .context()
        .get_stream(&test.name)
        .await
        .expect("the stream");
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!(state.messages, 100, "JetStream holds each event once");
    // Per stream, the stored order is the version order.
    for stream_id in &streams {
        let subject = test.scheme.subject(stream_id);
        let mut versions = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(sequence).await.expect("message");
            if message.subject.as_str() == subject {
                let version = message
                    .headers
                    .get(cqrs_core::headers::VERSION)
                    .expect("a version header");
                versions.push(version.as_str().parse::<u64>().expect("a number"));
            }
        }
        assert_eq!(versions, [1, 2, 3, 4, 5], "{stream_id} in version order");
    }
}
