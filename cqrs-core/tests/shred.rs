//! Crypto-shredding over the in-memory store: the shared case, the whole store
//! conformance suite through the wrapper, and the bad inputs.

use cqrs_core::conformance::shredding::{CustomerEvent, forget_erases_personal_data};
use cqrs_core::{
    Codec, Error, EventData, EventLog, ExpectedVersion, InMemoryEventStore, InMemoryKeyStore,
    Inspect, JsonCodec, KeyState, KeyStore, Personal, Position, Shredded, SnapshotRecord,
    SnapshotStore, StreamId,
};
use futures::TryStreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

type Store = Shredded<InMemoryEventStore, InMemoryKeyStore>;

fn fresh() -> (InMemoryEventStore, Store) {
    let inner = InMemoryEventStore::new();
    (inner.clone(), Shredded::new(inner, InMemoryKeyStore::new()))
}

/// Every byte the in-memory store holds: payloads of the log and of the snapshots.
async fn dump(inner: &InMemoryEventStore) -> Vec<u8> {
    let mut bytes = Vec::new();
    let log: Vec<_> = inner
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap();
    for record in log {
        bytes.extend(record.payload);
        if let Some(snapshot) = inner.load_snapshot(&record.stream).await.unwrap() {
            bytes.extend(snapshot.payload);
        }
    }
    bytes
}

fn stream(id: &str) -> StreamId {
    StreamId::new("customer", format!("{id}-{}", Uuid::new_v4())).unwrap()
}

fn registered(subject: &str, name: &str) -> EventData {
    let event = CustomerEvent::Registered {
        name: Personal::new(subject, name.to_owned()),
    };
    EventData::new("CustomerRegistered", serde_json::to_vec(&event).unwrap())
}

async fn read(store: &impl EventLog, stream: &StreamId) -> cqrs_core::Result<Vec<Value>> {
    let records: Vec<_> = store.read_stream(stream, 1).try_collect().await?;
    Ok(records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect())
}

#[tokio::test]
async fn memory_forget_erases_personal_data() {
    let (inner, store) = fresh();
    forget_erases_personal_data(store, async || dump(&inner).await, true).await;
}

#[tokio::test]
async fn every_read_path_decrypts_and_decodes() {
    let (inner, store) = fresh();
    let s = stream("ada");
    let event = registered("ada", "Ada Lovelace");
    let id = event.event_id;
    store
        .append(&s, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();

    let stored = read(&inner, &s).await.unwrap();
    let body = &stored[0]["Registered"]["name"]["$personal"];
    assert_eq!(body["subject"], "ada");
    assert!(body.get("value").is_none() && body["ciphertext"].is_string());

    let codec = JsonCodec::new();
    let by_stream: Vec<_> = store.read_stream(&s, 1).try_collect().await.unwrap();
    let by_log: Vec<_> = store
        .read_all(Position::START, None)
        .try_collect()
        .await
        .unwrap();
    let found = store.find_event(&s, id).await.unwrap().unwrap();
    for record in [&by_stream[0], &by_log[0], &found] {
        let decoded: CustomerEvent = codec.decode(record).unwrap();
        let name = Personal::new("ada", "Ada Lovelace".to_owned());
        assert_eq!(decoded, CustomerEvent::Registered { name });
    }

    // A read model that kept the sealed value opens it with the shredder.
    let sealed: CustomerEvent = serde_json::from_value(stored[0].clone()).unwrap();
    let CustomerEvent::Registered { name } = sealed else {
        panic!()
    };
    assert!(matches!(name, Personal::Sealed { .. }));
    let opened = store.shredder().unseal(name.clone()).await.unwrap();
    assert_eq!(opened.value().map(String::as_str), Some("Ada Lovelace"));
    store.forget("ada").await.unwrap();
    let erased = store.shredder().unseal(name).await.unwrap();
    assert_eq!(
        erased,
        Personal::Erased {
            subject: "ada".into()
        }
    );
}

#[tokio::test]
async fn tampered_ciphertext_is_a_corrupt_record_not_a_panic() {
    let (inner, store) = fresh();
    let s = stream("ada");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![registered("ada", "Ada")],
        )
        .await
        .unwrap();
    let mut stored = read(&inner, &s).await.unwrap().remove(0);
    let body = &mut stored["Registered"]["name"]["$personal"];
    let ciphertext = body["ciphertext"].as_str().unwrap().to_owned();
    let flipped = if ciphertext.starts_with('A') {
        "B"
    } else {
        "A"
    };
    body["ciphertext"] = json!(format!("{flipped}{}", &ciphertext[1..]));

    // Another stream, holding the tampered copy, and one with the subject swapped.
    let tampered = stream("tampered");
    let payload = serde_json::to_vec(&stored).unwrap();
    let event = EventData::new("CustomerRegistered", payload);
    inner
        .append(&tampered, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    match read(&store, &tampered).await {
        Err(Error::Corrupt { location, reason }) => {
            assert!(location.contains(&tampered.to_string()), "{location}");
            assert!(reason.contains("tampered"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let mut swapped = read(&inner, &s).await.unwrap().remove(0);
    store
        .append(
            &stream("bob"),
            ExpectedVersion::NoStream,
            vec![registered("bob", "Bob")],
        )
        .await
        .unwrap();
    swapped["Registered"]["name"]["$personal"]["subject"] = json!("bob");
    let other = stream("swapped");
    let event = EventData::new("CustomerRegistered", serde_json::to_vec(&swapped).unwrap());
    inner
        .append(&other, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    assert!(matches!(
        read(&store, &other).await,
        Err(Error::Corrupt { .. })
    ));

    // Not base64 at all.
    swapped["Registered"]["name"]["$personal"]["nonce"] = json!("%%%");
    let bad = stream("bad-nonce");
    let event = EventData::new("CustomerRegistered", serde_json::to_vec(&swapped).unwrap());
    inner
        .append(&bad, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    assert!(matches!(
        read(&store, &bad).await,
        Err(Error::Corrupt { .. })
    ));
    // The good record still reads.
    assert_eq!(read(&store, &s).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_subjects_are_refused_and_nothing_is_written() {
    let (inner, store) = fresh();
    let s = stream("bad");
    for subject in ["", "a\0b", &"x".repeat(257)] {
        let appended = store.append(&s, ExpectedVersion::Any, vec![registered(subject, "Ada")]);
        assert!(
            matches!(appended.await, Err(Error::InvalidInput { .. })),
            "{subject:?}"
        );
        assert!(matches!(
            store.forget(subject).await,
            Err(Error::InvalidInput { .. })
        ));
    }
    // A marker without a subject id.
    let payload = br#"{"$personal":{"value":"Ada"}}"#.to_vec();
    let appended = store.append(&s, ExpectedVersion::Any, vec![EventData::new("E", payload)]);
    assert!(matches!(appended.await, Err(Error::InvalidInput { .. })));
    assert!(
        read(&inner, &s).await.unwrap().is_empty(),
        "nothing written"
    );
    // A batch the store refuses (an empty type name) makes no key for its subject.
    let refused = EventData::new("", registered("carol", "Carol").payload);
    let appended = store.append(&s, ExpectedVersion::Any, vec![refused]);
    assert!(matches!(appended.await, Err(Error::InvalidInput { .. })));
    let keys = store.shredder().keys();
    assert_eq!(keys.load_key("carol").await.unwrap(), KeyState::Missing);

    // A batch with a forgotten subject writes none of its events.
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![registered("ada", "Ada")],
        )
        .await
        .unwrap();
    store.forget("ada").await.unwrap();
    let batch = vec![registered("bob", "Bob"), registered("ada", "Ada")];
    match store.append(&s, ExpectedVersion::Exact(1), batch).await {
        Err(e @ Error::SubjectForgotten { .. }) => assert!(e.is_invalid_input()),
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&inner, &s).await.unwrap().len(), 1);
    let snapshot = SnapshotRecord {
        version: 1,
        schema_version: 1,
        payload: serde_json::to_vec(&Personal::new("ada", "Ada")).unwrap(),
    };
    let saved = store.save_snapshot(&s, snapshot).await;
    assert!(matches!(saved, Err(Error::SubjectForgotten { .. })));
    assert_eq!(inner.load_snapshot(&s).await.unwrap(), None);
}

#[tokio::test]
async fn plain_legacy_and_non_json_payloads_pass_through() {
    let (inner, store) = fresh();
    let s = stream("legacy");
    let legacy = br#"{"Registered":{"name":"Ada Legacy"}}"#.to_vec();
    let binary = vec![0xff, 0x00, 0x24, 0x13];
    let events = vec![
        EventData::new("CustomerRegistered", legacy.clone()),
        EventData::new("Binary", binary.clone()),
    ];
    store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let stored: Vec<_> = inner.read_stream(&s, 1).try_collect().await.unwrap();
    assert_eq!((&stored[0].payload, &stored[1].payload), (&legacy, &binary));
    let read: Vec<_> = store.read_stream(&s, 1).try_collect().await.unwrap();
    assert_eq!((&read[0].payload, &read[1].payload), (&legacy, &binary));
    let decoded: CustomerEvent = JsonCodec::new().decode(&read[0]).unwrap();
    let name = Personal::Unmarked("Ada Legacy".to_owned());
    assert_eq!(decoded, CustomerEvent::Registered { name });
    // No key was made for data that has no subject.
    let keys = store.shredder().keys();
    assert_eq!(
        keys.load_key("Ada Legacy").await.unwrap(),
        KeyState::Missing
    );
}

mod conformance {
    async fn fresh_store() -> Option<super::Store> {
        Some(super::fresh().1)
    }

    cqrs_core::store_conformance_tests!(fresh_store);
}
