//! Deleting streams on PostgreSQL while appends run: races with and without group
//! commit, a delete waiting for an append in flight, a batch in which only the append
//! to the deleted stream fails. Each test drops its schema, also when it fails.

mod common;

use std::time::Duration;

use common::life::{connect, event, events, lock_waiters, log, read, stream, versions, within};
use cqrs_core::{
    AppendResult, Error, EventLog, ExpectedVersion, Position, STREAM_DELETED, StreamDeleted,
    StreamId, StreamLifecycle,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection};
use futures::future::join_all;

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
    let Some(store) = common::store_guarded_with(|b| b.group_commit(false)).await else {
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
