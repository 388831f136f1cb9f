//! Projections over PostgreSQL: LISTEN wake-ups, transactional (exactly-once) and inline
//! projections, losing connections, and one worker among many nodes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::{
    BoxError, CheckpointStore, CheckpointStrategy, Codec, DomainEvent, Envelope, Error, EventData,
    EventLog, ExpectedVersion, JsonCodec, JsonEvent, Position, Projection, ProjectionRunner,
    RecordedEvent, RetryPolicy, RunnerConfig, StreamId, Upcasters,
};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection};
use cqrs_postgres::{PostgresEventStore, TransactionalCheckpoint, WorkerConfig};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { cents: i64 },
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Deposited"];
    fn event_type(&self) -> &'static str {
        "Deposited"
    }
}

fn deposit(cents: i64) -> EventData {
    EventData::new(
        "Deposited",
        serde_json::to_vec(&AccountEvent::Deposited { cents }).unwrap(),
    )
}

fn account(n: usize) -> StreamId {
    StreamId::new("account", format!("acc-{n}")).unwrap()
}

/// Generous deadlines for conditions that the tests wait for: reaching one fails the test
/// (something hangs); they are never asserted as timings.
const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `future`, failing the test if it does not finish within [`DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
}

/// A runner of `projection` on `node`, the read model and checkpoint in one transaction.
fn transactional(
    node: &PostgresEventStore,
    projection: Balances,
) -> ProjectionRunner<PostgresEventStore, Balances, TransactionalCheckpoint> {
    ProjectionRunner::with_strategy(
        node.clone(),
        projection,
        TransactionalCheckpoint::new(node.clone()),
    )
    .with_config(fast_config())
}

fn fast_config() -> RunnerConfig {
    RunnerConfig {
        batch_size: 20,
        poll_interval: Duration::from_millis(200),
        retry: RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
    }
}

/// Balances per account, with one row per applied event (its primary key refuses an
/// event applied twice: the batch then fails and the test sees it).
#[derive(Debug)]
struct Balances {
    schema: String,
    node: usize,
    active: Arc<AtomicUsize>,
}

impl Balances {
    fn new(store: &PostgresEventStore) -> Self {
        Balances {
            schema: store.schema().to_owned(),
            node: 0,
            active: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }
}

async fn create_tables(store: &PostgresEventStore) {
    let s = store.schema();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{s}\".balances (account text PRIMARY KEY, cents bigint NOT NULL); \
         CREATE TABLE \"{s}\".applied (event_id uuid PRIMARY KEY)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

impl Projection<PgConnection> for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let s = &self.schema;
        for e in batch {
            let AccountEvent::Deposited { cents } = e.event;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".applied (event_id) VALUES ($1)"
            )))
            .bind(e.event_id)
            .execute(&mut *conn)
            .await?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".balances AS b (account, cents) VALUES ($1, $2) \
                 ON CONFLICT (account) DO UPDATE SET cents = b.cents + EXCLUDED.cents"
            )))
            .bind(e.stream.id())
            .bind(cents)
            .execute(&mut *conn)
            .await?;
        }
        if !batch.is_empty() {
            self.active.store(self.node, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn reset(&mut self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let s = &self.schema;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "TRUNCATE \"{s}\".balances, \"{s}\".applied"
        )))
        .execute(conn)
        .await?;
        Ok(())
    }
}

async fn balances(store: &PostgresEventStore) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(format!(
        "SELECT account, cents FROM \"{}\".balances",
        store.schema()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn applied(store: &PostgresEventStore) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".applied",
        store.schema()
    )))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// The balances recomputed from the whole log.
async fn recomputed(store: &PostgresEventStore) -> BTreeMap<String, i64> {
    let log: Vec<RecordedEvent> = store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap();
    let mut totals = BTreeMap::new();
    for e in log {
        let AccountEvent::Deposited { cents } = serde_json::from_slice(&e.payload).unwrap();
        *totals.entry(e.stream.id().to_owned()).or_default() += cents;
    }
    totals
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_notify_wakes_watchers_of_other_nodes() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let other = common::same_schema(&store, 2).await;
    let mut watcher = store.watch();
    assert!(watcher.can_wake());
    // The listener wakes once when it is connected; wait for that before marking.
    tokio::time::timeout(DEADLINE, watcher.changed())
        .await
        .expect("the listener connects");
    watcher.mark_seen();
    other
        .append(&account(1), ExpectedVersion::Any, vec![deposit(1)])
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, watcher.changed())
        .await
        .expect("a NOTIFY from another node wakes the watcher");
    // Without notifications, other nodes' appends do not wake (readers poll), but this
    // node's own appends still do.
    let quiet = common::same_schema(&store, 2).await;
    let quiet = PostgresEventStore::builder(quiet.pool().clone())
        .schema(store.schema())
        .notify(false)
        .build()
        .unwrap();
    let mut own = quiet.watch();
    own.mark_seen();
    quiet
        .append(&account(1), ExpectedVersion::Any, vec![deposit(1)])
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, own.changed())
        .await
        .expect("own appends wake");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_projection_applies_each_event_once_with_its_checkpoint() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    create_tables(&store).await;
    for i in 0..30 {
        store
            .append(
                &account(i % 4),
                ExpectedVersion::Any,
                vec![deposit(i64::try_from(i).unwrap())],
            )
            .await
            .unwrap();
    }
    let mut runner = transactional(&store, Balances::new(&store));
    assert_eq!(runner.catch_up().await.unwrap(), 30);
    assert_eq!(balances(&store).await, recomputed(&store).await);
    // The checkpoint is in the projection's table, at the end of the log.
    let last = store
        .read_all(Position::START, None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .last()
        .unwrap()
        .position;
    assert_eq!(store.load_checkpoint("balances").await.unwrap(), Some(last));
    // A new runner (a restart) resumes there: nothing is applied twice.
    for i in 0..5 {
        store
            .append(&account(i), ExpectedVersion::Any, vec![deposit(100)])
            .await
            .unwrap();
    }
    let mut runner = transactional(&store, Balances::new(&store));
    assert_eq!(runner.catch_up().await.unwrap(), 5);
    assert_eq!(applied(&store).await, 35);
    assert_eq!(balances(&store).await, recomputed(&store).await);
    // A rebuild clears and replays.
    assert_eq!(runner.rebuild(|_| {}).await.unwrap(), 35);
    assert_eq!(applied(&store).await, 35);
    assert_eq!(balances(&store).await, recomputed(&store).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_worker_cannot_apply_a_batch_twice() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    create_tables(&store).await;
    for i in 0..10 {
        store
            .append(&account(i), ExpectedVersion::Any, vec![deposit(1)])
            .await
            .unwrap();
    }
    let codec = JsonCodec::new();
    let log: Vec<Envelope<AccountEvent>> = store
        .read_all(Position::START, None)
        .map_ok(|r| codec.decode_envelope(r).unwrap())
        .try_collect()
        .await
        .unwrap();
    // Two workers that both loaded the checkpoint at the start, as a worker that lost its
    // lock without noticing yet would have.
    let (mut first, mut stale) = (
        TransactionalCheckpoint::new(store.clone()),
        TransactionalCheckpoint::new(store.clone()),
    );
    let mut projection = Balances::new(&store);
    assert_eq!(first.start(&mut projection).await.unwrap(), Position::START);
    assert_eq!(stale.start(&mut projection).await.unwrap(), Position::START);
    first
        .apply(&mut projection, &log, log[9].position)
        .await
        .unwrap();
    // The stale worker's first half-batch: the checkpoint moved under it, so it is rolled
    // back with a typed error instead of being applied again.
    let err = stale
        .apply(&mut projection, &log[..5], log[4].position)
        .await
        .unwrap_err();
    match err.downcast_ref::<cqrs_postgres::Error>() {
        Some(cqrs_postgres::Error::CheckpointMoved {
            expected, found, ..
        }) => {
            assert_eq!(*expected, Position::START);
            assert_eq!(*found, log[9].position);
        }
        other => panic!("expected CheckpointMoved, got {other:?} ({err})"),
    }
    // The very batch the other worker applied is recognised as done.
    stale
        .apply(&mut projection, &log, log[9].position)
        .await
        .unwrap();
    assert_eq!(applied(&store).await, 10);
    assert_eq!(balances(&store).await, recomputed(&store).await);
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(log[9].position)
    );
}

/// What the inline projection decodes: deposits, and a poison it refuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum SizeEvent {
    Deposited { cents: i64 },
    Poison,
}

impl DomainEvent for SizeEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Deposited", "Poison"];
    fn event_type(&self) -> &'static str {
        match self {
            SizeEvent::Deposited { .. } => "Deposited",
            SizeEvent::Poison => "Poison",
        }
    }
}

/// Event counts and deposited cents per stream, in the append's transaction; refuses
/// `Poison`. The same trait as a transactional read model: typed, upcast events.
#[derive(Debug, Clone)]
struct StreamSizes {
    schema: String,
}

impl Projection<PgConnection> for StreamSizes {
    type Event = SizeEvent;

    fn name(&self) -> &str {
        "stream_sizes"
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<SizeEvent>],
    ) -> Result<(), BoxError> {
        let mut cents = 0;
        for e in batch {
            match e.event {
                SizeEvent::Deposited { cents: c } => cents += c,
                SizeEvent::Poison => return Err("poison refused".into()),
            }
        }
        let Some(last) = batch.last() else {
            return Ok(());
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{}\".sizes AS s (stream, events, cents) VALUES ($1, $2, $3) \
             ON CONFLICT (stream) DO UPDATE SET events = EXCLUDED.events, \
             cents = s.cents + EXCLUDED.cents",
            self.schema
        )))
        .bind(last.stream.to_string())
        .bind(i64::try_from(last.version)?)
        .bind(cents)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_projections_are_read_your_writes_and_roll_back_with_the_append() {
    let Some(plain) = common::store_guarded().await else {
        return;
    };
    let schema = plain.schema().to_owned();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".sizes \
         (stream text PRIMARY KEY, events bigint NOT NULL, cents bigint NOT NULL)"
    )))
    .execute(plain.pool())
    .await
    .unwrap();
    // Version 1 of a deposit was called `Credited`, in whole units.
    let upcasters = Upcasters::new().register("Credited", 1, |e: JsonEvent| {
        let units = e.payload["units"].as_i64().ok_or("units is missing")?;
        Ok(JsonEvent {
            event_type: "Deposited".into(),
            schema_version: 2,
            payload: serde_json::json!({ "Deposited": { "cents": units * 100 } }),
        })
    });
    let store = PostgresEventStore::builder(plain.pool().clone())
        .schema(&schema)
        .inline_projection_with_codec(
            StreamSizes {
                schema: schema.clone(),
            },
            JsonCodec::new().with_upcasters(upcasters),
        )
        .build()
        .unwrap();
    let size = |s: StreamId| {
        let store = store.clone();
        let schema = schema.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(format!(
                "SELECT events, cents FROM \"{schema}\".sizes WHERE stream = $1"
            )))
            .bind(s.to_string())
            .fetch_optional(store.pool())
            .await
            .unwrap()
        }
    };
    let s = account(1);
    let batch = vec![deposit(1), deposit(2)];
    store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(size(s.clone()).await, Some((2, 3)));
    // An idempotent re-append writes nothing and does not run the projection again.
    store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert_eq!(size(s.clone()).await, Some((2, 3)));
    store
        .append(&s, ExpectedVersion::Exact(2), vec![deposit(3)])
        .await
        .unwrap();
    assert_eq!(size(s.clone()).await, Some((3, 6)));
    // An old record is upcast before the projection sees it, typed.
    let old = EventData::new("Credited", br#"{"units":2}"#.to_vec());
    store
        .append(&s, ExpectedVersion::Exact(3), vec![old])
        .await
        .unwrap();
    assert_eq!(size(s.clone()).await, Some((4, 206)));
    // A failing inline projection rolls the append back.
    let poison = EventData::new("Poison", br#""Poison""#.to_vec());
    match store
        .append(&s, ExpectedVersion::Exact(4), vec![deposit(4), poison])
        .await
    {
        Err(Error::Store { source }) => {
            assert!(source.to_string().contains("stream_sizes"), "{source}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    // So does an event it wants that does not decode.
    let garbled = EventData::new("Deposited", b"not json".to_vec());
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Exact(4), vec![garbled])
            .await,
        Err(Error::Store { .. })
    ));
    let read: Vec<RecordedEvent> = store.read_stream(&s, 1).try_collect().await.unwrap();
    assert_eq!(read.len(), 4);
    assert_eq!(size(s.clone()).await, Some((4, 206)));
    // Events it does not want leave it alone (and are appended).
    store
        .append(
            &s,
            ExpectedVersion::Exact(4),
            vec![EventData::new("Renamed", b"{}".to_vec())],
        )
        .await
        .unwrap();
    assert_eq!(size(s.clone()).await, Some((4, 206)));
    // Version conflicts are still typed conflicts.
    assert!(
        store
            .append(&s, ExpectedVersion::Exact(1), vec![deposit(5)])
            .await
            .unwrap_err()
            .is_conflict()
    );
}

/// Terminates every connection of a node made by `common::same_schema` (its pool's, its
/// listener's and its notifier's), found by their application name.
async fn kill_connections_of(node: &PostgresEventStore) -> usize {
    let name = node
        .pool()
        .connect_options()
        .get_application_name()
        .expect("a node's connections are named")
        .to_owned();
    let mut killer = common::connection().await;
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(name)
            .fetch_all(&mut killer)
            .await
            .unwrap();
    for pid in &pids {
        let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut killer)
            .await
            .unwrap();
    }
    pids.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_projection_retries_and_resumes_after_losing_its_connections() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    create_tables(&store).await;
    // The projection runs on its own node (pool), which the test cuts off.
    let node = common::same_schema(&store, 2).await;
    let mut runner = transactional(&node, Balances::new(&node));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    for round in 0..3 {
        for i in 0..20 {
            store
                .append(&account(i % 5), ExpectedVersion::Any, vec![deposit(1)])
                .await
                .unwrap();
        }
        let want = 20 * (round + 1);
        eventually("the projection catches up", || async {
            applied(&store).await == want
        })
        .await;
        assert!(kill_connections_of(&node).await > 0);
    }
    assert_eq!(balances(&store).await, recomputed(&store).await);
    stop.send(()).unwrap();
    within("the runner stops when told", task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn of_three_nodes_one_runs_the_projection_and_another_takes_over_when_it_dies() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    create_tables(&store).await;
    let active = Arc::new(AtomicUsize::new(usize::MAX));
    let (shutdown, _) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    for n in 0..3 {
        let node = common::same_schema(&store, 2).await;
        let projection = Balances {
            schema: store.schema().to_owned(),
            node: n,
            active: Arc::clone(&active),
        };
        let mut runner = transactional(&node, projection);
        let mut stop = shutdown.subscribe();
        let worker = node.clone();
        let task = tokio::spawn(async move {
            let config = WorkerConfig {
                retry_interval: Duration::from_millis(50),
                heartbeat: Duration::from_millis(50),
            };
            worker
                .run_exclusive(
                    &mut runner,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                    config,
                )
                .await
        });
        nodes.push((node, Some(task)));
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                store
                    .append(&account(i % 10), ExpectedVersion::Any, vec![deposit(1)])
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    eventually("a node applies events", || async {
        applied(&store).await > 0
    })
    .await;
    let killed = active.load(Ordering::SeqCst);
    let (node, task) = &mut nodes[killed];
    // "Kill" the active node: its task and every connection it holds go away at once.
    task.take().unwrap().abort();
    within("the killed node's pool closes", node.pool().close()).await;
    within("the writer's 150 appends", writer).await.unwrap();
    eventually("the survivors finish the log", || async {
        applied(&store).await == 150
    })
    .await;
    assert_ne!(
        active.load(Ordering::SeqCst),
        killed,
        "another node took over"
    );
    assert_eq!(balances(&store).await, recomputed(&store).await);
    shutdown.send(true).unwrap();
    for (_, task) in nodes {
        if let Some(task) = task {
            within("a worker stops when told", task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_lock_is_exclusive_across_nodes_and_freed_with_its_holder() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let other = common::same_schema(&store, 1).await;
    let held = store.try_lock_worker("balances").await.unwrap().unwrap();
    assert!(other.try_lock_worker("balances").await.unwrap().is_none());
    // Locks are per projection name and per schema.
    let unrelated = other.try_lock_worker("another").await.unwrap().unwrap();
    held.release().await.unwrap();
    let mut taken = other.try_lock_worker("balances").await.unwrap().unwrap();
    assert!(taken.is_held().await);
    // A holder that dies (its connection drops) frees the lock.
    drop(taken);
    let again = within(
        "the lock of a dropped holder is free again",
        store.lock_worker("balances", Duration::from_millis(20)),
    )
    .await
    .unwrap();
    assert_eq!(again.name(), "balances");
    again.release().await.unwrap();
    unrelated.release().await.unwrap();
}
