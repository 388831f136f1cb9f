//! A private tansu broker (an Apache Kafka API-compatible broker) on a free port, with
//! its data in a SQLite file of its own (kept across restarts), killed when the test
//! ends (also on failure); and counting what a topic holds.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_core::{Delivery, Subscription};
use cqrs_kafka::{GroupSettings, KafkaSubscription};

use super::block_on;

/// The `tansu` binary: on the `PATH`, or where `cargo install` puts it.
fn tansu_binary() -> Option<PathBuf> {
    let works = |path: &PathBuf| {
        Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let on_path = PathBuf::from("tansu");
    if works(&on_path) {
        return Some(on_path);
    }
    let installed = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/tansu");
    works(&installed).then_some(installed)
}

/// A private broker; killed (and its directory removed) on drop.
pub struct PrivateKafka {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The topic the bank's relay publishes to (`--stream`).
    pub topic: String,
    /// The subject prefix (`--prefix`).
    pub prefix: String,
}

impl PrivateKafka {
    /// Starts one, or `None` (after saying `skipped`) when `tansu` is not installed,
    /// unless `CQRS_REQUIRE_KAFKA=1`.
    pub fn start() -> Option<PrivateKafka> {
        let Some(binary) = tansu_binary() else {
            assert!(
                std::env::var("CQRS_REQUIRE_KAFKA").as_deref() != Ok("1"),
                "CQRS_REQUIRE_KAFKA=1 but tansu is neither on the PATH nor in ~/.cargo/bin"
            );
            eprintln!("skipped: tansu (a Kafka-compatible broker) is not installed");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut broker = PrivateKafka {
            binary,
            port,
            dir: tempfile::tempdir().expect("a directory for the broker"),
            child: None,
            topic: "bank-events".to_owned(),
            prefix: "bank".to_owned(),
        };
        broker.restart();
        Some(broker)
    }

    /// Its URL, `kafka://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and starts it again on the same port and data, waiting (at
    /// most 30 s) until it accepts connections.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("the broker's log file");
        let child = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(self.dir.path().join("broker.log"));
                panic!(
                    "tansu exited at start ({status}): {}",
                    log.unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "tansu did not start within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the topic from its start in a consumer group of its own until it has seen
    /// `events` distinct event ids (or nothing new came for 10 s, or 120 s passed): the
    /// distinct ids and the messages read.
    pub fn held(&self, events: u64) -> (u64, u64) {
        let group = format!("count-{}", uuid::Uuid::new_v4().simple());
        let settings = GroupSettings::new(&self.topic, group);
        block_on(async {
            // In the runtime: the client spawns its wake-ups on it.
            let mut subscription =
                KafkaSubscription::connect(&self.url(), settings).expect("a reader");
            let (mut ids, mut messages) = (HashSet::new(), 0u64);
            let (mut quiet_since, deadline) =
                (Instant::now(), Instant::now() + Duration::from_secs(120));
            while (ids.len() as u64) < events
                && quiet_since.elapsed() < Duration::from_secs(10)
                && Instant::now() < deadline
            {
                let next = tokio::time::timeout(Duration::from_secs(1), subscription.next()).await;
                if let Ok(Ok(delivery)) = next {
                    messages += 1;
                    quiet_since = Instant::now();
                    if let Some(id) = delivery.header(cqrs_core::headers::EVENT_ID) {
                        ids.insert(id.to_owned());
                    }
                }
            }
            (ids.len() as u64, messages)
        })
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
