//! Key and record encodings.
//!
//! Everything an append writes lives in one sled tree, split into keyspaces by the
//! first byte of the key, so one atomic `sled::Batch` covers a whole append:
//!
//! | keyspace | key                                   | value                        |
//! |----------|---------------------------------------|------------------------------|
//! | `L` log  | `L` + position (u64 BE)               | the full record (see below)  |
//! | `S` stream index | `S` + stream key + version (u64 BE) | position (u64 BE)     |
//! | `I` id index | `I` + event id (16 bytes)         | position (u64 BE)            |
//!
//! The stream key is `type length (u8) + type + id length (u16 BE) + id`: both parts are
//! length-prefixed, so no stream's keys can fall inside another stream's key range, even
//! when one id is a prefix of another or contains any byte.
//!
//! A record is `FORMAT (u8) + stream key + version (u64) + event id (16) + event type
//! (u16 length + bytes) + schema version (u32) + recorded_at (u64 ns since the epoch) +
//! metadata + payload (u32 length + bytes)`, all integers big-endian. Metadata is a flags
//! byte (bit 0: correlation id follows, bit 1: causation id follows) then a u32 count of
//! key/value pairs, each as two u32-length-prefixed strings, then (format 2) a CRC32C
//! (u32) of every byte before it. The checksum is verified before anything is decoded,
//! and a record decodes only if every length fits exactly; anything else is reported as
//! corrupt, never a panic and never a decoded value. Records of format 1 (written before
//! the checksum existed) have no checksum and are read as they are.
//!
//! Snapshots (tree `cqrs.snapshots`) are `0xFF 0x02 + version (u64) + schema version
//! (u32) + payload + CRC32C (u32)`. A snapshot written before checksums (without the
//! `0xFF 0x02` mark) reads as damaged, and a damaged snapshot is ignored: the aggregate
//! replays its stream and the next snapshot replaces it. Checkpoints are `commit (u64) +
//! sequence (u64) + CRC32C`, or the 16 bytes alone when written before checksums (a
//! checkpoint cannot be ignored: its read model would get events twice).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cqrs_core::{
    Error, EventData, Metadata, Position, RecordedEvent, Result, SnapshotRecord, StreamId,
};
use uuid::Uuid;

pub(crate) const LOG: u8 = b'L';
pub(crate) const STREAM: u8 = b'S';
pub(crate) const ID: u8 = b'I';

/// The record format written: checksummed.
const FORMAT: u8 = 2;
/// The record format of stores written before records had a checksum.
const FORMAT_UNCHECKED: u8 = 1;

/// CRC32C (Castagnoli), the checksum of records; slice-by-16 tables (16 KiB), several
/// times faster than the one-table default on event-sized records.
pub(crate) static CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The bytes of `record` that a [`Reader`] decodes: after the checksum of a format-2
/// record is verified, everything before it; a format-1 record as it is.
fn verified(record: &[u8]) -> std::result::Result<&[u8], String> {
    match record.first() {
        Some(&FORMAT) => unseal(record),
        Some(&FORMAT_UNCHECKED) => Ok(record),
        Some(format) => Err(format!("unknown record format {format}")),
        None => Err("empty record".to_owned()),
    }
}

/// Appends the CRC32C of everything in `out` to it.
fn seal(out: &mut Vec<u8>) {
    let sum = CRC32C.checksum(out);
    out.extend_from_slice(&sum.to_be_bytes());
}

/// `sealed` without its trailing CRC32C, if that checksum matches.
fn unseal(sealed: &[u8]) -> std::result::Result<&[u8], String> {
    let Some(split) = sealed.len().checked_sub(4) else {
        return Err("record truncated: shorter than its checksum".to_owned());
    };
    let (body, sum) = sealed.split_at(split);
    let stored = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    let actual = CRC32C.checksum(body);
    if stored == actual {
        Ok(body)
    } else {
        Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ))
    }
}

const SNAPSHOT_MARK: [u8; 2] = [0xFF, 2];

/// The stored form of a snapshot.
pub(crate) fn encode_snapshot(snapshot: &SnapshotRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + snapshot.payload.len());
    out.extend_from_slice(&SNAPSHOT_MARK);
    out.extend_from_slice(&snapshot.version.to_be_bytes());
    out.extend_from_slice(&snapshot.schema_version.to_be_bytes());
    out.extend_from_slice(&snapshot.payload);
    seal(&mut out);
    out
}

/// A stored snapshot, or why it cannot be read.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> std::result::Result<SnapshotRecord, String> {
    if !bytes.starts_with(&SNAPSHOT_MARK) {
        return Err("unknown snapshot format (written before checksums?)".to_owned());
    }
    let body = &unseal(bytes)?[SNAPSHOT_MARK.len()..];
    match (body.get(..8).and_then(be_u64), body.get(8..12)) {
        (Some(version), Some(schema)) => Ok(SnapshotRecord {
            version,
            schema_version: u32::from_be_bytes([schema[0], schema[1], schema[2], schema[3]]),
            payload: body[12..].to_vec(),
        }),
        _ => Err(format!("{} bytes, too short for a snapshot", body.len())),
    }
}

/// The stored form of a checkpoint.
pub(crate) fn encode_position(position: Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&position.commit.to_be_bytes());
    out.extend_from_slice(&position.sequence.to_be_bytes());
    seal(&mut out);
    out
}

/// A stored checkpoint named `name`.
pub(crate) fn decode_position(bytes: &[u8], name: &str) -> Result<Position> {
    let corrupt = |reason: String| Error::corrupt(format!("checkpoint {name:?}"), reason);
    let body = match bytes.len() {
        16 => bytes,
        20 => unseal(bytes).map_err(corrupt)?,
        n => return Err(corrupt(format!("{n} bytes instead of 20"))),
    };
    Ok(Position::new(
        u64::from_be_bytes(body[..8].try_into().unwrap_or_default()),
        u64::from_be_bytes(body[8..].try_into().unwrap_or_default()),
    ))
}

/// Appends the length-prefixed stream key to `out`.
pub(crate) fn put_stream_key(out: &mut Vec<u8>, stream: &StreamId) {
    let ty = stream.aggregate_type().as_bytes();
    let id = stream.id().as_bytes();
    // StreamId guarantees type <= 128 bytes and id <= 1024 bytes; saturate anyway.
    out.push(u8::try_from(ty.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(ty);
    out.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(id);
}

/// The stream-index key of `stream` at `version`.
pub(crate) fn stream_key(stream: &StreamId, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 3 + stream.aggregate_type().len() + stream.id().len() + 8);
    key.push(STREAM);
    put_stream_key(&mut key, stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The key of the snapshot or head of `stream` (no keyspace byte: its own tree).
pub(crate) fn bare_stream_key(stream: &StreamId) -> Vec<u8> {
    let mut key = Vec::new();
    put_stream_key(&mut key, stream);
    key
}

pub(crate) fn log_key(sequence: u64) -> [u8; 9] {
    let mut key = [LOG; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

pub(crate) fn id_key(event_id: Uuid) -> [u8; 17] {
    let mut key = [ID; 17];
    key[1..].copy_from_slice(event_id.as_bytes());
    key
}

/// Reads a big-endian u64 from exactly 8 bytes.
pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The version at the end of a stream-index key.
pub(crate) fn version_of_stream_key(key: &[u8]) -> Option<u64> {
    be_u64(key.get(key.len().checked_sub(8)?..)?)
}

/// The stream a stream-index key (keyspace byte included) belongs to.
pub(crate) fn stream_of_index_key(key: &[u8]) -> Option<StreamId> {
    let rest = key.strip_prefix(&[STREAM])?;
    let (&ty_len, rest) = rest.split_first()?;
    let (ty, rest) = rest.split_at_checked(usize::from(ty_len))?;
    let (id_len, rest) = rest.split_at_checked(2)?;
    let id_len = usize::from(u16::from_be_bytes([id_len[0], id_len[1]]));
    let (id, rest) = rest.split_at_checked(id_len)?;
    if rest.len() != 8 {
        return None;
    }
    StreamId::new(std::str::from_utf8(ty).ok()?, std::str::from_utf8(id).ok()?).ok()
}

/// Encodes one event of an append.
pub(crate) fn encode(
    stream: &StreamId,
    version: u64,
    event: &EventData,
    recorded_at: SystemTime,
) -> Result<Vec<u8>> {
    let too_big =
        |what: &str| Error::invalid_input(format!("{what} of an event in {stream} is too large"));
    let mut out =
        Vec::with_capacity(64 + stream.id().len() + event.event_type.len() + event.payload.len());
    out.push(FORMAT);
    put_stream_key(&mut out, stream);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    let event_type = event.event_type.as_bytes();
    out.extend_from_slice(
        &u16::try_from(event_type.len())
            .map_err(|_| too_big("the type"))?
            .to_be_bytes(),
    );
    out.extend_from_slice(event_type);
    out.extend_from_slice(&event.schema_version.to_be_bytes());
    let nanos = recorded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    out.extend_from_slice(&nanos.to_be_bytes());
    let meta = &event.metadata;
    let flags =
        u8::from(meta.correlation_id.is_some()) | (u8::from(meta.causation_id.is_some()) << 1);
    out.push(flags);
    for id in [meta.correlation_id, meta.causation_id]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(id.as_bytes());
    }
    let count = u32::try_from(meta.values.len()).map_err(|_| too_big("the metadata"))?;
    out.extend_from_slice(&count.to_be_bytes());
    for (k, v) in &meta.values {
        for s in [k, v] {
            let len = u32::try_from(s.len()).map_err(|_| too_big("a metadata value"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    let len = u32::try_from(event.payload.len()).map_err(|_| too_big("the payload"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&event.payload);
    seal(&mut out);
    Ok(out)
}

/// A cursor over a record's bytes; every read fails cleanly past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "record truncated: needed {n} more bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        be_u64(self.take(8)?).ok_or_else(|| "short integer".to_owned())
    }

    fn uuid(&mut self) -> std::result::Result<Uuid, String> {
        Uuid::from_slice(self.take(16)?).map_err(|e| e.to_string())
    }

    fn str(&mut self, len: usize, what: &str) -> std::result::Result<&'a str, String> {
        std::str::from_utf8(self.take(len)?).map_err(|e| format!("{what} is not UTF-8: {e}"))
    }

    fn len32(&mut self) -> std::result::Result<usize, String> {
        usize::try_from(self.u32()?).map_err(|e| e.to_string())
    }
}

/// The stream and version a record names, read from its header only.
pub(crate) fn decode_header(bytes: &[u8]) -> std::result::Result<(StreamId, u64), String> {
    let mut r = Reader {
        bytes: verified(bytes)?,
    };
    header(&mut r, None)
}

/// Reads the stream and version; `last` is the previous record's stream, reused (a cheap
/// clone) when this record is in the same stream, as consecutive records often are.
fn header(
    r: &mut Reader<'_>,
    last: Option<&StreamId>,
) -> std::result::Result<(StreamId, u64), String> {
    // The format byte was checked by `verified`.
    r.u8()?;
    let ty_len = usize::from(r.u8()?);
    let ty = r.str(ty_len, "the aggregate type")?;
    let id_len = usize::from(r.u16()?);
    let id = r.str(id_len, "the aggregate id")?;
    let stream = match last {
        Some(last) if last.aggregate_type() == ty && last.id() == id => last.clone(),
        _ => StreamId::new(ty, id).map_err(|e| e.to_string())?,
    };
    let version = r.u64()?;
    Ok((stream, version))
}

/// Decodes a record found at `position`. `expected` is the stream and version the caller
/// reached it through (the stream index), if any: a record that names anything else is
/// corrupt too. `last` is the stream of the record read just before, if any.
pub(crate) fn decode(
    bytes: &[u8],
    position: u64,
    expected: Option<(&StreamId, u64)>,
    last: Option<&StreamId>,
) -> Result<RecordedEvent> {
    let location = |named: Option<(&StreamId, u64)>| match named.or(expected) {
        Some((stream, version)) => {
            format!("stream {stream} version {version} (log position {position})")
        }
        None => format!("log position {position}"),
    };
    let verified = verified(bytes).map_err(|reason| {
        // Name the stream and version the damaged record claims, if its header still
        // reads: a hint to find it, never data.
        let claimed = header(&mut Reader { bytes }, None).ok();
        Error::corrupt(location(claimed.as_ref().map(|(s, v)| (s, *v))), reason)
    })?;
    let mut r = Reader { bytes: verified };
    let (stream, version) = header(&mut r, last.or(expected.map(|(s, _)| s)))
        .map_err(|reason| Error::corrupt(location(None), reason))?;
    if let Some((want_stream, want_version)) = expected
        && (*want_stream != stream || want_version != version)
    {
        return Err(Error::corrupt(
            location(None),
            format!("the record names stream {stream} version {version}"),
        ));
    }
    body(&mut r, stream.clone(), version, position)
        .map_err(|reason| Error::corrupt(location(Some((&stream, version))), reason))
}

fn body(
    r: &mut Reader<'_>,
    stream: StreamId,
    version: u64,
    position: u64,
) -> std::result::Result<RecordedEvent, String> {
    let event_id = r.uuid()?;
    let type_len = usize::from(r.u16()?);
    let event_type = r.str(type_len, "the event type")?.to_owned();
    let schema_version = r.u32()?;
    let recorded_at = UNIX_EPOCH + Duration::from_nanos(r.u64()?);
    let flags = r.u8()?;
    if flags > 0b11 {
        return Err(format!("unknown metadata flags {flags:#x}"));
    }
    let mut metadata = Metadata::new();
    if flags & 1 != 0 {
        metadata.correlation_id = Some(r.uuid()?);
    }
    if flags & 2 != 0 {
        metadata.causation_id = Some(r.uuid()?);
    }
    let count = r.u32()?;
    let mut values = BTreeMap::new();
    for _ in 0..count {
        let len = r.len32()?;
        let key = r.str(len, "a metadata key")?.to_owned();
        let len = r.len32()?;
        let value = r.str(len, "a metadata value")?.to_owned();
        values.insert(key, value);
    }
    metadata.values = values;
    let len = r.len32()?;
    let payload = r.take(len)?.to_vec();
    if !r.bytes.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the payload",
            r.bytes.len()
        ));
    }
    Ok(RecordedEvent {
        event_id,
        stream,
        version,
        position: Position::new(0, position),
        event_type,
        schema_version,
        recorded_at,
        payload,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (StreamId, EventData) {
        let stream = StreamId::new("account", "o'neil / ünï 🦀").unwrap();
        let event = EventData::new("Opened", br#"{"a":1}"#.to_vec()).with_metadata(
            Metadata::new()
                .with_correlation_id(Uuid::new_v4())
                .with_value("user", "ada")
                .with_value("", ""),
        );
        (stream, event)
    }

    #[test]
    fn records_round_trip() {
        let (stream, event) = sample();
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let bytes = encode(&stream, 7, &event, at).unwrap();
        let back = decode(&bytes, 42, Some((&stream, 7)), None).unwrap();
        assert_eq!(back.stream, stream);
        assert_eq!((back.version, back.position), (7, Position::new(0, 42)));
        assert_eq!(back.event_id, event.event_id);
        assert_eq!(back.event_type, event.event_type);
        assert_eq!(back.payload, event.payload);
        assert_eq!(back.metadata, event.metadata);
        assert_eq!(back.recorded_at, at);
        assert_eq!(decode_header(&bytes).unwrap(), (stream, 7));
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error() {
        let (stream, event) = sample();
        let bytes = encode(&stream, 1, &event, SystemTime::now()).unwrap();
        for len in 0..bytes.len() {
            assert!(matches!(
                decode(&bytes[..len], 1, None, None),
                Err(Error::Corrupt { .. })
            ));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 1, None, None).is_err());
        let err = decode(&bytes, 1, Some((&stream, 2)), None).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        for seed in 0..200u8 {
            let garbage: Vec<u8> = (0..64u8)
                .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
                .collect();
            let _ = decode(&garbage, 1, None, None);
        }
    }

    #[test]
    fn every_flipped_bit_and_byte_is_corrupt_never_a_value() {
        let (stream, event) = sample();
        let bytes = encode(&stream, 3, &event, SystemTime::now()).unwrap();
        for i in 0..bytes.len() {
            for flip in (0..8).map(|b| 1u8 << b).chain([0xff, 0x5a]) {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                let got = decode(&damaged, 9, None, None);
                assert!(
                    matches!(got, Err(Error::Corrupt { .. })),
                    "byte {i} ^ {flip:#x} decoded as {got:?}"
                );
                assert!(
                    decode_header(&damaged).is_err(),
                    "header of byte {i} ^ {flip:#x}"
                );
            }
        }
        let err = decode(
            &{
                let mut d = bytes.clone();
                let last = d.len() - 10;
                d[last] ^= 1;
                d
            },
            9,
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn snapshots_and_checkpoints_are_checksummed() {
        let snapshot = SnapshotRecord {
            version: 12,
            schema_version: 3,
            payload: br#"{"balance":1}"#.to_vec(),
        };
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes), Ok(snapshot.clone()));
        let position = Position::new(0, 77);
        let stored = encode_position(position);
        assert_eq!(decode_position(&stored, "p").unwrap(), position);
        for flip in [1u8, 0x80, 0xff] {
            for i in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                assert!(
                    decode_snapshot(&damaged).is_err(),
                    "snapshot byte {i} ^ {flip:#x}"
                );
            }
            for i in 0..stored.len() {
                let mut damaged = stored.clone();
                damaged[i] ^= flip;
                assert!(
                    matches!(decode_position(&damaged, "p"), Err(Error::Corrupt { .. })),
                    "checkpoint byte {i} ^ {flip:#x}"
                );
            }
        }
        // Written before checksums: a snapshot is ignored (the stream replays), a
        // checkpoint is read as it is.
        let old_snapshot = [&12u64.to_be_bytes()[..], &3u32.to_be_bytes(), b"{}"].concat();
        assert!(decode_snapshot(&old_snapshot).is_err());
        assert_eq!(decode_position(&stored[..16], "p").unwrap(), position);
        assert!(decode_position(&stored[..15], "p").is_err());
    }

    #[test]
    fn records_written_before_checksums_still_decode() {
        let (stream, event) = sample();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut old = encode(&stream, 4, &event, at).unwrap();
        old.truncate(old.len() - 4);
        old[0] = FORMAT_UNCHECKED;
        let back = decode(&old, 5, Some((&stream, 4)), None).unwrap();
        assert_eq!(
            (back.event_id, back.payload),
            (event.event_id, event.payload)
        );
        old[0] = 3;
        let err = decode(&old, 5, None, None).unwrap_err();
        assert!(err.to_string().contains("unknown record format 3"), "{err}");
    }

    #[test]
    fn stream_keys_do_not_collide() {
        let a = StreamId::new("t", "a").unwrap();
        let ab = StreamId::new("t", "ab").unwrap();
        let ta = StreamId::new("ta", "b").unwrap();
        let lo = stream_key(&a, 0);
        let hi = stream_key(&a, u64::MAX);
        for other in [&ab, &ta] {
            for v in [0, 1, u64::MAX] {
                let k = stream_key(other, v);
                assert!(k < lo || k > hi, "{other:?} {v}");
            }
        }
        assert_eq!(version_of_stream_key(&stream_key(&ab, 9)), Some(9));
        assert_eq!(stream_of_index_key(&stream_key(&ab, 9)), Some(ab));
        assert_eq!(stream_of_index_key(b"S\x01t"), None);
    }
}
