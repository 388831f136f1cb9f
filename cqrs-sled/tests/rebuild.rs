//! Rebuilds are blue/green: the new read model is built beside the live one, which
//! readers see until the rebuild completes; a rebuild that fails leaves it serving.
//! Every row carries a checksum; a damaged row is an error, never a value.

use std::path::Path;

use cqrs_core::{
    BoxError, CheckpointStore, DomainEvent, Envelope, Error, EventData, EventLog, ExpectedVersion,
    Position, Projection, ProjectionError, ProjectionRunner, StreamId,
};
use cqrs_sled::{ReadModelTx, SledEventStore, TransactionalCheckpoint};
use serde::{Deserialize, Serialize};

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

/// Sums per counter, in the tree `sums`; refuses (fails on) the events of one counter,
/// as a projection with a bug, or a damaged event, would.
#[derive(Debug)]
struct Sums(Option<&'static str>);

fn read_u64(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

impl Projection<ReadModelTx> for Sums {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        "sums"
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<CounterEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            if self.0 == Some(e.stream.id()) {
                return Err(format!("refusing {}", e.stream).into());
            }
            let CounterEvent::Incremented { by } = e.event;
            let key = e.stream.id().as_bytes();
            let sum = read_u64(tx.get("sums", key)?) + by;
            tx.insert("sums", key, &sum.to_be_bytes());
        }
        Ok(())
    }
}

type Runner = ProjectionRunner<SledEventStore, Sums, TransactionalCheckpoint>;

fn runner(store: &SledEventStore) -> Runner {
    refusing(store, None)
}

fn refusing(store: &SledEventStore, counter: Option<&'static str>) -> Runner {
    let checkpoint = TransactionalCheckpoint::new(store.clone());
    ProjectionRunner::with_strategy(store.clone(), Sums(counter), checkpoint)
}

async fn increment(store: &SledEventStore, counter: &str, by: u64) {
    let stream = StreamId::new("counter", counter).unwrap();
    let payload = serde_json::to_vec(&CounterEvent::Incremented { by }).unwrap();
    let data = EventData::new("Incremented", payload);
    store
        .append(&stream, ExpectedVersion::Any, vec![data])
        .await
        .unwrap();
}

fn sum(store: &SledEventStore, counter: &str) -> u64 {
    read_u64(
        store
            .read_model("sums", "sums")
            .unwrap()
            .get(counter.as_bytes())
            .unwrap(),
    )
}

/// The names of the sled trees in `dir` (the store must be closed).
fn tree_names(dir: &Path) -> Vec<String> {
    let db = raw_open(dir);
    let names = db.tree_names();
    let names = names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned());
    names.filter(|n| n.starts_with("cqrs.rm")).collect()
}

#[tokio::test]
async fn a_failed_rebuild_leaves_the_old_read_model_serving() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        for n in 0..20 {
            increment(&store, &format!("c{}", n % 4), 1).await;
        }
        runner(&store).catch_up().await.unwrap();
        assert_eq!(sum(&store, "c0"), 5);
        let live = store.load_checkpoint("sums").await.unwrap();

        // The rebuild stops at the first event of c2 (the 3rd of the log).
        let failed = refusing(&store, Some("c2")).rebuild(|_| {}).await;
        assert!(
            matches!(failed, Err(ProjectionError::Stopped { .. })),
            "{failed:?}"
        );
        // The old model still answers, at its checkpoint.
        assert_eq!(sum(&store, "c0"), 5);
        assert_eq!(sum(&store, "c3"), 5);
        assert_eq!(store.read_model("sums", "sums").unwrap().len(), 4);
        assert_eq!(store.load_checkpoint("sums").await.unwrap(), live);
    }
    // After a restart too: the unfinished generation is beside it, not in its place.
    let store = SledEventStore::open(dir.path()).unwrap();
    assert_eq!(sum(&store, "c2"), 5);
    increment(&store, "c2", 1).await;
    assert_eq!(runner(&store).catch_up().await.unwrap(), 1);
    assert_eq!(sum(&store, "c2"), 6);
}

#[tokio::test]
async fn a_rebuild_switches_to_the_new_generation_and_drops_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        for n in 0..10 {
            increment(&store, &format!("c{}", n % 2), n).await;
        }
        runner(&store).catch_up().await.unwrap();
        let (before, live) = (
            sum(&store, "c1"),
            store.load_checkpoint("sums").await.unwrap(),
        );
        assert_eq!(before, 1 + 3 + 5 + 7 + 9);

        // Twice: the second discards nothing live, and each drops the one before.
        for _ in 0..2 {
            assert_eq!(runner(&store).rebuild(|_| {}).await.unwrap(), 10);
            assert_eq!(sum(&store, "c1"), before);
            assert_eq!(store.load_checkpoint("sums").await.unwrap(), live);
        }
        // Live runs go on in the new generation.
        increment(&store, "c1", 100).await;
        assert_eq!(runner(&store).catch_up().await.unwrap(), 1);
        assert_eq!(sum(&store, "c1"), before + 100);
        store.flush().unwrap();
    }
    assert_eq!(tree_names(dir.path()), ["cqrs.rmg.sums\u{0}3\u{0}sums"]);
}

#[tokio::test]
async fn a_store_of_the_old_layout_is_read_then_rebuilt_into_checksummed_rows() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What a version before generations wrote: trees `cqrs.rm.<projection>\0<tree>`
        // with bare values, and the checkpoint.
        let store = SledEventStore::open(dir.path()).unwrap();
        increment(&store, "c0", 7).await;
        increment(&store, "c1", 1).await;
        store
            .save_checkpoint("sums", Position::new(0, 1))
            .await
            .unwrap();
        store.flush().unwrap();
    }
    {
        let db = raw_open(dir.path());
        let tree = db.open_tree("cqrs.rm.sums\0sums").unwrap();
        tree.insert("c0", &7u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        assert_eq!(sum(&store, "c0"), 7, "the old layout is read as it is");
        assert_eq!(runner(&store).catch_up().await.unwrap(), 1);
        assert_eq!((sum(&store, "c0"), sum(&store, "c1")), (7, 1));
        runner(&store).rebuild(|_| {}).await.unwrap();
        assert_eq!((sum(&store, "c0"), sum(&store, "c1")), (7, 1));
        store.flush().unwrap();
    }
    assert_eq!(tree_names(dir.path()), ["cqrs.rmg.sums\u{0}1\u{0}sums"]);
}

#[tokio::test]
async fn a_damaged_row_is_an_error_naming_it_never_a_value() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        increment(&store, "c0", 7).await;
        increment(&store, "c1", 9).await;
        runner(&store).catch_up().await.unwrap();
        store.flush().unwrap();
    }
    {
        // One bit of c0's row flips (as a damaged page would).
        let db = raw_open(dir.path());
        let tree = db.open_tree("cqrs.rmg.sums\u{0}1\u{0}sums").unwrap();
        let mut row = tree.get("c0").unwrap().unwrap().to_vec();
        row[7] ^= 0x01;
        tree.insert("c0", row).unwrap();
        db.flush().unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let model = store.read_model("sums", "sums").unwrap();
    let damaged = model.get(b"c0").unwrap_err();
    assert!(matches!(damaged, Error::Corrupt { .. }), "{damaged}");
    assert!(damaged.to_string().contains("sums/sums"), "{damaged}");
    assert!(damaged.to_string().contains("c0"), "{damaged}");
    assert_eq!(read_u64(model.get(b"c1").unwrap()), 9);
    let scanned: Vec<_> = model.scan_prefix(b"").collect();
    assert!(
        scanned.iter().any(Result::is_err),
        "a scan meets the damaged row"
    );
    // The projection reading it fails too, and a rebuild repairs it.
    increment(&store, "c0", 1).await;
    assert!(runner(&store).catch_up().await.is_err());
    runner(&store).rebuild(|_| {}).await.unwrap();
    assert_eq!(sum(&store, "c0"), 8);
}

#[tokio::test]
async fn a_tree_name_with_nul_is_refused() {
    let store = SledEventStore::temporary().unwrap();
    let refused = store.read_model("sums", "a\0b").unwrap_err();
    assert!(matches!(refused, Error::InvalidInput { .. }), "{refused}");
}

#[tokio::test]
async fn check_records_finds_the_damaged_row() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        for n in 0..6 {
            increment(&store, &format!("c{n}"), 1).await;
        }
        runner(&store).catch_up().await.unwrap();
        let check = store.check_records().unwrap();
        assert_eq!(
            (check.rows, check.unchecked_rows, check.damaged.len()),
            (6, 0, 0)
        );
        store.flush().unwrap();
    }
    {
        let db = raw_open(dir.path());
        let tree = db.open_tree("cqrs.rmg.sums\u{0}1\u{0}sums").unwrap();
        let mut row = tree.get("c4").unwrap().unwrap().to_vec();
        row[0] ^= 0x80;
        tree.insert("c4", row).unwrap();
        db.flush().unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let check = store.check_records().unwrap();
    assert_eq!((check.rows, check.damaged.len()), (5, 1), "{check:?}");
    assert!(check.damaged[0].to_string().contains("c4"), "{check:?}");
}

#[tokio::test]
async fn check_records_finds_a_damaged_checkpoint_and_generation_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        increment(&store, "c0", 1).await;
        runner(&store).catch_up().await.unwrap();
        let check = store.check_records().unwrap();
        assert_eq!(
            (check.rows, check.checkpoints, check.damaged.len()),
            (1, 2, 0)
        );
        store.flush().unwrap();
    }
    {
        let db = raw_open(dir.path());
        let checkpoints = db.open_tree("cqrs.checkpoints").unwrap();
        for key in [&b"sums"[..], b"\0gen\0sums"] {
            let mut value = checkpoints.get(key).unwrap().unwrap().to_vec();
            value[2] ^= 0x01;
            checkpoints.insert(key, value).unwrap();
        }
        db.flush().unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let check = store.check_records().unwrap();
    let found: Vec<String> = check.damaged.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("generation") && found[1].contains("checkpoint"),
        "{found:?}"
    );
    // A reader refuses the damaged generation rather than guess one; a rebuild repairs
    // it.
    assert!(store.read_model("sums", "sums").is_err());
    runner(&store).rebuild(|_| {}).await.unwrap();
    assert_eq!(sum(&store, "c0"), 1);
    assert!(store.check_records().unwrap().damaged.is_empty());
}

/// Opens the sled database in `dir` directly, once the dropped store has let go of it:
/// its file lock can outlive the drop for a moment (sled's background threads end on
/// their own), so try again within a deadline.
fn raw_open(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("sled::open after the store was dropped: {e}"),
        }
    }
}
