//! A row changed below the store (a hand edit, a damaged page) is refused as
//! `Error::Corrupt`, never decoded: each event and snapshot row carries a CRC32C.

mod common;

use cqrs_core::{
    Error, EventData, EventLog, ExpectedVersion, Position, SnapshotIgnored, SnapshotRecord,
    SnapshotStore, StreamId, StreamItem,
};
use cqrs_postgres::sqlx::{self, AssertSqlSafe};
use futures::StreamExt;

async fn execute(store: &cqrs_postgres::PostgresEventStore, sql: &str) {
    let sql = sql.replace("{s}", &format!("\"{}\"", store.schema()));
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .expect("the test's SQL");
}

fn corrupt_at(item: &Result<cqrs_core::RecordedEvent, Error>, at: &str) -> bool {
    matches!(item, Err(Error::Corrupt { location, reason })
        if location.contains(at) && reason.contains("checksum mismatch"))
}

#[tokio::test]
async fn a_hand_edited_event_is_corrupt_and_the_rest_reads() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = StreamId::new("account", "a").unwrap();
    let deposit = |cents: u32| EventData::new("Deposited", format!(r#"{{"cents":{cents}}}"#));
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![deposit(100), deposit(5)],
        )
        .await
        .unwrap();
    // The payload, then the type: each alone is caught.
    for edit in [
        r#"payload = convert_to('{"cents":900}', 'UTF8')"#,
        "event_type = 'Withdrawn'",
    ] {
        execute(
            &store,
            &format!("UPDATE {{s}}.events SET {edit} WHERE version = 1"),
        )
        .await;
        let read: Vec<_> = store.read_stream(&s, 1).collect().await;
        assert!(
            corrupt_at(&read[0], "account/a version 1"),
            "{edit}: {read:?}"
        );
        assert_eq!(read[1].as_ref().unwrap().payload, br#"{"cents":5}"#);
        let log: Vec<_> = store.read_all(Position::START, None).collect().await;
        assert!(
            corrupt_at(&log[0], "account/a version 1"),
            "{edit}: {log:?}"
        );
        assert!(log[1].is_ok());
    }
    // A row written before checksums existed (no checksum) reads as it is.
    execute(
        &store,
        "UPDATE {s}.events SET checksum = NULL WHERE version = 1",
    )
    .await;
    let read: Vec<_> = store.read_stream(&s, 1).collect().await;
    let first = read[0].as_ref().unwrap();
    assert_eq!(
        (first.event_type.as_str(), &first.payload[..]),
        ("Withdrawn", &br#"{"cents":900}"#[..])
    );
}

#[tokio::test]
async fn a_hand_edited_snapshot_is_ignored() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = StreamId::new("account", "b").unwrap();
    let events = (0..3)
        .map(|_| EventData::new("Deposited", r#"{"cents":1}"#))
        .collect();
    store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let snapshot = SnapshotRecord {
        version: 2,
        schema_version: 1,
        payload: br#"{"balance":2}"#.to_vec(),
    };
    store.save_snapshot(&s, snapshot.clone()).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snapshot));
    execute(
        &store,
        r#"UPDATE {s}.snapshots SET payload = convert_to('{"balance":2000}', 'UTF8')"#,
    )
    .await;
    assert_eq!(store.load_snapshot(&s).await.unwrap(), None);
    let items: Vec<_> = store.read_stream_from_snapshot(&s).collect().await;
    match &items[0] {
        Ok(StreamItem::SnapshotIgnored(SnapshotIgnored::Damaged { reason })) => {
            assert!(reason.contains("checksum mismatch"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Then the whole stream, from version 1.
    assert_eq!(items.len(), 4);
}
