//! Tests that hold a writing transaction open: the gap-safety of the global log (read
//! whole and by type) and all-or-nothing appends on a killed connection.
//!
//! They live in their own test binary because an open transaction holds back every
//! reader of the server (the read horizon is cluster-wide), and cargo runs test binaries
//! one after another.

mod common;

use std::time::Duration;

use cqrs_core::{
    EventData, EventLog, ExpectedVersion, Inspect, LogItem, Position, RecordedEvent, StreamId,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, Connection};
use futures::TryStreamExt;
use uuid::Uuid;

fn stream(kind: &str) -> StreamId {
    StreamId::new(kind, Uuid::new_v4().to_string()).unwrap()
}

fn events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| EventData::new("Happened", format!("{{\"i\":{i}}}").into_bytes()))
        .collect()
}

/// The tests of this binary run one at a time: each one's open transaction would hold
/// back the others' reads.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This test's turn: waits for the others of the binary, within a deadline.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    tokio::time::timeout(Duration::from_secs(300), SERIAL.lock())
        .await
        .expect("the other tests of this binary finish within 300 s")
}

async fn read_after(store: &PostgresEventStore, after: Position) -> Vec<RecordedEvent> {
    store.read_all(after, None).try_collect().await.unwrap()
}

async fn read_of_types(
    store: &PostgresEventStore,
    after: Position,
    types: &[String],
) -> Vec<LogItem> {
    store
        .read_all_of_types(after, None, types)
        .try_collect()
        .await
        .unwrap()
}

/// Reads after `after` until `count` events are readable. Another session's transaction
/// on the same server may hold the horizon back for a while; this test's own open
/// transactions are over when it is called. The deadline only guards against a hang:
/// reaching it fails the test.
async fn read_when(
    store: &PostgresEventStore,
    after: Position,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read = read_after(store, after).await;
        if read.len() >= count {
            return read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} events after {after:?} must become readable within 60 s, got {}",
            read.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_never_passes_a_transaction_that_is_still_open() {
    let _serial = serial().await;
    // With and without group commit (ADR 0027): the store's own appends go through it.
    for group_commit in [false, true] {
        reader_never_passes_an_open_transaction(group_commit).await;
    }
}

async fn reader_never_passes_an_open_transaction(group_commit: bool) {
    // A short settle wait: the open transaction below is never going to end on its own.
    let Some(store) = common::store_guarded_with(|b| {
        b.read_settle_timeout(Duration::from_millis(50))
            .group_commit(group_commit)
    })
    .await
    else {
        return;
    };
    let (early, a_stream, b_stream) = (stream("early"), stream("a"), stream("b"));
    store
        .append(&early, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    // Once readable, an event stays readable (the horizon only moves up).
    assert_eq!(read_when(&store, Position::START, 1).await.len(), 1);

    // A begins and appends, but does not commit.
    let mut a = common::connection().await;
    let mut a_tx = a.begin().await.unwrap();
    let a_appended = store
        .append_in(&mut a_tx, &a_stream, ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    let a_xid = a_appended.position.commit;

    // B starts later (a higher transaction id), appends and commits.
    let b_appended = store
        .append(&b_stream, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    assert!(b_appended.position.commit > a_xid);

    // The reader gets what was committed before A, and nothing at or beyond A: not B's
    // committed event either, since A may still commit before it in the log order.
    let seen = read_after(&store, Position::START).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].stream, early);
    assert!(seen.iter().all(|e| e.position.commit < a_xid));
    assert_eq!(store.count_events(Position::START).await.unwrap(), 1);
    let cursor = seen[0].position;
    assert!(read_after(&store, cursor).await.is_empty());
    // Read by type (ADR 0035): neither a record nor a passed position at or beyond A,
    // whether A's type is asked for or not.
    let (wanted, other) = (vec!["Happened".to_owned()], vec!["NoSuchType".to_owned()]);
    assert_eq!(
        read_of_types(&store, Position::START, &wanted).await,
        [LogItem::Event(seen[0].clone())]
    );
    assert_eq!(
        read_of_types(&store, Position::START, &other).await,
        [LogItem::Passed(cursor)],
        "a reader of other types passes the committed event, and stops before A"
    );
    assert_eq!(
        store
            .count_events_of_types(Position::START, &wanted)
            .await
            .unwrap(),
        1
    );

    // A commits: resuming from the cursor yields A's events then B's, each once.
    a_tx.commit().await.unwrap();
    let rest = read_when(&store, cursor, 3).await;
    let streams: Vec<&StreamId> = rest.iter().map(|e| &e.stream).collect();
    assert_eq!(streams, [&a_stream, &a_stream, &b_stream]);
    assert_eq!(rest[1].position, a_appended.position);
    assert_eq!(rest[2].position, b_appended.position);
    assert!(read_after(&store, b_appended.position).await.is_empty());
    let by_type = read_of_types(&store, cursor, &wanted).await;
    let by_type: Vec<&RecordedEvent> = (by_type.iter())
        .map(|item| match item {
            LogItem::Event(record) => record,
            LogItem::Passed(p) => panic!("nothing to pass: every event is wanted ({p})"),
        })
        .collect();
    assert_eq!(by_type, rest.iter().collect::<Vec<_>>());
    assert_eq!(
        read_of_types(&store, cursor, &other).await,
        [LogItem::Passed(b_appended.position)],
        "a reader of other types passes A's and B's events once A committed"
    );
    let all = read_after(&store, Position::START).await;
    assert_eq!(all.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_transaction_leaves_no_gap_and_no_event() {
    let _serial = serial().await;
    // With and without group commit (ADR 0027): the store's own appends go through it.
    for group_commit in [false, true] {
        rolled_back_transaction_leaves_no_gap(group_commit).await;
    }
}

async fn rolled_back_transaction_leaves_no_gap(group_commit: bool) {
    let Some(store) = common::store_guarded_with(|b| {
        b.read_settle_timeout(Duration::from_millis(50))
            .group_commit(group_commit)
    })
    .await
    else {
        return;
    };
    let s = stream("a");
    let mut a = common::connection().await;
    let mut a_tx = a.begin().await.unwrap();
    store
        .append_in(&mut a_tx, &s, ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    let b = store
        .append(&stream("b"), ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    assert!(read_after(&store, Position::START).await.is_empty());
    a_tx.rollback().await.unwrap();
    let all = read_when(&store, Position::START, 1).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].position, b.position);
    // The stream A wrote to is still empty and its versions start at 1.
    let r = store
        .append(&s, ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    assert_eq!(r.version, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_killed_mid_append_leaves_the_whole_batch_or_nothing() {
    let _serial = serial().await;
    let Some(store) =
        common::store_guarded_with(|b| b.read_settle_timeout(Duration::from_millis(50))).await
    else {
        return;
    };
    let s = stream("killed");
    // The batch is written but not committed when the connection is killed.
    let mut a = common::connection().await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut a)
        .await
        .unwrap();
    let mut a_tx = a.begin().await.unwrap();
    store
        .append_in(&mut a_tx, &s, ExpectedVersion::NoStream, events(100))
        .await
        .unwrap();
    let mut killer = common::connection().await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut killer)
        .await
        .unwrap();
    assert!(killed);
    assert!(a_tx.commit().await.is_err());
    let read: Vec<RecordedEvent> = store.read_stream(&s, 1).try_collect().await.unwrap();
    assert!(read.is_empty());
    assert_eq!(store.count_events(Position::START).await.unwrap(), 0);
    // The same batch can be appended again, in full.
    let again = store
        .append(&s, ExpectedVersion::NoStream, events(100))
        .await
        .unwrap();
    assert_eq!(again.version, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_connection_killed_under_the_store_is_replaced() {
    let _serial = serial().await;
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("s");
    store
        .append(&s, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    // Kill the store's pooled connections: those whose last query named its schema.
    let mut killer = common::connection().await;
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
         AND state = 'idle' AND strpos(query, $1) > 0",
    )
    .bind(format!("\"{}\"", store.schema()))
    .fetch_all(&mut killer)
    .await
    .unwrap();
    assert!(!pids.is_empty());
    for pid in pids {
        let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut killer)
            .await
            .unwrap();
    }
    // The pool does not ping before use: the append meets a dead connection, and runs
    // again on a fresh one (safe, since appends are idempotent by event id).
    let r = store
        .append(&s, ExpectedVersion::Exact(1), events(1))
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    let read: Vec<RecordedEvent> = store.read_stream(&s, 1).try_collect().await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=r.version).collect::<Vec<_>>()
    );
}
