//! The projection runner: catch-up, live, rebuild, error policy, groups.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Account, AccountCommand, AccountEvent};
use cqrs_core::{
    BoxError, CheckpointStore, Envelope, Error, EventData, EventLog, ExpectedVersion,
    InMemoryEventStore, Inspect, Position, Projection, ProjectionError, ProjectionGroup,
    ProjectionRunner, Repository, RetryPolicy, RunnerConfig, SnapshotStore, StoreCheckpoint,
    StreamId,
};
use futures::StreamExt;

type Balances = Arc<Mutex<HashMap<String, i64>>>;

/// Balances per account. Fails (atomically: nothing of the batch applied) on a deposit
/// of `poison`, and counts how many times it was reset.
#[derive(Clone, Default)]
struct BalancesProjection {
    name: &'static str,
    balances: Balances,
    poison: Option<i64>,
    panic_on_poison: bool,
    resets: Arc<Mutex<u32>>,
}

impl Projection for BalancesProjection {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        self.name
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        if batch.iter().any(|e| {
            Some(&e.event)
                == self
                    .poison
                    .map(|amount| AccountEvent::Deposited { amount })
                    .as_ref()
        }) {
            if self.panic_on_poison {
                panic!("poisoned deposit");
            }
            return Err("poisoned deposit".into());
        }
        let mut balances = self.balances.lock().unwrap();
        for e in batch {
            let balance = balances.entry(e.stream.id().to_owned()).or_default();
            match e.event {
                AccountEvent::Opened { .. } => {}
                AccountEvent::Deposited { amount } => *balance += amount,
                AccountEvent::Withdrawn { amount } => *balance -= amount,
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        self.balances.lock().unwrap().clear();
        *self.resets.lock().unwrap() += 1;
        Ok(())
    }
}

fn projection(name: &'static str) -> BalancesProjection {
    BalancesProjection {
        name,
        ..Default::default()
    }
}

/// A runner keeping its checkpoint in the store: to the runner, the shared balances are
/// an external sink (at-least-once).
fn durable(
    store: &InMemoryEventStore,
    p: BalancesProjection,
) -> ProjectionRunner<InMemoryEventStore, BalancesProjection, StoreCheckpoint<InMemoryEventStore>> {
    ProjectionRunner::with_strategy(store.clone(), p, StoreCheckpoint::new(store.clone()))
}

fn fast_config(batch_size: usize) -> RunnerConfig {
    RunnerConfig {
        batch_size,
        poll_interval: Duration::from_millis(20),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
    }
}

async fn seed(store: &InMemoryEventStore, accounts: usize, deposits: i64) {
    let repo = Repository::<Account, _>::new(store.clone(), ());
    for a in 0..accounts {
        let id = format!("acc-{a}");
        repo.execute(&id, &AccountCommand::Open { owner: id.clone() })
            .await
            .unwrap();
        for d in 1..=deposits {
            repo.execute(&id, &AccountCommand::Deposit(d))
                .await
                .unwrap();
        }
    }
}

/// How long a test waits for something to happen: a guard against a hang, never a
/// timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `check` holds, failing the test after [`DEADLINE`].
async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, failing the test if it does not finish within [`DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
}

/// A store around the in-memory one whose watcher never wakes (it keeps the trait's
/// default `watch`), and whose `count_events` can wait for a gate or fail.
#[derive(Clone)]
struct Wrapped {
    inner: InMemoryEventStore,
    /// `count_events` waits for it; `read_all` opens it with its first record.
    count_gate: Option<Arc<tokio::sync::Notify>>,
    /// `count_events` fails.
    count_fails: bool,
    /// What `filters_types` says (its `read_all_of_types` is the trait's default).
    filters: bool,
}

impl Wrapped {
    fn new(inner: &InMemoryEventStore) -> Self {
        Wrapped {
            inner: inner.clone(),
            count_gate: None,
            count_fails: false,
            filters: false,
        }
    }
}

impl EventLog for Wrapped {
    fn append<'a>(
        &'a self,
        s: &'a StreamId,
        e: ExpectedVersion,
        v: Vec<EventData>,
    ) -> impl Future<Output = cqrs_core::Result<cqrs_core::AppendResult>> + Send + 'a {
        self.inner.append(s, e, v)
    }
    fn read_stream<'a>(
        &'a self,
        s: &'a StreamId,
        f: u64,
    ) -> impl futures::Stream<Item = cqrs_core::Result<cqrs_core::RecordedEvent>> + Send + 'a {
        self.inner.read_stream(s, f)
    }
    fn read_all(
        &self,
        a: Position,
        l: Option<u64>,
    ) -> impl futures::Stream<Item = cqrs_core::Result<cqrs_core::RecordedEvent>> + Send + '_ {
        let gate = self.count_gate.clone();
        self.inner.read_all(a, l).inspect(move |_| {
            if let Some(gate) = &gate {
                gate.notify_one();
            }
        })
    }
    fn filters_types(&self) -> bool {
        self.filters
    }
}
impl SnapshotStore for Wrapped {
    fn load_snapshot<'a>(
        &'a self,
        s: &'a StreamId,
    ) -> impl Future<Output = cqrs_core::Result<Option<cqrs_core::SnapshotRecord>>> + Send + 'a
    {
        self.inner.load_snapshot(s)
    }
    fn save_snapshot<'a>(
        &'a self,
        s: &'a StreamId,
        r: cqrs_core::SnapshotRecord,
    ) -> impl Future<Output = cqrs_core::Result<()>> + Send + 'a {
        self.inner.save_snapshot(s, r)
    }
}
impl CheckpointStore for Wrapped {
    fn load_checkpoint<'a>(
        &'a self,
        n: &'a str,
    ) -> impl Future<Output = cqrs_core::Result<Option<Position>>> + Send + 'a {
        self.inner.load_checkpoint(n)
    }
    fn save_checkpoint<'a>(
        &'a self,
        n: &'a str,
        p: Position,
    ) -> impl Future<Output = cqrs_core::Result<()>> + Send + 'a {
        self.inner.save_checkpoint(n, p)
    }
}
/// Deleting, truncating and restoring: the provided bodies (unsupported).
impl cqrs_core::StreamLifecycle for Wrapped {}

impl Inspect for Wrapped {
    fn find_event<'a>(
        &'a self,
        s: &'a StreamId,
        id: uuid::Uuid,
    ) -> impl Future<Output = cqrs_core::Result<Option<cqrs_core::RecordedEvent>>> + Send + 'a {
        self.inner.find_event(s, id)
    }
    async fn count_events(&self, a: Position) -> cqrs_core::Result<u64> {
        if let Some(gate) = &self.count_gate {
            gate.notified().await;
        }
        if self.count_fails {
            return Err(Error::store(std::io::Error::other("count failed")));
        }
        self.inner.count_events(a).await
    }
}

#[tokio::test]
async fn catch_up_applies_everything_once_and_checkpoints() {
    let store = InMemoryEventStore::new();
    seed(&store, 5, 10).await; // 55 events
    let p = projection("balances");
    let mut runner = durable(&store, p.clone()).with_config(fast_config(7));
    assert_eq!(runner.catch_up().await.unwrap(), 55);
    assert_eq!(p.balances.lock().unwrap()["acc-3"], 55);
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(Position::new(0, 55))
    );
    // Nothing new: nothing read, nothing applied twice.
    assert_eq!(runner.catch_up().await.unwrap(), 0);
    assert_eq!(p.balances.lock().unwrap()["acc-3"], 55);
    // A new runner resumes from the checkpoint.
    let repo = Repository::<Account, _>::new(store.clone(), ());
    repo.execute(
        "acc-new",
        &AccountCommand::Open {
            owner: "new".into(),
        },
    )
    .await
    .unwrap();
    repo.execute("acc-0", &AccountCommand::Deposit(100))
        .await
        .unwrap();
    let mut again = durable(&store, p.clone());
    assert_eq!(again.catch_up().await.unwrap(), 2, "open + deposit");
    assert_eq!(p.balances.lock().unwrap()["acc-0"], 155);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runner_follows_new_events_and_stops_on_shutdown() {
    let store = InMemoryEventStore::new();
    seed(&store, 2, 3).await;
    let p = projection("live");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner = durable(&store, p.clone()).with_config(RunnerConfig {
        // Notifications must do the waking: polling alone would take a minute.
        poll_interval: Duration::from_secs(60),
        ..fast_config(100)
    });
    let task = tokio::spawn(async move {
        runner
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    eventually(|| p.balances.lock().unwrap().get("acc-1") == Some(&6)).await;
    let repo = Repository::<Account, _>::new(store.clone(), ());
    for _ in 0..10 {
        repo.execute("acc-1", &AccountCommand::Deposit(1))
            .await
            .unwrap();
    }
    eventually(|| p.balances.lock().unwrap().get("acc-1") == Some(&16)).await;
    stop.send(()).unwrap();
    within("the runner stops when told", task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.load_checkpoint("live").await.unwrap(),
        Some(Position::new(0, 18))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runner_polls_when_the_store_cannot_notify() {
    let store = InMemoryEventStore::new();
    let silent = Wrapped::new(&store);
    assert!(!silent.watch().can_wake());
    let p = projection("polled");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner = ProjectionRunner::new(silent, p.clone()).with_config(fast_config(100));
    let task = tokio::spawn(async move {
        runner
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    seed(&store, 1, 4).await;
    eventually(|| p.balances.lock().unwrap().get("acc-0") == Some(&10)).await;
    stop.send(()).unwrap();
    within("the runner stops when told", task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn rebuild_resets_and_replays_with_progress() {
    let store = InMemoryEventStore::new();
    seed(&store, 4, 5).await; // 24 events
    let p = projection("rebuilt");
    let mut runner = durable(&store, p.clone()).with_config(fast_config(5));
    runner.catch_up().await.unwrap();
    // Corrupt the read model by hand; a rebuild recomputes it from the log.
    p.balances.lock().unwrap().insert("acc-2".into(), -999);
    let mut reports = Vec::new();
    let read = runner
        .rebuild(|progress| reports.push(progress))
        .await
        .unwrap();
    assert_eq!(read, 24);
    assert_eq!(*p.resets.lock().unwrap(), 1);
    assert_eq!(p.balances.lock().unwrap()["acc-2"], 15);
    assert_eq!(reports.len(), 5, "one report per batch of 5");
    assert!(reports.windows(2).all(|w| w[0].done < w[1].done));
    let last = reports.last().unwrap();
    assert_eq!((last.done, last.total), (24, 24));
    assert!(last.rate() >= 0.0);
    assert_eq!(last.position, Position::new(0, 24));
    assert_eq!(
        store.load_checkpoint("rebuilt").await.unwrap(),
        Some(Position::new(0, 24))
    );
}

#[tokio::test]
async fn the_rebuild_counts_the_log_beside_its_reads() {
    let store = InMemoryEventStore::new();
    seed(&store, 4, 5).await; // 24 events
    // The count waits until the log's first record was read: a count awaited before the
    // first read would never end.
    let gated = Wrapped {
        count_gate: Some(Arc::new(tokio::sync::Notify::new())),
        ..Wrapped::new(&store)
    };
    let p = projection("counted beside");
    let mut runner = ProjectionRunner::new(gated, p.clone()).with_config(fast_config(5));
    let mut reports = Vec::new();
    let read = within(
        "a rebuild whose count waits for its reads",
        runner.rebuild(|progress| reports.push(progress)),
    )
    .await
    .unwrap();
    assert_eq!(read, 24);
    assert_eq!(p.balances.lock().unwrap()["acc-2"], 15);
    assert!(!reports.is_empty());
    assert!(reports.iter().all(|r| r.total == 24 && r.done <= 24));
    let last = reports.last().unwrap();
    assert_eq!((last.done, last.total), (24, 24));
}

#[tokio::test]
async fn a_rebuild_whose_count_fails_stops_with_the_store_error() {
    let store = InMemoryEventStore::new();
    seed(&store, 2, 5).await;
    let failing = Wrapped {
        count_fails: true,
        ..Wrapped::new(&store)
    };
    let mut runner =
        ProjectionRunner::new(failing, projection("uncounted")).with_config(fast_config(5));
    let mut reports = 0;
    let error = within(
        "a rebuild whose count fails",
        runner.rebuild(|_| reports += 1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ProjectionError::Store { .. }),
        "got {error:?}"
    );
    assert_eq!(reports, 0, "no progress without a total");
}

#[tokio::test]
async fn a_failing_event_stops_the_runner_and_is_named() {
    let store = InMemoryEventStore::new();
    seed(&store, 1, 3).await; // open, 1, 2, 3
    let repo = Repository::<Account, _>::new(store.clone(), ());
    let poisoned = repo
        .execute("acc-0", &AccountCommand::Deposit(13))
        .await
        .unwrap();
    repo.execute("acc-0", &AccountCommand::Deposit(4))
        .await
        .unwrap();
    let mut p = projection("poisoned");
    p.poison = Some(13);
    let mut runner = durable(&store, p.clone()).with_config(fast_config(100));
    match runner.catch_up().await {
        Err(ProjectionError::Stopped {
            projection,
            stream,
            version,
            position,
            attempts,
            event_id,
            source,
        }) => {
            assert_eq!(projection, "poisoned");
            assert_eq!(stream.to_string(), "account/acc-0");
            assert_eq!(version, poisoned.version);
            assert_eq!(Some(position), poisoned.position);
            assert_eq!(attempts, 3);
            assert_eq!(source.to_string(), "poisoned deposit");
            let recorded = store.find_event(&stream, event_id).await.unwrap().unwrap();
            assert_eq!(recorded.version, version);
        }
        other => panic!("expected the runner to stop at the poisoned event, got {other:?}"),
    }
    // Everything before the poisoned event is applied and checkpointed; nothing after.
    assert_eq!(p.balances.lock().unwrap()["acc-0"], 6);
    assert_eq!(
        store.load_checkpoint("poisoned").await.unwrap(),
        Some(Position::new(0, 4))
    );
}

#[tokio::test]
async fn an_undecodable_event_stops_the_runner_at_once() {
    let store = InMemoryEventStore::new();
    seed(&store, 1, 1).await;
    let stream = StreamId::new("account", "acc-0").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![EventData::new("MoneyDeposited", b"not json".to_vec())],
        )
        .await
        .unwrap();
    let p = projection("strict");
    let mut runner = durable(&store, p.clone()).with_config(fast_config(100));
    match runner.catch_up().await {
        Err(ProjectionError::Stopped {
            version,
            attempts,
            source,
            ..
        }) => {
            assert_eq!(version, 3);
            assert_eq!(attempts, 1);
            assert!(matches!(
                source.downcast_ref::<Error>(),
                Some(Error::Decode { .. })
            ));
        }
        other => panic!("expected a stop, got {other:?}"),
    }
    assert_eq!(
        store.load_checkpoint("strict").await.unwrap(),
        None,
        "the batch was not applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_runs_projections_and_stops_on_the_first_failure() {
    let store = InMemoryEventStore::new();
    seed(&store, 3, 3).await;
    let a = projection("a");
    let b = projection("b");
    let group = ProjectionGroup::new()
        .with(ProjectionRunner::new(store.clone(), a.clone()).with_config(fast_config(4)))
        .with(ProjectionRunner::new(store.clone(), b.clone()).with_config(fast_config(50)));
    assert_eq!(group.names().collect::<Vec<_>>(), ["a", "b"]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(group.run_until(async {
        let _ = stopped.await;
    }));
    eventually(|| {
        a.balances.lock().unwrap().get("acc-2") == Some(&6)
            && b.balances.lock().unwrap().get("acc-2") == Some(&6)
    })
    .await;
    stop.send(()).unwrap();
    within("the group stops when told", task)
        .await
        .unwrap()
        .unwrap();

    let mut failing = projection("failing");
    failing.poison = Some(2);
    let mut panicking = projection("panicking");
    panicking.poison = Some(3);
    panicking.panic_on_poison = true;
    let group = ProjectionGroup::new()
        .with(ProjectionRunner::new(store.clone(), failing).with_config(fast_config(100)))
        .with(ProjectionRunner::new(store.clone(), panicking).with_config(fast_config(100)));
    let error = within(
        "the group stops at the first failing projection",
        group.run_until(std::future::pending()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ProjectionError::Stopped { projection, .. } if projection == "failing")
            || matches!(&error, ProjectionError::Panicked { projection, .. } if projection == "panicking"),
        "{error:?}"
    );
}

#[tokio::test]
async fn shutdown_is_honoured_between_batches_of_a_long_catch_up() {
    let store = InMemoryEventStore::new();
    seed(&store, 2, 9).await; // 20 events
    let p = projection("interrupted");
    let mut runner = durable(&store, p.clone()).with_config(fast_config(3));
    // Shutdown is already requested: the runner stops after its first batch.
    runner.run_until(async {}).await.unwrap();
    assert_eq!(
        store.load_checkpoint("interrupted").await.unwrap(),
        Some(Position::new(0, 3))
    );
    // The next catch-up resumes from there.
    assert_eq!(runner.catch_up().await.unwrap(), 17);
}

/// Records, at each batch, the checkpoint the store holds for it.
#[derive(Clone)]
struct CheckpointWatcher {
    store: InMemoryEventStore,
    seen: Arc<Mutex<Vec<Option<Position>>>>,
    poison: Option<i64>,
}

impl Projection for CheckpointWatcher {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "cadence"
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let poisoned = |e: &Envelope<AccountEvent>| matches!((&e.event, self.poison), (AccountEvent::Deposited { amount }, Some(p)) if *amount == p);
        if batch.iter().any(poisoned) {
            return Err("poisoned deposit".into());
        }
        let saved = self.store.load_checkpoint("cadence").await?;
        self.seen.lock().unwrap().push(saved);
        Ok(())
    }
}

/// With a cadence of 20 records, batches of 5 save every fourth batch and at the end of
/// the log; the default saves after every batch.
#[tokio::test]
async fn the_checkpoint_cadence_saves_every_n_records_and_at_the_end() {
    let store = InMemoryEventStore::new();
    seed(&store, 1, 29).await; // 30 events: positions 1..=30
    let at = |n: u64| Some(Position::new(0, n));
    for (cadence, expected) in [
        (None, vec![None, at(5), at(10), at(15), at(20), at(25)]),
        (Some(20), vec![None, None, None, None, at(20), at(20)]),
    ] {
        store
            .save_checkpoint("cadence", Position::START)
            .await
            .unwrap();
        let watcher = CheckpointWatcher {
            store: store.clone(),
            seen: Arc::default(),
            poison: None,
        };
        let mut runner = ProjectionRunner::with_strategy(
            store.clone(),
            watcher.clone(),
            StoreCheckpoint::new(store.clone()),
        )
        .with_config(fast_config(5));
        if let Some(events) = cadence {
            runner = runner.with_checkpoint_cadence(cqrs_core::CheckpointCadence {
                events,
                interval: Duration::from_secs(3_600),
            });
        }
        assert_eq!(runner.catch_up().await.unwrap(), 30);
        let seen: Vec<_> = watcher.seen.lock().unwrap().clone();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|p| p.filter(|p| *p != Position::START))
            .collect();
        let seen: Vec<_> = seen
            .into_iter()
            .map(|p| p.filter(|p| *p != Position::START))
            .collect();
        assert_eq!(seen, expected, "cadence {cadence:?}");
        assert_eq!(
            store.load_checkpoint("cadence").await.unwrap(),
            at(30),
            "saved at the end"
        );
    }
}

/// A projection that stops saves where it is first: its checkpoint is just before the
/// failing event, whatever the cadence.
#[tokio::test]
async fn a_stopped_projection_saves_its_checkpoint_just_before_the_failing_event() {
    let store = InMemoryEventStore::new();
    seed(&store, 1, 29).await; // deposit 16 is the event at position 17
    let watcher = CheckpointWatcher {
        store: store.clone(),
        seen: Arc::default(),
        poison: Some(16),
    };
    let mut runner = ProjectionRunner::with_strategy(
        store.clone(),
        watcher,
        StoreCheckpoint::new(store.clone()),
    )
    .with_config(fast_config(5))
    .with_checkpoint_cadence(cqrs_core::CheckpointCadence {
        events: 1_000,
        interval: Duration::from_secs(3_600),
    });
    match runner.catch_up().await {
        Err(ProjectionError::Stopped { position, .. }) => {
            assert_eq!(position, Position::new(0, 17))
        }
        other => panic!("the poisoned deposit stops the runner, got {other:?}"),
    }
    assert_eq!(
        store.load_checkpoint("cadence").await.unwrap(),
        Some(Position::new(0, 16))
    );
}

/// Counts what it applies and records every type its `wants` is asked about.
#[derive(Clone, Default)]
struct Asked {
    types: Arc<Mutex<Vec<String>>>,
    applied: Arc<Mutex<usize>>,
}

impl Projection for Asked {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "asked"
    }

    fn wants(&self, record: &cqrs_core::RecordedEvent) -> bool {
        self.types.lock().unwrap().push(record.event_type.clone());
        <AccountEvent as cqrs_core::DomainEvent>::EVENT_TYPES.contains(&record.event_type.as_str())
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        *self.applied.lock().unwrap() += batch.len();
        Ok(())
    }
}

#[tokio::test]
async fn on_a_store_that_filters_types_the_runner_asks_only_for_its_own() {
    let store = InMemoryEventStore::new();
    seed(&store, 5, 10).await; // 55 account events
    // Then 2,000 records of a type no projection here knows, in a row (past the 1,024
    // after which the default filtered read says how far it passed).
    let noise = StreamId::new("noise", "1").unwrap();
    for _ in 0..20 {
        let batch = (0..100)
            .map(|_| EventData::new("Noise", b"{}".to_vec()))
            .collect();
        store
            .append(&noise, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    for filter in [true, false] {
        let filtering = Wrapped {
            filters: true,
            ..Wrapped::new(&store)
        };
        let p = Asked::default();
        let checkpoints = StoreCheckpoint::new(filtering.clone());
        let mut runner = ProjectionRunner::with_strategy(filtering.clone(), p.clone(), checkpoints)
            .with_config(fast_config(100))
            .with_type_filter(filter);
        let mut reports = Vec::new();
        let read = within(
            "a rebuild over a log that ends with other types",
            runner.rebuild(|progress| reports.push(progress)),
        )
        .await
        .unwrap();
        assert_eq!(*p.applied.lock().unwrap(), 55, "filter {filter}");
        let asked_noise = p.types.lock().unwrap().iter().any(|t| t == "Noise");
        assert_eq!(
            asked_noise, !filter,
            "wants sees other types only unfiltered"
        );
        let (records, total) = if filter { (55, 55) } else { (2_055, 2_055) };
        assert_eq!(read, records, "filter {filter}: records read");
        let last = reports.last().unwrap();
        assert_eq!((last.done, last.total), (records, total), "filter {filter}");
        // The checkpoint is at the end of the log, past the 2,000 records of the other
        // type: the next catch-up reads nothing.
        let checkpoint = filtering.load_checkpoint("asked").await.unwrap().unwrap();
        assert_eq!(
            store.count_events(checkpoint).await.unwrap(),
            0,
            "filter {filter}"
        );
        assert_eq!(runner.catch_up().await.unwrap(), 0);
    }
}
