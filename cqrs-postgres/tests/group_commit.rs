//! Group commit (ADR 0027): appends queued while a batch is in flight are written
//! together, and each still gets its own outcome.
//!
//! Deterministic: a second connection locks the events table, so the store's first
//! append (a batch of one) waits on the lock; the appends handed to the store while it
//! waits queue up and go out as the next batch once the lock is released. Appends of
//! one batch share a transaction id. The tests of one batch at a time set the pipeline
//! depth to 1; the pipelined ones (more than one write in flight) set it to 2 or 4.

mod common;

use std::future::Future;
use std::time::Duration;

use cqrs_core::{
    AppendResult, Error, EventData, EventLog, ExpectedVersion, Position, RecordedEvent, Result,
    StreamId,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use futures::TryStreamExt;
use futures::future::join_all;
use uuid::Uuid;

fn event(label: &str) -> EventData {
    EventData::new(
        "Happened",
        format!("{{\"label\":\"{label}\"}}").into_bytes(),
    )
}

fn stream(name: &str) -> StreamId {
    StreamId::new("gc", format!("{name}-{}", Uuid::new_v4())).expect("valid stream id")
}

/// A connection holding an `EXCLUSIVE` lock on the store's events table (appends wait;
/// reads do not), until it is rolled back.
async fn lock_events(store: &PostgresEventStore) -> PgConnection {
    let mut conn = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "BEGIN; LOCK TABLE \"{}\".events IN EXCLUSIVE MODE",
        store.schema()
    )))
    .execute(&mut conn)
    .await
    .expect("lock the events table");
    conn
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
            "{n} append(s) must wait on the table lock within 30 s ({waiting} do)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `queued` while the table is locked and one append is waiting on the lock, so
/// that all of them are handed to the store before that append's batch ends; then
/// releases the lock and returns the waiting append's result and theirs.
async fn while_a_batch_waits<F>(
    store: &PostgresEventStore,
    queued: Vec<F>,
) -> (AppendResult, Vec<Result<AppendResult>>)
where
    F: Future<Output = Result<AppendResult>>,
{
    let mut lock = lock_events(store).await;
    let first = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(
                    &stream("first"),
                    ExpectedVersion::NoStream,
                    vec![event("first")],
                )
                .await
        })
    };
    lock_waiters(store, 1).await;
    // One poll hands every append to the store's queue (the hand-over is synchronous);
    // none can finish while the first batch waits on the lock.
    let mut all = std::pin::pin!(join_all(queued));
    assert!(futures::poll!(all.as_mut()).is_pending());
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release the lock");
    let results = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the queued appends end within 60 s");
    let first = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .expect("the first append ends within 60 s")
        .expect("the first append's task")
        .expect("the first append");
    (first, results)
}

/// The log's events of `streams` once `count` are readable, in log order.
async fn in_log(
    store: &PostgresEventStore,
    streams: &[&StreamId],
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read: Vec<RecordedEvent> = store
            .read_all(Position::START, None)
            .try_collect()
            .await
            .expect("read the log");
        let mine: Vec<_> = read
            .into_iter()
            .filter(|r| streams.contains(&&r.stream))
            .collect();
        if mine.len() >= count {
            return mine;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} events must become readable within 60 s, got {}",
            mine.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_batch_settles_each_append_on_its_own() {
    let Some(store) =
        common::store_guarded_with(|b| b.group_commit(true).group_commit_pipeline(1)).await
    else {
        return;
    };
    let ok = stream("ok");
    let conflicting = stream("conflicting");
    let replayed = stream("replayed");
    let fresh = stream("fresh");
    store
        .append(&ok, ExpectedVersion::NoStream, vec![event("ok 1")])
        .await
        .expect("seed ok");
    store
        .append(
            &conflicting,
            ExpectedVersion::NoStream,
            vec![event("c 1"), event("c 2")],
        )
        .await
        .expect("seed conflicting");
    let original = vec![event("r 1"), event("r 2")];
    let stored = store
        .append(&replayed, ExpectedVersion::NoStream, original.clone())
        .await
        .expect("seed replayed");

    let (first, results) = while_a_batch_waits(
        &store,
        vec![
            store.append(&ok, ExpectedVersion::Exact(1), vec![event("ok 2")]),
            store.append(&conflicting, ExpectedVersion::Exact(1), vec![event("c x")]),
            // The same ids again, expecting no stream: the original result.
            store.append(&replayed, ExpectedVersion::NoStream, original.clone()),
            store.append(
                &fresh,
                ExpectedVersion::NoStream,
                vec![event("f 1"), event("f 2"), event("f 3")],
            ),
            // The same stream twice: written after the first, in a later batch.
            store.append(&ok, ExpectedVersion::Exact(2), vec![event("ok 3")]),
        ],
    )
    .await;
    let mut results = results.into_iter();
    let ok_2 = results.next().unwrap().expect("ok 2 is appended");
    assert_eq!((ok_2.version, ok_2.duplicate), (2, false));
    match results.next().unwrap() {
        Err(Error::Conflict {
            stream, actual: 2, ..
        }) => assert_eq!(stream, conflicting),
        other => panic!("expected a conflict at version 2 for its caller only, got {other:?}"),
    }
    let replay = results
        .next()
        .unwrap()
        .expect("the re-append is idempotent");
    assert!(replay.duplicate, "{replay:?}");
    assert_eq!(
        (replay.version, replay.position),
        (stored.version, stored.position)
    );
    let fresh_3 = results.next().unwrap().expect("fresh is appended");
    assert_eq!((fresh_3.version, fresh_3.duplicate), (3, false));
    let ok_3 = results
        .next()
        .unwrap()
        .expect("ok 3 is appended after ok 2");
    assert_eq!(ok_3.version, 3);

    // ok 2 and fresh went out as one batch (one transaction) after the first append's;
    // the second append to `ok` in a later one.
    assert_eq!(ok_2.position.commit, fresh_3.position.commit);
    assert!(ok_2.position.commit > first.position.commit);
    assert!(ok_3.position > ok_2.position);

    // The log holds each stream in version order, each event once.
    let log = in_log(
        &store,
        &[&ok, &conflicting, &replayed, &fresh],
        3 + 2 + 2 + 3,
    )
    .await;
    for s in [&ok, &conflicting, &replayed, &fresh] {
        let versions: Vec<u64> = log
            .iter()
            .filter(|r| &r.stream == s)
            .map(|r| r.version)
            .collect();
        let expected: Vec<u64> = (1..=u64::try_from(versions.len()).unwrap()).collect();
        assert_eq!(versions, expected, "{s}");
    }
    assert_eq!(log.len(), 10);
    let labels: Vec<&[u8]> = log
        .iter()
        .filter(|r| r.stream == conflicting)
        .map(|r| r.payload.as_slice())
        .collect();
    assert!(
        !labels.iter().any(|p| p.windows(3).any(|w| w == b"c x")),
        "the conflicting append wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_statement_fails_settles_each_append_alone() {
    let Some(store) =
        common::store_guarded_with(|b| b.group_commit(true).group_commit_pipeline(1)).await
    else {
        return;
    };
    let holder = stream("holder");
    let taken = event("taken");
    store
        .append(&holder, ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .expect("seed holder");
    let any = stream("any");
    let any_events = vec![event("a 1")];
    let any_first = store
        .append(&any, ExpectedVersion::Any, any_events.clone())
        .await
        .expect("seed any");
    let thief = stream("thief");
    let plain = stream("plain");

    let (_, results) = while_a_batch_waits(
        &store,
        vec![
            store.append(&plain, ExpectedVersion::NoStream, vec![event("p 1")]),
            // An id another stream holds: the batch's statement fails on the unique
            // index; only this caller gets the error.
            store.append(&thief, ExpectedVersion::NoStream, vec![taken.clone()]),
            // The same ids with `Any`: the version check passes, the insert would
            // repeat the ids; recognised as the original append.
            store.append(&any, ExpectedVersion::Any, any_events.clone()),
        ],
    )
    .await;
    let mut results = results.into_iter();
    let p = results.next().unwrap().expect("plain is appended");
    assert_eq!((p.version, p.duplicate), (1, false));
    match results.next().unwrap() {
        Err(Error::DuplicateEventId {
            event_id,
            existing_stream,
        }) => {
            assert_eq!(event_id, taken.event_id);
            assert_eq!(existing_stream, holder);
        }
        other => panic!("expected the duplicate id for its caller only, got {other:?}"),
    }
    let again = results
        .next()
        .unwrap()
        .expect("the re-append is idempotent");
    assert!(again.duplicate);
    assert_eq!(again.position, any_first.position);
    let log = in_log(&store, &[&plain, &thief, &any], 2).await;
    assert_eq!(log.len(), 2, "plain 1 and any 1, once each: {log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_keep_every_stream_whole_and_in_order() {
    for depth in [1, 2, 4] {
        contended_streams_stay_whole_and_in_order(depth).await;
    }
}

async fn contended_streams_stay_whole_and_in_order(depth: usize) {
    let Some(store) =
        common::store_guarded_with(|b| b.group_commit(true).group_commit_pipeline(depth)).await
    else {
        return;
    };
    let streams: Vec<StreamId> = (0..8).map(|i| stream(&format!("s{i}"))).collect();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut written = 0u64;
                for i in 0..40usize {
                    let s = &streams[(t * 7 + i) % streams.len()];
                    // Read the head and expect it: conflicts with the other tasks are
                    // part of the test, and are retried.
                    loop {
                        let head = store
                            .read_stream(s, 1)
                            .try_collect::<Vec<_>>()
                            .await
                            .expect("read the stream")
                            .len();
                        let expected = if head == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(u64::try_from(head).unwrap())
                        };
                        match store
                            .append(s, expected, vec![event(&format!("{t}/{i}"))])
                            .await
                        {
                            Ok(result) => {
                                assert_eq!(result.version, u64::try_from(head).unwrap() + 1);
                                written += 1;
                                break;
                            }
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("append failed: {e}"),
                        }
                    }
                }
                written
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        written += tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the appends end within 120 s")
            .expect("the task");
    }
    assert_eq!(written, 16 * 40);
    let refs: Vec<&StreamId> = streams.iter().collect();
    let log = in_log(&store, &refs, 16 * 40).await;
    assert_eq!(log.len(), 16 * 40);
    for s in &streams {
        let versions: Vec<u64> = log
            .iter()
            .filter(|r| &r.stream == s)
            .map(|r| r.version)
            .collect();
        let expected: Vec<u64> = (1..=u64::try_from(versions.len()).unwrap()).collect();
        assert_eq!(versions, expected, "{s} in log order");
    }
}

/// Two writes in flight at once, never two of one stream: while a lone append to `x`
/// waits on the table lock, a batch of an append to `y` starts on the second slot (it
/// waits on the lock too: pipelined), and the second append to `x` stays queued until
/// the first has committed, then sees its event.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_batches_never_hold_one_stream_twice() {
    let Some(store) =
        common::store_guarded_with(|b| b.group_commit(true).group_commit_pipeline(2)).await
    else {
        return;
    };
    let x = stream("x");
    let y = stream("y");
    let z = stream("z");
    let mut lock = lock_events(&store).await;
    let first = {
        let (store, x) = (store.clone(), x.clone());
        tokio::spawn(async move {
            store
                .append(&x, ExpectedVersion::NoStream, vec![event("x 1")])
                .await
        })
    };
    lock_waiters(&store, 1).await;
    // `x` is in flight: its second append queues although a slot is free. `y` queues
    // behind it and goes out at once as a batch on the free slot.
    let x_2 = {
        let (store, x) = (store.clone(), x.clone());
        tokio::spawn(async move {
            store
                .append(&x, ExpectedVersion::Exact(1), vec![event("x 2")])
                .await
        })
    };
    let y_1 = {
        let (store, y) = (store.clone(), y.clone());
        tokio::spawn(async move {
            store
                .append(&y, ExpectedVersion::NoStream, vec![event("y 1")])
                .await
        })
    };
    lock_waiters(&store, 2).await;
    // Both slots taken: `z` queues too.
    let z_1 = {
        let (store, z) = (store.clone(), z.clone());
        tokio::spawn(async move {
            store
                .append(&z, ExpectedVersion::NoStream, vec![event("z 1")])
                .await
        })
    };
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release the lock");
    let mut results = Vec::new();
    for task in [first, x_2, y_1, z_1] {
        let result = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the appends end within 60 s")
            .expect("the append's task");
        results.push(result.expect("every append is written"));
    }
    let [x_1, x_2, y_1, z_1] = <[AppendResult; 4]>::try_from(results).expect("four results");
    assert_eq!((x_1.version, x_2.version), (1, 2));
    assert_eq!((y_1.version, z_1.version), (1, 1));
    assert!(!x_2.duplicate && !y_1.duplicate && !z_1.duplicate);
    // The second append to `x` was written in a transaction after the first's.
    assert!(x_2.position.commit > x_1.position.commit, "{x_1:?} {x_2:?}");
    let log = in_log(&store, &[&x, &y, &z], 4).await;
    assert_eq!(log.len(), 4, "each event once: {log:?}");
    let versions: Vec<u64> = log
        .iter()
        .filter(|r| r.stream == x)
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, vec![1, 2], "x in log order");
}
