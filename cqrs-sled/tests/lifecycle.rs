//! Deleting, truncating and restoring streams in the sled store: what the conformance
//! cases cannot see (records of several events, reopening, racing appenders).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cqrs_core::{
    Error, EventData, EventLog, ExpectedVersion, Inspect, Position, RecordedEvent, STREAM_DELETED,
    SnapshotRecord, SnapshotStore, StreamId, StreamLifecycle,
};
use cqrs_sled::{Durability, SledConfig, SledEventStore};
use futures::TryStreamExt;
use uuid::Uuid;

fn stream(name: &str) -> StreamId {
    StreamId::new("thing", format!("{name}-{}", Uuid::new_v4())).unwrap()
}

fn small(n: u32) -> EventData {
    EventData::new("Happened", format!("{{\"n\":{n}}}").into_bytes())
}

/// Events of about 5 KiB: a batch of them makes log records of 4 events (records are cut
/// past 16 KiB).
fn large(n: u32) -> EventData {
    let filler = "x".repeat(5 * 1024);
    EventData::new(
        "Happened",
        format!("{{\"n\":{n},\"f\":\"{filler}\"}}").into_bytes(),
    )
}

fn snapshot(version: u64) -> SnapshotRecord {
    SnapshotRecord {
        version,
        schema_version: 1,
        payload: b"{}".to_vec(),
    }
}

async fn log_after(store: &SledEventStore, after: u64, limit: Option<u64>) -> Vec<RecordedEvent> {
    store
        .read_all(Position::new(0, after), limit)
        .try_collect()
        .await
        .unwrap()
}

async fn read(store: &SledEventStore, s: &StreamId, from: u64) -> Vec<RecordedEvent> {
    store.read_stream(s, from).try_collect().await.unwrap()
}

/// Fails the test if `f` does not finish within a minute (a guard against a hang, never
/// a timing check).
async fn within_a_minute<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("did not finish within 60 s")
}

/// Checks every cursor of the log against `expected` (the whole log, in order): reads
/// from it, with and without a limit, and counts from it.
async fn check_every_cursor(store: &SledEventStore, expected: &[RecordedEvent]) {
    let end = expected.last().map_or(0, |e| e.position.sequence);
    for after in 0..=end + 1 {
        let want: Vec<_> = expected
            .iter()
            .filter(|e| e.position.sequence > after)
            .collect();
        let got = log_after(store, after, None).await;
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "read_all after {after}"
        );
        let counted = store.count_events(Position::new(0, after)).await.unwrap();
        assert_eq!(counted, want.len() as u64, "count_events after {after}");
        for limit in [1, 3] {
            let got = log_after(store, after, Some(limit)).await;
            let want: Vec<_> = want
                .iter()
                .filter(|e| e.position.sequence <= after + limit)
                .copied()
                .collect();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want,
                "after {after} limit {limit}"
            );
        }
    }
}

/// N appenders race one delete: every append either succeeded before the tombstone (its
/// event then went with the stream) or failed with `StreamDeleted` (or a conflict), and
/// nothing of the stream is stored after the tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_racing_a_delete_never_land_after_the_tombstone() {
    within_a_minute(async {
        let store = SledEventStore::temporary().unwrap();
        let s = stream("raced");
        store
            .append(&s, ExpectedVersion::NoStream, vec![small(0)])
            .await
            .unwrap();
        let appended = Arc::new(AtomicU64::new(0));
        let appenders: Vec<_> = (0..8)
            .map(|_| {
                let (store, s, appended) = (store.clone(), s.clone(), appended.clone());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let event = small(1);
                        let id = event.event_id;
                        match store.append(&s, ExpectedVersion::Any, vec![event]).await {
                            Ok(result) => {
                                appended.fetch_add(1, Ordering::Relaxed);
                                done.push((id, result.position));
                            }
                            Err(Error::StreamDeleted { version, .. }) => return (done, version),
                            Err(Error::Conflict { .. }) => {}
                            Err(e) => panic!("an append failed with {e:?}"),
                        }
                    }
                })
            })
            .collect();
        while appended.load(Ordering::Relaxed) < 40 {
            tokio::task::yield_now().await;
        }
        let tombstone = store.delete_stream(&s, ExpectedVersion::Any).await.unwrap();
        let mut succeeded = Vec::new();
        for appender in appenders {
            let (done, version) = appender.await.unwrap();
            assert_eq!(
                version, tombstone.version,
                "StreamDeleted names the tombstone"
            );
            succeeded.extend(done);
        }
        assert_eq!(
            tombstone.version,
            succeeded.len() as u64 + 2,
            "the tombstone follows every acknowledged append"
        );
        for (id, position) in &succeeded {
            assert!(
                *position < tombstone.position,
                "append at {position} after the tombstone"
            );
            assert_eq!(store.find_event(&s, *id).await.unwrap(), None);
        }
        let of_stream: Vec<_> = log_after(&store, 0, None)
            .await
            .into_iter()
            .filter(|e| e.stream == s)
            .collect();
        assert_eq!(of_stream.len(), 1);
        assert_eq!(of_stream[0].event_type, STREAM_DELETED);
        assert_eq!(of_stream[0].position, tombstone.position);
        assert_eq!(store.count_events(Position::START).await.unwrap(), 1);
    })
    .await;
}

/// A truncation that cuts through a log record rewrites it: the kept events keep their
/// positions, and reads from every cursor and version see exactly what is left.
#[tokio::test]
async fn a_truncation_inside_a_record_keeps_positions_for_every_reader() {
    let store = SledEventStore::temporary().unwrap();
    let (s, other) = (stream("cut"), stream("other"));
    store
        .append(&other, ExpectedVersion::NoStream, vec![small(0)])
        .await
        .unwrap();
    // 10 large events: records of versions 1..=4, 5..=8 and 9..=10.
    let batch: Vec<_> = (1..=10).map(large).collect();
    store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    store
        .append(&other, ExpectedVersion::Exact(1), vec![small(1)])
        .await
        .unwrap();
    let before = log_after(&store, 0, None).await;
    store.save_snapshot(&s, snapshot(8)).await.unwrap();

    // Before version 7: the first record goes, the second is cut after version 6.
    assert_eq!(store.truncate_stream(&s, 7).await.unwrap(), 6);
    let expected: Vec<_> = before
        .iter()
        .filter(|e| e.stream != s || e.version >= 7)
        .cloned()
        .collect();
    assert_eq!(log_after(&store, 0, None).await, expected);
    check_every_cursor(&store, &expected).await;
    let kept: Vec<_> = expected.iter().filter(|e| e.stream == s).cloned().collect();
    for from in 0..=11 {
        let want: Vec<_> = kept.iter().filter(|e| e.version >= from).cloned().collect();
        assert_eq!(
            read(&store, &s, from).await,
            want,
            "read_stream from {from}"
        );
    }
    for event in before.iter().filter(|e| e.stream == s) {
        let found = store.find_event(&s, event.event_id).await.unwrap();
        assert_eq!(found.as_ref(), (event.version >= 7).then_some(event));
    }
    // Again, inside the rewritten record.
    assert_eq!(store.truncate_stream(&s, 8).await.unwrap(), 1);
    let expected: Vec<_> = expected
        .into_iter()
        .filter(|e| e.stream != s || e.version >= 8)
        .collect();
    check_every_cursor(&store, &expected).await;
    let appended = store
        .append(&s, ExpectedVersion::Exact(10), vec![small(11)])
        .await
        .unwrap();
    assert_eq!(appended.version, 11);
}

/// Delete, truncate and restore are durable under `Flushed` and hold across a reopen:
/// positions are not handed out again, even one whose record a restore removed.
#[tokio::test]
async fn lifecycle_changes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        SledConfig::new(dir.path())
            .durability(Durability::Flushed)
            .open()
            .unwrap()
    };
    let (gone, cut, kept) = (stream("gone"), stream("cut"), stream("kept"));
    let (archive, tombstone, log) = {
        let store = open();
        store
            .append(
                &gone,
                ExpectedVersion::NoStream,
                (1..=6).map(large).collect(),
            )
            .await
            .unwrap();
        store
            .append(&kept, ExpectedVersion::NoStream, vec![small(1)])
            .await
            .unwrap();
        store
            .append(
                &cut,
                ExpectedVersion::NoStream,
                (1..=6).map(large).collect(),
            )
            .await
            .unwrap();
        store.save_snapshot(&cut, snapshot(5)).await.unwrap();
        assert_eq!(store.truncate_stream(&cut, 3).await.unwrap(), 2);
        let archive: Vec<_> = store.read_stored(&gone, 1).try_collect().await.unwrap();
        let tombstone = store
            .delete_stream(&gone, ExpectedVersion::Exact(6))
            .await
            .unwrap();
        (archive, tombstone, log_after(&store, 0, None).await)
    };
    {
        let store = open();
        assert_eq!(log_after(&store, 0, None).await, log);
        check_every_cursor(&store, &log).await;
        let read_gone = read(&store, &gone, 1).await;
        assert_eq!(read_gone.len(), 1);
        assert_eq!(read_gone[0].position, tombstone.position);
        match store
            .append(&gone, ExpectedVersion::Any, vec![small(9)])
            .await
        {
            Err(Error::StreamDeleted { version: 7, .. }) => {}
            other => panic!("an append to a deleted stream after a reopen: {other:?}"),
        }
        assert_eq!(store.load_snapshot(&gone).await.unwrap(), None);
        assert_eq!(store.load_snapshot(&cut).await.unwrap(), Some(snapshot(5)));
        let versions: Vec<_> = read(&store, &cut, 1)
            .await
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, [3, 4, 5, 6]);
        // The tombstone is the last record of the log; the restore removes it.
        assert_eq!(
            store.restore_stream(&gone, archive.clone()).await.unwrap(),
            6
        );
    }
    let store = open();
    assert_eq!(read(&store, &gone, 1).await, archive);
    let mut expected: Vec<_> = log
        .iter()
        .filter(|e| e.stream != gone)
        .chain(&archive)
        .cloned()
        .collect();
    expected.sort_by_key(|e| e.position);
    check_every_cursor(&store, &expected).await;
    let next = store
        .append(&kept, ExpectedVersion::Exact(1), vec![small(2)])
        .await
        .unwrap();
    assert_eq!(
        next.position.sequence,
        tombstone.position.sequence + 1,
        "the removed tombstone's position is not handed out again"
    );
}

/// A restore that does not fit is refused and changes nothing: a position past the end
/// of the log, a position that holds another event.
#[tokio::test]
async fn a_restore_that_does_not_fit_changes_nothing() {
    let store = SledEventStore::temporary().unwrap();
    let (s, other) = (stream("archived"), stream("other"));
    store
        .append(&s, ExpectedVersion::NoStream, vec![small(1), small(2)])
        .await
        .unwrap();
    store
        .append(&other, ExpectedVersion::NoStream, vec![small(3)])
        .await
        .unwrap();
    let archive: Vec<_> = store.read_stored(&s, 1).try_collect().await.unwrap();
    let tombstone = store
        .delete_stream(&s, ExpectedVersion::Exact(2))
        .await
        .unwrap();
    let log = log_after(&store, 0, None).await;
    let mut beyond = archive.clone();
    beyond[1].position = Position::new(0, tombstone.position.sequence + 1);
    let mut at_tombstone = archive.clone();
    at_tombstone[1].position = tombstone.position;
    let mut foreign = archive.clone();
    foreign[1].position = Position::new(7, 2);
    for (what, records) in [
        ("past the end", beyond),
        ("at the tombstone", at_tombstone),
        ("of another store", foreign),
    ] {
        match store.restore_stream(&s, records).await {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("a restore {what} must be refused, got {other:?}"),
        }
        assert_eq!(
            log_after(&store, 0, None).await,
            log,
            "{what}: nothing changed"
        );
    }
    assert_eq!(store.restore_stream(&s, archive.clone()).await.unwrap(), 2);
    assert_eq!(read(&store, &s, 1).await, archive);
    assert_eq!(store.count_events(Position::START).await.unwrap(), 3);
}

/// Readers of the log and of the stream racing truncations that rewrite records never
/// miss a kept event nor see one twice, and a stream read never shows a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_racing_truncations_miss_nothing_kept() {
    within_a_minute(async {
        let store = SledEventStore::temporary().unwrap();
        for round in 0..10u32 {
            let s = stream("raced-cut");
            store
                .append(&s, ExpectedVersion::NoStream, (1..=12).map(large).collect())
                .await
                .unwrap();
            store.save_snapshot(&s, snapshot(12)).await.unwrap();
            let kept: Vec<_> = read(&store, &s, 1).await.split_off(6);
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let readers: Vec<_> = (0..3)
                .map(|r| {
                    let (store, s, kept, done) =
                        (store.clone(), s.clone(), kept.clone(), done.clone());
                    tokio::spawn(async move {
                        let mut reads = 0u32;
                        while !done.load(Ordering::Relaxed) || reads == 0 {
                            reads += 1;
                            let got: Vec<_> = if r == 0 {
                                read(&store, &s, 1).await
                            } else {
                                let log = log_after(&store, 0, None).await;
                                log.into_iter().filter(|e| e.stream == s).collect()
                            };
                            let versions: Vec<_> = got.iter().map(|e| e.version).collect();
                            // A stream read (of one chunk) is a consistent read; a log read
                            // may see old events it passed before a truncation removed
                            // later ones, but never one twice.
                            let consistent = if r == 0 {
                                versions.windows(2).all(|w| w[1] == w[0] + 1)
                            } else {
                                versions.windows(2).all(|w| w[1] > w[0])
                            };
                            assert!(consistent, "round {round}: a read saw {versions:?}");
                            assert!(
                                got.ends_with(&kept),
                                "round {round}: a read missed kept events: {versions:?}"
                            );
                        }
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            // Before 3 (inside the first record), then before 7 (inside the second).
            assert_eq!(store.truncate_stream(&s, 3).await.unwrap(), 2);
            assert_eq!(store.truncate_stream(&s, 7).await.unwrap(), 4);
            done.store(true, Ordering::Relaxed);
            for reader in readers {
                reader.await.unwrap();
            }
            assert_eq!(read(&store, &s, 1).await, kept);
        }
    })
    .await;
}
