//! A private tansu broker (an Apache Kafka API-compatible broker) on a free port for
//! each test, killed when the test ends (also on failure); and reading a topic back.

#![allow(dead_code)] // each test binary uses its own part

pub(crate) mod ledger;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_core::BoxError;
use cqrs_core::conformance::publisher::StoredMessage;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// Whether the broker must be there (`CQRS_REQUIRE_KAFKA=1`): a missing `tansu` fails
/// the test instead of skipping it.
fn required() -> bool {
    std::env::var("CQRS_REQUIRE_KAFKA").as_deref() == Ok("1")
}

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
    let home = std::env::var_os("HOME")?;
    let installed = PathBuf::from(home).join(".cargo/bin/tansu");
    works(&installed).then_some(installed)
}

/// Where a private broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// In memory: lost when the broker stops (fast; for tests that do not restart it).
    Memory,
    /// A SQLite file in the broker's own temporary directory: kept across restarts
    /// (needs a `tansu` built with the `libsql` feature).
    File,
}

/// A private tansu broker; killed (and its directory removed) on drop.
pub(crate) struct PrivateKafka {
    binary: PathBuf,
    port: u16,
    storage: Storage,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The port it tells clients to connect to, when not its own (a proxy's).
    advertised: Option<u16>,
}

impl PrivateKafka {
    /// Starts one, or `None` (after saying `skipped`) when `tansu` is not installed,
    /// unless `CQRS_REQUIRE_KAFKA=1`.
    pub(crate) fn start(storage: Storage) -> Option<Self> {
        Self::start_advertising(storage, None)
    }

    /// As [`start`](Self::start), telling clients to connect to `advertised` (a proxy
    /// in front of it) instead of its own port.
    pub(crate) fn start_advertising(storage: Storage, advertised: Option<u16>) -> Option<Self> {
        let Some(binary) = tansu_binary() else {
            if required() {
                panic!("CQRS_REQUIRE_KAFKA=1 but tansu is neither on the PATH nor in ~/.cargo/bin");
            }
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
            storage,
            dir: tempfile::tempdir().expect("a directory for the broker"),
            child: None,
            advertised,
        };
        if let Err(why) = broker.try_start() {
            if required() {
                panic!("CQRS_REQUIRE_KAFKA=1 but tansu cannot run here: {why}");
            }
            eprintln!("skipped: tansu cannot run here ({why})");
            return None;
        }
        Some(broker)
    }

    /// Its URL, `kafka://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// Its bootstrap servers, `127.0.0.1:PORT`.
    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL (no clean shutdown) and waits for the process to end.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (and, with [`Storage::File`], the same data),
    /// and waits (at most 30 s) until it accepts connections.
    pub(crate) fn restart(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("restarting tansu: {why}");
        }
    }

    /// Starts it (killing it first if it runs); why not, if it exits at once (a
    /// `tansu` built without the `libsql` feature refuses `sqlite://`) or does not
    /// listen within 30 s.
    fn try_start(&mut self) -> Result<(), String> {
        self.kill();
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let engine = match self.storage {
            Storage::Memory => "memory://tansu/",
            Storage::File => "sqlite://tansu.db",
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .map_err(|e| format!("the broker's log file: {e}"))?;
        let child = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", engine])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start tansu: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "tansu exited at start ({status}): {}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err("tansu did not listen within 30 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The end of the broker's log, for a failing test's message.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2_000);
        log.get(start..).unwrap_or_default().to_owned()
    }

    /// Every message of `topic`, partition by partition, each in offset order.
    pub(crate) async fn stored(&self, topic: &str) -> Result<Vec<StoredMessage>, BoxError> {
        let brokers = self.brokers();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_back(&brokers, &topic)).await?
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads every partition of `topic` from the start up to its high watermark.
fn read_back(brokers: &str, topic: &str) -> Result<Vec<StoredMessage>, BoxError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cqrs-kafka-read-back")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut stored = Vec::new();
    for partition in partitions {
        // Read until nothing comes for 2 s: tansu 0.6 reports a high watermark
        // (ListOffsets "latest") that counts record batches, not records.
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&list)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet = 0;
        while quiet < 10 {
            if Instant::now() > deadline {
                return Err(format!("partition {partition}: still reading after 60 s").into());
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                quiet += 1;
                continue;
            };
            let message = message?;
            quiet = 0;
            let headers: Vec<(String, String)> = message.headers().map_or_else(Vec::new, |hs| {
                hs.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            });
            let message_id = headers
                .iter()
                .find(|(n, _)| n == cqrs_core::headers::EVENT_ID)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            stored.push(StoredMessage {
                message_id,
                subject: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                headers,
                payload: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    Ok(stored)
}
