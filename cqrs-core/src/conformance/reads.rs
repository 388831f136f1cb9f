//! Reading: empty and partial stream reads, odd stream ids, and live-reader wake-ups.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::support::{
    EVENT_TYPE, STREAM_TYPE, append_ok, count, event, events, find_event, fresh_stream, ids_of,
    json_bytes, range, read_all, read_stream, record_ids, save_snapshot, versions,
};
use crate::{
    EventData, EventLog, ExpectedVersion, Inspect, Position, SnapshotRecord, SnapshotStore,
    StreamId,
};

/// **Contract 1 (streams).** Reading a stream that has no events yields nothing, not an
/// error; reading from a version past the end (up to `u64::MAX`) yields nothing;
/// `read_stream(s, 3)` yields versions 3 and later only; `read_all` with a limit of 0
/// yields nothing.
pub async fn read_empty_stream<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("empty");
    for from in [0, 1, 2, u64::MAX] {
        assert!(
            read_stream(&store, &stream, from).await.is_empty(),
            "[contract 1, streams] read_stream({stream}, {from}) of a stream with no events \
             yields nothing"
        );
    }

    let batch = events("five", 5);
    let ids = ids_of(&batch);
    append_ok(&store, &stream, ExpectedVersion::NoStream, batch).await;
    for from in [6, 7, 1_000, u64::MAX] {
        assert!(
            read_stream(&store, &stream, from).await.is_empty(),
            "[contract 1, streams] read_stream from version {from} of a 5-event stream \
             yields nothing"
        );
    }
    for from in 1..=5 {
        let tail = read_stream(&store, &stream, from).await;
        assert_eq!(
            versions(&tail),
            range(from, 5),
            "[contract 1, streams] read_stream from version {from} yields versions {from}..=5"
        );
        assert_eq!(
            record_ids(&tail),
            ids[usize::try_from(from - 1).expect("small")..],
            "[contract 1, streams] read_stream from version {from} yields the right events"
        );
    }

    let neighbour = fresh_stream("empty");
    assert!(
        read_stream(&store, &neighbour, 1).await.is_empty(),
        "[contract 1, streams] another stream of the same type stays empty"
    );
    assert!(
        read_all(&store, Position::START, Some(0)).await.is_empty(),
        "[contract 4, global log] read_all with a limit of 0 yields nothing"
    );
    let last = read_stream(&store, &stream, 5).await[0].position;
    let after_last: Vec<_> = read_all(&store, last, None)
        .await
        .into_iter()
        .filter(|r| r.stream == stream)
        .collect();
    assert!(
        after_last.is_empty(),
        "[contract 4, global log] read_all after a stream's last position holds none of its events"
    );
}

/// **Contract 1 (streams) with odd ids.** Stream ids that are prefixes of one another
/// (`a`, `ab`, `a/b`, `a/`), that differ only in case or trailing space, that hold quotes,
/// backslashes, SQL and glob wildcards, control characters, unicode, or are 1024 bytes
/// long, and aggregate types that are prefixes of one another (`acc` vs `account`) with
/// the same id: each is its own stream. Events, versions (each stream starts at 1 with
/// `NoStream`), the `stream` field of records, `find_event` and snapshots all stay apart.
pub async fn stream_ids_do_not_collide<S: SnapshotStore + Inspect + Clone + 'static>(store: S) {
    let u = Uuid::new_v4().simple().to_string();
    let mut long = format!("{u}-long-");
    while long.len() < StreamId::MAX_ID_LEN - 2 {
        long.push('L');
    }
    long.push('é');
    assert_eq!(long.len(), StreamId::MAX_ID_LEN);

    let ids: Vec<(&str, String)> = vec![
        (STREAM_TYPE, format!("{u}a")),
        (STREAM_TYPE, format!("{u}ab")),
        (STREAM_TYPE, format!("{u}a/b")),
        (STREAM_TYPE, format!("{u}a/")),
        (STREAM_TYPE, format!("{u}A")),
        (STREAM_TYPE, format!("{u}a ")),
        (STREAM_TYPE, format!(" {u}a")),
        (STREAM_TYPE, format!("{u}'a\"b`")),
        (STREAM_TYPE, format!("{u}\\a")),
        (STREAM_TYPE, format!("{u}%_*?[a]")),
        (STREAM_TYPE, format!("{u}\u{1}")),
        (STREAM_TYPE, format!("{u}a\u{1}")),
        (STREAM_TYPE, format!("{u}\u{7f}\u{ff}")),
        (STREAM_TYPE, format!("{u}\n\t\r")),
        (STREAM_TYPE, format!("{u}ünïcödé 🦀")),
        (STREAM_TYPE, long),
        ("acc", u.clone()),
        ("account", u.clone()),
        ("acc", format!("ount{u}")),
        ("acc", format!("ount/{u}")),
        ("account", format!("/{u}")),
    ];
    let streams: Vec<StreamId> = ids
        .iter()
        .map(|(t, id)| {
            StreamId::new(t, id).unwrap_or_else(|e| panic!("{t:?}/{id:?} is a valid id: {e}"))
        })
        .collect();

    let mut written = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        let mut stream_ids = Vec::new();
        for v in 0..count(i % 3 + 1) {
            let e = EventData::new(EVENT_TYPE, json_bytes(&json!({ "stream": i, "v": v + 1 })));
            stream_ids.push(e.event_id);
            let result = store
                .append(stream, ExpectedVersion::Exact(v), vec![e])
                .await;
            match result {
                Ok(r) => assert_eq!(
                    r.version,
                    v + 1,
                    "[contract 1, streams] {stream:?} has its own versions"
                ),
                Err(e) => panic!(
                    "[contract 1, streams] appending version {} to {stream:?} must succeed \
                     (does its id collide with another stream's?), got {e:?}",
                    v + 1
                ),
            }
        }
        written.push(stream_ids);
    }

    let log = read_all(&store, Position::START, None).await;
    for (i, stream) in streams.iter().enumerate() {
        let recorded = read_stream(&store, stream, 1).await;
        assert_eq!(
            record_ids(&recorded),
            written[i],
            "[contract 1, streams] {stream:?} holds exactly its own events"
        );
        for record in &recorded {
            assert_eq!(
                &record.stream, stream,
                "[contract 6, envelope] the stream id round-trips unchanged"
            );
            assert_eq!(
                record.payload,
                json_bytes(&json!({ "stream": i, "v": record.version })),
                "[contract 6, envelope] {stream:?} version {}: payload",
                record.version
            );
        }
        let in_log: Vec<_> = log.iter().filter(|r| &r.stream == stream).collect();
        assert_eq!(
            in_log.iter().map(|r| r.event_id).collect::<Vec<_>>(),
            written[i],
            "[contract 4, global log] the log attributes {stream:?}'s events to it alone"
        );
        let neighbour = &streams[(i + 1) % streams.len()];
        assert_eq!(
            find_event(&store, neighbour, written[i][0]).await,
            None,
            "[contract 1, streams] find_event in {neighbour:?} does not see {stream:?}'s event"
        );
        let snapshot = SnapshotRecord {
            version: count(written[i].len()),
            schema_version: 1,
            payload: json_bytes(&json!({ "stream": i })),
        };
        save_snapshot(&store, stream, snapshot).await;
    }
    for (i, stream) in streams.iter().enumerate() {
        let loaded = match store.load_snapshot(stream).await {
            Ok(loaded) => loaded,
            Err(e) => panic!("load_snapshot({stream:?}) must not fail, got {e:?}"),
        };
        assert_eq!(
            loaded.map(|s| s.payload),
            Some(json_bytes(&json!({ "stream": i }))),
            "[contract 7, snapshots] {stream:?} has its own snapshot"
        );
    }
}

/// **Live reads (`watch`).** If the store's watcher [can wake](crate::LogWatcher::can_wake),
/// an append after [`mark_seen`](crate::LogWatcher::mark_seen) makes
/// [`changed`](crate::LogWatcher::changed) complete, whether the append happened before
/// the wait or while waiting, and every watcher wakes. A store whose watcher cannot wake
/// (readers poll) has nothing to check: the case says `skipped`. The 10-second timeouts
/// only guard against a hang; they are not a speed requirement.
pub async fn watch_wakes_on_append<S: EventLog + Clone + 'static>(store: S) {
    const HANG_GUARD: Duration = Duration::from_secs(10);
    let mut watcher = store.watch();
    if !watcher.can_wake() {
        super::say(
            "skipped: watch_wakes_on_append: this store's watcher cannot wake (its readers \
             poll), so there is no wake-up to check",
        );
        return;
    }
    let stream = fresh_stream("watch");

    watcher.mark_seen();
    append_ok(
        &store,
        &stream,
        ExpectedVersion::Any,
        vec![event("before-wait")],
    )
    .await;
    assert!(
        tokio::time::timeout(HANG_GUARD, watcher.changed())
            .await
            .is_ok(),
        "[live reads] an append after mark_seen must wake the watcher"
    );

    watcher.mark_seen();
    let writer = {
        let (store, stream) = (store.clone(), stream.clone());
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            append_ok(
                &store,
                &stream,
                ExpectedVersion::Any,
                vec![event("while-waiting")],
            )
            .await;
        })
    };
    assert!(
        tokio::time::timeout(HANG_GUARD, watcher.changed())
            .await
            .is_ok(),
        "[live reads] an append while waiting must wake the watcher"
    );
    super::support::join(writer).await;

    let mut others = [store.watch(), store.watch()];
    for w in &mut others {
        w.mark_seen();
    }
    append_ok(&store, &stream, ExpectedVersion::Any, vec![event("many")]).await;
    for (i, w) in others.iter_mut().enumerate() {
        assert!(
            tokio::time::timeout(HANG_GUARD, w.changed()).await.is_ok(),
            "[live reads] every watcher wakes on an append (watcher {i})"
        );
    }
}
