//! The operations subcommand against the in-memory store.

use std::sync::{Arc, Mutex};

use clap::Parser;
use cqrs_cli::{Error, Operations, OpsCommand, ProgressStyle};
use cqrs_core::{
    Aggregate, BoxError, DomainEvent, Envelope, InMemoryEventStore, Inspect, Projection,
    ProjectionRunner, Repository, SnapshotStore, StoreCheckpoint, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Incremented { by: u64 },
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
    fn event_type(&self) -> &'static str {
        "Incremented"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = CounterEvent;
    type Error = Never;
    type Services = ();
    fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented { by: *by }])
    }
    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Incremented { by } = event;
        self.value += by;
    }
}

#[derive(Debug, Clone, Default)]
struct Total(Arc<Mutex<u64>>);

impl Projection for Total {
    type Event = CounterEvent;
    fn name(&self) -> &str {
        "total"
    }
    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<CounterEvent>],
    ) -> Result<(), BoxError> {
        let mut total = self.0.lock().unwrap();
        for e in batch {
            let CounterEvent::Incremented { by } = e.event;
            *total += by;
        }
        Ok(())
    }
    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        *self.0.lock().unwrap() = 0;
        Ok(())
    }
}

#[derive(Parser)]
struct Cli {
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: OpsCommand,
}

struct Fixture {
    store: InMemoryEventStore,
    total: Total,
    ops: Operations<InMemoryEventStore>,
}

async fn fixture() -> Fixture {
    let store = InMemoryEventStore::new();
    let counters =
        Repository::<Counter, _>::new(store.clone(), ()).with_background_snapshots(false);
    for (id, n) in [("a", 3u64), ("b", 5), ("c", 1)] {
        for i in 1..=n {
            counters.execute(id, &i).await.unwrap();
        }
    }
    let total = Total::default();
    let ops = Operations::new(store.clone())
        .with_progress(ProgressStyle::Lines)
        .aggregate(counters)
        .projection({
            let (store, total) = (store.clone(), total.clone());
            move || {
                let checkpoint = StoreCheckpoint::new(store.clone());
                ProjectionRunner::with_strategy(store.clone(), total.clone(), checkpoint)
            }
        });
    Fixture { store, total, ops }
}

async fn run(ops: &Operations<InMemoryEventStore>, args: &[&str]) -> Result<String, Error> {
    let cli = Cli::try_parse_from(std::iter::once("app").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    ops.run(&cli.command, cli.json, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn run_json(ops: &Operations<InMemoryEventStore>, args: &[&str]) -> Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    serde_json::from_str(&run(ops, &with_json).await.unwrap()).unwrap()
}

#[tokio::test]
async fn stats_show_counts_checkpoints_and_lag() {
    let f = fixture().await;
    let stats = run_json(&f.ops, &["stats"]).await;
    assert_eq!(
        (
            stats["streams"].as_u64(),
            stats["events"].as_u64(),
            stats["snapshots"].as_u64()
        ),
        (Some(3), Some(9), Some(0))
    );
    assert_eq!(stats["projections"][0]["name"], "total");
    assert_eq!(stats["projections"][0]["checkpoint"], "0");
    assert_eq!(stats["projections"][0]["lag"], 9);
    let text = run(&f.ops, &["stats"]).await.unwrap();
    assert!(text.contains("events     9"), "{text}");
    assert!(text.contains("lag 9"), "{text}");
}

#[tokio::test]
async fn replay_rebuilds_and_moves_the_checkpoint() {
    let f = fixture().await;
    *f.total.0.lock().unwrap() = 12_345; // a read model gone wrong
    let report = run_json(&f.ops, &["replay", "--projection", "total"]).await;
    assert_eq!(report["replayed"][0]["projection"], "total");
    assert_eq!(report["replayed"][0]["events"], 9);
    assert_eq!(*f.total.0.lock().unwrap(), 6 + 15 + 1);
    let stats = run_json(&f.ops, &["stats"]).await;
    assert_eq!(stats["projections"][0]["lag"], 0);
    assert_eq!(
        run_json(&f.ops, &["replay", "--all"]).await["replayed"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    match run(&f.ops, &["replay", "--projection", "nope"]).await {
        Err(e @ Error::Usage(_)) => {
            assert_eq!(e.exit_code(), 2);
            assert!(
                e.to_string().contains("total"),
                "names the known projections: {e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn snapshot_one_stream_or_all() {
    let f = fixture().await;
    let one = run_json(&f.ops, &["snapshot", "--stream", "counter/b"]).await;
    assert_eq!(one["snapshots_taken"], 1);
    assert_eq!(one["streams"][0]["version"], 5);
    let all = run_json(&f.ops, &["snapshot", "--all"]).await;
    assert_eq!(all["snapshots_taken"], 3);
    assert_eq!(f.store.stats().await.unwrap().snapshots, Some(3));
    let stream = StreamId::new("counter", "a").unwrap();
    assert_eq!(
        f.store
            .load_snapshot(&stream)
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
    assert!(matches!(
        run(&f.ops, &["snapshot", "--stream", "ledger/x"]).await,
        Err(Error::Usage(_))
    ));
    assert!(matches!(
        run(&f.ops, &["snapshot", "--stream", "no-slash"]).await,
        Err(Error::Usage(_))
    ));
    // A stream without events (a typo, most likely) is named in a usage error.
    match run(&f.ops, &["snapshot", "--stream", "counter/nobody"]).await {
        Err(e @ Error::Usage(_)) => {
            assert!(
                e.to_string().contains("counter/nobody has no events"),
                "{e}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("expected a usage error, got {other:?}"),
    }
}

#[tokio::test]
async fn events_page_through_the_log_and_show_streams() {
    let f = fixture().await;
    let first = run_json(&f.ops, &["events", "--limit", "4"]).await;
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["stream"], "counter/a");
    assert_eq!(events[0]["payload"]["Incremented"]["by"], 1);
    assert!(events[0]["recorded_at"].as_str().unwrap().ends_with('Z'));
    let after = first["last_position"].as_str().unwrap().to_owned();
    let rest = run_json(&f.ops, &["events", "--after", &after]).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 5);
    let stream = run_json(&f.ops, &["events", "--stream", "counter/b", "--limit", "2"]).await;
    let versions: Vec<u64> = stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    let text = run(&f.ops, &["events", "--limit", "1"]).await.unwrap();
    assert!(text.contains("counter/a  v1  Incremented"), "{text}");
    assert!(text.contains("--after 1"), "{text}");
    assert!(matches!(
        run(&f.ops, &["events", "--after", "x:y"]).await,
        Err(Error::Usage(_))
    ));
}

#[test]
fn usage_errors_come_from_clap() {
    assert!(
        Cli::try_parse_from(["app", "snapshot"]).is_err(),
        "--all or --stream is required"
    );
    assert!(Cli::try_parse_from(["app", "snapshot", "--all", "--stream", "a/b"]).is_err());
    assert!(Cli::try_parse_from(["app", "replay"]).is_err());
    assert!(Cli::try_parse_from(["app", "events", "--stream", "a/b", "--after", "3"]).is_err());
}

#[tokio::test]
async fn verify_says_intact_and_counts() {
    let f = fixture().await;
    let found = run_json(&f.ops, &["verify"]).await;
    assert_eq!(found["intact"], true, "{found}");
    assert_eq!(
        (
            found["log_records"].as_u64(),
            found["streams"].as_u64(),
            found["stream_records"].as_u64()
        ),
        (Some(9), Some(3), Some(9))
    );
    assert_eq!(found["checkpoints"][0]["ahead_of_log"], false);
    let text = run(&f.ops, &["verify"]).await.unwrap();
    assert!(text.contains("intact"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_damaged_record_and_fails_with_exit_code_4() {
    use cqrs_core::{EventData, EventLog, ExpectedVersion};

    let dir = tempfile::tempdir().unwrap();
    let a = StreamId::new("account", "a").unwrap();
    let b = StreamId::new("account", "b").unwrap();
    {
        let store = cqrs_sled::SledEventStore::open(dir.path()).unwrap();
        for (stream, n) in [(&a, 3), (&b, 1)] {
            for _ in 0..n {
                let event = EventData::new("Deposited", br#"{"amount":100}"#.to_vec());
                store
                    .append(stream, ExpectedVersion::Any, vec![event])
                    .await
                    .unwrap();
            }
        }
    }
    {
        // Flip one byte in the middle of account/a version 2 (log position 2), below the
        // store. The dropped store's lock can outlive it for a moment: retry, with a
        // deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("sled::open after the store was dropped: {e}"),
            }
        };
        let events = db.open_tree("cqrs.events").unwrap();
        let key = [&[b'L'][..], &2u64.to_be_bytes()[..]].concat();
        let mut record = events.get(&key).unwrap().unwrap().to_vec();
        let middle = record.len() / 2;
        record[middle] ^= 0x10;
        events.insert(&key, record).unwrap();
        db.flush().unwrap();
    }
    let store = cqrs_sled::SledEventStore::open(dir.path()).unwrap();
    let ops = Operations::new(store).with_progress(ProgressStyle::Quiet);
    let cli = Cli::try_parse_from(["app", "--json", "verify"]).unwrap();
    let mut out = Vec::new();
    let err = ops.run(&cli.command, cli.json, &mut out).await.unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 4);
    let found: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(found["intact"], false, "{found}");
    assert_eq!(found["log_records"], 4, "{found}");
    let problems = found["problems"].as_array().unwrap();
    // Found once through the log and once through its stream.
    assert_eq!(problems.len(), 2, "{found}");
    for problem in problems {
        assert_eq!(problem["kind"], "unreadable", "{found}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("account/a version 2") && detail.contains("checksum mismatch"),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn an_inline_projection_has_no_lag_in_stats_but_replays() {
    let f = fixture().await;
    let (store, total) = (f.store.clone(), f.total.clone());
    let ops = Operations::new(f.store.clone())
        .with_progress(ProgressStyle::Quiet)
        .inline_projection(move || {
            let checkpoint = StoreCheckpoint::new(store.clone());
            ProjectionRunner::with_strategy(store.clone(), total.clone(), checkpoint)
        });
    let stats = run_json(&ops, &["stats"]).await;
    assert_eq!(stats["projections"][0]["inline"], true, "{stats}");
    assert_eq!(stats["projections"][0]["lag"], 0, "{stats}");
    let replayed = run_json(&ops, &["replay", "--projection", "total"]).await;
    assert_eq!(replayed["replayed"][0]["events"], 9, "{replayed}");
    assert_eq!(
        *f.total.0.lock().unwrap(),
        1 + 2 + 3 + 1 + 2 + 3 + 4 + 5 + 1
    );
    assert_eq!(run_json(&ops, &["verify"]).await["intact"], true);
}
