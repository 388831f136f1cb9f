//! The relay over the in-memory store and publisher: at-least-once with a checkpoint,
//! one message in flight per stream, a window of many streams, live wake-ups, and the
//! publisher conformance suite run against `InMemoryPublisher`.

use std::time::Duration;

use cqrs_core::conformance::publisher::{PublisherHarness, StoredMessage};
use cqrs_core::{
    BoxError, CheckpointStore, EventData, EventLog, ExpectedVersion, InMemoryEventStore,
    InMemoryPublisher, OutboundMessage, Position, Relay, RelayConfig, RelayError, RetryPolicy,
    StreamId, SubjectScheme,
};

mod in_memory_publisher {
    use super::*;

    pub(crate) struct Harness {
        publisher: InMemoryPublisher,
        scheme: SubjectScheme,
    }

    impl PublisherHarness for Harness {
        type Publisher = InMemoryPublisher;

        fn publisher(&self) -> &InMemoryPublisher {
            &self.publisher
        }

        fn scheme(&self) -> &SubjectScheme {
            &self.scheme
        }

        fn refused_payload_len(&self) -> usize {
            4097
        }

        async fn stored(&self) -> Result<Vec<StoredMessage>, BoxError> {
            Ok(self
                .publisher
                .messages()
                .into_iter()
                .map(|m| StoredMessage {
                    message_id: m.message_id.to_string(),
                    subject: m.subject,
                    headers: m
                        .headers
                        .into_iter()
                        .map(|(n, v)| (n.to_owned(), v))
                        .collect(),
                    payload: m.payload,
                })
                .collect())
        }
    }

    async fn fresh_harness() -> Option<Harness> {
        Some(Harness {
            publisher: InMemoryPublisher::new().with_max_payload(4096),
            scheme: SubjectScheme::new("test.events").ok()?,
        })
    }

    cqrs_core::publisher_conformance_tests!(fresh_harness);
}

fn scheme() -> SubjectScheme {
    SubjectScheme::new("bank").expect("a valid prefix")
}

fn fast() -> RelayConfig {
    RelayConfig {
        backoff: RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

async fn append(store: &InMemoryEventStore, stream: &StreamId, n: usize) -> Vec<uuid::Uuid> {
    let events: Vec<_> = (0..n)
        .map(|i| EventData::new("Ev", format!("{i}")))
        .collect();
    let ids = events.iter().map(|e| e.event_id).collect();
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .expect("append");
    ids
}

fn versions_of(messages: &[OutboundMessage], stream: &StreamId) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| &m.stream == stream)
        .map(|m| m.version)
        .collect()
}

#[tokio::test]
async fn publishes_the_log_and_checkpoints_after_the_acks() {
    let store = InMemoryEventStore::new();
    let streams: Vec<_> = (0..3)
        .map(|i| StreamId::new("account", format!("a.{i} *")).expect("id"))
        .collect();
    for stream in &streams {
        append(&store, stream, 5).await;
    }
    let broker = InMemoryPublisher::new();
    let mut relay = Relay::new("bank", &store, broker.clone(), scheme()).with_config(fast());
    let stats = relay.catch_up().await.expect("catch up");
    assert_eq!(stats.published, 15);
    assert_eq!(stats.duplicates, 0);
    let messages = broker.messages();
    for stream in &streams {
        assert_eq!(versions_of(&messages, stream), [1, 2, 3, 4, 5]);
    }
    assert_eq!(
        store.load_checkpoint("relay:bank").await.expect("load"),
        Some(Position::new(0, 15)),
        "the checkpoint is the last acknowledged position"
    );
    // Nothing new: a second catch-up publishes nothing.
    let again = relay.catch_up().await.expect("again");
    assert_eq!(again.published, 15);
    assert_eq!(broker.messages().len(), 15);
}

#[tokio::test]
async fn a_restart_republishes_only_what_was_not_checkpointed() {
    let store = InMemoryEventStore::new();
    let stream = StreamId::new("account", "1").expect("id");
    append(&store, &stream, 10).await;
    let broker = InMemoryPublisher::new();
    Relay::new("bank", &store, broker.clone(), scheme())
        .catch_up()
        .await
        .expect("first run");
    // A crash after the broker acknowledged 4..=10 but before the checkpoint moved past 3.
    store
        .save_checkpoint("relay:bank", Position::new(0, 3))
        .await
        .expect("rewind");
    let mut restarted = Relay::new("bank", &store, broker.clone(), scheme());
    let stats = restarted.catch_up().await.expect("restart");
    assert_eq!(stats.published, 0);
    assert_eq!(
        stats.duplicates, 7,
        "events 4..=10 were republished, once each"
    );
    assert_eq!(
        versions_of(&broker.messages(), &stream),
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_failed_message_holds_back_the_rest_of_its_stream_only() {
    let store = InMemoryEventStore::new();
    let slow = StreamId::new("account", "slow").expect("id");
    let other = StreamId::new("account", "other").expect("id");
    let ids = append(&store, &slow, 5).await;
    append(&store, &other, 5).await;
    let broker = InMemoryPublisher::new();
    // Version 2 of `slow` is refused twice, then accepted.
    broker.refuse(ids[1], 2);
    let mut relay = Relay::new("bank", &store, broker.clone(), scheme()).with_config(fast());
    let stats = relay.catch_up().await.expect("catch up");
    assert_eq!(stats.failures, 2);
    assert_eq!(stats.published, 10);
    let messages = broker.messages();
    assert_eq!(
        versions_of(&messages, &slow),
        [1, 2, 3, 4, 5],
        "version 3 was not sent while 2 was unacknowledged"
    );
    assert_eq!(versions_of(&messages, &other), [1, 2, 3, 4, 5]);
    // The other stream was not held back: it went on while slow's version 2 was retried.
    let position = |stream: &StreamId, version: u64| {
        messages
            .iter()
            .position(|m| &m.stream == stream && m.version == version)
            .expect("stored")
    };
    assert!(position(&other, 3) < position(&slow, 2));
}

#[tokio::test]
async fn the_window_puts_many_streams_in_flight_at_once() {
    let store = InMemoryEventStore::new();
    for i in 0..100 {
        append(
            &store,
            &StreamId::new("account", format!("{i}")).expect("id"),
            1,
        )
        .await;
    }
    let broker = InMemoryPublisher::new();
    let config = RelayConfig {
        window: 10,
        ..fast()
    };
    let mut relay = Relay::new("bank", &store, broker.clone(), scheme()).with_config(config);
    relay.catch_up().await.expect("catch up");
    assert_eq!(broker.messages().len(), 100);
    assert_eq!(broker.batches(), 10, "100 streams in batches of 10");
}

#[tokio::test]
async fn a_message_refused_too_often_stops_the_relay_and_names_it() {
    let store = InMemoryEventStore::new();
    let stream = StreamId::new("account", "1").expect("id");
    let ids = append(&store, &stream, 3).await;
    let broker = InMemoryPublisher::new();
    broker.refuse(ids[1], u32::MAX);
    let config = RelayConfig {
        refused_attempts: 3,
        ..fast()
    };
    let mut relay = Relay::new("bank", &store, broker.clone(), scheme()).with_config(config);
    match relay.catch_up().await {
        Err(RelayError::Refused {
            event_id,
            version,
            attempts,
            ..
        }) => {
            assert_eq!((event_id, version, attempts), (ids[1], 2, 3));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        store.load_checkpoint("relay:bank").await.expect("load"),
        Some(Position::new(0, 1)),
        "the checkpoint stops before the refused event"
    );
    assert_eq!(versions_of(&broker.messages(), &stream), [1]);
}

#[tokio::test]
async fn live_relay_wakes_on_appends_and_waits_out_an_outage() {
    let store = InMemoryEventStore::new();
    let broker = InMemoryPublisher::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (store, broker) = (store.clone(), broker.clone());
        tokio::spawn(async move {
            let mut relay = Relay::new("bank", &store, broker, scheme()).with_config(RelayConfig {
                // Longer than the test's deadline: only a notification can wake it in time.
                poll_interval: Duration::from_secs(60),
                ..fast()
            });
            relay
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let stream = StreamId::new("account", "live").expect("id");
    let wait_for = |n: usize| {
        let broker = broker.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while broker.messages().len() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{n} messages were not published within 10 s"));
        }
    };
    append(&store, &stream, 2).await;
    wait_for(2).await;
    broker.set_unavailable(true);
    append(&store, &stream, 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        broker.messages().len(),
        2,
        "nothing is stored while the broker is down"
    );
    broker.set_unavailable(false);
    wait_for(5).await;
    let _ = stop.send(());
    let stats = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the relay stops on shutdown")
        .expect("the relay task")
        .expect("the relay ends without error");
    assert_eq!(stats.published, 5);
    assert!(stats.failures > 0, "the outage was retried");
    assert_eq!(versions_of(&broker.messages(), &stream), [1, 2, 3, 4, 5]);
}
