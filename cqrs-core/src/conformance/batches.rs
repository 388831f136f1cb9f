//! Which batches a store takes again and which it refuses: idempotent re-appends,
//! ids used in another stream, and invalid batches.

use super::support::{
    append_ok, assert_conflict, assert_invalid_input, assert_nothing_written, event, events,
    fresh_stream, log_len, read_stream,
};
use crate::{AppendResult, Error, EventData, EventLog, ExpectedVersion, Position};

/// **Contract 3 (idempotent append).** Re-appending a batch whose ids are already in the
/// stream, at consecutive versions in the same order, succeeds whatever the expected
/// version, writes nothing and returns the original [`AppendResult`]; a batch that only
/// partly matches (or matches out of order) is a `Conflict` that writes nothing; an id
/// used in another stream is [`Error::DuplicateEventId`]; an empty batch and a batch that
/// repeats an id are [`Error::InvalidInput`].
pub async fn idempotent_reappend<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("idempotent");
    let a = events("a", 3);
    let first = append_ok(&store, &stream, ExpectedVersion::NoStream, a.clone()).await;
    let b = vec![event("b")];
    let second = append_ok(&store, &stream, ExpectedVersion::Exact(3), b.clone()).await;
    assert!(
        !first.duplicate && !second.duplicate,
        "[contract 3, idempotent append] an append that writes says so (duplicate: false)"
    );
    let as_duplicate = |fresh: AppendResult| AppendResult {
        duplicate: true,
        ..fresh
    };
    let before = read_stream(&store, &stream, 1).await;
    let total = log_len(&store, Position::START).await;

    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(3),
        ExpectedVersion::Exact(4),
        ExpectedVersion::Exact(9),
        ExpectedVersion::StreamExists,
        ExpectedVersion::Any,
    ] {
        let again = store.append(&stream, expected, a.clone()).await;
        let what = format!("re-appending the first batch with {expected:?}");
        assert_eq!(
            again.ok(),
            Some(as_duplicate(first)),
            "[contract 3, idempotent append] {what} returns the original result, marked \
             as a duplicate"
        );
        assert_nothing_written(&store, &stream, &before, &[], &what).await;
    }
    let again = store.append(&stream, ExpectedVersion::Exact(1), b).await;
    assert_eq!(
        again.ok(),
        Some(as_duplicate(second)),
        "[contract 3, idempotent append] re-appending the second batch returns its result"
    );
    let tail = store
        .append(&stream, ExpectedVersion::Exact(0), a[1..].to_vec())
        .await;
    assert_eq!(
        tail.ok(),
        Some(AppendResult {
            version: 3,
            position: before[2].position,
            duplicate: true,
        }),
        "[contract 3, idempotent append] ids already stored at consecutive versions, in \
         order, are an idempotent re-append returning their last version and position"
    );
    assert_eq!(
        log_len(&store, Position::START).await,
        total,
        "[contract 3, idempotent append] idempotent re-appends write nothing to the log"
    );

    let fresh = event("fresh");
    let partial: [(&str, Vec<EventData>, ExpectedVersion); 4] = [
        (
            "a stored id then a new one, at the right version",
            vec![a[0].clone(), fresh.clone()],
            ExpectedVersion::Exact(4),
        ),
        (
            "a new id then a stored one",
            vec![fresh.clone(), a[2].clone()],
            ExpectedVersion::NoStream,
        ),
        (
            "stored ids in another order",
            vec![a[1].clone(), a[0].clone()],
            ExpectedVersion::Any,
        ),
        (
            "stored ids that are not consecutive",
            vec![a[0].clone(), a[2].clone()],
            ExpectedVersion::Exact(4),
        ),
    ];
    for (what, batch, expected) in partial {
        let outcome = store.append(&stream, expected, batch).await;
        assert_conflict(outcome, &stream, expected, 4, what);
        assert_nothing_written(&store, &stream, &before, &[fresh.event_id], what).await;
    }

    let other = fresh_stream("idempotent-other");
    for (what, batch, taken) in [
        ("an id of another stream", vec![a[0].clone()], a[0].event_id),
        (
            "a new id and an id of another stream",
            vec![fresh.clone(), a[1].clone()],
            a[1].event_id,
        ),
    ] {
        match store.append(&other, ExpectedVersion::Any, batch).await {
            Err(Error::DuplicateEventId {
                event_id,
                existing_stream,
            }) => {
                assert_eq!(
                    event_id, taken,
                    "[contract 3, idempotent append] {what}: DuplicateEventId names the id"
                );
                assert_eq!(
                    existing_stream, stream,
                    "[contract 3, idempotent append] {what}: DuplicateEventId names the stream holding it"
                );
            }
            outcome => panic!(
                "[contract 3, idempotent append] {what} must be Error::DuplicateEventId, got {outcome:?}"
            ),
        }
        assert_nothing_written(&store, &other, &[], &[fresh.event_id], what).await;
    }

    let outcome = store.append(&other, ExpectedVersion::Any, Vec::new()).await;
    assert_invalid_input(outcome, "an empty batch");
    let outcome = store
        .append(
            &other,
            ExpectedVersion::Any,
            vec![fresh.clone(), fresh.clone()],
        )
        .await;
    assert_invalid_input(outcome, "a batch that repeats an id");
    let outcome = store
        .append(
            &stream,
            ExpectedVersion::Exact(4),
            vec![fresh.clone(), event("x"), fresh.clone()],
        )
        .await;
    assert_invalid_input(outcome, "a batch that repeats an id, at the right version");
    assert_nothing_written(&store, &other, &[], &[fresh.event_id], "invalid batches").await;
    assert_nothing_written(
        &store,
        &stream,
        &before,
        &[fresh.event_id],
        "invalid batches",
    )
    .await;
    assert_eq!(
        log_len(&store, Position::START).await,
        total,
        "[contract 3, idempotent append] refused batches write nothing to the log"
    );
}

/// **Contract 9 (bad input).** Event type names are 1 to 256 bytes without NUL (as
/// [`validate_batch`](crate::validate_batch) checks): an empty, too long or NUL-bearing
/// type is [`Error::InvalidInput`] and nothing of the batch is written, while a
/// 256-byte, unicode or oddly punctuated type round-trips.
pub async fn invalid_event_types_are_refused<S: EventLog + Clone + 'static>(store: S) {
    let stream = fresh_stream("event-types");
    let good = event("good");
    for (what, event_type) in [
        ("an empty event type", String::new()),
        ("a 257-byte event type", "T".repeat(257)),
        ("an event type with NUL", "Bad\0Type".to_owned()),
    ] {
        let bad = EventData::new(event_type, b"{}".to_vec());
        let outcome = store
            .append(&stream, ExpectedVersion::Any, vec![good.clone(), bad])
            .await;
        assert_invalid_input(outcome, what);
        assert_nothing_written(&store, &stream, &[], &[good.event_id], what).await;
    }

    let odd = [
        format!("{}Z", "T".repeat(255)),
        "Ünïcödé.Event/v2 \"quoted\"".to_owned(),
        "a".to_owned(),
    ];
    let batch: Vec<_> = odd
        .iter()
        .map(|t| EventData::new(t.clone(), b"{}".to_vec()))
        .collect();
    append_ok(&store, &stream, ExpectedVersion::NoStream, batch).await;
    let recorded = read_stream(&store, &stream, 1).await;
    let types: Vec<_> = recorded.iter().map(|r| r.event_type.clone()).collect();
    assert_eq!(
        types, odd,
        "[contract 6, envelope] valid event type names round-trip unchanged"
    );
}
