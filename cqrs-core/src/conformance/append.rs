//! Appending: the envelope, expected versions, atomic batches, idempotency, bad batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Barrier;
use uuid::Uuid;

use super::support::{
    append_ok, assert_conflict, assert_nothing_written, count, event, events, fresh_stream, ids_of,
    join, log_len, range, read_all, read_stream, record_ids, versions,
};
use crate::{AppendResult, Error, EventData, EventLog, ExpectedVersion, Metadata, Position};

/// 2020-01-01T00:00:00Z: every real `recorded_at` is later.
fn timestamp_floor() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800)
}

/// **Contract 6 (envelope) and 1 (streams).** Every field of an appended event comes back
/// unchanged: `event_id`, stream, versions `1..=n`, strictly increasing positions,
/// `event_type`, `schema_version`, the payload's exact bytes (binary, empty, JSON with
/// odd spacing and key order), metadata (correlation and causation ids, free values, the
/// two ids alone, a causation id alone), and
/// a real `recorded_at` (by the store's clock, so a client/server skew does not matter;
/// not a default such as the epoch, and no earlier for a later append). The
/// [`AppendResult`] names the last event, a second append continues the versions, and
/// `read_all` returns the same records as `read_stream`.
pub async fn append_and_read_round_trip<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("round-trip");
    let correlation = Uuid::new_v4();
    let causation = Uuid::new_v4();
    let first = vec![
        EventData::new(
            "ConformanceOpened",
            br#"{ "owner" : "ada",  "z": 1, "a": [true, null, 1.50] }"#.to_vec(),
        )
        .with_schema_version(3)
        .with_metadata(
            Metadata::new()
                .with_correlation_id(correlation)
                .with_causation_id(causation)
                .with_value("user", "ada")
                .with_value("tenant", "ünïcödé ✓ \"quoted\""),
        ),
        EventData::new(
            "ConformanceBinary",
            vec![0u8, 1, 0x7f, 0x80, 0xfe, 0xff, b'{', 0],
        )
        .with_schema_version(u32::from(u16::MAX))
        .with_metadata(Metadata::new().with_correlation_id(correlation)),
        EventData::new("ConformanceEmpty", Vec::new()),
    ];
    let result = append_ok(&store, &stream, ExpectedVersion::NoStream, first.clone()).await;

    let recorded = read_stream(&store, &stream, 1).await;
    assert_eq!(
        recorded.len(),
        first.len(),
        "[contract 1, streams] a stream holds every event appended to it"
    );
    for (i, (sent, got)) in first.iter().zip(&recorded).enumerate() {
        let what = format!("event {i} of the batch");
        assert_eq!(
            got.event_id, sent.event_id,
            "[contract 6, envelope] {what}: event_id"
        );
        assert_eq!(got.stream, stream, "[contract 6, envelope] {what}: stream");
        assert_eq!(
            got.version,
            count(i + 1),
            "[contract 1, streams] {what}: versions start at 1 and are contiguous"
        );
        assert_eq!(
            got.event_type, sent.event_type,
            "[contract 6, envelope] {what}: event_type"
        );
        assert_eq!(
            got.schema_version, sent.schema_version,
            "[contract 6, envelope] {what}: schema_version"
        );
        assert_eq!(
            got.payload, sent.payload,
            "[contract 6, envelope] {what}: the payload's bytes are kept exactly"
        );
        assert_eq!(
            got.metadata, sent.metadata,
            "[contract 6, envelope] {what}: metadata"
        );
        // `recorded_at` is the store's clock, which may be skewed against this one (a
        // database server): no comparison with the local clock. A store that forgot to
        // set it would return the epoch (or zero); one that records a real time is past
        // 2020-01-01.
        assert!(
            got.recorded_at > timestamp_floor(),
            "[contract 6, envelope] {what}: recorded_at {:?} must be the time of the append, \
             not a default",
            got.recorded_at
        );
    }
    for pair in recorded.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "[contract 4, global log] positions increase along a stream: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
    assert_eq!(
        result,
        AppendResult {
            version: 3,
            position: recorded[2].position,
            duplicate: false,
        },
        "[contract 2, append] the AppendResult names the batch's last version and position"
    );

    // The command layer's metadata (exactly a correlation and a causation id), and a
    // causation id alone: shapes a backend may decode by a path of its own.
    let mut more = events("round-trip-more", 2);
    more[0].metadata = Metadata::new()
        .with_correlation_id(correlation)
        .with_causation_id(Uuid::new_v4());
    more[1].metadata = Metadata::new().with_causation_id(causation);
    let second = append_ok(&store, &stream, ExpectedVersion::Exact(3), more.clone()).await;
    let all = read_stream(&store, &stream, 1).await;
    assert_eq!(
        versions(&all),
        range(1, 5),
        "[contract 1, streams] a second append continues the versions"
    );
    assert_eq!(
        &all[..3],
        &recorded[..],
        "[contract 6, envelope] a later append does not change earlier records"
    );
    assert_eq!(
        record_ids(&all[3..]),
        ids_of(&more),
        "[contract 1, streams] the second batch follows the first, in order"
    );
    assert_eq!(
        (&all[3].metadata, &all[4].metadata),
        (&more[0].metadata, &more[1].metadata),
        "[contract 6, envelope] metadata of the command layer's shape, and a causation id alone"
    );
    assert!(
        all[2].position < all[3].position,
        "[contract 4, global log] a later append gets a later position"
    );
    assert!(
        all[3].recorded_at >= all[2].recorded_at && all[4].recorded_at > timestamp_floor(),
        "[contract 6, envelope] a later append is recorded no earlier, by the store's clock"
    );
    assert_eq!(
        second,
        AppendResult {
            version: 5,
            position: all[4].position,
            duplicate: false,
        },
        "[contract 2, append] the AppendResult of the second append"
    );
    assert_eq!(
        read_stream(&store, &stream, 0).await,
        all,
        "[contract 1, streams] read_stream from version 0 reads the whole stream"
    );

    let in_log: Vec<_> = read_all(&store, Position::START, None)
        .await
        .into_iter()
        .filter(|r| r.stream == stream)
        .collect();
    assert_eq!(
        in_log, all,
        "[contract 4, global log] read_all returns the same records as read_stream, in order"
    );
}

/// **Contract 2 (expected version `Any`).** `Any` appends at the end whatever the version:
/// on a new stream and on an existing one, one at a time and from 16 tasks at once.
/// Sequential `Any` appends never conflict; a concurrent one either succeeds or is a
/// `Conflict` (the documented bound: a backend may give up after many lost races, as
/// PostgreSQL does after 64), and nothing else. The versions stay contiguous and hold
/// exactly the batches that succeeded, each batch's events together and in order.
pub async fn expected_version_any<S: EventLog + Clone + 'static>(store: S) {
    any_one_at_a_time(&store).await;
    any_concurrently(&store).await;
}

async fn any_concurrently<S: EventLog + Clone + 'static>(store: &S) {
    const TASKS: usize = 16;
    const APPENDS: usize = 8;
    let stream = fresh_stream("expect-any-concurrent");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            tokio::spawn(async move {
                // No assertion in here (a panicking task would strand the others at the
                // barrier); outcomes are checked after the join.
                barrier.wait().await;
                let mut outcomes = Vec::new();
                for i in 0..APPENDS {
                    let batch = events(&format!("any-{task}-{i}"), i % 3 + 1);
                    let ids = ids_of(&batch);
                    outcomes.push((
                        ids,
                        store.append(&stream, ExpectedVersion::Any, batch).await,
                    ));
                }
                outcomes
            })
        })
        .collect();
    let mut written = std::collections::HashMap::new();
    for task in tasks {
        for (ids, outcome) in join(task).await {
            match outcome {
                Ok(result) => {
                    assert!(
                        !result.duplicate,
                        "[contract 2, expected version] a fresh Any append is not a duplicate"
                    );
                    written.insert(ids[0], (ids, result.version));
                }
                Err(Error::Conflict { .. }) => {}
                Err(other) => panic!(
                    "[contract 2, expected version] a concurrent Any append succeeds or is a \
                     Conflict, got {other:?}"
                ),
            }
        }
    }
    assert!(
        !written.is_empty(),
        "[contract 2, expected version] some concurrent Any appends succeed"
    );
    let recorded = read_stream(store, &stream, 1).await;
    let total: usize = written.values().map(|(ids, _)| ids.len()).sum();
    assert_eq!(
        versions(&recorded),
        range(1, count(total)),
        "[contract 1, streams] versions stay contiguous under concurrent Any appends, and \
         hold exactly the batches that succeeded"
    );
    let mut at = 0;
    while at < recorded.len() {
        let Some((ids, last)) = written.get(&recorded[at].event_id) else {
            panic!(
                "[contract 2, atomic append] version {} holds an event of no successful append",
                recorded[at].version
            );
        };
        let end = at + ids.len();
        assert!(
            end <= recorded.len() && record_ids(&recorded[at..end]) == *ids,
            "[contract 2, atomic append] a batch's events are stored together, in order"
        );
        assert_eq!(
            *last,
            count(end),
            "[contract 2, expected version] an Any append reports its batch's last version"
        );
        at = end;
    }
}

async fn any_one_at_a_time<S: EventLog + Clone + 'static>(store: &S) {
    let store = store.clone();
    let stream = fresh_stream("expect-any");
    let mut expected_ids = Vec::new();
    let mut version = 0;
    for round in 0..4 {
        let batch = events("any", round % 2 + 1);
        expected_ids.extend(ids_of(&batch));
        version += count(batch.len());
        let result = append_ok(&store, &stream, ExpectedVersion::Any, batch).await;
        assert_eq!(
            result.version, version,
            "[contract 2, expected version] append #{round} with Any lands at the end"
        );
    }
    let recorded = read_stream(&store, &stream, 1).await;
    assert_eq!(
        versions(&recorded),
        range(1, version),
        "[contract 1, streams] versions stay contiguous under Any"
    );
    assert_eq!(
        record_ids(&recorded),
        expected_ids,
        "[contract 1, streams] appends with Any keep their order"
    );
}

/// **Contract 2 (expected version `NoStream`).** `NoStream` (and `Exact(0)`) succeeds on a
/// stream without events and is a `Conflict { expected, actual }` once the stream
/// exists; the refused append writes nothing.
pub async fn expected_version_no_stream<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("expect-no-stream");
    let result = append_ok(
        &store,
        &stream,
        ExpectedVersion::NoStream,
        events("created", 2),
    )
    .await;
    assert_eq!(
        result.version, 2,
        "[contract 2, expected version] NoStream on a new stream appends from version 1"
    );
    let before = read_stream(&store, &stream, 1).await;

    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(0)] {
        let refused = events("again", 2);
        let refused_ids = ids_of(&refused);
        let outcome = store.append(&stream, expected, refused).await;
        let what = format!("{expected:?} on a stream at version 2");
        assert_conflict(outcome, &stream, expected, 2, &what);
        assert_nothing_written(&store, &stream, &before, &refused_ids, &what).await;
    }

    let other = fresh_stream("expect-exact-0");
    let result = append_ok(&store, &other, ExpectedVersion::Exact(0), vec![event("x")]).await;
    assert_eq!(
        result.version, 1,
        "[contract 2, expected version] Exact(0) on a new stream is the same as NoStream"
    );
}

/// **Contract 2 (expected version `StreamExists`).** `StreamExists` is a
/// `Conflict { actual: 0 }` on a stream without events (and writes nothing), and succeeds
/// once the stream has events.
pub async fn expected_version_stream_exists<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("expect-exists");
    let refused = events("too-early", 2);
    let refused_ids = ids_of(&refused);
    let outcome = store
        .append(&stream, ExpectedVersion::StreamExists, refused)
        .await;
    let what = "StreamExists on a stream without events";
    assert_conflict(outcome, &stream, ExpectedVersion::StreamExists, 0, what);
    assert_nothing_written(&store, &stream, &[], &refused_ids, what).await;

    append_ok(&store, &stream, ExpectedVersion::Any, vec![event("first")]).await;
    for v in 2..=3 {
        let result = append_ok(
            &store,
            &stream,
            ExpectedVersion::StreamExists,
            vec![event("more")],
        )
        .await;
        assert_eq!(
            result.version, v,
            "[contract 2, expected version] StreamExists on an existing stream appends at the end"
        );
    }
    // The refused ids were not reserved: they can be appended now.
    let result = append_ok(
        &store,
        &stream,
        ExpectedVersion::Exact(3),
        events_with_ids(&refused_ids),
    )
    .await;
    assert_eq!(
        result.version, 5,
        "[contract 2, atomic append] ids of a refused append are not taken"
    );
}

/// **Contract 2 (expected version `Exact`).** `Exact(v)` succeeds only at version `v`;
/// a stale or a too-high version is a `Conflict { expected, actual }` that writes
/// nothing, and the refused ids stay free.
pub async fn expected_version_exact<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("expect-exact");
    let refused = events("ahead", 1);
    let outcome = store
        .append(&stream, ExpectedVersion::Exact(2), refused.clone())
        .await;
    let what = "Exact(2) on a stream without events";
    assert_conflict(outcome, &stream, ExpectedVersion::Exact(2), 0, what);
    assert_nothing_written(&store, &stream, &[], &ids_of(&refused), what).await;

    append_ok(
        &store,
        &stream,
        ExpectedVersion::Exact(0),
        vec![event("v1")],
    )
    .await;
    let result = append_ok(&store, &stream, ExpectedVersion::Exact(1), events("v2", 2)).await;
    assert_eq!(
        result.version, 3,
        "[contract 2, expected version] Exact(1) on a stream at version 1 appends"
    );
    let before = read_stream(&store, &stream, 1).await;

    let refused = events("refused", 3);
    let refused_ids = ids_of(&refused);
    for v in [0, 1, 2, 4, 100] {
        let expected = ExpectedVersion::Exact(v);
        let outcome = store.append(&stream, expected, refused.clone()).await;
        let what = format!("Exact({v}) on a stream at version 3");
        assert_conflict(outcome, &stream, expected, 3, &what);
        assert_nothing_written(&store, &stream, &before, &refused_ids, &what).await;
    }

    let result = append_ok(&store, &stream, ExpectedVersion::Exact(3), refused).await;
    assert_eq!(
        result.version, 6,
        "[contract 2, atomic append] ids of a refused append are not taken"
    );
    let after = read_stream(&store, &stream, 1).await;
    assert_eq!(
        record_ids(&after[3..]),
        refused_ids,
        "[contract 2, atomic append] the once-refused batch is written in full when it fits"
    );
}

/// **Contract 2 (atomic append).** A batch of 5 lands as versions `n+1..=n+5`, adjacent
/// and in order in the global log even while other streams are written concurrently; a
/// batch refused for its expected version leaves no trace in the stream, the log, the
/// count or `find_event`.
pub async fn atomic_multi_event_append<S: EventLog + Clone + 'static>(store: S) {
    const BATCHES: u64 = 10;
    const BATCH: usize = 5;
    const NOISE_TASKS: usize = 3;
    // Enough to overlap every batch; bounded so a fast store does not fill memory.
    const NOISE_CAP: usize = 5_000;

    let stream = fresh_stream("atomic");
    append_ok(
        &store,
        &stream,
        ExpectedVersion::NoStream,
        events("head", 2),
    )
    .await;

    // Other writers append single events to their own streams meanwhile, so that a store
    // that interleaves concurrent writes inside a batch would show it. The batches start
    // once every noise writer has appended once, and the writers go on until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(NOISE_TASKS + 1));
    let noise: Vec<_> = (0..NOISE_TASKS)
        .map(|task| {
            let (store, stop, started) = (store.clone(), stop.clone(), started.clone());
            tokio::spawn(async move {
                let other = fresh_stream(&format!("atomic-noise-{task}"));
                let first = store
                    .append(&other, ExpectedVersion::Any, vec![event("noise")])
                    .await;
                // Wait even after a failure, so the case does not hang at the barrier.
                started.wait().await;
                first?;
                for _ in 1..NOISE_CAP {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    store
                        .append(&other, ExpectedVersion::Any, vec![event("noise")])
                        .await?;
                    tokio::task::yield_now().await;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    started.wait().await;

    let mut batches = Vec::new();
    let mut version = 2;
    for b in 0..BATCHES {
        let batch = events(&format!("batch-{b}"), BATCH);
        let ids = ids_of(&batch);
        let result = append_ok(&store, &stream, ExpectedVersion::Exact(version), batch).await;
        version += count(BATCH);
        assert_eq!(
            result.version, version,
            "[contract 2, atomic append] a batch of {BATCH} moves the stream by {BATCH} versions"
        );
        batches.push((ids, result));
    }
    stop.store(true, Ordering::SeqCst);
    for task in noise {
        if let Err(e) = join(task).await {
            panic!("appending to another stream concurrently must succeed, got {e:?}");
        }
    }

    let recorded = read_stream(&store, &stream, 1).await;
    assert_eq!(
        versions(&recorded),
        range(1, version),
        "[contract 1, streams] versions stay contiguous across batches"
    );
    let log = read_all(&store, Position::START, None).await;
    let index: HashMap<Uuid, usize> = log
        .iter()
        .enumerate()
        .map(|(i, r)| (r.event_id, i))
        .collect();
    for (b, (ids, result)) in batches.iter().enumerate() {
        let first = *index.get(&ids[0]).unwrap_or_else(|| {
            panic!("[contract 4, global log] read_all must contain batch {b}'s events")
        });
        let slice = log.get(first..first + BATCH).unwrap_or_default();
        assert_eq!(
            record_ids(slice),
            *ids,
            "[contract 2, atomic append] batch {b}'s events are adjacent and in order in the log"
        );
        let first_version = result.version - count(BATCH) + 1;
        assert_eq!(
            versions(slice),
            range(first_version, result.version),
            "[contract 2, atomic append] batch {b} holds consecutive versions"
        );
        assert_eq!(
            slice[BATCH - 1].position,
            result.position,
            "[contract 2, append] the AppendResult of batch {b} names its last position"
        );
    }

    let total = log_len(&store, Position::START).await;
    for expected in [
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(version + 1),
        ExpectedVersion::NoStream,
    ] {
        let refused = events("refused", BATCH);
        let refused_ids = ids_of(&refused);
        let outcome = store.append(&stream, expected, refused).await;
        let what = format!("a batch of {BATCH} with {expected:?} on a stream at {version}");
        assert_conflict(outcome, &stream, expected, version, &what);
        assert_nothing_written(&store, &stream, &recorded, &refused_ids, &what).await;
        let log_after = read_all(&store, Position::START, None).await;
        assert_eq!(
            log_after, log,
            "[contract 2, atomic append] {what}: a refused batch must not reach the global log"
        );
        assert_eq!(
            log_len(&store, Position::START).await,
            total,
            "[contract 2, atomic append] {what}: a refused batch must not be counted"
        );
    }
}

/// Raw events with the given ids.
fn events_with_ids(ids: &[Uuid]) -> Vec<EventData> {
    ids.iter().map(|id| event("with-id").with_id(*id)).collect()
}
