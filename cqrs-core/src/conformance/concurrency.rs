//! Concurrent writers: one winner per expected version, and a global log that readers
//! can tail while it is being written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

use super::support::{
    EVENT_TYPE, append_ok, count, events, fresh_stream, ids_of, join, json_bytes, range, read_all,
    record_ids, versions,
};
use crate::{AppendResult, Error, EventData, EventLog, ExpectedVersion, Position, RecordedEvent};

/// **Contract 2 (one winner).** 16 tasks append to one stream in 20 rounds; in each
/// round all of them append `Exact(round)` at once (released by a barrier). Exactly one
/// append per round succeeds, every other one is a `Conflict { expected: Exact(round),
/// actual: round + 1 }`, and the stream ends with versions `1..=20`, each holding that
/// round's winner.
pub async fn concurrent_appenders_one_winner_per_version<S: EventLog + Clone + 'static>(store: S) {
    const TASKS: usize = 16;
    const ROUNDS: u64 = 20;

    let stream = fresh_stream("contended");
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            tokio::spawn(async move {
                // No assertion in here: a task that panicked would leave the others
                // waiting at the barrier forever. Outcomes are checked after the join.
                let mut outcomes = Vec::new();
                for round in 0..ROUNDS {
                    let event = EventData::new(
                        EVENT_TYPE,
                        json_bytes(&json!({ "task": task, "round": round })),
                    );
                    let id = event.event_id;
                    barrier.wait().await;
                    let outcome = store
                        .append(&stream, ExpectedVersion::Exact(round), vec![event])
                        .await;
                    outcomes.push((id, outcome));
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(join(task).await);
    }

    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let mut won = Vec::new();
        for (task, task_outcomes) in outcomes.iter().enumerate() {
            let (id, outcome) = &task_outcomes[usize::try_from(round).expect("small")];
            match outcome {
                Ok(AppendResult { version, .. }) => {
                    assert_eq!(
                        *version,
                        round + 1,
                        "[contract 2, one winner] round {round}: the winner appends version {}",
                        round + 1
                    );
                    won.push(*id);
                }
                Err(Error::Conflict {
                    stream: s,
                    expected,
                    actual,
                }) => {
                    assert_eq!(
                        s, &stream,
                        "[contract 2, one winner] the Conflict names the stream"
                    );
                    assert_eq!(
                        *expected,
                        ExpectedVersion::Exact(round),
                        "[contract 2, one winner] the Conflict carries the expectation"
                    );
                    assert_eq!(
                        *actual,
                        round + 1,
                        "[contract 2, one winner] round {round}, task {task}: a loser was \
                         refused because the winner's version {} is there",
                        round + 1
                    );
                }
                Err(other) => panic!(
                    "[contract 2, one winner] round {round}, task {task}: a losing concurrent \
                     append must be Error::Conflict, got {other:?}"
                ),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "[contract 2, one winner] of {TASKS} concurrent appends expecting version {round}, \
             exactly one succeeds"
        );
        winners.push(won[0]);
    }

    let recorded = super::support::read_stream(&store, &stream, 1).await;
    assert_eq!(
        versions(&recorded),
        range(1, ROUNDS),
        "[contract 1, streams] concurrent appends leave no hole and no duplicate version"
    );
    assert_eq!(
        record_ids(&recorded),
        winners,
        "[contract 2, one winner] each version holds its round's winner"
    );
}

/// **Contract 4 (global log).** 8 writer tasks append batches of 1 to 3 events to 25
/// streams each, while a reader tails `read_all` from its last position (alternating
/// unlimited and limited reads) until the writers are done and a final read returns
/// nothing. The reader sees every event exactly once, in strictly increasing positions;
/// a full `read_all` returns the same sequence; resuming from every position handed out
/// (and [`Position::START`]) returns exactly the rest of the log, with or without a
/// limit; per stream, versions are contiguous in log order and each batch is adjacent.
///
/// Assumes a fresh, empty store.
pub async fn read_all_concurrent_writers<S: EventLog + Clone + 'static>(store: S) {
    const WRITERS: usize = 8;
    const STREAMS: usize = 25;
    const ROUNDS: usize = 3;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut cursor = Position::START;
            for pass in 0u64.. {
                // Read `done` before reading the log: if it was set, every write has
                // committed, so an empty read means the reader has seen everything.
                let finished = done.load(Ordering::SeqCst);
                let limit = (pass % 2 == 1).then_some(7);
                let batch: Vec<RecordedEvent> =
                    match store.read_all(cursor, limit).try_collect().await {
                        Ok(batch) => batch,
                        Err(e) => {
                            panic!("[contract 4, global log] read_all({cursor}) failed: {e:?}")
                        }
                    };
                if let Some(l) = limit {
                    assert!(
                        count(batch.len()) <= l,
                        "[contract 4, global log] read_all(_, Some({l})) returned {} events",
                        batch.len()
                    );
                }
                for record in &batch {
                    assert!(
                        record.position > cursor,
                        "[contract 4, global log] a tailing reader got position {} after \
                         cursor {cursor}: positions must strictly increase",
                        record.position
                    );
                    cursor = record.position;
                }
                let empty = batch.is_empty();
                seen.extend(batch);
                if empty {
                    if finished {
                        break;
                    }
                    // Pacing only, so the reader does not starve the writers.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            seen
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let streams: Vec<_> = (0..STREAMS)
                    .map(|s| fresh_stream(&format!("tail-w{writer}-s{s}")))
                    .collect();
                let mut heads = [0u64; STREAMS];
                let mut appended = Vec::new();
                for round in 0..ROUNDS {
                    for (s, stream) in streams.iter().enumerate() {
                        let batch = events("tail", 1 + (writer + s + round) % 3);
                        let ids = ids_of(&batch);
                        let expected = ExpectedVersion::Exact(heads[s]);
                        let result = append_ok(&store, stream, expected, batch).await;
                        heads[s] += count(ids.len());
                        assert_eq!(
                            result.version, heads[s],
                            "[contract 2, append] the only writer of {stream} gets the next versions"
                        );
                        appended.push((stream.clone(), ids, result));
                    }
                }
                appended
            })
        })
        .collect();
    let mut appended = Vec::new();
    for writer in writers {
        appended.extend(join(writer).await);
    }
    done.store(true, Ordering::SeqCst);
    let seen = join(reader).await;

    let written: HashSet<Uuid> = appended
        .iter()
        .flat_map(|(_, ids, _)| ids.iter().copied())
        .collect();
    let mut seen_ids = HashSet::new();
    for record in &seen {
        assert!(
            seen_ids.insert(record.event_id),
            "[contract 4, global log] the tailing reader saw event {} ({} version {}) twice",
            record.event_id,
            record.stream,
            record.version
        );
        assert!(
            written.contains(&record.event_id),
            "[contract 4, global log] the reader saw event {} that no writer appended \
             (this case needs a fresh store)",
            record.event_id
        );
    }
    let missed = written.difference(&seen_ids).count();
    assert_eq!(
        missed,
        0,
        "[contract 4, global log] the tailing reader missed {missed} of {} events",
        written.len()
    );

    let full = read_all(&store, Position::START, None).await;
    assert_eq!(
        record_ids(&full),
        record_ids(&seen),
        "[contract 4, global log] a full read gives the sequence the tailing reader saw"
    );
    assert_eq!(
        full, seen,
        "[contract 4, global log] a full read gives the same records the tailing reader saw"
    );

    // Resume from every cursor the log handed out, and from the start.
    let n = full.len();
    for i in 0..=n {
        let cursor = if i == 0 {
            Position::START
        } else {
            full[i - 1].position
        };
        let k = 1 + i % 5;
        let next = read_all(&store, cursor, Some(count(k))).await;
        assert_eq!(
            record_ids(&next),
            record_ids(&full[i..(i + k).min(n)]),
            "[contract 4, global log] read_all({cursor}, Some({k})) returns the next {k} events"
        );
        if i % 97 == 0 || i + 3 >= n {
            let rest = read_all(&store, cursor, None).await;
            assert_eq!(
                record_ids(&rest),
                record_ids(&full[i..]),
                "[contract 4, global log] read_all({cursor}, None) returns exactly the rest of the log"
            );
        }
    }

    let index: HashMap<Uuid, usize> = full
        .iter()
        .enumerate()
        .map(|(i, r)| (r.event_id, i))
        .collect();
    let mut per_stream: HashMap<_, Vec<u64>> = HashMap::new();
    for record in &full {
        per_stream
            .entry(record.stream.clone())
            .or_default()
            .push(record.version);
    }
    for (stream, ids, result) in &appended {
        let first = index[&ids[0]];
        let slice = &full[first..first + ids.len()];
        assert_eq!(
            record_ids(slice),
            *ids,
            "[contract 2, atomic append] a batch to {stream} is adjacent and in order in the log"
        );
        assert_eq!(
            slice[ids.len() - 1].position,
            result.position,
            "[contract 2, append] the AppendResult names the batch's last position"
        );
    }
    for (stream, stream_versions) in &per_stream {
        assert_eq!(
            *stream_versions,
            range(1, count(stream_versions.len())),
            "[contract 4, global log] the versions of {stream} are contiguous in log order"
        );
    }
    assert_eq!(
        per_stream.len(),
        WRITERS * STREAMS,
        "[contract 4, global log] every stream appears in the log"
    );
}

/// **Contract 4 (global log), per-stream order.** 8 tasks append to the same 4 streams
/// at once, 30 single-event appends each with `Exact` of the version they last saw
/// (re-reading the head after a conflict). `read_all` from the start then yields each
/// stream's events in increasing, contiguous version order: a projection never sees
/// version `v + 1` of a stream before version `v`, however the writers' transactions
/// interleave.
pub async fn read_all_keeps_stream_order<S: EventLog + Clone + 'static>(store: S) {
    const TASKS: usize = 8;
    const APPENDS: usize = 30;
    // Enough for every conflict a task can meet: each one means another append won.
    const MAX_TRIES: usize = TASKS * APPENDS * 4;
    let streams: Vec<_> = (0..4)
        .map(|i| fresh_stream(&format!("order-{i}")))
        .collect();
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, streams, barrier) = (store.clone(), streams.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut failures = Vec::new();
                for i in 0..APPENDS {
                    let stream = &streams[(task + i) % streams.len()];
                    let mut expected = ExpectedVersion::NoStream;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let event = events(&format!("order-{task}-{i}"), 1);
                        match store.append(stream, expected, event).await {
                            Ok(_) => break,
                            Err(Error::Conflict { actual, .. }) if tries < MAX_TRIES => {
                                expected = ExpectedVersion::Exact(actual);
                            }
                            Err(e) => {
                                failures.push(format!("{stream}: {e:?}"));
                                break;
                            }
                        }
                    }
                }
                failures
            })
        })
        .collect();
    for task in tasks {
        let failures = join(task).await;
        assert!(
            failures.is_empty(),
            "[contract 2, append] appends retried on conflict must succeed: {failures:?}"
        );
    }
    let mut last: HashMap<_, u64> = HashMap::new();
    for record in read_all(&store, Position::START, None).await {
        if !streams.contains(&record.stream) {
            continue;
        }
        let previous = last.entry(record.stream.clone()).or_insert(0);
        assert_eq!(
            record.version,
            *previous + 1,
            "[contract 4, global log] read_all yields {}'s versions in order: version {} came \
             after version {}",
            record.stream,
            record.version,
            previous
        );
        *previous = record.version;
    }
    let total: u64 = last.values().sum();
    assert_eq!(
        total,
        count(TASKS * APPENDS),
        "[contract 4, global log] read_all yields every appended event"
    );
}

/// **Contract 4 (global log), by construction**, for a backend whose positions are
/// `Position::new(0, n)` with `n` counting events from 1, handed out where the append
/// commits and made readable as a watermark (the in-memory store, sled). Not part of
/// [`store_conformance_tests!`](crate::store_conformance_tests): such a backend calls it
/// from a test of its own, to show that its commit order is its position order.
///
/// 8 tasks append batches of 1 to 3 events while 2 readers read the whole log over and
/// over. Every read must be a dense prefix of the log: sequences `1..=k`, no hole, no
/// commit part. A reader can only miss an event if a later position became readable
/// before an earlier one; a read that is always a dense prefix rules that out, so
/// resuming after any position handed out never skips an event, whatever the timing.
pub async fn reads_are_dense_prefixes<S: EventLog + Clone + 'static>(store: S) {
    const TASKS: usize = 8;
    const APPENDS: usize = 40;
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                let mut longest = 0usize;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let log: Vec<RecordedEvent> =
                        match store.read_all(Position::START, None).try_collect().await {
                            Ok(log) => log,
                            Err(e) => return Err(format!("read_all failed: {e:?}")),
                        };
                    for (i, record) in log.iter().enumerate() {
                        if record.position != Position::new(0, count(i + 1)) {
                            return Err(format!(
                                "read #{reads} is not a dense prefix: record {i} is at {}",
                                record.position
                            ));
                        }
                    }
                    longest = longest.max(log.len());
                    reads += 1;
                    if finished {
                        return Ok((reads, longest));
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = fresh_stream(&format!("dense-{task}"));
                for i in 0..APPENDS {
                    append_ok(
                        &store,
                        &stream,
                        ExpectedVersion::Any,
                        events(&format!("{task}-{i}"), i % 3 + 1),
                    )
                    .await;
                }
            })
        })
        .collect();
    for writer in writers {
        join(writer).await;
    }
    done.store(true, Ordering::Release);
    let total: usize = (0..APPENDS).map(|i| i % 3 + 1).sum::<usize>() * TASKS;
    for reader in readers {
        let outcome = match tokio::time::timeout(Duration::from_secs(60), join(reader)).await {
            Ok(outcome) => outcome,
            Err(_) => panic!("a reader of the log must finish within 60 s"),
        };
        match outcome {
            Ok((reads, longest)) => assert_eq!(
                longest, total,
                "[contract 4, global log] the last read ({reads} reads) sees every event"
            ),
            Err(e) => panic!("[contract 4, global log] {e}"),
        }
    }
}
