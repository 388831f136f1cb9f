//! The sled store's own behaviour tests (the shared conformance suite runs in
//! `conformance.rs`).

use std::collections::HashSet;
use std::time::Duration;

use cqrs_core::{
    CheckpointStore, Error, EventData, EventLog, ExpectedVersion, Inspect, Metadata, Position,
    RecordedEvent, SnapshotRecord, SnapshotStore, StreamId,
};
use cqrs_sled::{Durability, SledConfig, SledEventStore};
use futures::TryStreamExt;
use uuid::Uuid;

fn event(n: u32) -> EventData {
    EventData::new("Happened", format!("{{\"n\":{n}}}").into_bytes())
}

fn stream(id: &str) -> StreamId {
    StreamId::new("thing", id).unwrap()
}

async fn all(store: &SledEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap()
}

/// Joins a spawned task, failing the test if it does not finish within a minute (a
/// guard against a hang, say of the group commit, never a timing check).
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("a spawned task did not finish within 60 s")
        .expect("a spawned task panicked")
}

#[tokio::test]
async fn appends_read_back_with_the_full_envelope_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = stream("a");
    let meta = Metadata::new()
        .with_correlation_id(Uuid::new_v4())
        .with_causation_id(Uuid::new_v4())
        .with_value("user", "ada");
    let first = event(1).with_metadata(meta.clone()).with_schema_version(3);
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        let done = store
            .append(&s, ExpectedVersion::NoStream, vec![first.clone(), event(2)])
            .await
            .unwrap();
        assert_eq!((done.version, done.position), (2, Position::new(0, 2)));
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let events: Vec<_> = store.read_stream(&s, 1).try_collect().await.unwrap();
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(
        (e.event_id, e.version, e.position),
        (first.event_id, 1, Position::new(0, 1))
    );
    assert_eq!(
        (e.schema_version, &e.metadata, &e.payload),
        (3, &meta, &first.payload)
    );
    let done = store
        .append(&s, ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert_eq!((done.version, done.position), (3, Position::new(0, 3)));
    assert_eq!(store.count_events(Position::new(0, 1)).await.unwrap(), 2);
}

#[tokio::test]
async fn streams_whose_ids_are_prefixes_or_odd_do_not_mix() {
    let store = SledEventStore::temporary().unwrap();
    let ids = ["a", "ab", "a\u{1}", "a/b", "", "ü🦀 \"x\""];
    let streams: Vec<StreamId> = ids
        .iter()
        .filter(|id| !id.is_empty())
        .map(|id| stream(id))
        .chain([
            StreamId::new("thin", "ga").unwrap(),
            StreamId::new("thing2", "a").unwrap(),
        ])
        .collect();
    for (i, s) in streams.iter().enumerate() {
        let batch = (0..=i).map(|n| event(u32::try_from(n).unwrap())).collect();
        store
            .append(s, ExpectedVersion::NoStream, batch)
            .await
            .unwrap();
    }
    for (i, s) in streams.iter().enumerate() {
        let events: Vec<_> = store.read_stream(s, 1).try_collect().await.unwrap();
        assert_eq!(events.len(), i + 1, "{s:?}");
        assert!(events.iter().all(|e| e.stream == *s));
    }
}

#[tokio::test]
async fn long_streams_and_logs_read_across_chunks() {
    let store = SledEventStore::temporary().unwrap();
    let s = stream("long");
    for chunk in 0..3 {
        let batch = (0..300).map(|n| event(chunk * 300 + n)).collect();
        store.append(&s, ExpectedVersion::Any, batch).await.unwrap();
    }
    store
        .append(&stream("other"), ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    let events: Vec<_> = store.read_stream(&s, 250).try_collect().await.unwrap();
    assert_eq!(events.len(), 651);
    assert!(events.iter().zip(250..).all(|(e, v)| e.version == v));
    let log = all(&store).await;
    assert_eq!(log.len(), 901);
    assert!(
        log.iter()
            .zip(1..)
            .all(|(e, p)| e.position == Position::new(0, p))
    );
    let page: Vec<_> = store
        .read_all(Position::new(0, 600), Some(280))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        page.first().map(|e| e.position),
        Some(Position::new(0, 601))
    );
    assert_eq!(page.len(), 280);
    let none: Vec<_> = store
        .read_all(Position::new(1, 0), None)
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn idempotent_appends_match_the_in_memory_store() {
    let store = SledEventStore::temporary().unwrap();
    let (a, b) = (stream("a"), stream("b"));
    let batch = vec![event(1), event(2)];
    let first = store
        .append(&a, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    store
        .append(&a, ExpectedVersion::Any, vec![event(3)])
        .await
        .unwrap();
    // Full match: the original result, nothing written, version check skipped.
    let again = store
        .append(&a, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(
        again,
        cqrs_core::AppendResult {
            duplicate: true,
            ..first
        }
    );
    assert_eq!(all(&store).await.len(), 3);
    // Partial match: a conflict naming the current version.
    let partial = vec![batch[0].clone(), event(9)];
    match store.append(&a, ExpectedVersion::Any, partial).await {
        Err(Error::Conflict { actual: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Out of order: a conflict too.
    let swapped = vec![batch[1].clone(), batch[0].clone()];
    assert!(
        store
            .append(&a, ExpectedVersion::Any, swapped)
            .await
            .unwrap_err()
            .is_conflict()
    );
    // Another stream's id.
    match store
        .append(&b, ExpectedVersion::Any, vec![event(5), batch[1].clone()])
        .await
    {
        Err(Error::DuplicateEventId {
            event_id,
            existing_stream,
        }) => {
            assert_eq!((event_id, existing_stream), (batch[1].event_id, a.clone()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(all(&store).await.len(), 3);
    let found = store
        .find_event(&a, batch[1].event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.version, 2);
    assert!(
        store
            .find_event(&b, batch[1].event_id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn bad_batches_and_expected_versions_are_refused() {
    let store = SledEventStore::temporary().unwrap();
    let s = stream("a");
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(Error::InvalidInput { .. })
    ));
    let e = event(1);
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, vec![e.clone(), e])
            .await,
        Err(Error::InvalidInput { .. })
    ));
    for expected in [ExpectedVersion::StreamExists, ExpectedVersion::Exact(1)] {
        match store.append(&s, expected, vec![event(1)]).await {
            Err(Error::Conflict { actual: 0, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(all(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_appends_expecting_one_version_exactly_one_wins() {
    for durability in [Durability::Flushed, Durability::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let store = SledConfig::new(dir.path())
            .durability(durability)
            .open()
            .unwrap();
        let s = stream("contended");
        let tasks: Vec<_> = (0..16)
            .map(|n| {
                let (store, s) = (store.clone(), s.clone());
                tokio::spawn(async move {
                    store
                        .append(&s, ExpectedVersion::NoStream, vec![event(n)])
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match join(task).await {
                Ok(_) => wins += 1,
                Err(e) => assert!(e.is_conflict(), "{e}"),
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(all(&store).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flushed_writers_get_gap_free_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = stream(&format!("w{w}"));
                for n in 0..20 {
                    store
                        .append(&s, ExpectedVersion::Exact(2 * n), vec![event(1), event(2)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        join(task).await;
    }
    let log = all(&store).await;
    assert_eq!(log.len(), 320);
    assert!(log.iter().zip(1..).all(|(e, p)| e.position.sequence == p));
    let ids: HashSet<_> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 320);
}

#[tokio::test]
async fn watchers_wake_on_appends() {
    let store = SledEventStore::temporary().unwrap();
    let mut watcher = store.watch();
    assert!(watcher.can_wake());
    watcher.mark_seen();
    store
        .append(&stream("a"), ExpectedVersion::Any, vec![event(1)])
        .await
        .unwrap();
    // Returns at once: an append was notified after mark_seen.
    tokio::time::timeout(Duration::from_secs(60), watcher.changed())
        .await
        .expect("an append after mark_seen wakes the watcher");
}

#[tokio::test]
async fn snapshots_keep_the_latest_and_checkpoints_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = stream("a");
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        let snap = |version| SnapshotRecord {
            version,
            schema_version: 2,
            payload: vec![1, 2],
        };
        // The stream reaches version 10: a snapshot it has not reached would be replaced.
        store
            .append(&s, ExpectedVersion::NoStream, (0..10).map(event).collect())
            .await
            .unwrap();
        store.save_snapshot(&s, snap(10)).await.unwrap();
        store.save_snapshot(&s, snap(5)).await.unwrap();
        assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snap(10)));
        assert_eq!(store.load_snapshot(&stream("b")).await.unwrap(), None);
        store
            .save_checkpoint("p", Position::new(3, 4))
            .await
            .unwrap();
        assert!(store.load_checkpoint("").await.is_err());
        store.flush().unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    assert_eq!(
        store.load_snapshot(&s).await.unwrap().map(|s| s.version),
        Some(10)
    );
    assert_eq!(
        store.load_checkpoint("p").await.unwrap(),
        Some(Position::new(3, 4))
    );
    assert_eq!(store.load_checkpoint("q").await.unwrap(), None);
}

#[tokio::test]
async fn synced_durability_appends_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let s = stream("a");
    {
        let store = SledConfig::new(dir.path())
            .durability(Durability::Synced)
            .open()
            .unwrap();
        let big = EventData::new("Big", vec![b'x'; 200 * 1024]);
        store
            .append(&s, ExpectedVersion::Any, vec![event(1), big])
            .await
            .unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let events: Vec<_> = store.read_stream(&s, 1).try_collect().await.unwrap();
    assert_eq!(events[1].payload.len(), 200 * 1024);
}

#[tokio::test]
async fn streams_are_listed_with_their_versions_and_counted() {
    let store = SledEventStore::temporary().unwrap();
    let names = ["a", "ab", "b", "a\u{7f}"];
    for (i, id) in names.iter().enumerate() {
        let batch = (0..=i).map(|n| event(u32::try_from(n).unwrap())).collect();
        store
            .append(&stream(id), ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    let snapshot = SnapshotRecord {
        version: 1,
        schema_version: 1,
        payload: vec![],
    };
    store.save_snapshot(&stream("b"), snapshot).await.unwrap();
    let mut listed: Vec<_> = store
        .list_streams()
        .map_ok(|info| (info.stream.id().to_owned(), info.version))
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    let mut want: Vec<_> = names
        .iter()
        .zip(1..)
        .map(|(id, v)| ((*id).to_owned(), v))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.streams, stats.events, stats.snapshots),
        (4, 10, Some(1))
    );
}

/// An append skips the id-index lookup of ids above the greatest stored one; after a
/// reopen (the greatest id read back from the index), stored ids, the greatest
/// included, are still found, in their own stream and in another one.
#[tokio::test]
async fn stored_ids_are_found_after_a_reopen_whatever_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = StreamId::new("account", "a").unwrap();
    let b = StreamId::new("account", "b").unwrap();
    let with_id = |id: Uuid| EventData::new("Happened", b"{}".to_vec()).with_id(id);
    // A time-ordered id, then a random one and the greatest possible one (v5 and
    // caller-made ids need not be greater than the ids before them).
    let ids = [Uuid::now_v7(), Uuid::new_v4(), Uuid::max()];
    let batch: Vec<_> = ids.iter().map(|&id| with_id(id)).collect();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        store
            .append(&a, ExpectedVersion::NoStream, batch.clone())
            .await
            .unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let again = store
        .append(&a, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.version, 3);
    for id in ids {
        match store
            .append(&b, ExpectedVersion::Any, vec![with_id(id)])
            .await
        {
            Err(Error::DuplicateEventId {
                event_id,
                existing_stream,
            }) => assert_eq!((event_id, existing_stream), (id, a.clone())),
            other => panic!("{id}: {other:?}"),
        }
    }
    let fresh = store
        .append(&b, ExpectedVersion::NoStream, vec![with_id(Uuid::now_v7())])
        .await
        .unwrap();
    assert!(!fresh.duplicate);
}
