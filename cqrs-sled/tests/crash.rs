//! Tests that need a second process: a writer process is SIGKILLed at random moments
//! (every acknowledged event must survive, no half batch may be visible, and versions
//! and positions stay contiguous), and a store open in another process is locked.
//!
//! The binary re-executes itself as the other process, so it has no libtest harness
//! (`harness = false` in `Cargo.toml`): a child role written as a `#[test]` would show up
//! as a passing test of its own. `main` picks the role: with `CQRS_SLED_CRASH_DIR` set it
//! is the writer, with `CQRS_SLED_LOCK_HOLDER_DIR` set the lock holder, and otherwise it
//! runs the tests, reading the libtest arguments that matter here (name filters,
//! `--exact`, `--skip`, `--list`). A child exits when its standard input closes, so it
//! does not outlive a parent that dies; the parent kills and reaps it on every path.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use cqrs_core::{EventData, EventLog, ExpectedVersion, Position, StreamId};
use cqrs_sled::{Durability, OpenError, SledConfig, SledEventStore};
use futures::TryStreamExt;
use uuid::Uuid;

const WRITER_ENV: &str = "CQRS_SLED_CRASH_DIR";
const HOLDER_ENV: &str = "CQRS_SLED_LOCK_HOLDER_DIR";
const LIFECYCLE_ENV: &str = "CQRS_SLED_LIFECYCLE_DIR";
const BATCH: u64 = 3;
const STREAMS: u64 = 4;
const ROUNDS: u32 = 24;
/// How long the parent waits for a child's next line: a guard against a hang, never a
/// timing check.
const DEADLINE: Duration = Duration::from_secs(60);

/// The tests, by name.
const TESTS: &[(&str, fn())] = &[
    (
        "killed_writer_loses_no_acknowledged_event",
        killed_writer_loses_no_acknowledged_event,
    ),
    (
        "a_store_open_in_another_process_is_locked",
        a_store_open_in_another_process_is_locked,
    ),
    (
        "killed_lifecycle_writer_keeps_every_acknowledged_change",
        killed_lifecycle_writer_keeps_every_acknowledged_change,
    ),
];

fn main() -> ExitCode {
    if let Ok(dir) = std::env::var(WRITER_ENV) {
        crash_writer(&dir);
        return ExitCode::SUCCESS;
    }
    if let Ok(dir) = std::env::var(HOLDER_ENV) {
        lock_holder(&dir);
        return ExitCode::SUCCESS;
    }
    if let Ok(dir) = std::env::var(LIFECYCLE_ENV) {
        lifecycle_writer(&dir);
        return ExitCode::SUCCESS;
    }
    run_tests(std::env::args().skip(1).collect())
}

// ---- the tests --------------------------------------------------------------------

fn stream(n: u64) -> StreamId {
    StreamId::new("crash", format!("s{n}")).unwrap()
}

/// A payload that says which batch the event belongs to:
/// `{"batch":"<id>","i":k,"of":n,"note":"..."}`. The note makes a batch large enough
/// (over 512 bytes) to be written as one compressed log record (format 4), the store's
/// default, so the crashes hit compressed records too.
fn batch_of(id: Uuid) -> Vec<EventData> {
    let note = "monthly salary, paid on the first working day; ".repeat(4);
    (0..BATCH)
        .map(|i| {
            EventData::new(
                "Written",
                format!(r#"{{"batch":"{id}","i":{i},"of":{BATCH},"note":"{note}"}}"#).into_bytes(),
            )
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn killed_writer_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    // Highest acknowledged version per stream, highest acknowledged position.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut acked_position = 0u64;
    for round in 0..ROUNDS {
        let mut child = ChildProcess::start(WRITER_ENV, dir.path());
        // Kill after a random number of acknowledgements (0..60), then a random pause.
        let random = Uuid::new_v4().as_u128();
        let kill_after = u64::try_from(random % 60).unwrap();
        let pause = Duration::from_micros(u64::try_from((random >> 8) % 3000).unwrap());
        let mut seen = 0;
        while seen < kill_after {
            // A writer that ends early (it failed) is caught by the checks below.
            let Some(line) = child.next_line() else { break };
            if record_ack(&line, &mut acked, &mut acked_position) {
                seen += 1;
            }
        }
        std::thread::sleep(pause);
        child.kill(); // SIGKILL
        // Acknowledgements printed before the kill still count.
        while let Some(line) = child.next_line() {
            record_ack(&line, &mut acked, &mut acked_position);
        }
        drop(child);

        let store = SledEventStore::open(dir.path()).unwrap();
        runtime().block_on(check(&store, &acked, acked_position, round));
    }
    // Appending continues after the last crash.
    let store = SledEventStore::open(dir.path()).unwrap();
    let s = stream(0);
    let done = runtime().block_on(async {
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
        done
    });
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

fn a_store_open_in_another_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildProcess::start(HOLDER_ENV, dir.path());
    assert_eq!(
        child.next_line().as_deref(),
        Some("ready"),
        "the lock holder opens the store"
    );
    let err = SledEventStore::open(dir.path()).unwrap_err();
    child.kill();
    drop(child);
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains(&*dir.path().to_string_lossy()), "{shown}");
    // Once the other process is gone, the store opens.
    SledEventStore::open(dir.path()).unwrap();
}

// ---- the child roles --------------------------------------------------------------

/// Ends this process once the parent closes its standard input (or dies).
/// What the lifecycle writer acknowledged last for one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Acked {
    Truncated,
    Deleted { position: u64 },
    Restored,
}

/// A writer that truncates, deletes and restores streams (while another task appends)
/// is SIGKILLed at random moments: every acknowledged change is there after a reopen,
/// and the store opens (the durable mark never names a record the changes removed).
fn killed_lifecycle_writer_keeps_every_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<String, Acked> = BTreeMap::new();
    for round in 0..8u32 {
        let mut child = ChildProcess::start(LIFECYCLE_ENV, dir.path());
        let random = Uuid::new_v4().as_u128();
        let kill_after = u64::try_from(random % 30).unwrap();
        let pause = Duration::from_micros(u64::try_from((random >> 8) % 3000).unwrap());
        let mut record = |line: &str| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts[..] {
                ["truncated", id] => acked.insert(id.to_owned(), Acked::Truncated),
                ["deleted", id, position] => acked.insert(
                    id.to_owned(),
                    Acked::Deleted {
                        position: position.parse().unwrap(),
                    },
                ),
                ["restored", id] => acked.insert(id.to_owned(), Acked::Restored),
                _ => panic!("unexpected line from the lifecycle writer: {line:?}"),
            };
        };
        for _ in 0..kill_after {
            let Some(line) = child.next_line() else { break };
            record(&line);
        }
        std::thread::sleep(pause);
        child.kill();
        while let Some(line) = child.next_line() {
            record(&line);
        }
        drop(child);
        let store = SledEventStore::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        runtime().block_on(check_lifecycle(&store, &acked, round));
    }
    assert!(!acked.is_empty(), "the child never acknowledged anything");
}

async fn check_lifecycle(store: &SledEventStore, acked: &BTreeMap<String, Acked>, round: u32) {
    use cqrs_core::Inspect;
    for (id, state) in acked {
        let s = StreamId::new("cycle", id.as_str()).unwrap();
        let read: Vec<_> = store.read_stream(&s, 1).try_collect().await.unwrap();
        let versions: Vec<_> = read.iter().map(|e| e.version).collect();
        let tombstone = read
            .first()
            .filter(|e| e.event_type == cqrs_core::STREAM_DELETED);
        let ok = match state {
            // The delete (and the restore) after it may have happened unacknowledged.
            Acked::Truncated => versions == [3, 4] || versions == [5],
            Acked::Deleted { position } => {
                versions == [3, 4]
                    || (versions == [5]
                        && tombstone.is_some_and(|t| t.position.sequence == *position))
            }
            Acked::Restored => versions == [3, 4] && tombstone.is_none(),
        };
        assert!(
            ok,
            "round {round}: stream {id} acknowledged {state:?}, reads {versions:?}"
        );
    }
    let log: Vec<_> = store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap();
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    let counted = store.count_events(Position::START).await.unwrap();
    assert_eq!(counted, log.len() as u64, "round {round}: count_events");
}

/// Truncates, deletes and restores streams in a loop while another task appends,
/// printing each acknowledged change, until killed.
fn lifecycle_writer(dir: &str) {
    use cqrs_core::{SnapshotRecord, SnapshotStore, StreamLifecycle};
    exit_when_stdin_closes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledConfig::new(dir)
            .durability(Durability::Flushed)
            .open()
            .unwrap();
        let noise = store.clone();
        tokio::spawn(async move {
            let s = StreamId::new("noise", Uuid::new_v4().to_string()).unwrap();
            loop {
                let batch = batch_of(Uuid::new_v4());
                noise.append(&s, ExpectedVersion::Any, batch).await.unwrap();
            }
        });
        for n in 0u64.. {
            let id = Uuid::new_v4().to_string();
            let s = StreamId::new("cycle", id.as_str()).unwrap();
            let mut batch = batch_of(Uuid::new_v4());
            batch.push(EventData::new("Written", b"{}".to_vec()));
            store
                .append(&s, ExpectedVersion::NoStream, batch)
                .await
                .unwrap();
            let snapshot = SnapshotRecord {
                version: 3,
                schema_version: 1,
                payload: b"{}".to_vec(),
            };
            store.save_snapshot(&s, snapshot).await.unwrap();
            store.truncate_stream(&s, 3).await.unwrap();
            println!("truncated {id}");
            let archive: Vec<_> = store.read_stored(&s, 1).try_collect().await.unwrap();
            let done = store
                .delete_stream(&s, ExpectedVersion::Exact(4))
                .await
                .unwrap();
            println!("deleted {id} {}", done.position.sequence);
            if n % 2 == 0 {
                store.restore_stream(&s, archive).await.unwrap();
                println!("restored {id}");
            }
        }
    });
}

fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
}

/// Appends in a loop, printing each acknowledged append, until killed.
fn crash_writer(dir: &str) {
    exit_when_stdin_closes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledConfig::new(dir)
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
    });
}

/// Holds the store open until the parent closes standard input (or kills it).
fn lock_holder(dir: &str) {
    let _store = SledEventStore::open(dir).unwrap();
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

// ---- the parent's side of a child ---------------------------------------------------

/// A child process of this binary in one role, killed and reaped when dropped: at the
/// end of a test, or while a failing test unwinds.
struct ChildProcess {
    child: Child,
    /// Held open for the child's life: closing it tells the child to exit.
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ChildProcess {
    fn start(role: &str, dir: &std::path::Path) -> ChildProcess {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(&exe)
            .env(role, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} as {role}: {e}", exe.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Read on a thread of its own, so that the parent can wait with a deadline.
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess {
            child,
            stdin,
            lines,
        }
    }

    /// The child's next line, or `None` once its output has ended; fails the test if
    /// neither comes within [`DEADLINE`].
    fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("the child process wrote nothing for {DEADLINE:?}")
            }
        }
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a small test runner (no libtest: see the module docs) ----------------------------

/// Runs the tests the arguments select, reporting as libtest does; exit code 101 when
/// one failed.
fn run_tests(args: Vec<String>) -> ExitCode {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut list, mut ignored_only) = (false, false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            "--list" => list = true,
            "--ignored" => ignored_only = true, // none of these tests is ignored
            "--skip" => skips.extend(args.next()),
            // Options with a value in the next argument, which is not a filter.
            "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" => {
                args.next();
            }
            _ if arg.starts_with("--skip=") => skips.push(arg["--skip=".len()..].to_owned()),
            _ if arg.starts_with('-') => {} // --nocapture, --test-threads=1, --quiet, ...
            _ => filters.push(arg),
        }
    }
    let matches = |name: &str, pattern: &str| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(name, _)| {
            !ignored_only
                && (filters.is_empty() || filters.iter().any(|f| matches(name, f)))
                && !skips.iter().any(|s| matches(name, s))
        })
        .collect();
    if list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let plural = if selected.len() == 1 { "" } else { "s" };
    println!("\nrunning {} test{plural}", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        let outcome = catch_unwind(AssertUnwindSafe(test));
        if outcome.is_ok() {
            println!("ok");
        } else {
            println!("FAILED");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; \
         finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        TESTS.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}
