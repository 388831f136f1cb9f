//! Snapshots that must not poison a stream: one ahead of the stream, one whose stored
//! record is damaged. Either is skipped, with a warning, and the stream is replayed.

use super::say;
use super::snapshots::{load_tally, read_from_snapshot};
use super::support::read_stream;
use super::tally::{Tally, TallyCommand, fresh_tally_id, tally_stream};
use crate::{
    Aggregate, Codec, Inspect, JsonCodec, Repository, SnapshotIgnored, SnapshotPolicy,
    SnapshotRecord, SnapshotStore, StreamId, StreamItem,
};

/// **Contract 7 (snapshots), a snapshot ahead of its stream.** A tally with 3 events and
/// a snapshot that claims version 8 (saved directly, as a restored backup or a hand edit
/// would leave it) with a wrong state: `read_stream_from_snapshot` yields
/// `SnapshotIgnored` and then every event from version 1 (never that snapshot); a
/// repository that takes snapshots loads the full-replay state and version 3, reports
/// the snapshot as ignored, and executes the next command at once (no conflict); the
/// load replaced the bad snapshot, so later loads use a true one again.
pub async fn snapshot_ahead_of_stream_is_ignored<S: SnapshotStore + Inspect + Clone + 'static>(
    store: S,
) {
    let plain = Repository::<Tally, S>::new(store.clone(), ());
    let snapping = Repository::<Tally, S>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(100))
        .with_background_snapshots(false);
    let id = fresh_tally_id("snapshot-ahead");
    let stream = tally_stream(&id);
    for n in 1..=3 {
        execute(&plain, &id, TallyCommand::Add(n)).await;
    }
    let wrong = Tally {
        sum: 999_999,
        adds: 0,
        clears: 0,
    };
    let ahead = SnapshotRecord {
        version: 8,
        schema_version: Tally::SNAPSHOT_VERSION,
        payload: JsonCodec::new()
            .encode_snapshot(&wrong)
            .expect("a tally encodes"),
    };
    if let Err(e) = store.save_snapshot(&stream, ahead).await {
        panic!("save_snapshot({stream}, version 8) must not fail, got {e:?}");
    }

    let items = read_from_snapshot(&store, &stream).await;
    let events = read_stream(&store, &stream, 1).await;
    let mut expected = vec![StreamItem::SnapshotIgnored(
        crate::SnapshotIgnored::AheadOfStream { version: 8 },
    )];
    expected.extend(events.into_iter().map(StreamItem::Event));
    assert_eq!(
        items, expected,
        "[contract 7, snapshots] a snapshot ahead of the stream is reported as ignored, then \
         the stream is read from version 1"
    );

    let loaded = load_tally(&snapping, &id).await;
    let full = Tally::replay((1..=3).map(|n| super::tally::TallyEvent::Added { n }));
    assert_eq!(
        (&loaded.state, loaded.version, loaded.snapshot_version),
        (&full, 3, None),
        "[contract 7, snapshots] a snapshot ahead of the stream is not used"
    );
    assert!(
        matches!(
            loaded.snapshot_ignored,
            Some(SnapshotIgnored::AheadOfStream { .. })
        ),
        "[contract 7, snapshots] the ignored snapshot is reported in snapshot_ignored as \
         ahead of the stream, got {:?}",
        loaded.snapshot_ignored
    );
    let done = match snapping.execute(&id, &TallyCommand::Add(4)).await {
        Ok(done) => done,
        Err(e) => panic!("a command after a snapshot ahead of the stream must succeed, got {e:?}"),
    };
    assert_eq!(
        (done.version, done.attempts),
        (4, 1),
        "[contract 7, snapshots] a command after a snapshot ahead of the stream appends at \
         once (no conflict)"
    );
    let stored = match store.load_snapshot(&stream).await {
        Ok(stored) => stored,
        Err(e) => panic!("load_snapshot({stream}) must not fail, got {e:?}"),
    };
    assert_eq!(
        stored.map(|s| s.version),
        Some(3),
        "[contract 7, snapshots] the load replaced the snapshot ahead of the stream with a \
         true one (save_snapshot replaces a snapshot the stream has not reached)"
    );
    let again = load_tally(&snapping, &id).await;
    assert_eq!(
        (
            again.snapshot_version,
            again.snapshot_ignored,
            again.version
        ),
        (Some(3), None, 4),
        "[contract 7, snapshots] later loads start from the repaired snapshot"
    );
}

/// **Contract 7 (snapshots), a damaged snapshot record.** A tally with 5 events and a
/// snapshot at version 5, whose stored record the backend's `damage` hook then breaks
/// below the API (bytes that do not decode as a snapshot record): `load_snapshot` says
/// there is none (it does not fail), `read_stream_from_snapshot` yields no snapshot and
/// every event from version 1, a repository that takes snapshots loads the full-replay
/// state and executes a command, and `snapshot_now` writes a good snapshot again.
///
/// A backend without stored bytes to damage (the in-memory store) passes no hook; the
/// case then says `skipped`.
pub async fn damaged_snapshot_is_ignored<S, D, DF>(store: S, damage: D)
where
    S: SnapshotStore + Inspect + Clone + 'static,
    D: FnOnce(S, StreamId) -> DF,
    DF: std::future::Future<Output = bool>,
{
    let snapping = Repository::<Tally, S>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(100))
        .with_background_snapshots(false);
    let id = fresh_tally_id("snapshot-damaged");
    let stream = tally_stream(&id);
    for n in 1..=5 {
        execute(&snapping, &id, TallyCommand::Add(n)).await;
    }
    match snapping.snapshot_now(&id).await {
        Ok(Some(5)) => {}
        other => panic!("snapshot_now({id}) must take a snapshot at version 5, got {other:?}"),
    }
    if !damage(store.clone(), stream.clone()).await {
        say(&format!(
            "skipped: damaged_snapshot_is_ignored: this backend has no stored snapshot bytes \
             to damage (typed records only); {id} was not checked"
        ));
        return;
    }

    match store.load_snapshot(&stream).await {
        Ok(None) => {}
        other => panic!(
            "[contract 7, snapshots] load_snapshot of a damaged record must be Ok(None) (ignored, \
             with a warning), got {other:?}"
        ),
    }
    let items = read_from_snapshot(&store, &stream).await;
    let events: Vec<_> = items
        .iter()
        .filter_map(|item| match item {
            StreamItem::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert!(
        !items.iter().any(|i| matches!(i, StreamItem::Snapshot(_))),
        "[contract 7, snapshots] a damaged snapshot is never yielded: {items:?}"
    );
    assert_eq!(
        events,
        read_stream(&store, &stream, 1).await,
        "[contract 7, snapshots] after a damaged snapshot every event is read from version 1"
    );

    let full = Tally::replay((1..=5).map(|n| super::tally::TallyEvent::Added { n }));
    let loaded = load_tally(&snapping, &id).await;
    assert_eq!(
        (&loaded.state, loaded.version, loaded.snapshot_version),
        (&full, 5, None),
        "[contract 7, snapshots] a damaged snapshot is ignored: the state is the full replay's"
    );
    // A store that drops the damaged record on load reports nothing; one that reads it
    // says it is damaged.
    assert!(
        matches!(
            loaded.snapshot_ignored,
            None | Some(SnapshotIgnored::Damaged { .. })
        ),
        "[contract 7, snapshots] a damaged snapshot is reported as damaged, got {:?}",
        loaded.snapshot_ignored
    );
    execute(&snapping, &id, TallyCommand::Add(6)).await;
    match snapping.snapshot_now(&id).await {
        Ok(Some(6)) => {}
        other => panic!(
            "[contract 7, snapshots] snapshot_now after a damaged snapshot must write one at \
             version 6, got {other:?}"
        ),
    }
    let repaired = load_tally(&snapping, &id).await;
    assert_eq!(
        (repaired.snapshot_version, repaired.version),
        (Some(6), 6),
        "[contract 7, snapshots] a retaken snapshot replaces the damaged one"
    );
}

async fn execute<S: Inspect + Clone + 'static>(
    repo: &Repository<Tally, S>,
    id: &str,
    command: TallyCommand,
) {
    if let Err(e) = repo.execute(id, &command).await {
        panic!("executing {command:?} on tally {id} must succeed, got {e:?}");
    }
}
