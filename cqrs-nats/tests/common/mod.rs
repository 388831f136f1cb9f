//! A JetStream stream of the test's own, deleted when the test ends, also on failure;
//! a private `nats-server` for tests that kill it.
#![allow(dead_code)]

pub(crate) mod server;

use std::time::Duration;

use cqrs_core::SubjectScheme;
use cqrs_nats::{JetStreamPublisher, StreamSettings};

/// The server the tests use: `NATS_URL`, or the local one.
pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A publisher on a fresh stream (own name, own subject prefix); its `Drop` deletes the
/// stream.
pub(crate) struct TestStream {
    pub(crate) publisher: JetStreamPublisher,
    pub(crate) scheme: SubjectScheme,
    pub(crate) name: String,
    url: String,
}

impl TestStream {
    /// `None` (after saying `skipped`) when no server answers, unless
    /// `CQRS_REQUIRE_NATS=1`, which makes that a failure.
    pub(crate) async fn new(max_message_size: Option<u32>) -> Option<Self> {
        Self::on(&nats_url(), max_message_size).await
    }

    /// As [`new`](Self::new), on the server at `url`.
    pub(crate) async fn on(url: &str, max_message_size: Option<u32>) -> Option<Self> {
        let url = url.to_owned();
        let connected =
            tokio::time::timeout(Duration::from_secs(10), JetStreamPublisher::connect(&url)).await;
        let publisher = match connected {
            Ok(Ok(publisher)) => publisher,
            other => {
                let why = match other {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                if std::env::var("CQRS_REQUIRE_NATS").as_deref() == Ok("1") {
                    panic!("CQRS_REQUIRE_NATS=1 but NATS at {url} is not available: {why}");
                }
                eprintln!("skipped: NATS at {url} is not available ({why})");
                return None;
            }
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let scheme = SubjectScheme::new(format!("test-{id}")).expect("a valid prefix");
        let name = format!("CQRS_TEST_{id}");
        let mut settings = StreamSettings::new(&name, &scheme);
        settings.max_message_size = max_message_size;
        publisher
            .ensure_stream(&settings)
            .await
            .expect("creating the test's stream");
        Some(TestStream {
            publisher,
            scheme,
            name,
            url,
        })
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // A runtime of its own on a thread of its own: Drop may run inside the test's
        // runtime (which cannot block) or while a failed test unwinds.
        let (url, name) = (self.url.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async {
                let deleted = tokio::time::timeout(Duration::from_secs(10), async {
                    JetStreamPublisher::connect(&url)
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
