//! Lifecycle operations below the API: the durable mark, and stores of the old layout.

use std::path::Path;
use std::sync::atomic::Ordering;

use cqrs_core::{
    EventData, EventLog, ExpectedVersion, Inspect, Position, RecordedEvent, SnapshotRecord,
    SnapshotStore, StreamId, StreamLifecycle,
};
use futures::TryStreamExt;

use crate::config::{DamagedLog, Durability, SledConfig};
use crate::mark;
use crate::open::tests::write_old_store;
use crate::open::{FORMAT_HOLES, FORMAT_KEY, FORMAT_PACKED, check_mark};
use crate::store::SledEventStore;

fn event(n: u32) -> EventData {
    EventData::new("Happened", format!("{{\"n\":{n}}}").into_bytes())
}

fn snapshot(version: u64) -> SnapshotRecord {
    SnapshotRecord {
        version,
        schema_version: 1,
        payload: b"{}".to_vec(),
    }
}

async fn read(store: &SledEventStore, s: &StreamId) -> Vec<RecordedEvent> {
    store.read_stream(s, 1).try_collect().await.unwrap()
}

/// The position the mark file holds, after checking that an open of the store as it is
/// now (as a crash would leave it once the last operation is on disk) accepts the mark.
fn checked_mark(store: &SledEventStore, path: &Path) -> u64 {
    let last = store.inner.marks.committed.load(Ordering::Acquire);
    let (damage, _) = check_mark(path, &store.inner.events, last, DamagedLog::Refuse)
        .unwrap_or_else(|e| panic!("an open now would refuse the store: {e}"));
    assert!(damage.is_none());
    match mark::read(path).unwrap() {
        Some(Ok(mark)) => mark.position,
        Some(Err(reason)) => panic!("a damaged mark: {reason}"),
        None => 0,
    }
}

/// Each operation moves the mark off the records it removes or rewrites before it
/// writes, so an open after a crash at any point finds the marked record as it was.
#[tokio::test]
async fn the_mark_never_names_a_record_an_operation_removes_or_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = SledConfig::new(&path)
        .durability(Durability::Buffered)
        .open()
        .unwrap();
    let (x, y, z) = (
        StreamId::new("t", "x").unwrap(),
        StreamId::new("t", "y").unwrap(),
        StreamId::new("t", "z").unwrap(),
    );
    store
        .append(&y, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let batch = (2..=4).map(event).collect();
    store
        .append(&x, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    store.flush().unwrap();
    assert_eq!(checked_mark(&store, &path), 4);
    let archive = read(&store, &x).await;

    // The mark's record (positions 2..=4) goes: the mark moves back to position 1.
    let tombstone = store
        .delete_stream(&x, ExpectedVersion::Exact(3))
        .await
        .unwrap();
    assert_eq!(tombstone.position, Position::new(0, 5));
    assert_eq!(checked_mark(&store, &path), 1);

    let batch = (6..=10).map(event).collect();
    store
        .append(&z, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    store.save_snapshot(&z, snapshot(4)).await.unwrap();
    store.flush().unwrap();
    assert_eq!(checked_mark(&store, &path), 10);
    // The mark's record (6..=10) is rewritten as 8..=10: the mark moves to the tombstone.
    assert_eq!(store.truncate_stream(&z, 3).await.unwrap(), 2);
    assert_eq!(checked_mark(&store, &path), 5);
    store.flush().unwrap();
    assert_eq!(checked_mark(&store, &path), 10);

    // Removing the tombstone leaves the marked record alone.
    assert_eq!(store.restore_stream(&x, archive).await.unwrap(), 3);
    assert_eq!(checked_mark(&store, &path), 10);
    // The mark's record goes again; the one before it is the restored one.
    store
        .delete_stream(&z, ExpectedVersion::Exact(5))
        .await
        .unwrap();
    assert_eq!(checked_mark(&store, &path), 4);
    store.flush().unwrap();
    assert_eq!(checked_mark(&store, &path), 11);

    // The only record goes: no record is left to mark before the tombstone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = SledConfig::new(&path)
        .durability(Durability::Buffered)
        .open()
        .unwrap();
    store
        .append(&x, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    store.flush().unwrap();
    assert_eq!(checked_mark(&store, &path), 1);
    store
        .delete_stream(&x, ExpectedVersion::Exact(1))
        .await
        .unwrap();
    assert_eq!(checked_mark(&store, &path), 0);
    drop(store);
    let store = SledConfig::new(&path).open().unwrap();
    assert_eq!(checked_mark(&store, &path), 2);
}

/// A store written in the one-event layout (format 1) can have streams truncated and
/// deleted; the changes hold across a reopen, which finds the store marked format 3.
#[tokio::test]
async fn records_of_the_one_event_layout_truncate_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old");
    let a = StreamId::new("account", "a").unwrap();
    let b = StreamId::new("account", "b").unwrap();
    let old = vec![
        (a.clone(), 1, event(1)),
        (b.clone(), 1, event(2)),
        (a.clone(), 2, event(3)),
        (a.clone(), 3, event(4)),
        (b.clone(), 2, event(5)),
    ];
    write_old_store(&path, &old);
    {
        // Without compression, so that the store keeps the mark of format 3 (holes).
        let store = SledConfig::new(&path)
            .compress_records(false)
            .open()
            .unwrap();
        store.save_snapshot(&a, snapshot(2)).await.unwrap();
        assert_eq!(store.truncate_stream(&a, 2).await.unwrap(), 1);
        let tombstone = store
            .delete_stream(&b, ExpectedVersion::Exact(2))
            .await
            .unwrap();
        assert_eq!((tombstone.version, tombstone.position.sequence), (3, 6));
    }
    let store = SledConfig::new(&path)
        .compress_records(false)
        .open()
        .unwrap();
    assert_eq!(
        store.db().get(FORMAT_KEY).unwrap().as_deref(),
        Some(FORMAT_HOLES)
    );
    let kept = read(&store, &a).await;
    let at: Vec<_> = kept
        .iter()
        .map(|e| (e.version, e.position.sequence, e.event_id))
        .collect();
    assert_eq!(at, [(2, 3, old[2].2.event_id), (3, 4, old[3].2.event_id)]);
    let b_read = read(&store, &b).await;
    assert_eq!(b_read.len(), 1);
    assert_eq!(b_read[0].position.sequence, 6);
    let log: Vec<_> = store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap();
    let positions: Vec<_> = log.iter().map(|e| e.position.sequence).collect();
    assert_eq!(positions, [3, 4, 6]);
    assert_eq!(store.count_events(Position::START).await.unwrap(), 3);
    assert_eq!(store.count_events(Position::new(0, 4)).await.unwrap(), 1);
    let next = store
        .append(&a, ExpectedVersion::Exact(3), vec![event(6)])
        .await
        .unwrap();
    assert_eq!((next.version, next.position.sequence), (4, 7));
}

/// A store marked for compressed records (format 4) keeps that mark through a lifecycle
/// operation, which would otherwise mark it 3 (holes): format 4 implies holes.
#[tokio::test]
async fn a_lifecycle_operation_keeps_the_mark_of_compressed_records() {
    let store = SledConfig::temporary().open().unwrap();
    let marked = || store.db().get(FORMAT_KEY).unwrap();
    assert_eq!(marked().as_deref(), Some(FORMAT_PACKED));
    let a = StreamId::new("account", "a").unwrap();
    let events: Vec<_> = (0..50u32)
        .map(|n| {
            EventData::new(
                "Happened",
                format!(r#"{{"n":{n},"note":"monthly"}}"#).into_bytes(),
            )
        })
        .collect();
    store
        .append(&a, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    store.save_snapshot(&a, snapshot(20)).await.unwrap();
    assert_eq!(store.truncate_stream(&a, 20).await.unwrap(), 19);
    assert_eq!(marked().as_deref(), Some(FORMAT_PACKED));
    let kept = read(&store, &a).await;
    assert_eq!(
        kept.iter().map(|e| e.version).collect::<Vec<_>>(),
        (20..=50).collect::<Vec<_>>()
    );
}
