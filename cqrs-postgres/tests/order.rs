//! Per-stream order in the global log when an append runs inside an older transaction.
//!
//! The log is read in `(transaction id, id)` order. A caller's transaction may take its
//! id (by writing an outbox row, say) long before it appends; if another transaction
//! appends to the same stream and commits in between, an append in the older
//! transaction would sort before the event it follows. The store refuses that append
//! with a retryable `Conflict` (ADR 0009). Deterministic: two connections, no sleeps.

mod common;

use std::time::Duration;

use cqrs_core::{Error, EventData, EventLog, ExpectedVersion, Position, RecordedEvent, StreamId};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, Connection};
use futures::TryStreamExt;
use uuid::Uuid;

fn event(label: &str) -> EventData {
    EventData::new(
        "Happened",
        format!("{{\"label\":\"{label}\"}}").into_bytes(),
    )
}

/// The log's events of `stream`, in log order, once `count` of them are readable (the
/// deadline only guards against a hang: another session may hold the horizon back).
async fn stream_in_log(
    store: &PostgresEventStore,
    stream: &StreamId,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read: Vec<RecordedEvent> = store
            .read_all(Position::START, None)
            .try_collect()
            .await
            .expect("read the log");
        let mine: Vec<_> = read.into_iter().filter(|r| &r.stream == stream).collect();
        if mine.len() >= count {
            return mine;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} events of {stream} must become readable within 60 s, got {}",
            mine.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_append_inside_an_older_transaction_never_puts_a_stream_out_of_order() {
    // With notifications on, `append_in` calls the append function; with them off, it
    // tries the one-statement hot path first. Both must keep the order.
    for notify in [true, false] {
        let Some(store) = common::store_guarded_with(|b| b.notify(notify)).await else {
            return;
        };
        let stream = StreamId::new("account", Uuid::new_v4().to_string()).unwrap();

        // Transaction T takes its id first, as writing an outbox row would.
        let mut conn = common::connection().await;
        let mut older = conn.begin().await.unwrap();
        let older_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *older)
            .await
            .unwrap();

        // Another transaction appends version 1 of the stream and commits.
        let first = store
            .append(&stream, ExpectedVersion::NoStream, vec![event("v1")])
            .await
            .unwrap();
        assert!(
            first.position.commit > u64::try_from(older_xid).unwrap(),
            "the setup: version 1 was written by a newer transaction than T"
        );

        // T appends version 2: it would sort before version 1 in the log. Refused, as a
        // conflict that a retry in a new transaction resolves.
        let refused = store
            .append_in(
                &mut older,
                &stream,
                ExpectedVersion::Exact(1),
                vec![event("v2")],
            )
            .await;
        match &refused {
            Err(e @ Error::Conflict { actual: 1, .. }) => assert!(e.is_conflict()),
            other => panic!(
                "(notify {notify}) an append in a transaction older than the stream's head \
                 must be a retryable Conflict, got {other:?}"
            ),
        }
        // The caller's transaction is still usable after the refusal (a savepoint), and
        // commits without the event.
        older.commit().await.unwrap();
        let log = stream_in_log(&store, &stream, 1).await;
        assert_eq!(log.len(), 1, "the refused event was not written");

        // The retry, in a new transaction: written after version 1, in order.
        let mut retry = conn.begin().await.unwrap();
        let second = store
            .append_in(
                &mut retry,
                &stream,
                ExpectedVersion::Exact(1),
                vec![event("v2")],
            )
            .await
            .unwrap();
        retry.commit().await.unwrap();
        assert_eq!(second.version, 2);
        let log = stream_in_log(&store, &stream, 2).await;
        assert_eq!(
            log.iter().map(|r| r.version).collect::<Vec<_>>(),
            vec![1, 2],
            "(notify {notify}) read_all yields the stream's versions in order"
        );
        assert!(log[0].position < log[1].position);
    }
}
