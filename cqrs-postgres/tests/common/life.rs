//! Helpers of the stream lifecycle tests (`lifecycle.rs`, `lifecycle_log.rs`).

use std::future::Future;
use std::time::Duration;

use cqrs_core::{EventData, EventLog, Position, RecordedEvent, StreamId};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, Connection, PgConnection};
use futures::TryStreamExt;
use uuid::Uuid;

/// An event of type `Happened` with `label` in its payload.
pub fn event(label: &str) -> EventData {
    EventData::new(
        "Happened",
        format!("{{\"label\":\"{label}\"}}").into_bytes(),
    )
}

/// `n` events labelled `label-0`, `label-1`, ...
pub fn events(label: &str, n: usize) -> Vec<EventData> {
    (0..n).map(|i| event(&format!("{label}-{i}"))).collect()
}

/// A fresh stream named after `name`.
pub fn stream(name: &str) -> StreamId {
    StreamId::new("life", format!("{name}-{}", Uuid::new_v4())).expect("valid stream id")
}

/// The stream's records from version 1.
pub async fn read(store: &PostgresEventStore, s: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(s, 1)
        .try_collect()
        .await
        .expect("read the stream")
}

/// The log after `after`, all of it.
pub async fn log(store: &PostgresEventStore, after: Position) -> Vec<RecordedEvent> {
    store
        .read_all(after, None)
        .try_collect()
        .await
        .expect("read the log")
}

/// Within 60 s, or the test fails naming `what`.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} must end within 60 s"))
}

/// Waits (at most 30 s) until `n` sessions wait for a lock on the store's tables.
pub async fn lock_waiters(store: &PostgresEventStore, n: i64) {
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

/// A connection of its own to the test server.
pub async fn connect() -> PgConnection {
    PgConnection::connect(&super::database_url())
        .await
        .expect("connect")
}

/// The records' versions.
pub fn versions(records: &[RecordedEvent]) -> Vec<u64> {
    records.iter().map(|r| r.version).collect()
}
