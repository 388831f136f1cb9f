//! Tests of the log records of several events, and a writer of the old one-event
//! records for tests that build a store of the old layout.

use super::*;

fn sample(n: usize) -> (StreamId, Vec<EventData>) {
    let stream = StreamId::new("account", "o'neil / ünï 🦀").unwrap();
    let events = (0..n)
        .map(|i| {
            EventData::new(format!("Opened{i}"), format!(r#"{{"a":{i}}}"#).into_bytes())
                .with_metadata(
                    Metadata::new()
                        .with_correlation_id(Uuid::new_v4())
                        .with_value("user", "ada")
                        .with_value("", ""),
                )
        })
        .collect();
    (stream, events)
}

/// Every event of the record at `position`, or the first error.
fn decode_all(bytes: &[u8], position: u64) -> Result<Vec<RecordedEvent>> {
    let mut chunk = Chunk::open(bytes, position, None)?;
    let mut out = Vec::new();
    while let Some(event) = chunk.next_event(true) {
        out.extend(event?);
    }
    Ok(out)
}

/// `n` events whose payloads compress well (JSON that repeats its keys).
fn compressible(n: usize) -> (StreamId, Vec<EventData>) {
    let (stream, mut events) = sample(n);
    for (i, event) in events.iter_mut().enumerate() {
        event.payload = format!(
            r#"{{"Deposited":{{"account":"acc-{}","amount_cents":{i},"note":"monthly salary"}}}}"#,
            i % 7
        )
        .into_bytes();
    }
    (stream, events)
}

/// `body` (a record without its checksum) with a correct checksum: a record that only a
/// faulty writer could have stored.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let sum = CRC32C.checksum(&body);
    body.extend_from_slice(&sum.to_be_bytes());
    body
}

#[test]
fn records_round_trip() {
    let (stream, events) = sample(3);
    let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    let bytes = encode(&stream, 7, &events, at, false).unwrap();
    let back = decode_all(&bytes, 42).unwrap();
    assert_eq!(back.len(), 3);
    for (i, (back, event)) in back.iter().zip(&events).enumerate() {
        let i = u64::try_from(i).unwrap();
        assert_eq!(back.stream, stream);
        assert_eq!(
            (back.version, back.position),
            (7 + i, Position::new(0, 42 + i))
        );
        assert_eq!(back.event_id, event.event_id);
        assert_eq!(back.event_type, event.event_type);
        assert_eq!(back.payload, event.payload);
        assert_eq!(back.metadata, event.metadata);
        assert_eq!(back.recorded_at, at);
    }
    let chunk = Chunk::open(&bytes, 42, None).unwrap();
    assert_eq!((chunk.last_version(), chunk.last_position()), (9, 44));
    assert!(chunk.expect(&stream, 9).is_ok());
    assert!(chunk.expect(&stream, 8).is_err());
    // Skipping decodes nothing but still walks the record.
    let mut chunk = Chunk::open(&bytes, 42, None).unwrap();
    assert!(matches!(chunk.next_event(false), Some(Ok(None))));
    let second = chunk.next_event(true).unwrap().unwrap().unwrap();
    assert_eq!(second.event_id, events[1].event_id);
}

#[test]
fn batches_are_cut_into_records_of_bounded_size() {
    let big = vec![b'x'; CHUNK_BYTES / 3];
    let events: Vec<_> = (0..10)
        .map(|_| EventData::new("Big", big.clone()))
        .collect();
    let runs: Vec<_> = runs(&events).map(<[_]>::len).collect();
    assert_eq!(runs, [3, 3, 3, 1]);
    let huge = [EventData::new("Huge", vec![0; CHUNK_BYTES * 2])];
    assert_eq!(runs_of(&huge), [1]);
    assert_eq!(runs_of(&[]), Vec::<usize>::new());
}

fn runs_of(events: &[EventData]) -> Vec<usize> {
    runs(events).map(<[_]>::len).collect()
}

#[test]
fn every_truncation_and_garbage_is_an_error() {
    let (stream, events) = sample(2);
    let bytes = encode(&stream, 1, &events, SystemTime::now(), false).unwrap();
    for len in 0..bytes.len() {
        assert!(matches!(
            decode_all(&bytes[..len], 1),
            Err(Error::Corrupt { .. })
        ));
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_all(&longer, 1).is_err());
    for seed in 0..200u8 {
        let garbage: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = decode_all(&garbage, 1);
    }
}

#[test]
fn every_flipped_bit_and_byte_is_corrupt_never_a_value() {
    let (stream, events) = sample(2);
    let bytes = encode(&stream, 3, &events, SystemTime::now(), false).unwrap();
    for i in 0..bytes.len() {
        for flip in (0..8).map(|b| 1u8 << b).chain([0xff, 0x5a]) {
            let mut damaged = bytes.clone();
            damaged[i] ^= flip;
            let got = decode_all(&damaged, 9);
            assert!(
                matches!(got, Err(Error::Corrupt { .. })),
                "byte {i} ^ {flip:#x} decoded as {got:?}"
            );
        }
    }
    let mut damaged = bytes.clone();
    let last = damaged.len() - 10;
    damaged[last] ^= 1;
    let err = decode_all(&damaged, 9).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(err.to_string().contains("version 3"), "{err}");
}

#[test]
fn records_of_older_formats_still_decode() {
    let (stream, events) = sample(1);
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for checksum in [true, false] {
        let old = encode_old(&stream, 4, &events[0], at, checksum);
        let back = decode_all(&old, 5).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].event_id, back[0].version, back[0].position.sequence),
            (events[0].event_id, 4, 5)
        );
        assert_eq!(
            (&back[0].payload, back[0].recorded_at),
            (&events[0].payload, at)
        );
        assert_eq!(back[0].metadata, events[0].metadata);
    }
    let mut old = encode_old(&stream, 4, &events[0], at, true);
    let last = old.len() - 1;
    old[last] ^= 1;
    assert!(decode_all(&old, 5).is_err());
    old[0] = 5;
    let err = decode_all(&old, 5).unwrap_err();
    assert!(err.to_string().contains("unknown record format 5"), "{err}");
}

#[test]
fn compressed_records_round_trip_and_are_smaller() {
    let (stream, events) = compressible(40);
    let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    let plain = encode(&stream, 7, &events, at, false).unwrap();
    let packed = encode(&stream, 7, &events, at, true).unwrap();
    assert_eq!((plain[0], packed[0]), (FORMAT, FORMAT_PACKED));
    assert!(
        packed.len() * 3 < plain.len() * 2,
        "{} bytes compressed, {} plain",
        packed.len(),
        plain.len()
    );
    let chunk = Chunk::open(&packed, 42, None).unwrap();
    assert!(chunk.compressed());
    assert_eq!((chunk.last_version(), chunk.last_position()), (46, 81));
    assert_eq!(
        decode_all(&packed, 42).unwrap(),
        decode_all(&plain, 42).unwrap()
    );
    let back = decode_all(&packed, 42).unwrap();
    assert_eq!(back.len(), 40);
    for (back, event) in back.iter().zip(&events) {
        assert_eq!(
            (
                back.event_id,
                &back.event_type,
                &back.payload,
                &back.metadata
            ),
            (
                event.event_id,
                &event.event_type,
                &event.payload,
                &event.metadata
            )
        );
        assert_eq!(back.recorded_at, at);
    }
    // Skipping events of a compressed record still walks it.
    let mut chunk = Chunk::open(&packed, 42, None).unwrap();
    assert!(matches!(chunk.next_event(false), Some(Ok(None))));
    let second = chunk.next_event(true).unwrap().unwrap().unwrap();
    assert_eq!((second.event_id, second.version), (events[1].event_id, 8));
}

#[test]
fn small_or_incompressible_records_are_written_plain() {
    let (stream, events) = sample(1);
    let bytes = encode(&stream, 1, &events, SystemTime::now(), true).unwrap();
    assert_eq!(bytes[0], FORMAT, "one small event is not compressed");
    // Pseudo-random payloads that LZ4 cannot shrink.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_be_bytes()[0]
        })
        .collect();
    let events = [EventData::new("Noise", noise)];
    let bytes = encode(&stream, 1, &events, SystemTime::now(), true).unwrap();
    assert_eq!(
        bytes[0], FORMAT,
        "a record is compressed only when that is smaller"
    );
    assert_eq!(decode_all(&bytes, 1).unwrap()[0].payload, events[0].payload);
}

#[test]
fn every_damage_to_a_compressed_record_is_corrupt_never_a_value() {
    let (stream, events) = compressible(12);
    let bytes = encode(&stream, 3, &events, SystemTime::now(), true).unwrap();
    assert_eq!(bytes[0], FORMAT_PACKED);
    for len in 0..bytes.len() {
        assert!(matches!(
            decode_all(&bytes[..len], 1),
            Err(Error::Corrupt { .. })
        ));
    }
    for i in 0..bytes.len() {
        for flip in [0x01, 0x10, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[i] ^= flip;
            let got = decode_all(&damaged, 9);
            assert!(
                matches!(got, Err(Error::Corrupt { .. })),
                "byte {i} ^ {flip:#x} decoded as {got:?}"
            );
        }
    }
}

/// Records with a correct checksum that a faulty writer could store: each is corrupt,
/// none allocates what it claims, none panics.
#[test]
fn forged_compressed_records_are_corrupt() {
    let (stream, events) = compressible(12);
    let bytes = encode(&stream, 3, &events, SystemTime::now(), true).unwrap();
    let body = &bytes[..bytes.len() - 4];
    // The uncompressed length follows the header: format, stream key, version, count, time.
    let at = 1 + 1 + stream.aggregate_type().len() + 2 + stream.id().len() + 8 + 4 + 8;
    let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
    let with_len = |claim: u32| {
        let mut forged = body.to_vec();
        forged[at..at + 4].copy_from_slice(&claim.to_be_bytes());
        decode_all(&sealed(forged), 1)
    };
    for claim in [u32::MAX, 1 << 30, len + 1, len - 1, 0] {
        let got = with_len(claim);
        assert!(
            matches!(got, Err(Error::Corrupt { .. })),
            "claim {claim} decoded as {got:?}"
        );
    }
    let err = with_len(u32::MAX).unwrap_err().to_string();
    assert!(err.contains("claims"), "{err}");
    // A block that is not LZ4, and one cut short.
    let mut garbage = body[..at + 4].to_vec();
    garbage.extend(std::iter::repeat_n(0xf0, 64));
    let err = decode_all(&sealed(garbage), 1).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let short = body[..body.len() - 5].to_vec();
    assert!(matches!(
        decode_all(&sealed(short), 1),
        Err(Error::Corrupt { .. })
    ));
    // More events than the uncompressed bytes could hold.
    let mut many = body.to_vec();
    let count = at - 12;
    many[count..count + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = decode_all(&sealed(many), 1).unwrap_err().to_string();
    assert!(err.contains("cannot fit"), "{err}");
}

/// Encodes one event in the format of stores written before format 3 (format 2, or
/// format 1 without the checksum), for tests that build such a store.
pub(crate) fn encode_old(
    stream: &StreamId,
    version: u64,
    event: &EventData,
    recorded_at: SystemTime,
    checksum: bool,
) -> Vec<u8> {
    let mut out = vec![if checksum {
        FORMAT_ONE
    } else {
        FORMAT_UNCHECKED
    }];
    put_stream_key(&mut out, stream);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    let ty = event.event_type.as_bytes();
    out.extend_from_slice(&u16::try_from(ty.len()).unwrap().to_be_bytes());
    out.extend_from_slice(ty);
    out.extend_from_slice(&event.schema_version.to_be_bytes());
    let nanos = recorded_at.duration_since(UNIX_EPOCH).unwrap().as_nanos();
    out.extend_from_slice(&u64::try_from(nanos).unwrap().to_be_bytes());
    let meta = &event.metadata;
    out.push(
        u8::from(meta.correlation_id.is_some()) | (u8::from(meta.causation_id.is_some()) << 1),
    );
    for id in [meta.correlation_id, meta.causation_id]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&u32::try_from(meta.values.len()).unwrap().to_be_bytes());
    for (k, v) in &meta.values {
        for s in [k, v] {
            out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.extend_from_slice(&u32::try_from(event.payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&event.payload);
    if checksum {
        let sum = CRC32C.checksum(&out);
        out.extend_from_slice(&sum.to_be_bytes());
    }
    out
}
