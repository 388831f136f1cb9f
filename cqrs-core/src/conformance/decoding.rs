//! Records that the typed layers cannot decode as they are: unknown types, bad payloads,
//! and old shapes that upcasters lift.

use serde_json::json;

use super::support::{append_ok, json_bytes, read_all, read_stream};
use super::tally::{
    ADDED, CLEARED, Tally, TallyCommand, TallyEvent, TallyLog, added, cleared, fresh_tally_id,
    tally_stream,
};
use crate::{
    Error, EventData, EventStore, ExpectedVersion, Inspect, JsonCodec, JsonEvent, Position,
    ProjectionRunner, Repository,
};

/// **Contract 9 (bad data gives errors).** Raw records appended to the test aggregate's
/// streams: an unknown event type makes [`Repository::load`] return
/// [`Error::UnknownEventType`], and a known type whose payload is not JSON, not UTF-8 or
/// of the wrong shape makes it return [`Error::Decode`], each naming the stream, version
/// and type, without a panic. The bad records are still stored, and other streams
/// still load and accept commands.
pub async fn unknown_event_type_and_bad_payload_are_typed_errors<S: Inspect + Clone + 'static>(
    store: S,
) {
    let repo = Repository::<Tally, S>::new(store.clone(), ());

    let unknown_id = fresh_tally_id("unknown-type");
    let unknown_stream = tally_stream(&unknown_id);
    let unknown = EventData::new("TallyExploded", json_bytes(&json!({ "boom": true })))
        .with_schema_version(4);
    append_ok(
        &store,
        &unknown_stream,
        ExpectedVersion::NoStream,
        vec![added(1), unknown, added(2)],
    )
    .await;
    match repo.load(&unknown_id).await {
        Err(Error::UnknownEventType {
            stream,
            version,
            event_type,
            schema_version,
        }) => {
            assert_eq!(
                (&stream, version, event_type.as_str(), schema_version),
                (&unknown_stream, 2, "TallyExploded", 4),
                "[contract 9, bad data] UnknownEventType names the stream, version, type and \
                 schema version"
            );
        }
        other => panic!(
            "[contract 9, bad data] loading a stream with an unknown event type must be \
             Error::UnknownEventType, got {other:?}"
        ),
    }

    let bad_payloads: [(&str, EventData, u64); 3] = [
        (
            "a payload that is not JSON",
            EventData::new(ADDED, b"{not json".to_vec()).with_schema_version(2),
            2,
        ),
        (
            "a payload that is not UTF-8",
            EventData::new(ADDED, vec![0xff, 0xfe, 0x00]).with_schema_version(2),
            2,
        ),
        (
            "a payload of the wrong shape",
            EventData::new(ADDED, json_bytes(&json!({ "Added": { "n": "seven" } })))
                .with_schema_version(2),
            2,
        ),
    ];
    let mut bad_streams = vec![(unknown_stream, 3)];
    for (what, bad, bad_version) in bad_payloads {
        let id = fresh_tally_id("bad-payload");
        let stream = tally_stream(&id);
        append_ok(
            &store,
            &stream,
            ExpectedVersion::NoStream,
            vec![added(5), bad.clone()],
        )
        .await;
        match repo.load(&id).await {
            Err(Error::Decode {
                stream: got_stream,
                version,
                event_type,
                ..
            }) => assert_eq!(
                (&got_stream, version, event_type.as_str()),
                (&stream, bad_version, ADDED),
                "[contract 9, bad data] {what}: Decode names the stream, version and type"
            ),
            other => panic!(
                "[contract 9, bad data] loading a stream with {what} must be Error::Decode, \
                 got {other:?}"
            ),
        }
        bad_streams.push((stream, 2));
    }

    for (stream, len) in &bad_streams {
        assert_eq!(
            read_stream(&store, stream, 1).await.len(),
            *len,
            "[contract 9, bad data] the records of {stream} are all still stored"
        );
    }

    let good_id = fresh_tally_id("good");
    append_ok(
        &store,
        &tally_stream(&good_id),
        ExpectedVersion::NoStream,
        vec![added(3), cleared(), added(4)],
    )
    .await;
    if let Err(e) = repo.execute(&good_id, &TallyCommand::Add(6)).await {
        panic!("[contract 9, bad data] a good stream accepts commands, got {e:?}");
    }
    match repo.load(&good_id).await {
        Ok(loaded) => assert_eq!(
            (loaded.state, loaded.version),
            (
                Tally {
                    sum: 10,
                    adds: 3,
                    clears: 1
                },
                4
            ),
            "[contract 9, bad data] a good stream loads fine next to bad ones"
        ),
        Err(e) => panic!("[contract 9, bad data] a good stream must load, got {e:?}"),
    }
}

/// **Upcasting on every read path.** Records written with an old schema version
/// (`TallyAdded` v1 with `amount`) and an old type name (`TallyIncremented`, which
/// becomes `TallyAdded` v1 and is lifted again) are seen as current events by
/// [`Repository::load`] and by a [`ProjectionRunner`] over `read_all`, both given a
/// [`JsonCodec`] with the upcasters; without the upcasters the old records do not decode.
pub async fn upcasters_apply_on_load_and_read_all<S: EventStore + Clone + 'static>(store: S) {
    let upcasters = crate::Upcasters::new()
        .register(ADDED, 1, |mut e: JsonEvent| {
            let amount = e.payload["Added"]["amount"]
                .as_u64()
                .ok_or("TallyAdded v1 without an amount")?;
            e.payload = json!({ "Added": { "n": amount } });
            e.schema_version = 2;
            Ok(e)
        })
        .register("TallyIncremented", 1, |mut e: JsonEvent| {
            let by = e.payload["by"]
                .as_u64()
                .ok_or("TallyIncremented without by")?;
            e.event_type = ADDED.to_owned();
            e.payload = json!({ "Added": { "amount": by } });
            e.schema_version = 1;
            Ok(e)
        });
    let codec = JsonCodec::new().with_upcasters(upcasters);

    let id = fresh_tally_id("upcast");
    let stream = tally_stream(&id);
    let old_added = |amount: u64| {
        EventData::new(ADDED, json_bytes(&json!({ "Added": { "amount": amount } })))
            .with_schema_version(1)
    };
    let old_incremented =
        |by: u64| EventData::new("TallyIncremented", json_bytes(&json!({ "by": by })));
    append_ok(
        &store,
        &stream,
        ExpectedVersion::NoStream,
        vec![
            old_added(5),
            old_incremented(3),
            added(7),
            cleared(),
            old_incremented(4),
            old_added(2),
        ],
    )
    .await;
    let expected_events = vec![
        TallyEvent::Added { n: 5 },
        TallyEvent::Added { n: 3 },
        TallyEvent::Added { n: 7 },
        TallyEvent::Cleared,
        TallyEvent::Added { n: 4 },
        TallyEvent::Added { n: 2 },
    ];
    let expected_state = Tally::replay(expected_events.clone());

    let plain = Repository::<Tally, S>::new(store.clone(), ());
    assert!(
        matches!(plain.load(&id).await, Err(Error::Decode { version: 1, .. })),
        "without upcasters, a TallyAdded v1 record does not decode (the case's premise)"
    );

    let repo = plain.with_codec(codec.clone());
    match repo.load(&id).await {
        Ok(loaded) => assert_eq!(
            (&loaded.state, loaded.version, loaded.events_replayed),
            (&expected_state, 6, 6),
            "[upcasting] Repository::load with an upcasting codec sees the lifted events"
        ),
        Err(e) => panic!("[upcasting] loading upcast records must succeed, got {e:?}"),
    }
    match repo.execute(&id, &TallyCommand::Add(1)).await {
        Ok(done) => assert_eq!(
            done.version, 7,
            "[upcasting] a command on an upcast stream appends at the next version"
        ),
        Err(e) => panic!("[upcasting] a command on an upcast stream must succeed, got {e:?}"),
    }

    let mut runner =
        ProjectionRunner::new(store.clone(), TallyLog::new(stream.clone())).with_codec(codec);
    if let Err(e) = runner.catch_up().await {
        panic!("[upcasting] a projection over upcast records must catch up, got {e:?}");
    }
    let mut expected_seen: Vec<(u64, TallyEvent)> = (1..).zip(expected_events).collect();
    expected_seen.push((7, TallyEvent::Added { n: 1 }));
    assert_eq!(
        runner.projection().seen,
        expected_seen,
        "[upcasting] a ProjectionRunner reading the log sees the lifted events, in order"
    );

    // The store itself keeps the records as written: upcasting happens on the way out.
    let raw: Vec<_> = read_all(&store, Position::START, None)
        .await
        .into_iter()
        .filter(|r| r.stream == stream)
        .map(|r| (r.event_type, r.schema_version))
        .collect();
    assert_eq!(
        raw[..2],
        [(ADDED.to_owned(), 1), ("TallyIncremented".to_owned(), 1)],
        "[contract 6, envelope] the store keeps old records as they were written"
    );
    assert_eq!(raw[3], (CLEARED.to_owned(), 1));
}
