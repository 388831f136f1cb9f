//! Inspection: counting and finding events, listing streams, store statistics.

use std::pin::pin;

use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::support::{
    append_ok, count, count_events, event, events, find_event, fresh_stream, json_bytes, read_all,
};
use crate::{ExpectedVersion, Inspect, Position, SnapshotRecord, SnapshotStore, StreamId};

/// **Contract 4 (global log): counting and lookup.** `count_events(START)` is the number
/// of events in the log and `count_events(p)` the number after position `p`;
/// `find_event` finds an event by id in its own stream, not in another stream, and
/// returns `None` for an unknown id or stream.
///
/// Assumes a fresh, empty store.
pub async fn count_events_and_find_event<S: Inspect + Clone + 'static>(store: S) {
    assert_eq!(
        count_events(&store, Position::START).await,
        0,
        "[contract 4, global log] count_events of a fresh store is 0 (this case needs a fresh store)"
    );
    let a = fresh_stream("count-a");
    let b = fresh_stream("count-b");
    append_ok(&store, &a, ExpectedVersion::NoStream, events("a", 3)).await;
    append_ok(&store, &b, ExpectedVersion::NoStream, events("b", 2)).await;
    append_ok(&store, &a, ExpectedVersion::Exact(3), vec![event("a-more")]).await;

    let log = read_all(&store, Position::START, None).await;
    let total = count(log.len());
    assert_eq!(
        total, 6,
        "[contract 4, global log] the log holds every event"
    );
    assert_eq!(
        count_events(&store, Position::START).await,
        total,
        "[contract 4, global log] count_events(START) counts every event"
    );
    for (i, record) in log.iter().enumerate() {
        assert_eq!(
            count_events(&store, record.position).await,
            total - count(i + 1),
            "[contract 4, global log] count_events({}) counts the events after it",
            record.position
        );
    }

    let never = fresh_stream("count-never");
    for record in &log {
        let (own, other) = if record.stream == a {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(
            find_event(&store, own, record.event_id).await.as_ref(),
            Some(record),
            "[contract 3, idempotent append] find_event finds event {} in its stream",
            record.event_id
        );
        assert_eq!(
            find_event(&store, other, record.event_id).await,
            None,
            "[contract 3, idempotent append] find_event does not find an event in another stream"
        );
        assert_eq!(
            find_event(&store, &never, record.event_id).await,
            None,
            "[contract 3, idempotent append] find_event in a stream without events is None"
        );
    }
    assert_eq!(
        find_event(&store, &a, Uuid::new_v4()).await,
        None,
        "[contract 3, idempotent append] find_event of an unknown id is None"
    );
}

/// Operations support: [`Inspect::list_streams`] lists every stream with events once,
/// with its current version, and [`Inspect::stats`] counts streams, events and
/// snapshots. Assumes a fresh, empty store.
pub async fn list_streams_and_stats<S: SnapshotStore + Inspect + Clone + 'static>(store: S) {
    let empty = store.stats().await.expect("stats of an empty store");
    assert_eq!(
        (empty.streams, empty.events),
        (0, 0),
        "[operations] an empty store has no streams or events (this case needs a fresh store)"
    );
    assert!(
        matches!(empty.snapshots, None | Some(0)),
        "[operations] an empty store has no snapshots, got {:?}",
        empty.snapshots
    );
    let a = fresh_stream("list-a");
    let b = fresh_stream("list-b");
    let c = fresh_stream("list-c");
    append_ok(&store, &a, ExpectedVersion::NoStream, events("a", 3)).await;
    append_ok(&store, &b, ExpectedVersion::NoStream, events("b", 1)).await;
    append_ok(&store, &c, ExpectedVersion::NoStream, events("c", 2)).await;
    append_ok(&store, &a, ExpectedVersion::Exact(3), vec![event("a-more")]).await;
    let snapshot = SnapshotRecord {
        version: 1,
        schema_version: 1,
        payload: json_bytes(&json!({ "n": 1 })),
    };
    store
        .save_snapshot(&b, snapshot)
        .await
        .expect("save_snapshot");

    let mut listed: Vec<(StreamId, u64)> = Vec::new();
    let mut streams = pin!(store.list_streams());
    while let Some(info) = streams.next().await {
        let info = info.expect("list_streams item");
        listed.push((info.stream, info.version));
    }
    listed.sort();
    let mut expected = vec![(a, 4), (b, 1), (c, 2)];
    expected.sort();
    assert_eq!(
        listed, expected,
        "[operations] list_streams lists each stream once with its version"
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        (stats.streams, stats.events),
        (3, 7),
        "[operations] stats counts streams and events"
    );
    assert!(
        matches!(stats.snapshots, None | Some(1)),
        "[operations] stats counts snapshots where it reports them: 1, got {:?}",
        stats.snapshots
    );
}
