//! `archive`, `restore`, `delete` and `truncate`, on the in-memory and sled stores (and
//! over a crypto-shredding store).

use clap::Parser;
use cqrs_cli::{Error, Operations, OpsCommand, ProgressStyle};
use cqrs_core::{
    Aggregate, DomainEvent, EventStore, InMemoryEventStore, InMemoryKeyStore, Personal, Position,
    RecordedEvent, Repository, STREAM_DELETED, Shredded, StreamId,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    value: u64,
    owner: Option<Personal<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Named { owner: Personal<String> },
    Incremented { by: u64 },
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Named", "Incremented"];
    fn event_type(&self) -> &'static str {
        match self {
            CounterEvent::Named { .. } => "Named",
            CounterEvent::Incremented { .. } => "Incremented",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

enum Command {
    Name(String, String),
    Add(u64),
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = Command;
    type Event = CounterEvent;
    type Error = Never;
    type Services = ();
    fn handle(&self, command: &Command, _: &()) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![match command {
            Command::Name(subject, owner) => CounterEvent::Named {
                owner: Personal::new(subject.clone(), owner.clone()),
            },
            Command::Add(by) => CounterEvent::Incremented { by: *by },
        }])
    }
    fn apply(&mut self, event: CounterEvent) {
        match event {
            CounterEvent::Named { owner } => self.owner = Some(owner),
            CounterEvent::Incremented { by } => self.value += by,
        }
    }
}

#[derive(Parser)]
struct Cli {
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: OpsCommand,
}

struct Fixture<S> {
    store: S,
    counters: Repository<Counter, S>,
    ops: Operations<S>,
    dir: tempfile::TempDir,
}

/// Counters `a` (3 events), `b` (5) and `c` (2), each named by a person first.
async fn fixture<S: EventStore + Clone + 'static>(store: S) -> Fixture<S> {
    let counters = Repository::<Counter, _>::new(store.clone(), ())
        .with_background_snapshots(false)
        .with_snapshots(cqrs_core::SnapshotPolicy::EveryEvents(1_000));
    for (id, n) in [("a", 2u64), ("b", 4), ("c", 1)] {
        let owner = format!("Owner-{id}-Lovelace");
        counters
            .execute(id, &Command::Name(format!("subject-{id}"), owner))
            .await
            .unwrap();
        for i in 1..=n {
            counters.execute(id, &Command::Add(i)).await.unwrap();
        }
    }
    let ops = Operations::new(store.clone())
        .with_progress(ProgressStyle::Quiet)
        .aggregate(counters.clone());
    Fixture {
        store,
        counters,
        ops,
        dir: tempfile::tempdir().unwrap(),
    }
}

async fn run<S: EventStore + Clone + 'static>(
    ops: &Operations<S>,
    args: &[&str],
) -> Result<Value, Error> {
    let cli =
        Cli::try_parse_from(["app", "--json"].into_iter().chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    ops.run(&cli.command, cli.json, &mut out).await?;
    Ok(serde_json::from_slice(&out).unwrap())
}

fn stream(id: &str) -> StreamId {
    StreamId::new("counter", id).unwrap()
}

async fn stored<S: EventStore>(store: &S, id: &str) -> Vec<RecordedEvent> {
    store
        .read_stored(&stream(id), 1)
        .try_collect()
        .await
        .unwrap()
}

async fn log<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap()
}

fn is_tombstone_only(records: &[RecordedEvent]) -> bool {
    records.len() == 1 && records[0].event_type == STREAM_DELETED
}

/// Archive two streams, check the file and the tombstones, restore them exactly, and
/// run the restore again (nothing to do).
async fn archive_and_restore_round_trip<S: EventStore + Clone + 'static>(store: S) {
    let f = fixture(store).await;
    let path = f.dir.path().join("old.jsonl");
    let file = path.to_str().unwrap();
    let (a, b, c) = (
        stored(&f.store, "a").await,
        stored(&f.store, "b").await,
        stored(&f.store, "c").await,
    );

    let dry = run(
        &f.ops,
        &[
            "archive",
            "--stream",
            "counter/a",
            "--stream",
            "counter/b",
            "--to",
            file,
            "--dry-run",
        ],
    )
    .await
    .unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["events"], 8);
    assert!(!path.exists(), "a dry run writes no file");
    assert_eq!(stored(&f.store, "a").await, a, "a dry run deletes nothing");

    let report = run(
        &f.ops,
        &[
            "archive",
            "--stream",
            "counter/a",
            "--stream",
            "counter/b",
            "--to",
            file,
        ],
    )
    .await
    .unwrap();
    assert_eq!(report["events"], 8, "{report}");
    assert_eq!(report["deleted"].as_array().unwrap().len(), 2, "{report}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().count(),
        1 + 2 + 8 + 1,
        "header, 2 streams, 8 events, end"
    );
    assert!(text.lines().last().unwrap().contains("sha256"));
    assert!(is_tombstone_only(&stored(&f.store, "a").await));
    assert!(is_tombstone_only(&stored(&f.store, "b").await));
    assert_eq!(stored(&f.store, "c").await, c, "other streams stay");
    let log_after_archive = log(&f.store).await;
    assert!(
        log_after_archive
            .iter()
            .all(|r| r.stream != stream("a") || r.event_type == STREAM_DELETED)
    );

    match run(&f.ops, &["archive", "--stream", "counter/c", "--to", file]).await {
        Err(e @ Error::Usage(_)) => assert!(e.to_string().contains("exists"), "{e}"),
        other => panic!("an archive is never overwritten, got {other:?}"),
    }
    match run(
        &f.ops,
        &[
            "archive",
            "--stream",
            "counter/a",
            "--to",
            &format!("{file}.2"),
        ],
    )
    .await
    {
        Err(e @ Error::Usage(_)) => assert_eq!(e.exit_code(), 2),
        other => panic!("archiving a deleted stream must be refused, got {other:?}"),
    }

    let dry = run(&f.ops, &["restore", "--from", file, "--dry-run"])
        .await
        .unwrap();
    assert_eq!(dry["events"], 8);
    assert!(
        is_tombstone_only(&stored(&f.store, "a").await),
        "a dry run restores nothing"
    );

    let restored = run(&f.ops, &["restore", "--from", file]).await.unwrap();
    assert_eq!(
        restored["restored"].as_array().unwrap().len(),
        2,
        "{restored}"
    );
    assert_eq!(stored(&f.store, "a").await, a, "restored exactly");
    assert_eq!(stored(&f.store, "b").await, b, "restored exactly");
    let loaded = f.counters.load("b").await.unwrap();
    assert_eq!(loaded.state.value, 1 + 2 + 3 + 4);
    assert_eq!(loaded.version, 5);

    let again = run(&f.ops, &["restore", "--from", file]).await.unwrap();
    assert_eq!(
        again["already_restored"].as_array().unwrap().len(),
        2,
        "{again}"
    );
    assert_eq!(stored(&f.store, "a").await, a);
    f.counters
        .execute("a", &Command::Add(10))
        .await
        .expect("a restored stream takes events");
}

/// Bad archives restore nothing: a changed byte, a cut file, a cut line, not an archive.
async fn damaged_archives_restore_nothing<S: EventStore + Clone + 'static>(store: S) {
    let f = fixture(store).await;
    let path = f.dir.path().join("a.jsonl");
    let file = path.to_str().unwrap();
    run(&f.ops, &["archive", "--stream", "counter/a", "--to", file])
        .await
        .unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let bad_cases = [
        ("a changed byte", good.replacen("\"by\":2", "\"by\":7", 1)),
        (
            "a missing end line",
            lines[..lines.len() - 1].join("\n") + "\n",
        ),
        ("a cut line", good[..good.len() - 20].to_owned()),
        (
            "a missing event",
            [&lines[..2], &lines[3..]].concat().join("\n") + "\n",
        ),
        ("no header", lines[1..].join("\n") + "\n"),
        ("not an archive", "hello\n".to_owned()),
        ("an empty file", String::new()),
    ];
    for (what, content) in bad_cases {
        assert_ne!(content, good, "{what}: the case must change the file");
        let damaged = f.dir.path().join("damaged.jsonl");
        std::fs::write(&damaged, content).unwrap();
        match run(&f.ops, &["restore", "--from", damaged.to_str().unwrap()]).await {
            Err(e @ Error::BadArchive { .. }) => assert_eq!(e.exit_code(), 4, "{what}: {e}"),
            other => panic!("{what}: a bad archive must be refused, got {other:?}"),
        }
        assert!(
            is_tombstone_only(&stored(&f.store, "a").await),
            "{what}: nothing was restored"
        );
    }
    run(&f.ops, &["restore", "--from", file])
        .await
        .expect("the good archive restores");
}

/// `delete` and `truncate`, their dry runs and their bad input.
async fn delete_and_truncate<S: EventStore + Clone + 'static>(store: S) {
    let f = fixture(store).await;
    let b = stored(&f.store, "b").await;

    let dry = run(&f.ops, &["delete", "--stream", "counter/a", "--dry-run"])
        .await
        .unwrap();
    assert_eq!(dry["events"], 3);
    match run(
        &f.ops,
        &["delete", "--stream", "counter/a", "--expected-version", "2"],
    )
    .await
    {
        Err(e @ Error::Usage(_)) => assert!(e.to_string().contains("conflict"), "{e}"),
        other => panic!("a delete at the wrong version must be refused, got {other:?}"),
    }
    let deleted = run(
        &f.ops,
        &["delete", "--stream", "counter/a", "--expected-version", "3"],
    )
    .await
    .unwrap();
    assert_eq!(deleted["tombstone_version"], 4);
    for args in [
        &["delete", "--stream", "counter/a"][..],
        &["delete", "--stream", "counter/nobody"],
        &["delete", "--stream", "not-a-stream"],
        &["truncate", "--stream", "counter/nobody", "--before", "2"],
    ] {
        match run(&f.ops, args).await {
            Err(e @ Error::Usage(_)) => assert_eq!(e.exit_code(), 2),
            other => panic!("{args:?} must be refused as bad input, got {other:?}"),
        }
    }

    // No snapshot yet: a truncation is refused, also in a dry run.
    for args in [
        &["truncate", "--stream", "counter/b", "--before", "3"][..],
        &[
            "truncate",
            "--stream",
            "counter/b",
            "--before",
            "3",
            "--dry-run",
        ],
    ] {
        match run(&f.ops, args).await {
            Err(Error::Usage(_)) => {}
            other => panic!("{args:?} without a snapshot must be refused, got {other:?}"),
        }
    }
    assert_eq!(stored(&f.store, "b").await, b);
    let dry = run(
        &f.ops,
        &[
            "truncate",
            "--stream",
            "counter/b",
            "--at-snapshot",
            "--dry-run",
        ],
    )
    .await
    .unwrap();
    assert_eq!(dry["events"], 4, "{dry}");
    assert_eq!(
        f.store.load_snapshot(&stream("b")).await.unwrap(),
        None,
        "a dry run snapshots nothing"
    );
    let cut = run(
        &f.ops,
        &["truncate", "--stream", "counter/b", "--at-snapshot"],
    )
    .await
    .unwrap();
    assert_eq!(cut["events"], 4, "{cut}");
    assert_eq!(
        stored(&f.store, "b").await,
        b[4..].to_vec(),
        "only the snapshot's event stays"
    );
    let loaded = f.counters.load("b").await.unwrap();
    assert_eq!((loaded.state.value, loaded.version), (10, 5));
    let verified = run(&f.ops, &["verify"])
        .await
        .expect("deleted and truncated streams are intact");
    assert_eq!(
        verified["problems"].as_array().map(Vec::len),
        Some(0),
        "{verified}"
    );

    // A truncated stream archives with its snapshot, and restores loadable.
    let path = f.dir.path().join("b.jsonl");
    run(
        &f.ops,
        &[
            "archive",
            "--stream",
            "counter/b",
            "--to",
            path.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(f.store.load_snapshot(&stream("b")).await.unwrap(), None);
    run(&f.ops, &["restore", "--from", path.to_str().unwrap()])
        .await
        .unwrap();
    let loaded = f.counters.load("b").await.unwrap();
    assert_eq!(
        (loaded.state.value, loaded.version, loaded.snapshot_version),
        (10, 5, Some(5))
    );
}

/// `--before` picks streams by the time of their last event, `--type` by aggregate type.
async fn archive_by_date<S: EventStore + Clone + 'static>(store: S) {
    let f = fixture(store).await;
    let file = f.dir.path().join("dated.jsonl");
    let file = file.to_str().unwrap();
    let none = run(
        &f.ops,
        &[
            "archive",
            "--before",
            "2000-01-01",
            "--to",
            file,
            "--dry-run",
        ],
    )
    .await
    .unwrap();
    assert_eq!(none["events"], 0, "{none}");
    let other = run(
        &f.ops,
        &[
            "archive",
            "--before",
            "2999-01-01",
            "--type",
            "other",
            "--to",
            file,
            "--dry-run",
        ],
    )
    .await
    .unwrap();
    assert_eq!(other["events"], 0, "{other}");
    let all = run(
        &f.ops,
        &[
            "archive",
            "--before",
            "2999-01-01",
            "--type",
            "counter",
            "--to",
            file,
        ],
    )
    .await
    .unwrap();
    assert_eq!(all["streams"].as_array().unwrap().len(), 3, "{all}");
    assert_eq!(all["events"], 3 + 5 + 2);
    match run(
        &f.ops,
        &[
            "archive",
            "--before",
            "last week",
            "--to",
            &format!("{file}.x"),
        ],
    )
    .await
    {
        Err(Error::Usage(_)) => {}
        other => panic!("a bad date must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn archive_and_restore_round_trip_in_memory() {
    archive_and_restore_round_trip(InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn damaged_archives_restore_nothing_in_memory() {
    damaged_archives_restore_nothing(InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn delete_and_truncate_in_memory() {
    delete_and_truncate(InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn archive_by_date_in_memory() {
    archive_by_date(InMemoryEventStore::new()).await;
}

/// Over a crypto-shredding store the archive keeps the sealed values: no name in the
/// file; after a restore they read again; a subject forgotten since stays erased.
#[tokio::test]
async fn archives_of_a_shredded_store_hold_no_plaintext() {
    let shredded = || Shredded::new(InMemoryEventStore::new(), InMemoryKeyStore::new());
    archive_and_restore_round_trip(shredded()).await;
    let store = shredded();
    let f = fixture(store.clone()).await;
    let path = f.dir.path().join("sealed.jsonl");
    run(
        &f.ops,
        &[
            "archive",
            "--stream",
            "counter/c",
            "--to",
            path.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("Owner-c-Lovelace"),
        "the archive holds no plaintext"
    );
    store.forget("subject-c").await.unwrap();
    run(&f.ops, &["restore", "--from", path.to_str().unwrap()])
        .await
        .unwrap();
    let loaded = f.counters.load("c").await.unwrap();
    assert_eq!(loaded.state.value, 1);
    assert!(
        matches!(loaded.state.owner, Some(Personal::Erased { .. })),
        "a forgotten subject stays forgotten: {:?}",
        loaded.state.owner
    );
}

/// A sled store in a temporary directory, kept alive with it.
fn sled_store() -> (cqrs_sled::SledEventStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = cqrs_sled::SledEventStore::open(dir.path().join("events")).unwrap();
    (store, dir)
}

#[tokio::test]
async fn archive_and_restore_round_trip_on_sled() {
    let (store, _dir) = sled_store();
    archive_and_restore_round_trip(store).await;
}

#[tokio::test]
async fn damaged_archives_restore_nothing_on_sled() {
    let (store, _dir) = sled_store();
    damaged_archives_restore_nothing(store).await;
}

#[tokio::test]
async fn delete_and_truncate_on_sled() {
    let (store, _dir) = sled_store();
    delete_and_truncate(store).await;
}

#[tokio::test]
async fn archive_by_date_on_sled() {
    let (store, _dir) = sled_store();
    archive_by_date(store).await;
}
