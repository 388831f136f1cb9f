//! Snapshots (an optimisation only) and projection checkpoints.

use futures::StreamExt;
use uuid::Uuid;

use super::support::{
    append_ok, assert_invalid_input, events, fresh_stream, read_all, read_stream,
};
use super::tally::{Tally, TallyCommand, fresh_tally_id, tally_stream};
use crate::{
    Aggregate, CheckpointStore, Codec, EventLog, ExpectedVersion, Inspect, JsonCodec, Loaded,
    Position, Repository, SnapshotIgnored, SnapshotPolicy, SnapshotRecord, SnapshotStore, StreamId,
    StreamItem,
};

/// **Contract 7 (snapshots), storage.** A stream without a snapshot loads `None`; a
/// saved snapshot loads back unchanged (version, schema version, payload bytes); a
/// higher version replaces it, an equal version replaces it, a lower version is a
/// no-op; each stream keeps its own snapshot.
pub async fn snapshots_round_trip<S: SnapshotStore + Clone + 'static>(store: S) {
    let a = fresh_stream("snapshot-a");
    let b = fresh_stream("snapshot-b");
    for stream in [&a, &b] {
        append_ok(&store, stream, ExpectedVersion::NoStream, events("s", 6)).await;
        assert_eq!(
            load(&store, stream).await,
            None,
            "[contract 7, snapshots] a stream without a snapshot loads None"
        );
    }

    let s3 = SnapshotRecord {
        version: 3,
        schema_version: 1,
        payload: br#"{"state": 3 }"#.to_vec(),
    };
    save(&store, &a, s3.clone()).await;
    assert_eq!(
        load(&store, &a).await,
        Some(s3),
        "[contract 7, snapshots] a saved snapshot loads back unchanged"
    );
    assert_eq!(
        load(&store, &b).await,
        None,
        "[contract 7, snapshots] a snapshot of one stream is not another's"
    );

    let s5 = SnapshotRecord {
        version: 5,
        schema_version: 7,
        // 64 KiB of every byte value: no text encoding, no truncation.
        payload: (0..=255u8).cycle().take(64 * 1024).collect(),
    };
    save(&store, &a, s5.clone()).await;
    assert_eq!(
        load(&store, &a).await,
        Some(s5.clone()),
        "[contract 7, snapshots] a snapshot of a higher version replaces the stored one"
    );

    let s4 = SnapshotRecord {
        version: 4,
        schema_version: 1,
        payload: b"older".to_vec(),
    };
    save(&store, &a, s4).await;
    assert_eq!(
        load(&store, &a).await,
        Some(s5),
        "[contract 7, snapshots] saving a lower version than the stored one is a no-op"
    );

    let s5_again = SnapshotRecord {
        version: 5,
        schema_version: 8,
        payload: b"retaken".to_vec(),
    };
    save(&store, &a, s5_again.clone()).await;
    assert_eq!(
        load(&store, &a).await,
        Some(s5_again.clone()),
        "[contract 7, snapshots] a snapshot of the stored version replaces it (only a \
         higher stored version makes a save a no-op)"
    );

    let sb = SnapshotRecord {
        version: 2,
        schema_version: 1,
        payload: Vec::new(),
    };
    save(&store, &b, sb.clone()).await;
    assert_eq!(
        load(&store, &b).await,
        Some(sb),
        "[contract 7, snapshots] each stream has its own snapshot (an empty payload too)"
    );
    assert_eq!(
        load(&store, &a).await,
        Some(s5_again),
        "[contract 7, snapshots] saving one stream's snapshot leaves another's alone"
    );
}

/// **Contract 7 (snapshots), load reads.** `read_stream_from_snapshot` of a stream
/// without events yields nothing; without a snapshot it yields every event, as
/// `read_stream` does; with a snapshot at version 4 of 6 it yields that snapshot
/// (unchanged, a 64 KiB payload of every byte value) and then events 5 and 6; with a
/// snapshot at the head it yields the snapshot alone; another stream's snapshot never
/// shows.
pub async fn read_stream_from_snapshot_yields_snapshot_then_tail<
    S: SnapshotStore + Clone + 'static,
>(
    store: S,
) {
    let a = fresh_stream("from-snapshot-a");
    let b = fresh_stream("from-snapshot-b");
    assert_eq!(
        read_from_snapshot(&store, &a).await,
        Vec::new(),
        "[contract 7, snapshots] a stream without events reads nothing"
    );
    append_ok(&store, &a, ExpectedVersion::NoStream, events("fs", 6)).await;
    append_ok(&store, &b, ExpectedVersion::NoStream, events("fs", 2)).await;
    let all = read_stream(&store, &a, 1).await;
    assert_eq!(
        read_from_snapshot(&store, &a).await,
        all.iter()
            .cloned()
            .map(StreamItem::Event)
            .collect::<Vec<_>>(),
        "[contract 7, snapshots] without a snapshot every event is read, as by read_stream"
    );

    let s4 = SnapshotRecord {
        version: 4,
        schema_version: 3,
        payload: (0..=255u8).cycle().take(64 * 1024).collect(),
    };
    save(&store, &a, s4.clone()).await;
    let mut expected = vec![StreamItem::Snapshot(s4)];
    expected.extend(all[4..].iter().cloned().map(StreamItem::Event));
    assert_eq!(
        read_from_snapshot(&store, &a).await,
        expected,
        "[contract 7, snapshots] the snapshot comes first, then the events after it"
    );

    let s6 = SnapshotRecord {
        version: 6,
        schema_version: 3,
        payload: b"head".to_vec(),
    };
    save(&store, &a, s6.clone()).await;
    assert_eq!(
        read_from_snapshot(&store, &a).await,
        vec![StreamItem::Snapshot(s6)],
        "[contract 7, snapshots] a snapshot at the stream's head is read alone"
    );
    assert_eq!(
        read_from_snapshot(&store, &b).await,
        read_stream(&store, &b, 1)
            .await
            .into_iter()
            .map(StreamItem::Event)
            .collect::<Vec<_>>(),
        "[contract 7, snapshots] another stream's snapshot does not show"
    );
}

pub(super) async fn read_from_snapshot<S: SnapshotStore>(
    store: &S,
    stream: &StreamId,
) -> Vec<StreamItem> {
    let items: Vec<_> = store.read_stream_from_snapshot(stream).collect().await;
    items
        .into_iter()
        .map(|item| match item {
            Ok(item) => item,
            Err(e) => panic!("read_stream_from_snapshot({stream}) must succeed, got {e:?}"),
        })
        .collect()
}

/// **Contract 7 (snapshots), loading.** With the test aggregate and a [`Repository`]
/// taking snapshots every 3 events (in the foreground), the state loaded from a snapshot
/// plus tail equals the state of a full replay. A snapshot with an old schema version, or
/// whose payload is not JSON or has the wrong shape (saved directly with
/// `save_snapshot`), is ignored: `load` returns the full-replay state, with
/// `snapshot_ignored` set and `snapshot_version` `None`. Retaking the snapshot repairs it.
pub async fn stale_or_undecodable_snapshot_replays<S: SnapshotStore + Inspect + Clone + 'static>(
    store: S,
) {
    let plain = Repository::<Tally, S>::new(store.clone(), ());
    let snapping = Repository::<Tally, S>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(3))
        .with_background_snapshots(false);
    let commands = [
        TallyCommand::Add(1),
        TallyCommand::Add(2),
        TallyCommand::Add(3),
        TallyCommand::Clear,
        TallyCommand::Add(4),
        TallyCommand::Add(5),
        TallyCommand::Add(6),
        TallyCommand::Add(7),
        TallyCommand::Add(8),
        TallyCommand::Add(9),
    ];

    let id = fresh_tally_id("snapshots");
    let stream = tally_stream(&id);
    for command in &commands {
        if let Err(e) = snapping.execute(&id, command).await {
            panic!("executing {command:?} on tally {id} must succeed, got {e:?}");
        }
    }
    let stored = load(&store, &stream).await;
    assert_eq!(
        stored.as_ref().map(|s| (s.version, s.schema_version)),
        Some((9, Tally::SNAPSHOT_VERSION)),
        "[contract 7, snapshots] the repository's last snapshot (every 3 events) covers version 9"
    );

    let full = load_tally(&plain, &id).await;
    assert_eq!(
        (full.version, full.snapshot_version, full.events_replayed),
        (10, None, 10),
        "[contract 7, snapshots] without a snapshot policy the stream is replayed in full"
    );
    assert_eq!(
        full.state,
        Tally {
            sum: 39,
            adds: 9,
            clears: 1
        }
    );
    let fast = load_tally(&snapping, &id).await;
    assert_eq!(
        fast.state, full.state,
        "[contract 7, snapshots] loading with or without snapshots gives the same state"
    );
    assert_eq!(
        (
            fast.version,
            fast.snapshot_version,
            fast.events_replayed,
            fast.snapshot_ignored
        ),
        (10, Some(9), 1, None),
        "[contract 7, snapshots] a load starts from the snapshot and replays the tail"
    );

    // A snapshot of an old schema version, holding a wrong state: it must not be used.
    let wrong = Tally {
        sum: 999_999,
        adds: 0,
        clears: 0,
    };
    let stale = SnapshotRecord {
        version: 10,
        schema_version: Tally::SNAPSHOT_VERSION - 1,
        payload: JsonCodec::new()
            .encode_snapshot(&wrong)
            .expect("a tally encodes"),
    };
    save(&store, &stream, stale).await;
    assert_replays(
        &snapping,
        &id,
        &full.state,
        "a snapshot with an old schema version",
        |why| {
            matches!(why, SnapshotIgnored::OtherSchemaVersion { version: 10, found, current }
                if *found + 1 == *current)
        },
    )
    .await;

    for (label, payload) in [
        ("bytes that are not JSON", b"\xff\x00 not a tally".to_vec()),
        ("JSON of the wrong shape", br#"{"sum":"lots"}"#.to_vec()),
    ] {
        let id = fresh_tally_id("bad-snapshot");
        for command in &commands[..5] {
            if let Err(e) = plain.execute(&id, command).await {
                panic!("executing {command:?} on tally {id} must succeed, got {e:?}");
            }
        }
        let expected = load_tally(&plain, &id).await.state;
        let garbage = SnapshotRecord {
            version: 5,
            schema_version: Tally::SNAPSHOT_VERSION,
            payload,
        };
        save(&store, &tally_stream(&id), garbage).await;
        let what = format!("a snapshot holding {label}");
        assert_replays(&snapping, &id, &expected, &what, |why| {
            matches!(why, SnapshotIgnored::Undecodable { version: 5, .. })
        })
        .await;

        let retaken = match snapping.snapshot_now(&id).await {
            Ok(retaken) => retaken,
            Err(e) => panic!("snapshot_now after {what} must succeed, got {e:?}"),
        };
        assert_eq!(retaken, Some(5));
        let repaired = load_tally(&snapping, &id).await;
        assert_eq!(
            (
                &repaired.state,
                repaired.snapshot_version,
                repaired.snapshot_ignored
            ),
            (&expected, Some(5), None),
            "[contract 7, snapshots] after {what}, a retaken snapshot is used again"
        );
    }
}

/// **Contract 8 (checkpoints).** A name without a checkpoint loads `None`; a saved
/// checkpoint loads back; saving again replaces it (even with an earlier position);
/// names are independent (including names that are prefixes of one another, unicode
/// names, and a 256-byte name); an advanced checkpoint
/// ([`advance_checkpoint`](CheckpointStore::advance_checkpoint)) loads back at once and a
/// save replaces it; an empty name, a name over 256 bytes or one with NUL is
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for load, save and advance.
pub async fn checkpoints_round_trip<S: EventLog + CheckpointStore + Clone + 'static>(store: S) {
    // Checkpoints hold positions the store handed out.
    let stream = fresh_stream("checkpoints");
    append_ok(&store, &stream, ExpectedVersion::NoStream, events("c", 3)).await;
    let positions: Vec<Position> = read_all(&store, Position::START, None)
        .await
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.position)
        .collect();
    assert_eq!(positions.len(), 3);

    let base = format!("conformance-{}", Uuid::new_v4());
    let mut longest = base.clone();
    while longest.len() < 256 {
        longest.push('n');
    }
    let names = [
        base.clone(),
        format!("{base}-b"),
        format!("{base}/ünïcödé 'q' \"Q\""),
        longest,
    ];
    for name in &names {
        assert_eq!(
            load_checkpoint(&store, name).await,
            None,
            "[contract 8, checkpoints] a name without a checkpoint loads None"
        );
    }

    save_checkpoint(&store, &names[0], positions[1]).await;
    assert_eq!(
        load_checkpoint(&store, &names[0]).await,
        Some(positions[1]),
        "[contract 8, checkpoints] a saved checkpoint loads back"
    );
    for name in &names[1..] {
        assert_eq!(
            load_checkpoint(&store, name).await,
            None,
            "[contract 8, checkpoints] checkpoints of other names are independent ({name:?})"
        );
    }
    save_checkpoint(&store, &names[0], positions[2]).await;
    assert_eq!(
        load_checkpoint(&store, &names[0]).await,
        Some(positions[2]),
        "[contract 8, checkpoints] saving again replaces the checkpoint"
    );
    save_checkpoint(&store, &names[0], positions[0]).await;
    assert_eq!(
        load_checkpoint(&store, &names[0]).await,
        Some(positions[0]),
        "[contract 8, checkpoints] saving an earlier position replaces it too (rebuilds rewind)"
    );
    for position in [positions[1], positions[2]] {
        if let Err(e) = store.advance_checkpoint(&names[0], position).await {
            panic!(
                "advance_checkpoint({:?}, {position}) must not fail, got {e:?}",
                names[0]
            );
        }
        assert_eq!(
            load_checkpoint(&store, &names[0]).await,
            Some(position),
            "[contract 8, checkpoints] an advanced checkpoint loads back at once"
        );
    }
    save_checkpoint(&store, &names[0], positions[0]).await;
    assert_eq!(
        load_checkpoint(&store, &names[0]).await,
        Some(positions[0]),
        "[contract 8, checkpoints] a save after an advance replaces it"
    );

    for (i, name) in names.iter().enumerate().skip(1) {
        let position = if i % 2 == 0 {
            Position::START
        } else {
            positions[i % 3]
        };
        save_checkpoint(&store, name, position).await;
        assert_eq!(
            load_checkpoint(&store, name).await,
            Some(position),
            "[contract 8, checkpoints] {name:?} (of {} bytes) round-trips",
            name.len()
        );
    }
    assert_eq!(
        load_checkpoint(&store, &names[0]).await,
        Some(positions[0]),
        "[contract 8, checkpoints] saving other names leaves a checkpoint alone"
    );

    for (what, name) in [
        ("an empty projection name", String::new()),
        ("a 257-byte projection name", "n".repeat(257)),
        ("a projection name with NUL", format!("{base}\0x")),
    ] {
        assert_invalid_input(
            store.load_checkpoint(&name).await,
            &format!("loading {what}"),
        );
        assert_invalid_input(
            store.save_checkpoint(&name, positions[0]).await,
            &format!("saving {what}"),
        );
        assert_invalid_input(
            store.advance_checkpoint(&name, positions[0]).await,
            &format!("advancing {what}"),
        );
    }
}

/// Loads a tally, panicking on an error.
pub(super) async fn load_tally<S: Inspect + Clone + 'static>(
    repo: &Repository<Tally, S>,
    id: &str,
) -> Loaded<Tally> {
    match repo.load(id).await {
        Ok(loaded) => loaded,
        Err(e) => panic!("loading tally {id} must succeed, got {e:?}"),
    }
}

/// Asserts that loading `id` ignored its snapshot and replayed the stream in full.
async fn assert_replays<S: Inspect + Clone + 'static>(
    repo: &Repository<Tally, S>,
    id: &str,
    expected: &Tally,
    what: &str,
    why: impl Fn(&SnapshotIgnored) -> bool,
) {
    let loaded = load_tally(repo, id).await;
    assert_eq!(
        &loaded.state, expected,
        "[contract 7, snapshots] {what} is ignored: the state is the full replay's"
    );
    assert_eq!(
        loaded.snapshot_version, None,
        "[contract 7, snapshots] {what} is ignored: snapshot_version is None"
    );
    assert!(
        loaded.snapshot_ignored.as_ref().is_some_and(&why),
        "[contract 7, snapshots] {what} is ignored and reported in snapshot_ignored with its \
         typed reason, got {:?}",
        loaded.snapshot_ignored
    );
    assert_eq!(
        loaded.events_replayed, loaded.version,
        "[contract 7, snapshots] {what} is ignored: every event is replayed"
    );
}

async fn load<S: SnapshotStore>(store: &S, stream: &StreamId) -> Option<SnapshotRecord> {
    match store.load_snapshot(stream).await {
        Ok(loaded) => loaded,
        Err(e) => panic!("load_snapshot({stream}) must not fail, got {e:?}"),
    }
}

async fn save<S: SnapshotStore>(store: &S, stream: &StreamId, snapshot: SnapshotRecord) {
    let version = snapshot.version;
    if let Err(e) = store.save_snapshot(stream, snapshot).await {
        panic!("save_snapshot({stream}, version {version}) must not fail, got {e:?}");
    }
}

async fn load_checkpoint<S: CheckpointStore>(store: &S, name: &str) -> Option<Position> {
    match store.load_checkpoint(name).await {
        Ok(position) => position,
        Err(e) => panic!("load_checkpoint({name:?}) must not fail, got {e:?}"),
    }
}

async fn save_checkpoint<S: CheckpointStore>(store: &S, name: &str, position: Position) {
    if let Err(e) = store.save_checkpoint(name, position).await {
        panic!("save_checkpoint({name:?}, {position}) must not fail, got {e:?}");
    }
}
