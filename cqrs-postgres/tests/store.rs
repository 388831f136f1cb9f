//! The event-store behaviour of `PostgresEventStore`, each test in a fresh schema.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use cqrs_core::{
    AppendResult, CheckpointStore, Codec, DomainEvent, Error, EventData, EventLog, ExpectedVersion,
    Inspect, JsonCodec, Metadata, Position, RecordedEvent, SnapshotRecord, SnapshotStore, StreamId,
    StreamItem,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

fn event(n: u32) -> EventData {
    EventData::new("Happened", format!("{{\"n\":{n}}}").into_bytes())
}

fn stream(kind: &str) -> StreamId {
    StreamId::new(kind, Uuid::new_v4().to_string()).unwrap()
}

async fn all(store: &PostgresEventStore, after: Position) -> Vec<RecordedEvent> {
    store.read_all(after, None).try_collect().await.unwrap()
}

async fn of(store: &PostgresEventStore, s: &StreamId) -> Vec<RecordedEvent> {
    store.read_stream(s, 1).try_collect().await.unwrap()
}

/// Joins a spawned task, failing the test if it does not finish within a minute (a
/// generous deadline against a hang, never a timing assertion).
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("a spawned task did not finish within 60 s")
        .expect("a spawned task panicked")
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_and_reads_back_the_full_envelope() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    let metadata = Metadata::new()
        .with_correlation_id(Uuid::new_v4())
        .with_causation_id(Uuid::new_v4())
        .with_value("user", "ada");
    let first = event(1)
        .with_schema_version(3)
        .with_metadata(metadata.clone());
    let before = SystemTime::now() - Duration::from_secs(60);
    let appended = store
        .append(&s, ExpectedVersion::NoStream, vec![first.clone(), event(2)])
        .await
        .unwrap();
    assert_eq!(appended.version, 2);
    let read = of(&store, &s).await;
    assert_eq!(read.len(), 2);
    let r = &read[0];
    assert_eq!(r.event_id, first.event_id);
    assert_eq!(r.stream, s);
    assert_eq!(r.version, 1);
    assert_eq!(r.event_type, "Happened");
    assert_eq!(r.schema_version, 3);
    assert_eq!(r.payload, first.payload);
    assert_eq!(r.metadata, metadata);
    assert!(r.recorded_at > before);
    assert!(r.recorded_at < SystemTime::now() + Duration::from_secs(60));
    assert_eq!(read[1].version, 2);
    assert_eq!(read[1].position, appended.position);
    assert!(read[0].position < read[1].position);
    // Reading from a later version, and a missing stream.
    let tail: Vec<_> = store.read_stream(&s, 2).try_collect().await.unwrap();
    assert_eq!(tail.len(), 1);
    assert!(of(&store, &stream("account")).await.is_empty());
    assert_eq!(
        store.find_event(&s, first.event_id).await.unwrap().as_ref(),
        Some(r)
    );
    assert_eq!(
        store
            .find_event(&stream("x"), first.event_id)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expected_versions_are_checked() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    let conflict = |r: Result<_, Error>, want: u64| match r {
        Err(Error::Conflict { actual, .. }) => assert_eq!(actual, want),
        other => panic!("expected a conflict at {want}, got {other:?}"),
    };
    conflict(
        store
            .append(&s, ExpectedVersion::StreamExists, vec![event(0)])
            .await,
        0,
    );
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(1), vec![event(0)])
            .await,
        0,
    );
    store
        .append(&s, ExpectedVersion::Exact(0), vec![event(1)])
        .await
        .unwrap();
    conflict(
        store
            .append(&s, ExpectedVersion::NoStream, vec![event(0)])
            .await,
        1,
    );
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(u64::MAX), vec![event(0)])
            .await,
        1,
    );
    store
        .append(&s, ExpectedVersion::StreamExists, vec![event(2)])
        .await
        .unwrap();
    let r = store
        .append(&s, ExpectedVersion::Any, vec![event(3), event(4)])
        .await
        .unwrap();
    assert_eq!(r.version, 4);
    let versions: Vec<u64> = of(&store, &s).await.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_are_idempotent_by_event_id_like_the_memory_store() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    let (a, b, c) = (event(1), event(2), event(3));
    let first = store
        .append(&s, ExpectedVersion::NoStream, vec![a.clone(), b.clone()])
        .await
        .unwrap();
    // Full match: the original result, even though NoStream no longer holds.
    let again = store
        .append(&s, ExpectedVersion::NoStream, vec![a.clone(), b.clone()])
        .await
        .unwrap();
    let duplicate = AppendResult {
        duplicate: true,
        ..first
    };
    assert!(!first.duplicate);
    assert_eq!(again, duplicate);
    // A suffix that is still consecutive is a full match too (like the memory store).
    let tail = store
        .append(&s, ExpectedVersion::Exact(7), vec![b.clone()])
        .await
        .unwrap();
    assert_eq!(tail, duplicate);
    // Partial match or wrong order: a conflict at the stream's version.
    for batch in [vec![a.clone(), c.clone()], vec![b.clone(), a.clone()]] {
        match store.append(&s, ExpectedVersion::Any, batch).await {
            Err(Error::Conflict { actual: 2, .. }) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    // An id of another stream.
    let other = stream("account");
    match store
        .append(&other, ExpectedVersion::Any, vec![c.clone(), a.clone()])
        .await
    {
        Err(Error::DuplicateEventId {
            event_id,
            existing_stream,
        }) => {
            assert_eq!(event_id, a.event_id);
            assert_eq!(existing_stream, s);
        }
        r => panic!("expected a duplicate id, got {r:?}"),
    }
    // Bad batches.
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, vec![c.clone(), c.clone()])
            .await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(of(&store, &s).await.len(), 2);
    assert!(of(&store, &other).await.is_empty());
    assert_eq!(store.count_events(Position::START).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn of_concurrent_appends_expecting_one_version_exactly_one_wins() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move {
                store
                    .append(
                        &s,
                        ExpectedVersion::Exact(1),
                        vec![event(i), event(i + 100)],
                    )
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match join(task).await {
            Ok(r) => {
                won += 1;
                assert_eq!(r.version, 3);
            }
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won, 1);
    // `Any` appends racing on one stream all land, without holes.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(
                async move { store.append(&s, ExpectedVersion::Any, vec![event(i)]).await },
            )
        })
        .collect();
    for task in tasks {
        join(task).await.unwrap();
    }
    let versions: Vec<u64> = of(&store, &s).await.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=15).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_log_resumes_from_any_position_without_gaps_or_repeats() {
    // With and without group commit (ADR 0027).
    for group_commit in [false, true] {
        log_resumes_without_gaps_or_repeats(group_commit).await;
    }
}

async fn log_resumes_without_gaps_or_repeats(group_commit: bool) {
    let Some(store) = common::store_guarded_with(|b| b.group_commit(group_commit)).await else {
        return;
    };
    // Concurrent writers over a few streams, batches of 1 to 3.
    let tasks: Vec<_> = (0..8u32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = stream("w");
                for i in 0..5u32 {
                    let batch = (0..=(i + w) % 3)
                        .map(|j| event(w * 100 + i * 10 + j))
                        .collect();
                    store.append(&s, ExpectedVersion::Any, batch).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        join(task).await;
    }
    let log = all(&store, Position::START).await;
    let total = store.count_events(Position::START).await.unwrap();
    assert_eq!(u64::try_from(log.len()).unwrap(), total);
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    let ids: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), log.len());
    // Within a stream the log keeps version order.
    for s in log.iter().map(|e| &e.stream).collect::<HashSet<_>>() {
        let versions: Vec<u64> = log
            .iter()
            .filter(|e| &e.stream == s)
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
    // Resume after any position: exactly the rest; pages of 7 reassemble the log.
    for (i, e) in log.iter().enumerate().step_by(5) {
        let rest = all(&store, e.position).await;
        assert_eq!(rest.as_slice(), &log[i + 1..]);
        assert_eq!(
            store.count_events(e.position).await.unwrap(),
            u64::try_from(rest.len()).unwrap()
        );
    }
    let mut paged = Vec::new();
    let mut at = Position::START;
    loop {
        // Pages that never end would pass the log's length: fail instead of spinning.
        assert!(paged.len() <= log.len(), "paging yields more than the log");
        let page: Vec<_> = store.read_all(at, Some(7)).try_collect().await.unwrap();
        let Some(last) = page.last() else { break };
        at = last.position;
        paged.extend(page);
    }
    assert_eq!(paged, log);
    assert!(
        store
            .read_all(Position::new(u64::MAX, u64::MAX), None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_keep_the_highest_version_and_checkpoints_round_trip() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    assert_eq!(store.load_snapshot(&s).await.unwrap(), None);
    // The stream reaches version 9: a snapshot it has not reached would be replaced.
    store
        .append(&s, ExpectedVersion::NoStream, (1..=9).map(event).collect())
        .await
        .unwrap();
    let snap = |version, byte| SnapshotRecord {
        version,
        schema_version: 2,
        payload: vec![byte; 3],
    };
    store.save_snapshot(&s, snap(5, 1)).await.unwrap();
    store.save_snapshot(&s, snap(3, 2)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snap(5, 1)));
    store.save_snapshot(&s, snap(5, 3)).await.unwrap();
    store.save_snapshot(&s, snap(9, 4)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snap(9, 4)));
    assert!(
        store
            .save_snapshot(&s, snap(u64::MAX, 0))
            .await
            .is_err_and(|e| matches!(e, Error::InvalidInput { .. }))
    );

    assert_eq!(store.load_checkpoint("p").await.unwrap(), None);
    store
        .save_checkpoint("p", Position::new(7, 9))
        .await
        .unwrap();
    store
        .save_checkpoint("p", Position::new(8, 1))
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("p").await.unwrap(),
        Some(Position::new(8, 1))
    );
    let odd = "it's \"quoted\" — ünïcödé; DROP TABLE x; --";
    store
        .save_checkpoint(odd, Position::new(1, 2))
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint(odd).await.unwrap(),
        Some(Position::new(1, 2))
    );
    for bad in ["", "a\0b", &"n".repeat(257)] {
        assert!(matches!(
            store.load_checkpoint(bad).await,
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            store.save_checkpoint(bad, Position::START).await,
            Err(Error::InvalidInput { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_stream_ids_and_metadata_round_trip_or_are_refused_clearly() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let ids = [
        "it's \"quoted\"'); DROP TABLE events; --".to_owned(),
        "ünïcödé ✓ 日本 🚀".to_owned(),
        "slash/in/id and \\backslash".to_owned(),
        "x".repeat(StreamId::MAX_ID_LEN),
    ];
    let big = "é".repeat(5_000); // 10 kB
    let metadata = Metadata::new()
        .with_value("quote", "it's \"q\"")
        .with_value("nul", "a\0b")
        .with_value("unicode", "ünïcödé 🚀")
        .with_value("big", big.clone())
        .with_value("it's a key\0", "v");
    for id in &ids {
        let s = StreamId::new("odd'type \"ü\"", id).unwrap();
        let e = EventData::new("Type 'with' \"quotes\" ü", big.clone().into_bytes())
            .with_metadata(metadata.clone());
        store
            .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
            .await
            .unwrap();
        let read = of(&store, &s).await;
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].stream, s);
        assert_eq!(read[0].stream.id(), id);
        assert_eq!(read[0].event_type, e.event_type);
        assert_eq!(read[0].payload, e.payload);
        assert_eq!(read[0].metadata, metadata);
    }
    // Refused before any SQL: NUL and over-long ids, NUL event types.
    assert!(StreamId::new("a", "x\0y").is_err());
    assert!(StreamId::new("a", "x".repeat(StreamId::MAX_ID_LEN + 1)).is_err());
    let s = stream("a");
    assert!(matches!(
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![EventData::new("a\0b", vec![])]
            )
            .await,
        Err(Error::InvalidInput { .. })
    ));
    // Binary payloads are bytes, not text.
    let binary = EventData::new("Bin", vec![0u8, 255, 0, 10]);
    store
        .append(&s, ExpectedVersion::Any, vec![binary.clone()])
        .await
        .unwrap();
    assert_eq!(of(&store, &s).await[0].payload, binary.payload);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counted {
    Happened { n: u32 },
}

impl DomainEvent for Counted {
    const EVENT_TYPES: &'static [&'static str] = &["Happened"];
    fn event_type(&self) -> &'static str {
        "Happened"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_records_are_typed_errors_naming_stream_and_version() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![
                event(1),
                EventData::new("Happened", b"not json".to_vec()),
                event(3),
            ],
        )
        .await
        .unwrap();
    // A payload that does not decode: the codec names the record.
    let read = of(&store, &s).await;
    match JsonCodec::new().decode::<Counted>(&read[1]) {
        Err(Error::Decode {
            stream, version, ..
        }) => {
            assert_eq!(stream, s);
            assert_eq!(version, 2);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // Metadata damaged in the database: a corrupt record, the others still readable.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{}\".events SET metadata = '{{\"values\": 5}}' WHERE version = 3",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let items: Vec<_> = futures::StreamExt::collect(store.read_stream(&s, 1)).await;
    assert!(items[0].is_ok() && items[1].is_ok());
    match &items[2] {
        Err(Error::Corrupt { location, reason }) => {
            assert!(location.contains(&s.to_string()), "{location}");
            assert!(location.contains("version 3"), "{location}");
            assert!(reason.contains("metadata"), "{reason}");
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_with_a_hole_after_the_snapshot_is_a_corrupt_error() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let s = stream("account");
    store
        .append(&s, ExpectedVersion::NoStream, (1..=5).map(event).collect())
        .await
        .unwrap();
    let snapshot = SnapshotRecord {
        version: 2,
        schema_version: 1,
        payload: b"state".to_vec(),
    };
    store.save_snapshot(&s, snapshot.clone()).await.unwrap();
    let items: Vec<StreamItem> = store
        .read_stream_from_snapshot(&s)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        items.len(),
        4,
        "the snapshot, then events 3 to 5: {items:?}"
    );
    assert_eq!(items[0], StreamItem::Snapshot(snapshot));
    // The event right after the snapshot deleted behind the store's back.
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM \"{}\".events WHERE version = 3",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let items: Vec<_> = futures::StreamExt::collect(store.read_stream_from_snapshot(&s)).await;
    // The error comes first, so a loader stops before applying anything.
    match &items[..] {
        [Err(Error::Corrupt { location, reason }), Ok(_), Ok(_)] => {
            assert!(location.contains(&s.to_string()), "{location}");
            assert!(reason.contains("version 3"), "{reason}");
        }
        other => panic!("expected a corrupt-record error, then events 4 and 5, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_names_are_validated_and_migrations_rerun_safely() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    for bad in [
        "",
        "Bad",
        "a\"b",
        "a;b",
        "pg_x",
        "1a",
        "é",
        "information_schema",
        "public",
    ] {
        assert!(matches!(
            PostgresEventStore::builder(store.pool().clone())
                .schema(bad)
                .build(),
            Err(cqrs_postgres::Error::InvalidSchema { .. })
        ));
    }
    // Many nodes migrating at once take turns; running it again changes nothing.
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for task in tasks {
        assert_eq!(join(task).await.unwrap(), 5, "the latest migration");
    }
}

#[tokio::test]
async fn an_unreachable_server_fails_with_its_real_cause() {
    // Needs no server: nothing listens on port 1.
    let err = PostgresEventStore::connect_pool("postgres://postgres@127.0.0.1:1/postgres", 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, cqrs_postgres::Error::Connect { .. }),
        "{err:?}"
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("refused"), "{cause}");
}
