//! `bank relay`: a broker URL of an unsupported scheme is bad usage (exit 2); on
//! PostgreSQL two relay processes run one at a time (the worker lock `relay:bank`), the
//! second taking over when the first is killed, and each event reaches JetStream once.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::Schema;
use common::{Killed, bank_on, ok_on};
use cqrs_core::SubjectScheme;
use cqrs_nats::{JetStreamPublisher, StreamSettings};

#[test]
fn an_unsupported_broker_scheme_is_bad_usage() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = format!("sled:{}", dir.path().join("bank").display());
    for url in ["mqtt://127.0.0.1:1883", "127.0.0.1:4222", "http://x"] {
        let (code, _, stderr) = bank_on(&store, &["relay", "--to", url]);
        assert_eq!(code, 2, "{url}: {stderr}");
        assert!(stderr.contains("unsupported broker URL scheme"), "{stderr}");
    }
    let (code, _, stderr) = bank_on(
        &store,
        &["serve", "--addr", "127.0.0.1:0", "--relay-to", "mqtt://x"],
    );
    assert_eq!(code, 2, "{stderr}");
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A JetStream stream of the test's own, deleted when dropped (also on failure).
struct TestStream {
    publisher: JetStreamPublisher,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn new() -> Option<TestStream> {
        let url = nats_url();
        let connect = JetStreamPublisher::connect(&url);
        let publisher = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(publisher)) => publisher,
            other => {
                let why = format!("{:?}", other.map(|r| r.map(drop)));
                if std::env::var("CQRS_REQUIRE_NATS").as_deref() == Ok("1") {
                    panic!("CQRS_REQUIRE_NATS=1 but NATS is not available: {why}");
                }
                eprintln!("skipped: NATS is not available ({why})");
                return None;
            }
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (name, prefix) = (format!("BANK_RELAY_TEST_{id}"), format!("bank-{id}"));
        let scheme = SubjectScheme::new(&prefix).expect("a valid prefix");
        let settings = StreamSettings::new(&name, &scheme);
        publisher
            .ensure_stream(&settings)
            .await
            .expect("create the stream");
        Some(TestStream {
            publisher,
            name,
            prefix,
        })
    }

    async fn messages(&self) -> u64 {
        let mut stream = self.publisher.context().get_stream(&self.name).await;
        let info = stream.as_mut().expect("the stream").info().await;
        info.expect("the stream's info").state.messages
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let delete = async {
                    JetStreamPublisher::connect(&nats_url())
                        .await?
                        .delete_stream(&name)
                        .await
                };
                tokio::time::timeout(Duration::from_secs(10), delete).await
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(Ok(())))) {
            eprintln!("could not delete the test stream {}", self.name);
        }
    }
}

/// `bank --store STORE relay …` in the background, its standard error in `log`.
fn relay(store: &str, stream: &TestStream, log: &Path) -> Killed {
    let file = File::create(log).expect("create the log");
    Killed(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args(["--store", store, "relay", "--to", &nats_url()])
            .args(["--stream", &stream.name, "--prefix", &stream.prefix])
            .env_remove("BANK_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start bank relay"),
    )
}

/// Waits (at most 60 s) until `done` holds.
async fn wait_until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_per_postgres_store_and_each_event_published_once() {
    let Some(stream) = TestStream::new().await else {
        return;
    };
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let store = schema.url();
    let dir = tempfile::tempdir().expect("a temporary directory for the logs");
    ok_on(&store, &["open", "ada"]);
    ok_on(&store, &["deposit", "ada", "10"]);

    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let first = relay(&store, &stream, &first_log);
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    wait_until("the first relay publishes", || async {
        stream.messages().await == 2
    })
    .await;
    let second = relay(&store, &stream, &second_log);
    wait_until("the second relay waits for the lock", || async {
        read(&second_log).contains("waiting for the worker lock")
    })
    .await;
    ok_on(&store, &["withdraw", "ada", "1"]);
    wait_until("the first relay publishes the withdrawal", || async {
        stream.messages().await == 3
    })
    .await;
    assert!(
        !read(&second_log).contains("worker lock taken; running"),
        "the second relay ran while the first held the lock: {}",
        read(&second_log)
    );

    // The first dies; the second takes over from the shared checkpoint.
    drop(first);
    wait_until("the second relay takes the lock", || async {
        read(&second_log).contains("worker lock taken; running")
    })
    .await;
    ok_on(&store, &["deposit", "ada", "2"]);
    wait_until("the second relay publishes the deposit", || async {
        stream.messages().await == 4
    })
    .await;
    drop(second);
    assert_eq!(stream.messages().await, 4, "each event once in the stream");
}
