//! Stream lifecycle: tombstones, truncation and restores ([`StreamLifecycle`]), with the
//! global log and checkpoints kept consistent (positions never move).

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::support::{
    append_ok, count_events, event, events, find_event, fresh_stream, read_all, read_stream,
    record_ids, versions,
};
use super::tally::{Tally, TallyEvent, added, cleared, fresh_tally_id, tally_stream};
use crate::{
    BoxError, DomainEvent, Envelope, Error, EventStore, ExpectedVersion, Position, Projection,
    ProjectionRunner, RecordedEvent, Repository, STREAM_DELETED, SnapshotPolicy, StreamDeleted,
    StreamId,
};

async fn stored<S: EventStore>(store: &S, stream: &StreamId) -> Vec<RecordedEvent> {
    match store.read_stored(stream, 1).try_collect().await {
        Ok(records) => records,
        Err(e) => panic!("read_stored({stream}) must not fail, got {e:?}"),
    }
}

/// The positions of `stream`'s events in the global log.
async fn positions_of<S: EventStore>(store: &S, stream: &StreamId) -> Vec<Position> {
    read_all(store, Position::START, None)
        .await
        .into_iter()
        .filter(|r| r.stream == *stream)
        .map(|r| r.position)
        .collect()
}

/// A deleted stream holds only its tombstone, which the log and reads show; appends of
/// every kind fail with [`Error::StreamDeleted`]; loads say so; other streams keep their
/// events and positions; the snapshot is gone; a second delete is refused.
pub async fn deleted_stream_is_a_tombstone<S: EventStore + Clone + 'static>(store: S) {
    let doomed = fresh_stream("doomed");
    let kept = fresh_stream("kept");
    append_ok(
        &store,
        &doomed,
        ExpectedVersion::NoStream,
        events("doomed", 3),
    )
    .await;
    append_ok(&store, &kept, ExpectedVersion::NoStream, events("kept", 2)).await;
    append_ok(
        &store,
        &doomed,
        ExpectedVersion::Exact(3),
        events("late", 1),
    )
    .await;
    let snapshot = crate::SnapshotRecord {
        version: 4,
        schema_version: 1,
        payload: br#"{"n":4}"#.to_vec(),
    };
    store
        .save_snapshot(&doomed, snapshot)
        .await
        .expect("save a snapshot");
    let kept_before = read_stream(&store, &kept, 1).await;
    let doomed_ids = record_ids(&read_stream(&store, &doomed, 1).await);
    let counted = count_events(&store, Position::START).await;

    match store
        .delete_stream(&doomed, ExpectedVersion::Exact(2))
        .await
    {
        Err(Error::Conflict { actual: 4, .. }) => {}
        other => panic!("a delete expecting the wrong version is a conflict, got {other:?}"),
    }
    let tombstone = store
        .delete_stream(&doomed, ExpectedVersion::Exact(4))
        .await
        .expect("delete the stream");
    assert_eq!(tombstone.version, 5, "the tombstone follows the last event");

    let read = read_stream(&store, &doomed, 1).await;
    assert_eq!(
        read.len(),
        1,
        "a deleted stream reads as its tombstone: {read:?}"
    );
    assert_eq!(read[0].event_type, STREAM_DELETED);
    assert_eq!(read[0].version, 5);
    assert_eq!(read[0].position, tombstone.position);
    let payload: StreamDeleted =
        serde_json::from_slice(&read[0].payload).expect("the tombstone's payload");
    assert_eq!(payload, StreamDeleted::new(4));
    for id in doomed_ids {
        assert_eq!(
            find_event(&store, &doomed, id).await,
            None,
            "event {id} is gone"
        );
    }

    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(5),
    ] {
        match store.append(&doomed, expected, vec![event("after")]).await {
            Err(Error::StreamDeleted { stream, version: 5 }) => assert_eq!(stream, doomed),
            other => panic!("appending to a deleted stream ({expected}) must fail, got {other:?}"),
        }
    }
    match store.delete_stream(&doomed, ExpectedVersion::Any).await {
        Err(Error::StreamDeleted { version: 5, .. }) => {}
        other => panic!("deleting a deleted stream must fail, got {other:?}"),
    }
    assert_eq!(
        read_stream(&store, &doomed, 1).await.len(),
        1,
        "nothing was added"
    );
    assert_eq!(
        store.load_snapshot(&doomed).await.expect("load snapshot"),
        None,
        "the snapshot went with the stream"
    );
    let late = crate::SnapshotRecord {
        version: 4,
        schema_version: 1,
        payload: br#"{"n":4}"#.to_vec(),
    };
    store
        .save_snapshot(&doomed, late)
        .await
        .expect("a late save is no error");
    assert_eq!(
        store.load_snapshot(&doomed).await.expect("load snapshot"),
        None,
        "a late snapshot save does not bring one back"
    );

    // Listed at its tombstone's version.
    let listed: Vec<crate::StreamInfo> = match store.list_streams().try_collect().await {
        Ok(listed) => listed,
        Err(e) => panic!("list_streams must not fail, got {e:?}"),
    };
    let doomed_info = listed.iter().find(|info| info.stream == doomed);
    assert_eq!(
        doomed_info.map(|info| info.version),
        Some(5),
        "a deleted stream is listed at its tombstone's version"
    );

    // The log: the kept stream untouched, the doomed one only as its tombstone.
    assert_eq!(read_stream(&store, &kept, 1).await, kept_before);
    assert_eq!(
        positions_of(&store, &doomed).await,
        vec![tombstone.position]
    );
    assert_eq!(
        count_events(&store, Position::START).await,
        counted - 4 + 1,
        "count_events counts what the log holds"
    );

    // A typed load says the aggregate was deleted.
    let id = fresh_tally_id("deleted");
    let tally = tally_stream(&id);
    append_ok(&store, &tally, ExpectedVersion::NoStream, vec![added(2)]).await;
    store
        .delete_stream(&tally, ExpectedVersion::Any)
        .await
        .expect("delete the tally");
    let repo = Repository::<Tally, S>::new(store.clone(), ());
    match repo.load(&id).await {
        Err(Error::StreamDeleted { version: 2, .. }) => {}
        other => panic!("loading a deleted aggregate must say so, got {other:?}"),
    }
}

/// A truncated stream keeps its version, its later events and their positions; loads
/// start from the snapshot and give the same state; appends go on; a truncation that no
/// snapshot covers, or past the stream, is refused and changes nothing.
pub async fn truncated_stream_loads_from_its_snapshot<S: EventStore + Clone + 'static>(store: S) {
    let id = fresh_tally_id("truncated");
    let stream = tally_stream(&id);
    let batch = vec![added(1), added(2), cleared(), added(3), added(4), added(5)];
    append_ok(&store, &stream, ExpectedVersion::NoStream, batch).await;
    let repo = Repository::<Tally, S>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(1_000));
    let before = repo.load(&id).await.expect("load").state;

    match store.truncate_stream(&stream, 4).await {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("a truncation without a snapshot must be refused, got {other:?}"),
    }
    assert_eq!(
        read_stream(&store, &stream, 1).await.len(),
        6,
        "nothing removed"
    );
    assert_eq!(repo.snapshot_now(&id).await.expect("snapshot"), Some(6));
    append_ok(&store, &stream, ExpectedVersion::Exact(6), vec![added(10)]).await;
    for bad in [0, 9] {
        match store.truncate_stream(&stream, bad).await {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("truncating before version {bad} must be refused, got {other:?}"),
        }
    }
    let positions = positions_of(&store, &stream).await;

    match store.truncate_stream(&stream, 7).await {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("the snapshot's own event (6) must stay, got {other:?}"),
    }
    let removed = store.truncate_stream(&stream, 6).await.expect("truncate");
    assert_eq!(removed, 5);
    let read = read_stream(&store, &stream, 1).await;
    assert_eq!(versions(&read), vec![6, 7], "only the kept events are read");
    assert_eq!(positions_of(&store, &stream).await, positions[5..].to_vec());
    assert_eq!(
        store.truncate_stream(&stream, 6).await.expect("again"),
        0,
        "a second truncation removes nothing"
    );

    let loaded = repo.load(&id).await.expect("load the truncated stream");
    assert_eq!(
        loaded.snapshot_version,
        Some(6),
        "the load starts from the snapshot"
    );
    assert_eq!(loaded.version, 7);
    let mut expected = before;
    crate::Aggregate::apply(&mut expected, TallyEvent::Added { n: 10 });
    assert_eq!(loaded.state, expected);
    append_ok(&store, &stream, ExpectedVersion::Exact(7), vec![added(1)]).await;
    assert_eq!(
        versions(&read_stream(&store, &stream, 1).await),
        vec![6, 7, 8]
    );

    // Without the snapshot the truncated stream cannot be replayed: a clear error.
    let plain = Repository::<Tally, S>::new(store.clone(), ());
    match plain.load(&id).await {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => {
            panic!("a replay of a truncated stream must not start at version 6, got {other:?}")
        }
    }
}

/// An archive (the stored records) of a deleted stream restores exactly: the same
/// records at the same versions and positions, the tombstone gone, appends going on. A
/// restore that does not fit changes nothing.
pub async fn deleted_stream_restores_exactly<S: EventStore + Clone + 'static>(store: S) {
    let stream = fresh_stream("archived");
    let other = fresh_stream("other");
    append_ok(&store, &stream, ExpectedVersion::NoStream, events("a", 3)).await;
    append_ok(&store, &other, ExpectedVersion::NoStream, events("o", 1)).await;
    append_ok(&store, &stream, ExpectedVersion::Exact(3), events("b", 2)).await;
    let archive = stored(&store, &stream).await;
    let positions = positions_of(&store, &stream).await;

    match store.restore_stream(&stream, archive.clone()).await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("restoring over a live stream must be refused, got {other:?}"),
    }
    let deleted = store
        .delete_stream(&stream, ExpectedVersion::Exact(5))
        .await
        .expect("delete");

    // Bad restores: nothing changes.
    let mut gap = archive.clone();
    gap.remove(2);
    let mut foreign = archive.clone();
    foreign[1].stream = other.clone();
    let mut taken = archive.clone();
    let other_records = read_stream(&store, &other, 1).await;
    taken[0].position = other_records[0].position;
    let mut reused = archive.clone();
    reused[0].event_id = other_records[0].event_id;
    for (what, records) in [
        ("no records", Vec::new()),
        ("a missing version", gap),
        ("a record of another stream", foreign),
        ("a taken position", taken),
        ("the last event missing", archive[..4].to_vec()),
        ("an id used elsewhere", reused),
    ] {
        match store.restore_stream(&stream, records).await {
            Err(
                Error::InvalidInput { .. }
                | Error::Conflict { .. }
                | Error::DuplicateEventId { .. },
            ) => {}
            other => panic!("a restore with {what} must be refused, got {other:?}"),
        }
        let read = read_stream(&store, &stream, 1).await;
        assert_eq!(versions(&read), vec![6], "{what}: still only the tombstone");
    }

    let restored = store
        .restore_stream(&stream, archive.clone())
        .await
        .expect("restore");
    assert_eq!(restored, 5);
    assert_eq!(
        read_stream(&store, &stream, 1).await,
        archive,
        "restored exactly"
    );
    assert_eq!(stored(&store, &stream).await, archive);
    assert_eq!(
        positions_of(&store, &stream).await,
        positions,
        "positions never move"
    );
    let tombstone_seen = read_all(&store, Position::START, None)
        .await
        .iter()
        .any(|r| r.position == deleted.position);
    assert!(!tombstone_seen, "the tombstone is gone from the log");
    let appended = append_ok(&store, &stream, ExpectedVersion::Exact(5), events("c", 1)).await;
    assert_eq!(appended.version, 6);
    match store.restore_stream(&stream, archive).await {
        Err(Error::Conflict { .. } | Error::DuplicateEventId { .. }) => {}
        other => panic!("restoring a live stream again must be refused, got {other:?}"),
    }
    match store
        .delete_stream(&fresh_stream("missing"), ExpectedVersion::Any)
        .await
    {
        Err(Error::StreamNotFound { .. }) => {}
        other => panic!("deleting a missing stream must be refused, got {other:?}"),
    }
    match store.truncate_stream(&fresh_stream("missing"), 1).await {
        Err(Error::StreamNotFound { .. }) => {}
        other => panic!("truncating a missing stream must be refused, got {other:?}"),
    }
}

/// What the projection of [`rebuild_after_delete_forgets_the_stream`] decodes: the
/// tally's events and the tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Row {
    Tally(TallyEvent),
    Deleted(StreamDeleted),
}

impl DomainEvent for Row {
    const EVENT_TYPES: &'static [&'static str] =
        &[super::tally::ADDED, super::tally::CLEARED, STREAM_DELETED];

    fn event_type(&self) -> &'static str {
        match self {
            Row::Tally(e) => e.event_type(),
            Row::Deleted(_) => STREAM_DELETED,
        }
    }

    fn from_stream_deleted(deleted: StreamDeleted) -> Option<Self> {
        Some(Row::Deleted(deleted))
    }
}

/// Sums per tally; a tombstone drops the tally's row.
#[derive(Debug, Clone, Default)]
struct Sums {
    name: String,
    rows: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    tombstones: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl Projection for Sums {
    type Event = Row;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<Row>]) -> Result<(), BoxError> {
        let mut rows = self.rows.lock().map_err(|e| e.to_string())?;
        for e in batch {
            let id = e.stream.id().to_owned();
            match &e.event {
                Row::Tally(TallyEvent::Added { n }) => *rows.entry(id).or_default() += n,
                Row::Tally(TallyEvent::Cleared) => {
                    rows.insert(id, 0);
                }
                Row::Deleted(deleted) => {
                    rows.remove(&id);
                    let mut seen = self.tombstones.lock().map_err(|e| e.to_string())?;
                    seen.push((id, deleted.last_version));
                }
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        self.rows.lock().map_err(|e| e.to_string())?.clear();
        self.tombstones.lock().map_err(|e| e.to_string())?.clear();
        Ok(())
    }
}

/// A live projection gets the tombstone as an event it decodes and drops the stream's
/// row; a rebuild gives the read model without the deleted stream; projections that do
/// not list the tombstone's type never see it.
pub async fn rebuild_after_delete_forgets_the_stream<S: EventStore + Clone + 'static>(store: S) {
    let (gone, kept) = (fresh_tally_id("gone"), fresh_tally_id("kept"));
    let (gone_stream, kept_stream) = (tally_stream(&gone), tally_stream(&kept));
    append_ok(
        &store,
        &gone_stream,
        ExpectedVersion::NoStream,
        vec![added(4), added(5)],
    )
    .await;
    append_ok(
        &store,
        &kept_stream,
        ExpectedVersion::NoStream,
        vec![added(7)],
    )
    .await;
    let sums = Sums {
        name: format!("conformance-sums-{}", uuid::Uuid::new_v4()),
        ..Sums::default()
    };
    let mut live = ProjectionRunner::new(store.clone(), sums.clone());
    live.catch_up().await.expect("catch up");
    assert_eq!(sums.rows.lock().expect("rows").get(&gone), Some(&9));

    store
        .delete_stream(&gone_stream, ExpectedVersion::Exact(2))
        .await
        .expect("delete");
    live.catch_up().await.expect("catch up after the delete");
    {
        let rows = sums.rows.lock().expect("rows");
        assert_eq!(rows.get(&gone), None, "the live projection dropped the row");
        assert_eq!(rows.get(&kept), Some(&7));
    }
    assert_eq!(
        sums.tombstones.lock().expect("tombstones").clone(),
        vec![(gone.clone(), 2)]
    );

    let mut rebuild = ProjectionRunner::new(store.clone(), sums.clone());
    rebuild.rebuild(|_| {}).await.expect("rebuild");
    {
        let rows = sums.rows.lock().expect("rows");
        assert_eq!(
            rows.get(&gone),
            None,
            "the rebuild never sees the deleted events"
        );
        assert_eq!(rows.get(&kept), Some(&7));
    }

    // A projection over the tally's own type skips the tombstone.
    let mut log = super::tally::TallyLog::new(gone_stream.clone());
    let mut runner = ProjectionRunner::new(store.clone(), log);
    runner
        .catch_up()
        .await
        .expect("a projection without the tombstone type");
    log = runner.into_projection();
    assert!(
        log.seen.is_empty(),
        "no tally event of the deleted stream: {:?}",
        log.seen
    );
    // Even one whose `wants` takes every record of the stream, tombstone included.
    let mut greedy = ProjectionRunner::new(store.clone(), Greedy(gone_stream, 0));
    greedy
        .catch_up()
        .await
        .expect("a wants that takes the tombstone must not stop the projection");
    assert_eq!(
        greedy.projection().1,
        0,
        "the greedy projection got nothing"
    );
}

/// Wants every record of one stream, tombstone included, but cannot decode it.
#[derive(Debug)]
struct Greedy(StreamId, usize);

impl Projection for Greedy {
    type Event = TallyEvent;

    fn name(&self) -> &str {
        "conformance-greedy"
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        record.stream == self.0
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<TallyEvent>]) -> Result<(), BoxError> {
        self.1 += batch.len();
        Ok(())
    }
}
