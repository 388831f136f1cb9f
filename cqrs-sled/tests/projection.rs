//! Transactional projections apply every event exactly once, across failures, crashes
//! between batches, restarts and rebuilds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cqrs_core::{
    CheckpointStore, DomainEvent, Envelope, EventData, EventLog, ExpectedVersion, Position,
    ProjectionError, ProjectionRunner, RetryPolicy, RunnerConfig, StreamId,
};
use cqrs_sled::{ApplyError, ReadModelTx, SledEventStore, SledProjection, TransactionalProjection};
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

impl SledProjection for Totals {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        "totals"
    }

    fn trees(&self) -> &[&str] {
        &["sums", "count"]
    }

    fn apply(
        &self,
        tx: &ReadModelTx<'_>,
        batch: &[Envelope<CounterEvent>],
    ) -> Result<(), ApplyError> {
        let (sums, count) = (tx.tree("sums")?, tx.tree("count")?);
        for e in batch {
            let CounterEvent::Incremented { by } = e.event;
            let key = e.stream.id().as_bytes();
            sums.insert(key, &(read_u64(sums.get(key)?) + by).to_be_bytes())?;
            count.insert(b"n", &(read_u64(count.get(b"n")?) + 1).to_be_bytes())?;
        }
        if self
            .fail_after
            .is_some_and(|limit| batch.iter().any(|e| e.position.sequence > limit))
        {
            return Err(ApplyError::new("refusing events past the limit"));
        }
        let failures = self.transient_failures.load(Ordering::SeqCst);
        if failures > 0 && !batch.is_empty() {
            self.transient_failures
                .store(failures - 1, Ordering::SeqCst);
            return Err(ApplyError::new("transient failure after writing"));
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

async fn run(store: &SledEventStore, projection: Totals) -> Result<u64, ProjectionError> {
    let projection = TransactionalProjection::new(store.clone(), projection).unwrap();
    ProjectionRunner::new(store.clone(), projection)
        .with_config(config())
        .catch_up()
        .await
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
    let projection = TransactionalProjection::new(store.clone(), Totals::default()).unwrap();
    let mut runner = ProjectionRunner::new(store.clone(), projection).with_config(config());
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
        let db = sled::open(dir.path()).unwrap();
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
    let projection = TransactionalProjection::new(store.clone(), Totals::default()).unwrap();
    let mut runner = ProjectionRunner::new(store.clone(), projection).with_config(RunnerConfig {
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
