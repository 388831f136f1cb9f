//! Transactional projections apply every event exactly once, across failures, crashes
//! between batches, restarts and rebuilds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cqrs_core::{
    BoxError, CheckpointStore, DomainEvent, Envelope, EventData, EventLog, ExpectedVersion,
    Position, Projection, ProjectionError, ProjectionRunner, RetryPolicy, RunnerConfig, StreamId,
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

/// Sums per counter, and the number of events applied, in two trees.
#[derive(Debug, Default)]
struct Totals {
    /// Fail (permanently) on any batch holding an event after this position.
    fail_after: Option<u64>,
    /// Fail this many batches after writing, to show that the write is rolled back.
    transient_failures: AtomicU32,
}

fn read_u64(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

impl Projection<ReadModelTx> for Totals {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        "totals"
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<CounterEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let CounterEvent::Incremented { by } = e.event;
            let key = e.stream.id().as_bytes();
            let sum = read_u64(tx.get("sums", key)?) + by;
            tx.insert("sums", key, &sum.to_be_bytes());
            let count = read_u64(tx.get("count", b"n")?) + 1;
            tx.insert("count", b"n", &count.to_be_bytes());
        }
        if self
            .fail_after
            .is_some_and(|limit| batch.iter().any(|e| e.position.sequence > limit))
        {
            return Err("refusing events past the limit".into());
        }
        let failures = self.transient_failures.load(Ordering::SeqCst);
        if failures > 0 && !batch.is_empty() {
            self.transient_failures
                .store(failures - 1, Ordering::SeqCst);
            return Err("transient failure after writing".into());
        }
        Ok(())
    }
}

fn config() -> RunnerConfig {
    RunnerConfig {
        batch_size: 7,
        poll_interval: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
    }
}

async fn append(store: &SledEventStore, events: u64) {
    for n in 0..events {
        let stream = StreamId::new("counter", format!("c{}", n % 5)).unwrap();
        let payload = serde_json::to_vec(&CounterEvent::Incremented { by: 1 }).unwrap();
        let data = EventData::new("Incremented", payload);
        store
            .append(&stream, ExpectedVersion::Any, vec![data])
            .await
            .unwrap();
    }
    // An event the projection does not want moves the checkpoint only.
    let other = StreamId::new("other", "x").unwrap();
    store
        .append(
            &other,
            ExpectedVersion::Any,
            vec![EventData::new("Other", b"{}".to_vec())],
        )
        .await
        .unwrap();
}

fn totals(store: &SledEventStore) -> (Vec<u64>, u64) {
    let sums = store.read_model("totals", "sums").unwrap();
    let per_counter = (0..5)
        .map(|c| read_u64(sums.get(format!("c{c}").as_bytes()).unwrap()))
        .collect();
    let count = read_u64(
        store
            .read_model("totals", "count")
            .unwrap()
            .get(b"n")
            .unwrap(),
    );
    (per_counter, count)
}

fn runner(
    store: &SledEventStore,
    projection: Totals,
) -> ProjectionRunner<SledEventStore, Totals, TransactionalCheckpoint> {
    let checkpoint = TransactionalCheckpoint::new(store.clone());
    ProjectionRunner::with_strategy(store.clone(), projection, checkpoint).with_config(config())
}

async fn run(store: &SledEventStore, projection: Totals) -> Result<u64, ProjectionError> {
    runner(store, projection).catch_up().await
}

#[tokio::test]
async fn every_event_is_applied_exactly_once_across_failures_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        append(&store, 50).await; // positions 1..=51
        // Failures after the writes roll them back; the runner retries the batch.
        let flaky = Totals {
            transient_failures: AtomicU32::new(2),
            ..Totals::default()
        };
        run(&store, flaky).await.unwrap();
        assert_eq!(totals(&store), (vec![10; 5], 50));
        assert_eq!(
            store.load_checkpoint("totals").await.unwrap(),
            Some(Position::new(0, 51))
        );

        append(&store, 50).await; // positions 52..=102
        // The projection dies part-way (as if the process crashed between batches).
        let dying = Totals {
            fail_after: Some(80),
            ..Totals::default()
        };
        match run(&store, dying).await {
            Err(ProjectionError::Stopped { position, .. }) => {
                assert_eq!(position, Position::new(0, 81))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.load_checkpoint("totals").await.unwrap(),
            Some(Position::new(0, 80))
        );
        assert_eq!(totals(&store).1, 79); // 80 positions, one of them not wanted
    }
    // The process restarts: the store is reopened and the projection resumes.
    let store = SledEventStore::open(dir.path()).unwrap();
    run(&store, Totals::default()).await.unwrap();
    assert_eq!(totals(&store), (vec![20; 5], 100));
    // Running again applies nothing twice.
    assert_eq!(run(&store, Totals::default()).await.unwrap(), 0);
    assert_eq!(totals(&store), (vec![20; 5], 100));
}

#[tokio::test]
async fn a_rebuild_resets_and_replays_to_the_same_read_model() {
    let store = SledEventStore::temporary().unwrap();
    append(&store, 30).await;
    run(&store, Totals::default()).await.unwrap();
    let mut runner = runner(&store, Totals::default());
    let mut reports = 0;
    assert_eq!(runner.rebuild(|_| reports += 1).await.unwrap(), 31);
    assert!(reports > 0);
    assert_eq!(totals(&store), (vec![6; 5], 30));
}

#[tokio::test]
async fn an_interrupted_reset_is_finished_before_resuming() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        append(&store, 20).await;
        run(&store, Totals::default()).await.unwrap();
    }
    {
        // A crash in the middle of a reset: marker written, one tree already cleared.
        let db = raw_open(dir.path());
        db.open_tree("cqrs.checkpoints")
            .unwrap()
            .insert(b"\0reset\0totals", &[1u8][..])
            .unwrap();
        db.open_tree("cqrs.rm.totals\0count")
            .unwrap()
            .clear()
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    run(&store, Totals::default()).await.unwrap();
    assert_eq!(totals(&store), (vec![4; 5], 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runner_is_woken_by_appends() {
    let store = SledEventStore::temporary().unwrap();
    let mut runner = runner(&store, Totals::default()).with_config(RunnerConfig {
        poll_interval: Duration::from_secs(3600),
        ..config()
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run_until(async { stop_rx.await.unwrap_or(()) })
            .await
    });
    append(&store, 10).await;
    // Only a notification can wake the runner (its poll interval is an hour). The
    // deadlines guard against a hang; they are not timings.
    let deadline = Duration::from_secs(60);
    let woken = tokio::time::timeout(deadline, async {
        while totals(&store).1 < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    woken
        .await
        .expect("the runner is woken by the appends and applies them within 60 s");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(deadline, task)
        .await
        .expect("the runner stops within 60 s of being told")
        .unwrap()
        .unwrap();
    assert_eq!(totals(&store), (vec![2; 5], 10));
}

#[tokio::test]
async fn a_stale_runner_cannot_apply_a_batch_twice() {
    use cqrs_core::{CheckpointStrategy, Codec, JsonCodec};
    use futures::TryStreamExt;

    let store = SledEventStore::temporary().unwrap();
    append(&store, 10).await;
    let codec = JsonCodec::new();
    let log: Vec<Envelope<CounterEvent>> = store
        .read_all(Position::START, None)
        .try_filter(|r| std::future::ready(r.event_type == "Incremented"))
        .map_ok(|r| codec.decode_envelope(r).unwrap())
        .try_collect()
        .await
        .unwrap();
    // Two runners' strategies that both read the checkpoint at the start.
    let mut projection = Totals::default();
    let mut first = TransactionalCheckpoint::new(store.clone());
    let mut stale = TransactionalCheckpoint::new(store.clone());
    assert_eq!(first.start(&mut projection).await.unwrap(), Position::START);
    assert_eq!(stale.start(&mut projection).await.unwrap(), Position::START);
    first
        .apply(&mut projection, &log, log[9].position)
        .await
        .unwrap();
    // The stale runner's half-batch is refused, typed, and not written.
    let err = stale
        .apply(&mut projection, &log[..5], log[4].position)
        .await
        .unwrap_err();
    match err.downcast_ref::<cqrs_sled::CheckpointMoved>() {
        Some(moved) => {
            assert_eq!(moved.expected, Position::START);
            assert_eq!(moved.found, log[9].position);
        }
        None => panic!("expected CheckpointMoved, got {err}"),
    }
    // The very batch the other runner applied is recognised as done.
    stale
        .apply(&mut projection, &log, log[9].position)
        .await
        .unwrap();
    assert_eq!(totals(&store), (vec![2; 5], 10));
    assert_eq!(
        store.load_checkpoint("totals").await.unwrap(),
        Some(log[9].position)
    );
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
