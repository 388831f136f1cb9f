//! Helpers shared by the cases: fresh names, event builders, reads that panic with context.

use futures::TryStreamExt;
use serde_json::json;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    AppendResult, Error, EventData, EventLog, ExpectedVersion, Inspect, Position, RecordedEvent,
    Result, SnapshotRecord, SnapshotStore, StreamId,
};

/// The aggregate type of the raw streams the cases write.
pub(super) const STREAM_TYPE: &str = "conformance";

/// The event type of the raw events the cases write.
pub(super) const EVENT_TYPE: &str = "ConformanceEvent";

/// A stream id that no other case, and no earlier run, uses.
pub(super) fn fresh_stream(label: &str) -> StreamId {
    StreamId::new(STREAM_TYPE, format!("{label}-{}", Uuid::new_v4()))
        .expect("a conformance stream id is valid")
}

/// A raw event whose JSON payload names `label`, with a fresh id.
pub(super) fn event(label: &str) -> EventData {
    EventData::new(EVENT_TYPE, json_bytes(&json!({ "label": label })))
}

/// `n` raw events labelled `label#0`, `label#1`, ...
pub(super) fn events(label: &str, n: usize) -> Vec<EventData> {
    (0..n).map(|i| event(&format!("{label}#{i}"))).collect()
}

/// The ids of a batch.
pub(super) fn ids_of(events: &[EventData]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

/// The ids of some records.
pub(super) fn record_ids(records: &[RecordedEvent]) -> Vec<Uuid> {
    records.iter().map(|r| r.event_id).collect()
}

/// The versions of some records.
pub(super) fn versions(records: &[RecordedEvent]) -> Vec<u64> {
    records.iter().map(|r| r.version).collect()
}

/// `first..=last` as a `Vec`, for comparing with [`versions`].
pub(super) fn range(first: u64, last: u64) -> Vec<u64> {
    (first..=last).collect()
}

/// A count as a `u64` (counts in the cases are small).
pub(super) fn count(n: usize) -> u64 {
    u64::try_from(n).expect("a count fits in u64")
}

/// Serializes a JSON value.
pub(super) fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

/// Appends and panics, naming the append, if the store refuses.
pub(super) async fn append_ok<S: EventLog>(
    store: &S,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<EventData>,
) -> AppendResult {
    let n = events.len();
    match store.append(stream, expected, events).await {
        Ok(result) => result,
        Err(e) => panic!(
            "appending {n} event(s) to {stream} expecting {expected} must succeed, got {e:?}"
        ),
    }
}

/// Reads a whole stream from `from`, panicking on a read error.
pub(super) async fn read_stream<S: EventLog>(
    store: &S,
    stream: &StreamId,
    from: u64,
) -> Vec<RecordedEvent> {
    match store.read_stream(stream, from).try_collect().await {
        Ok(records) => records,
        Err(e) => panic!("read_stream({stream}, {from}) must not fail, got {e:?}"),
    }
}

/// Reads the log after `after`, panicking on a read error.
pub(super) async fn read_all<S: EventLog>(
    store: &S,
    after: Position,
    limit: Option<u64>,
) -> Vec<RecordedEvent> {
    match store.read_all(after, limit).try_collect().await {
        Ok(records) => records,
        Err(e) => panic!("read_all({after}, {limit:?}) must not fail, got {e:?}"),
    }
}

/// Counts the log after `after` by reading it (for cases that check the log, not
/// [`Inspect`]), panicking on an error.
pub(super) async fn log_len<S: EventLog>(store: &S, after: Position) -> u64 {
    read_all(store, after, None).await.len() as u64
}

/// Counts the log after `after` with [`Inspect::count_events`], panicking on an error.
pub(super) async fn count_events<S: Inspect>(store: &S, after: Position) -> u64 {
    match store.count_events(after).await {
        Ok(n) => n,
        Err(e) => panic!("count_events({after}) must not fail, got {e:?}"),
    }
}

/// Looks an event up, panicking on an error.
pub(super) async fn find_event<S: Inspect>(
    store: &S,
    stream: &StreamId,
    event_id: Uuid,
) -> Option<RecordedEvent> {
    match store.find_event(stream, event_id).await {
        Ok(found) => found,
        Err(e) => panic!("find_event({stream}, {event_id}) must not fail, got {e:?}"),
    }
}

/// Asserts that an append was refused with exactly this `Conflict`.
#[track_caller]
pub(super) fn assert_conflict(
    outcome: Result<AppendResult>,
    stream: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
    what: &str,
) {
    match outcome {
        Err(Error::Conflict {
            stream: got_stream,
            expected: got_expected,
            actual: got_actual,
        }) => {
            assert_eq!(
                &got_stream, stream,
                "[contract 2, expected version] {what}: the Conflict must name the stream appended to"
            );
            assert_eq!(
                got_expected, expected,
                "[contract 2, expected version] {what}: the Conflict must carry the expectation the append passed"
            );
            assert_eq!(
                got_actual, actual,
                "[contract 2, expected version] {what}: the Conflict must report the stream's version when it refused"
            );
        }
        other => panic!(
            "[contract 2, expected version] {what}: expected Error::Conflict {{ stream: {stream}, \
             expected: {expected:?}, actual: {actual} }}, got {other:?}"
        ),
    }
}

/// Asserts that an append was refused as [`Error::InvalidInput`].
#[track_caller]
pub(super) fn assert_invalid_input<T: std::fmt::Debug>(outcome: Result<T>, what: &str) {
    assert!(
        matches!(outcome, Err(Error::InvalidInput { .. })),
        "[contract 9, bad input] {what} must be refused with Error::InvalidInput, got {outcome:?}"
    );
}

/// Asserts that a refused append left `stream` exactly as `before` and stored none of
/// the `refused` ids.
pub(super) async fn assert_nothing_written<S: EventLog>(
    store: &S,
    stream: &StreamId,
    before: &[RecordedEvent],
    refused: &[Uuid],
    what: &str,
) {
    let now = read_stream(store, stream, 1).await;
    assert_eq!(
        now, before,
        "[contract 2, atomic append] {what}: a refused append must leave the stream unchanged"
    );
    let log = read_all(store, Position::START, None).await;
    for id in refused {
        assert!(
            log.iter().all(|record| record.event_id != *id),
            "[contract 2, atomic append] {what}: a refused append must not store event {id}"
        );
    }
}

/// How long a case waits for one of its tasks: far longer than any task needs, so that
/// it only turns a hang (a task stuck at a barrier another task left, a store call that
/// never returns) into a failure.
const TASK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Waits for a task of the case, re-raising its panic (so its message is the failure);
/// a task that has not finished within three minutes fails the case.
pub(super) async fn join<T>(handle: JoinHandle<T>) -> T {
    let abort = handle.abort_handle();
    match tokio::time::timeout(TASK_DEADLINE, handle).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("a task of the case was cancelled: {e}"),
        Err(_) => {
            abort.abort();
            panic!("a task of the case did not finish within {TASK_DEADLINE:?}");
        }
    }
}

/// Saves a snapshot, panicking if the store refuses.
pub(super) async fn save_snapshot<S: SnapshotStore>(
    store: &S,
    stream: &StreamId,
    snapshot: SnapshotRecord,
) {
    if let Err(e) = store.save_snapshot(stream, snapshot).await {
        panic!("save_snapshot({stream:?}) must not fail, got {e:?}");
    }
}
