//! Deleting, truncating and restoring streams on PostgreSQL, beyond the conformance
//! cases: races with appends (with and without group commit), inline projections, the
//! log's holes and restored positions, the snapshot lock of a truncation, and the
//! migration. Each test drops its schema, also when it fails.

mod common;

use std::future::Future;
use std::time::Duration;

use cqrs_core::{
    AppendResult, BoxError, DomainEvent, Envelope, Error, EventData, EventLog, ExpectedVersion,
    Inspect, Position, Projection, RecordedEvent, Result, STREAM_DELETED, SnapshotRecord,
    SnapshotStore, StreamDeleted, StreamId, StreamLifecycle,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use futures::TryStreamExt;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

fn event(label: &str) -> EventData {
    EventData::new(
        "Happened",
        format!("{{\"label\":\"{label}\"}}").into_bytes(),
    )
}

fn events(label: &str, n: usize) -> Vec<EventData> {
    (0..n).map(|i| event(&format!("{label}-{i}"))).collect()
}

fn stream(name: &str) -> StreamId {
    StreamId::new("life", format!("{name}-{}", Uuid::new_v4())).expect("valid stream id")
}

async fn read(store: &PostgresEventStore, s: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(s, 1)
        .try_collect()
        .await
        .expect("read the stream")
}

async fn log(store: &PostgresEventStore, after: Position) -> Vec<RecordedEvent> {
    store
        .read_all(after, None)
        .try_collect()
        .await
        .expect("read the log")
}

/// Within 60 s, or the test fails naming `what`.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} must end within 60 s"))
}

/// Waits (at most 30 s) until `n` sessions wait for a lock on the store's tables.
async fn lock_waiters(store: &PostgresEventStore, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND position($1 in query) > 0",
        )
        .bind(store.schema())
        .fetch_one(store.pool())
        .await
        .expect("read pg_stat_activity");
        if waiting >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} session(s) must wait on a lock within 30 s ({waiting} do)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connect() -> PgConnection {
    PgConnection::connect(&common::database_url())
        .await
        .expect("connect")
}

/// Appenders hammer one stream while it is deleted: each append either committed
/// before the tombstone (a lower version and position) or failed with `StreamDeleted`
/// or a conflict; nothing is left but the tombstone; appends to other streams, in the
/// same batches under group commit, all succeed.
async fn appends_race_a_delete(store: &PostgresEventStore) {
    const APPENDERS: usize = 6;
    const MAX_APPENDS: usize = 400;
    let doomed = stream("doomed");
    store
        .append(&doomed, ExpectedVersion::NoStream, vec![event("first")])
        .await
        .expect("the first event");
    // A `JoinSet` aborts the appenders if the test fails, before the schema is dropped.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..APPENDERS {
        let (store, doomed) = (store.clone(), doomed.clone());
        let kept = stream(&format!("kept-{n}"));
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..MAX_APPENDS {
                // Half of them expect the version they saw last, so some conflict.
                let expected = match outcomes.last() {
                    Some(Ok(AppendResult { version, .. })) if n % 2 == 1 => {
                        ExpectedVersion::Exact(*version)
                    }
                    _ => ExpectedVersion::Any,
                };
                let (outcome, other) = tokio::join!(
                    store.append(&doomed, expected, vec![event(&format!("{n}-{i}"))]),
                    store.append(&kept, ExpectedVersion::Any, vec![event("kept")])
                );
                other.expect("appends to another stream are not affected");
                let deleted = matches!(outcome, Err(Error::StreamDeleted { .. }));
                outcomes.push(outcome);
                if deleted {
                    break;
                }
            }
            outcomes
        });
    }
    // Delete once the stream is busy.
    within("the appends before the delete", async {
        while read(store, &doomed).await.len() < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let tombstone = within(
        "the delete",
        store.delete_stream(&doomed, ExpectedVersion::Any),
    )
    .await
    .expect("delete while appends run");
    let mut succeeded = 0;
    let mut written = Vec::new();
    while let Some(task) = within("an appender", tasks.join_next()).await {
        let outcomes = task.expect("an appender task");
        assert!(
            matches!(outcomes.last(), Some(Err(Error::StreamDeleted { .. }))),
            "every appender ends on the tombstone: {:?}",
            outcomes.last()
        );
        for outcome in outcomes {
            match outcome {
                Ok(appended) => {
                    succeeded += 1;
                    written.push(appended);
                    assert!(appended.version < tombstone.version, "{appended:?}");
                    assert!(appended.position < tombstone.position, "{appended:?}");
                }
                Err(Error::StreamDeleted { stream, version }) => {
                    assert_eq!((stream, version), (doomed.clone(), tombstone.version));
                }
                Err(Error::Conflict { .. }) => {}
                Err(other) => panic!("an append must succeed or be refused, got {other:?}"),
            }
        }
    }
    written.sort_by_key(|a| a.version);
    assert_eq!(
        tombstone.version,
        succeeded + 2,
        "{written:?} {tombstone:?}"
    );
    assert_eq!(
        tombstone.version,
        succeeded + 2,
        "the tombstone follows every append that succeeded"
    );
    let left = read(store, &doomed).await;
    assert_eq!(left.len(), 1, "only the tombstone: {left:?}");
    assert_eq!(left[0].event_type, STREAM_DELETED);
    let in_log: Vec<_> = log(store, Position::START)
        .await
        .into_iter()
        .filter(|r| r.stream == doomed)
        .map(|r| r.position)
        .collect();
    assert_eq!(in_log, vec![tombstone.position]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_race_a_delete_without_group_commit() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    appends_race_a_delete(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_race_a_delete_with_group_commit() {
    let Some(store) = common::store_guarded_with(|b| b.group_commit(true)).await else {
        return;
    };
    appends_race_a_delete(&store).await;
}

/// A delete waits for an append in flight (here in an open transaction) and puts its
/// tombstone after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_waits_for_an_append_in_flight() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("in-flight");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event("one")])
        .await
        .expect("append");
    let mut conn = connect().await;
    let mut tx = conn.begin().await.expect("begin");
    store
        .append_in(&mut tx, &s, ExpectedVersion::Exact(1), vec![event("two")])
        .await
        .expect("append in the open transaction");
    let delete = {
        let (store, s) = ((*store).clone(), s.clone());
        tokio::spawn(async move { store.delete_stream(&s, ExpectedVersion::Any).await })
    };
    lock_waiters(&store, 1).await;
    tx.commit().await.expect("commit the append");
    let tombstone = within("the delete", delete)
        .await
        .expect("the delete's task")
        .expect("delete");
    assert_eq!(tombstone.version, 3, "after the append that was in flight");
    let left = read(&store, &s).await;
    assert_eq!(versions(&left), vec![3]);
    let payload: StreamDeleted = serde_json::from_slice(&left[0].payload).expect("payload");
    assert_eq!(payload, StreamDeleted::new(2));
    // `append_in` goes through `append_events`, which refuses it too.
    let mut tx = conn.begin().await.expect("begin");
    match store
        .append_in(&mut tx, &s, ExpectedVersion::Any, vec![event("three")])
        .await
    {
        Err(Error::StreamDeleted { version: 3, .. }) => {}
        other => panic!("append_in to a deleted stream must fail, got {other:?}"),
    }
}

fn versions(records: &[RecordedEvent]) -> Vec<u64> {
    records.iter().map(|r| r.version).collect()
}

/// Under group commit, an append to a deleted stream queued in a batch with others
/// fails alone, with `StreamDeleted`; the others are written.
#[tokio::test(flavor = "multi_thread")]
async fn in_a_batch_only_the_append_to_the_deleted_stream_fails() {
    let Some(store) = common::store_guarded_with(|b| b.group_commit(true)).await else {
        return;
    };
    let doomed = stream("doomed");
    store
        .append(&doomed, ExpectedVersion::NoStream, events("d", 2))
        .await
        .expect("append");
    let tombstone = store
        .delete_stream(&doomed, ExpectedVersion::Exact(2))
        .await
        .expect("delete");
    let kept: Vec<StreamId> = (0..3).map(|i| stream(&format!("kept-{i}"))).collect();
    // Lock the table so that one append waits and the rest queue for the next batch.
    let mut lock = connect().await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "BEGIN; LOCK TABLE \"{}\".events IN EXCLUSIVE MODE",
        store.schema()
    )))
    .execute(&mut lock)
    .await
    .expect("lock the events table");
    let first = {
        let store = (*store).clone();
        tokio::spawn(async move {
            let s = stream("first");
            store
                .append(&s, ExpectedVersion::NoStream, vec![event("first")])
                .await
        })
    };
    lock_waiters(&store, 1).await;
    let mut queued: Vec<_> = kept
        .iter()
        .map(|s| store.append(s, ExpectedVersion::NoStream, vec![event("kept")]))
        .collect();
    queued.insert(
        1,
        store.append(&doomed, ExpectedVersion::Any, vec![event("late")]),
    );
    let mut all = std::pin::pin!(join_all(queued));
    assert!(futures::poll!(all.as_mut()).is_pending());
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release the lock");
    let results = within("the queued appends", all).await;
    within("the first append", first)
        .await
        .expect("the first append's task")
        .expect("the first append");
    for (i, result) in results.into_iter().enumerate() {
        match (i, result) {
            (1, Err(Error::StreamDeleted { version, .. })) => {
                assert_eq!(version, tombstone.version);
            }
            (1, other) => panic!("the append to the deleted stream must fail, got {other:?}"),
            (_, other) => assert_eq!(other.expect("a kept append").version, 1),
        }
    }
    assert_eq!(versions(&read(&store, &doomed).await), vec![3]);
}

/// What the inline projection decodes: the tests' events and the tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Row {
    Happened { label: String },
    Deleted(StreamDeleted),
}

impl DomainEvent for Row {
    const EVENT_TYPES: &'static [&'static str] = &["Happened", STREAM_DELETED];

    fn event_type(&self) -> &'static str {
        match self {
            Row::Happened { .. } => "Happened",
            Row::Deleted(_) => STREAM_DELETED,
        }
    }

    fn from_stream_deleted(deleted: StreamDeleted) -> Option<Self> {
        Some(Row::Deleted(deleted))
    }
}

/// A row per stream with its event count; a tombstone drops the row, except for
/// streams named `guarded-…`, whose tombstone it refuses.
#[derive(Debug, Clone)]
struct Counts {
    schema: String,
}

impl Projection<PgConnection> for Counts {
    type Event = Row;

    fn name(&self) -> &str {
        "counts"
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<Row>],
    ) -> std::result::Result<(), BoxError> {
        let schema = &self.schema;
        for e in batch {
            let key = e.stream.to_string();
            let sql = match e.event {
                Row::Deleted(_) if e.stream.id().starts_with("guarded") => {
                    return Err("this stream must stay".into());
                }
                Row::Deleted(_) => format!("DELETE FROM \"{schema}\".counts WHERE stream = $1"),
                Row::Happened { .. } => format!(
                    "INSERT INTO \"{schema}\".counts AS c (stream, n) VALUES ($1, 1) \
                     ON CONFLICT (stream) DO UPDATE SET n = c.n + 1"
                ),
            };
            sqlx::query(AssertSqlSafe(sql))
                .bind(key)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// The tombstone goes through the inline projections in the delete's transaction; a
/// projection that refuses it rolls the delete back.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_runs_the_inline_projections_in_its_transaction() {
    let Some(plain) = common::store_guarded().await else {
        return;
    };
    let schema = plain.schema().to_owned();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".counts (stream text PRIMARY KEY, n bigint NOT NULL)"
    )))
    .execute(plain.pool())
    .await
    .expect("create the read model");
    let store = PostgresEventStore::builder(plain.pool().clone())
        .schema(&schema)
        .inline_projection(Counts {
            schema: schema.clone(),
        })
        .build()
        .expect("build");
    let count = |s: &StreamId| {
        let sql = format!("SELECT n FROM \"{schema}\".counts WHERE stream = $1");
        let (pool, key) = (store.pool().clone(), s.to_string());
        async move {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .bind(key)
                .fetch_optional(&pool)
                .await
                .expect("read the read model")
        }
    };
    let gone = stream("gone");
    store
        .append(&gone, ExpectedVersion::NoStream, events("g", 2))
        .await
        .expect("append");
    assert_eq!(count(&gone).await, Some(2));
    store
        .delete_stream(&gone, ExpectedVersion::Exact(2))
        .await
        .expect("delete");
    assert_eq!(count(&gone).await, None, "the row went with the delete");

    let guarded = stream("guarded");
    store
        .append(&guarded, ExpectedVersion::NoStream, events("k", 3))
        .await
        .expect("append");
    match store.delete_stream(&guarded, ExpectedVersion::Any).await {
        Err(Error::Store { source }) => assert!(source.to_string().contains("counts"), "{source}"),
        other => panic!("a refused tombstone must fail the delete, got {other:?}"),
    }
    assert_eq!(versions(&read(&store, &guarded).await), vec![1, 2, 3]);
    assert_eq!(count(&guarded).await, Some(3), "nothing changed");
    store
        .append(&guarded, ExpectedVersion::Exact(3), vec![event("on")])
        .await
        .expect("the stream lives on");
}

/// Holes and restored rows in the gap-safe log: counts follow what is stored, a cursor
/// at the tombstone stays valid, restored events come back at their positions, in log
/// order; positions this store never handed out are refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_keeps_its_shape_through_delete_and_restore() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let (s, other) = (stream("archived"), stream("other"));
    store
        .append(&s, ExpectedVersion::NoStream, events("a", 3))
        .await
        .expect("append");
    store
        .append(&other, ExpectedVersion::NoStream, events("o", 2))
        .await
        .expect("append");
    let archive = read(&store, &s).await;
    let before = log(&store, Position::START).await;
    assert_eq!(store.count_events(Position::START).await.expect("count"), 5);
    let tombstone = store
        .delete_stream(&s, ExpectedVersion::Exact(3))
        .await
        .expect("delete");
    assert_eq!(store.count_events(Position::START).await.expect("count"), 3);
    // Counting from inside the hole: the other stream's events and the tombstone.
    assert_eq!(
        store
            .count_events(archive[0].position)
            .await
            .expect("count"),
        3
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.streams, stats.events), (2, 3));

    // Positions still rising with the versions, so only the store can refuse them.
    let (commit, last) = (archive[0].position.commit, archive[2].position.sequence);
    for (what, i, bad) in [
        (
            "a log id never handed out",
            2,
            Position::new(commit, 1 << 40),
        ),
        ("a log id beyond BIGINT", 2, Position::new(commit, u64::MAX)),
        (
            "a transaction still to come",
            2,
            Position::new(1 << 60, last),
        ),
        ("transaction id 0", 0, Position::new(0, 1)),
    ] {
        let mut records = archive.clone();
        records[i].position = bad;
        match store.restore_stream(&s, records).await {
            Err(Error::InvalidInput { reason }) => {
                assert!(reason.contains("this store"), "{what}: {reason}");
            }
            other => panic!("a restore with {what} must be refused, got {other:?}"),
        }
        assert_eq!(versions(&read(&store, &s).await), vec![4], "{what}");
    }

    assert_eq!(
        store
            .restore_stream(&s, archive.clone())
            .await
            .expect("restore"),
        3
    );
    assert_eq!(read(&store, &s).await, archive);
    assert_eq!(
        log(&store, Position::START).await,
        before,
        "the log as before"
    );
    assert!(
        log(&store, tombstone.position).await.is_empty(),
        "a cursor at the tombstone is valid; the restored events are behind it"
    );
    assert_eq!(store.count_events(Position::START).await.expect("count"), 5);
    assert_eq!(
        store
            .count_events(archive[1].position)
            .await
            .expect("count"),
        3
    );
    let appended = store
        .append(&s, ExpectedVersion::Exact(3), vec![event("on")])
        .await
        .expect("append after the restore");
    assert!(
        appended.position > tombstone.position,
        "new positions go on"
    );
    assert_eq!(
        store
            .find_event(&s, archive[0].event_id)
            .await
            .expect("find"),
        Some(archive[0].clone())
    );
}

/// A truncation reads the snapshot `FOR UPDATE`: it waits for a snapshot write in
/// flight, and validates against what that write committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncation_waits_for_a_snapshot_write_in_flight() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let (s, helper) = (stream("truncated"), stream("helper"));
    store
        .append(&s, ExpectedVersion::NoStream, events("t", 5))
        .await
        .expect("append");
    let snapshot = |version| SnapshotRecord {
        version,
        schema_version: 1,
        payload: b"{}".to_vec(),
    };
    store
        .save_snapshot(&s, snapshot(2))
        .await
        .expect("save a snapshot");
    match store.truncate_stream(&s, 4).await {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("no snapshot covers version 4 yet, got {other:?}"),
    }
    // The checksum of a snapshot at version 4 (it does not depend on the stream).
    store
        .save_snapshot(&helper, snapshot(4))
        .await
        .expect("save a snapshot");
    let schema = store.schema().to_owned();
    let checksum: i32 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT checksum FROM \"{schema}\".snapshots WHERE aggregate_id = $1"
    )))
    .bind(helper.id())
    .fetch_one(store.pool())
    .await
    .expect("read the checksum");
    // Another session moves the snapshot to version 4 and has not committed yet.
    let mut conn = connect().await;
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{schema}\".snapshots SET version = 4, checksum = $3 \
         WHERE aggregate_type = $1 AND aggregate_id = $2"
    )))
    .bind(s.aggregate_type())
    .bind(s.id())
    .bind(checksum)
    .execute(&mut *tx)
    .await
    .expect("move the snapshot");
    let truncate = {
        let (store, s) = ((*store).clone(), s.clone());
        tokio::spawn(async move { store.truncate_stream(&s, 4).await })
    };
    lock_waiters(&store, 1).await;
    tx.commit().await.expect("commit the snapshot");
    let removed = within("the truncation", truncate)
        .await
        .expect("the truncation's task")
        .expect("the truncation sees the committed snapshot");
    assert_eq!(removed, 3);
    assert_eq!(versions(&read(&store, &s).await), vec![4, 5]);
    assert_eq!(
        store
            .load_snapshot(&s)
            .await
            .expect("load")
            .map(|r| r.version),
        Some(4)
    );
}

/// Migration 5 replaces `append_events` in place: run again on a schema with data, it
/// changes nothing but the function, which refuses appends to deleted streams.
#[tokio::test(flavor = "multi_thread")]
async fn migration_5_upgrades_in_place_and_runs_again() -> Result<()> {
    let Some(store) = common::store_guarded().await else {
        return Ok(());
    };
    let (s, gone) = (stream("kept"), stream("gone"));
    store
        .append(&s, ExpectedVersion::NoStream, events("k", 2))
        .await?;
    store
        .append(&gone, ExpectedVersion::NoStream, events("g", 1))
        .await?;
    store
        .delete_stream(&gone, ExpectedVersion::Exact(1))
        .await?;
    let before = log(&store, Position::START).await;
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM \"{}\".schema_migrations WHERE version = 5",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .map_err(Error::store)?;
    assert_eq!(store.migrate().await.map_err(Error::store)?, 5);
    assert_eq!(store.migrate().await.map_err(Error::store)?, 5);
    assert_eq!(
        log(&store, Position::START).await,
        before,
        "no data changed"
    );
    let mut conn = connect().await;
    let mut tx = conn.begin().await.map_err(Error::store)?;
    match store
        .append_in(&mut tx, &gone, ExpectedVersion::Any, vec![event("late")])
        .await
    {
        Err(Error::StreamDeleted { version: 2, .. }) => {}
        other => panic!("the function refuses a deleted stream, got {other:?}"),
    }
    store
        .append_in(&mut tx, &s, ExpectedVersion::Exact(2), vec![event("on")])
        .await?;
    tx.commit().await.map_err(Error::store)?;
    assert_eq!(versions(&read(&store, &s).await), vec![1, 2, 3]);
    Ok(())
}
