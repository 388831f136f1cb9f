//! A writer process is SIGKILLed at random moments; every acknowledged event must
//! survive, no half batch may be visible, and versions and positions stay contiguous.
//!
//! The test binary re-executes itself: with `CQRS_SLED_CRASH_DIR` set, the test
//! `crash_child_writer` appends in a loop and prints what was acknowledged; without it,
//! that test does nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cqrs_core::{EventData, EventStore, ExpectedVersion, Position, StreamId};
use cqrs_sled::{Durability, SledConfig, SledEventStore};
use futures::TryStreamExt;
use uuid::Uuid;

const CHILD_ENV: &str = "CQRS_SLED_CRASH_DIR";
const BATCH: u64 = 3;
const STREAMS: u64 = 4;
const ROUNDS: u32 = 24;

fn stream(n: u64) -> StreamId {
    StreamId::new("crash", format!("s{n}")).unwrap()
}

/// A payload that says which batch the event belongs to: `{"batch":"<id>","i":k,"of":n}`.
fn batch_of(id: Uuid) -> Vec<EventData> {
    (0..BATCH)
        .map(|i| {
            EventData::new(
                "Written",
                format!(r#"{{"batch":"{id}","i":{i},"of":{BATCH}}}"#).into_bytes(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Not the child: nothing to do.
    };
    let store = SledConfig::new(&dir)
        .durability(Durability::Flushed)
        .open()
        .unwrap();
    // Two writers so that kills also land while a group commit is in flight.
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    let s = stream((n * 2 + w) % STREAMS);
                    let done = store
                        .append(&s, ExpectedVersion::Any, batch_of(Uuid::new_v4()))
                        .await
                        .unwrap();
                    println!("ack {} {} {}", s.id(), done.version, done.position.sequence);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

#[tokio::test]
async fn killed_writer_loses_no_acknowledged_event() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // Highest acknowledged version per stream, highest acknowledged position.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut acked_position = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kill after a random number of acknowledgements (0..60), then a random pause.
        let random = Uuid::new_v4().as_u128();
        let kill_after = u64::try_from(random % 60).unwrap();
        let pause = Duration::from_micros(u64::try_from((random >> 8) % 3000).unwrap());
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if record_ack(&line, &mut acked, &mut acked_position) {
                seen += 1;
            }
        }
        std::thread::sleep(pause);
        child.kill().unwrap(); // SIGKILL
        // Acknowledgements printed before the kill still count.
        for line in lines.map_while(Result::ok) {
            record_ack(&line, &mut acked, &mut acked_position);
        }
        child.wait().unwrap();

        let store = SledEventStore::open(dir.path()).unwrap();
        check(&store, &acked, acked_position, round).await;
    }
    // Appending continues after the last crash.
    let store = SledEventStore::open(dir.path()).unwrap();
    let s = stream(0);
    let head = store
        .read_stream(&s, 1)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    let head = u64::try_from(head).unwrap();
    let done = store
        .append(&s, ExpectedVersion::Exact(head), batch_of(Uuid::new_v4()))
        .await
        .unwrap();
    assert_eq!(done.version, head + BATCH);
    assert!(acked_position > 0, "the child never acknowledged anything");
    println!(
        "{ROUNDS} kills survived; {acked_position} events acknowledged, {} stored",
        done.position.sequence - BATCH
    );
}

fn record_ack(line: &str, acked: &mut HashMap<String, u64>, position: &mut u64) -> bool {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let ["ack", id, version, pos] = parts[..] else {
        return false;
    };
    let version: u64 = version.parse().unwrap();
    let entry = acked.entry(id.to_owned()).or_default();
    *entry = (*entry).max(version);
    *position = (*position).max(pos.parse().unwrap());
    true
}

async fn check(
    store: &SledEventStore,
    acked: &HashMap<String, u64>,
    acked_position: u64,
    round: u32,
) {
    let log: Vec<_> = store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap();
    let count = u64::try_from(log.len()).unwrap();
    assert!(
        count >= acked_position,
        "round {round}: log has {count} events, {acked_position} acknowledged"
    );
    assert_eq!(
        count % BATCH,
        0,
        "round {round}: a half batch is in the log"
    );
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut batches: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (record, expected_position) in log.iter().zip(1u64..) {
        assert_eq!(
            record.position,
            Position::new(0, expected_position),
            "round {round}: log gap"
        );
        let version = versions.entry(record.stream.id().to_owned()).or_default();
        *version += 1;
        assert_eq!(
            record.version, *version,
            "round {round}: version gap in {}",
            record.stream
        );
        let payload: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let batch = payload["batch"].as_str().unwrap().to_owned();
        batches
            .entry(batch)
            .or_default()
            .push(payload["i"].as_u64().unwrap());
    }
    for (batch, parts) in &batches {
        assert_eq!(
            parts,
            &(0..BATCH).collect::<Vec<_>>(),
            "round {round}: batch {batch} is split"
        );
    }
    for (id, &version) in acked {
        let stored = versions.get(id).copied().unwrap_or(0);
        assert!(
            stored >= version,
            "round {round}: {id} acknowledged {version}, stored {stored}"
        );
        let events: Vec<_> = store
            .read_stream(&StreamId::new("crash", id).unwrap(), 1)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(u64::try_from(events.len()).unwrap(), stored);
    }
}
