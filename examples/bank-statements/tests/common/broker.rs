//! A JetStream stream of the test's own (own name, own subject prefix), deleted when
//! the test ends, also when it fails.

use std::time::Duration;

use cqrs_core::{Metadata, OutboundMessage, Position, RecordedEvent, StreamId, SubjectScheme};
use cqrs_nats::{JetStreamPublisher, StreamSettings};

use super::block_on;

/// The server the tests use: `NATS_URL`, or the local one.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A fresh stream, created as the bank's relay would (so a consumer may subscribe
/// before the relay runs); its `Drop` deletes it.
pub struct TestStream {
    /// The stream's name (`--stream`, `--relay-stream`).
    pub name: String,
    /// The subject prefix (`--prefix`, `--relay-prefix`).
    pub prefix: String,
}

impl TestStream {
    /// `None` (after saying `skipped`) when no server answers, unless
    /// `CQRS_REQUIRE_NATS=1`, which makes that a failure.
    pub fn new() -> Option<TestStream> {
        let url = nats_url();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let stream = TestStream {
            name: format!("STATEMENTS_TEST_{id}"),
            prefix: format!("bank-{id}"),
        };
        let created = block_on(async {
            let connect = JetStreamPublisher::connect(&url);
            let publisher = tokio::time::timeout(Duration::from_secs(10), connect).await;
            let publisher = publisher.map_err(|_| "timed out".to_owned())?;
            let publisher = publisher.map_err(|e| e.to_string())?;
            let scheme = SubjectScheme::new(&stream.prefix).expect("a valid prefix");
            let settings = StreamSettings::new(&stream.name, &scheme);
            publisher
                .ensure_stream(&settings)
                .await
                .map_err(|e| e.to_string())
        });
        match created {
            Ok(()) => Some(stream),
            Err(why) if std::env::var("CQRS_REQUIRE_NATS").as_deref() == Ok("1") => {
                panic!("CQRS_REQUIRE_NATS=1 but NATS at {url} is not available: {why}")
            }
            Err(why) => {
                eprintln!("skipped: NATS at {url} is not available ({why})");
                None
            }
        }
    }

    /// Publishes a message that is not one of the bank's (no envelope headers, not
    /// JSON) to the account subject `<prefix>.account.<id>`, acknowledged by JetStream.
    pub fn publish_foreign(&self, id: &str) {
        let subject = format!("{}.account.{id}", self.prefix);
        block_on(async {
            let client = async_nats::connect(nats_url()).await.expect("connect");
            let jetstream = async_nats::jetstream::new(client);
            let ack = jetstream
                .publish(subject, "not one of the bank's events".into())
                .await
                .expect("publish");
            ack.await.expect("the stream's acknowledgement");
        });
    }

    /// Publishes an event of the bank's shape (envelope headers as the relay writes
    /// them) that the statements service cannot decode: a `MoneyDeposited`, version 1
    /// of account `id`, whose amount is not a number.
    pub fn publish_poison(&self, id: &str) {
        let record = RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream: StreamId::new("account", id).expect("a valid stream"),
            version: 1,
            position: Position::new(0, 1),
            event_type: "MoneyDeposited".into(),
            schema_version: 1,
            recorded_at: std::time::SystemTime::now(),
            payload: br#"{"Deposited":{"amount":"lots"}}"#.to_vec(),
            metadata: Metadata::new(),
        };
        let scheme = SubjectScheme::new(&self.prefix).expect("a valid prefix");
        let message = OutboundMessage::from_record(&record, &scheme);
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(*name, value.as_str());
        }
        block_on(async {
            let client = async_nats::connect(nats_url()).await.expect("connect");
            let jetstream = async_nats::jetstream::new(client);
            let ack = jetstream
                .publish_with_headers(message.subject, headers, message.payload.into())
                .await
                .expect("publish");
            ack.await.expect("the stream's acknowledgement");
        });
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own on a thread of its own: Drop may run while a failed test
        // unwinds.
        let done = std::thread::spawn(move || {
            block_on(async {
                let deleted = tokio::time::timeout(Duration::from_secs(10), async {
                    JetStreamPublisher::connect(&nats_url())
                        .await?
                        .delete_stream(&name)
                        .await
                })
                .await;
                if !matches!(deleted, Ok(Ok(()))) {
                    eprintln!("could not delete the test stream {name}: {deleted:?}");
                }
            });
        })
        .join();
        if done.is_err() {
            eprintln!("the cleanup of stream {} panicked", self.name);
        }
    }
}
