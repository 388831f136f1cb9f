//! Key and record encodings (log records: `chunk.rs`).
//!
//! Everything an append writes lives in one sled tree, split into keyspaces by the
//! first byte of the key, so one atomic `sled::Batch` covers a whole append:
//!
//! | keyspace | key                                   | value                        |
//! |----------|---------------------------------------|------------------------------|
//! | `L` log  | `L` + position of the record's first event (u64 BE) | a log record: the events of one append, or a run of them (`chunk.rs`) |
//! | `S` stream index | `S` + stream key + version of the record's last event (u64 BE) | position of the record's first event (u64 BE) |
//! | `I` id index | `I` + event id (16 bytes)         | position of the event (u64 BE) |
//! | `H` holes | `H` + first position of a run of removed events (u64 BE) | its last position (u64 BE) |
//!
//! The stream-index entry of a tombstone (the last record of a deleted stream) holds the
//! position followed by [`DELETED`], so the writer learns that a stream is deleted from
//! the same lookup that gives its version. Removed events (a deleted or truncated
//! stream) leave holes in the log: their positions are recorded in the `H` keyspace, in
//! maximal runs, so `count_events` can subtract them, a restore can check that the
//! positions it fills are free, and an open knows the log's end even when its last
//! record was removed (positions are never handed out twice). See `lifecycle.rs`.
//!
//! An append of n events writes one log record and one stream-index entry per run of
//! about 16 KiB of events, and n id-index entries (ADR 0028). Stores written before
//! that hold one event per log record and one stream-index entry per event: the same
//! keys read as records of one event, so both layouts read with the same code.
//!
//! The stream key is `type length (u8) + type + id length (u16 BE) + id`: both parts are
//! length-prefixed, so no stream's keys can fall inside another stream's key range, even
//! when one id is a prefix of another or contains any byte.
//!
//! Snapshots (tree `cqrs.snapshots`) are `0xFF 0x02 + version (u64) + schema version
//! (u32) + payload + CRC32C (u32)`. A snapshot written before checksums (without the
//! `0xFF 0x02` mark) reads as damaged, and a damaged snapshot is ignored: the aggregate
//! replays its stream and the next snapshot replaces it. Checkpoints are `commit (u64) +
//! sequence (u64) + CRC32C`, or the 16 bytes alone when written before checksums (a
//! checkpoint cannot be ignored: its read model would get events twice).

use cqrs_core::{Error, Position, Result, SnapshotRecord, StreamId};
use uuid::Uuid;

pub(crate) const LOG: u8 = b'L';
pub(crate) const STREAM: u8 = b'S';
pub(crate) const ID: u8 = b'I';
pub(crate) const HOLE: u8 = b'H';
/// The byte after the position in the stream-index entry of a tombstone.
pub(crate) const DELETED: u8 = b'D';

/// CRC32C (Castagnoli), the checksum of records, marks and read-model rows: the
/// `crc32c` crate, with the CPU's `crc32` instruction where there is one (the same
/// values as the `crc` crate's `CRC_32_ISCSI` used before 2026-12-01, which a test
/// pins).
pub(crate) static CRC32C: Crc32c = Crc32c;

/// See [`CRC32C`].
pub(crate) struct Crc32c;

impl Crc32c {
    /// The checksum of `bytes`.
    pub(crate) fn checksum(&self, bytes: &[u8]) -> u32 {
        crc32c::crc32c(bytes)
    }

    /// A checksum over several parts.
    pub(crate) fn digest(&self) -> Crc32cDigest {
        Crc32cDigest(0)
    }
}

/// A CRC32C over parts fed in order.
pub(crate) struct Crc32cDigest(u32);

impl Crc32cDigest {
    /// Feeds the next part.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    /// The checksum of every part fed.
    pub(crate) fn finalize(self) -> u32 {
        self.0
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

pub(crate) fn hole_key(first: u64) -> [u8; 9] {
    let mut key = [HOLE; 9];
    key[1..].copy_from_slice(&first.to_be_bytes());
    key
}

/// The value of a stream-index entry: the position of the record's first event, and
/// the [`DELETED`] mark if the record is the stream's tombstone.
pub(crate) fn index_value(position: u64, deleted: bool) -> Vec<u8> {
    let mut value = Vec::with_capacity(9);
    value.extend_from_slice(&position.to_be_bytes());
    if deleted {
        value.push(DELETED);
    }
    value
}

/// A stream-index value: the position, and whether it is a tombstone's entry.
pub(crate) fn decode_index_value(value: &[u8]) -> Option<(u64, bool)> {
    match value.len() {
        8 => Some((be_u64(value)?, false)),
        9 if value[8] == DELETED => Some((be_u64(&value[..8])?, true)),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores written with the `crc` crate's tables (before 2026-12-01) verify with the
    /// `crc32c` crate: both compute the same CRC-32C, whole or in parts.
    #[test]
    fn the_checksum_is_the_table_driven_crc32c() {
        static TABLE: crc::Crc<u32, crc::Table<16>> =
            crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
        let bytes: Vec<u8> = (0..40_000u32)
            .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
            .collect();
        for len in [0, 1, 7, 64, 1_000, 16_384, 40_000] {
            assert_eq!(
                CRC32C.checksum(&bytes[..len]),
                TABLE.checksum(&bytes[..len])
            );
        }
        let mut ours = CRC32C.digest();
        let mut table = TABLE.digest();
        for part in bytes.chunks(333) {
            ours.update(part);
            table.update(part);
        }
        assert_eq!(ours.finalize(), table.finalize());
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

    #[test]
    fn index_values_carry_the_deleted_mark() {
        assert_eq!(decode_index_value(&index_value(7, false)), Some((7, false)));
        assert_eq!(decode_index_value(&index_value(7, true)), Some((7, true)));
        assert_eq!(decode_index_value(&[0; 7]), None);
        assert_eq!(decode_index_value(&[0, 0, 0, 0, 0, 0, 0, 7, b'X']), None);
        assert!(hole_key(1) < hole_key(2) && hole_key(u64::MAX)[..] < id_key(Uuid::nil())[..]);
    }
}
