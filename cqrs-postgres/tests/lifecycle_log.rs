//! Deleting, truncating and restoring streams on PostgreSQL, beyond the conformance
//! cases: tombstones through inline projections, the log's holes and restored
//! positions, the snapshot lock of a truncation, and migration 5. Each test drops its
//! schema, also when it fails.

mod common;

use common::life::{connect, event, events, lock_waiters, log, read, stream, versions, within};
use cqrs_core::{
    BoxError, DomainEvent, Envelope, Error, EventLog, ExpectedVersion, Inspect, Position,
    Projection, Result, STREAM_DELETED, SnapshotRecord, SnapshotStore, StreamDeleted, StreamId,
    StreamLifecycle,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use serde::{Deserialize, Serialize};

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

/// `append_events` takes the insert's lock before it reads the stream's head, also when
/// it then refuses the append: a delete or truncation (which locks the table against
/// it) can never run between its read and its insert.
#[tokio::test(flavor = "multi_thread")]
async fn append_events_locks_the_table_before_it_reads() -> Result<()> {
    let Some(store) = common::store_guarded().await else {
        return Ok(());
    };
    let s = stream("locked");
    let mut conn = connect().await;
    let mut tx = conn.begin().await.map_err(Error::store)?;
    let schema = store.schema().to_owned();
    // A refused call (the stream is not at version 9): nothing to insert.
    let outcome: i16 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT r_outcome FROM \"{schema}\".append_events($1, $2, 3::smallint, 9, \
         '{{}}'::uuid[], '{{}}'::text[], '{{}}'::bigint[], '{{}}'::bytea[], '{{}}'::text[], \
         '{{}}'::integer[], NULL, false)"
    )))
    .bind(s.aggregate_type())
    .bind(s.id())
    .fetch_one(&mut *tx)
    .await
    .map_err(Error::store)?;
    assert_eq!(outcome, 1, "a conflict");
    let held: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' \
         AND relation = '\"{schema}\".events'::regclass ORDER BY mode"
    )))
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::store)?;
    assert!(
        held.iter().any(|m| m == "RowExclusiveLock"),
        "the function holds the insert's lock: {held:?}"
    );
    tx.rollback().await.map_err(Error::store)?;
    Ok(())
}
