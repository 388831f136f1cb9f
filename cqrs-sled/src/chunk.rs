//! Log records: the events of one append (or a run of them) in one sled value.
//!
//! A log record (format 3) holds consecutive events of one stream, which are consecutive
//! in the log too: `FORMAT (u8) + stream key + first version (u64) + count (u32) +
//! recorded_at (u64 ns since the epoch)`, then for each event `event id (16) + event type
//! (u16 length + bytes) + schema version (u32) + metadata + payload (u32 length + bytes)`,
//! then a CRC32C (u32) of every byte before it. All integers are big-endian. Metadata is a
//! flags byte (bit 0: correlation id follows, bit 1: causation id follows) then a u32
//! count of key/value pairs, each as two u32-length-prefixed strings. The record is keyed
//! by the log position of its first event (see `record.rs`); event `i` of the record is at
//! that position plus `i`, with the first version plus `i`.
//!
//! Format 4 is format 3 with its events compressed: the same header (format byte 4), then
//! the byte length of the events uncompressed (u32), then those bytes as one LZ4 block,
//! then the CRC32C of every byte before it (the compressed bytes, so the checksum is
//! verified before anything is decompressed). A record is written in format 4 only when
//! compression is on ([`SledConfig::compress_records`](crate::SledConfig::compress_records)),
//! its events take at least [`PACK_MIN_BYTES`], and the result is smaller; otherwise in
//! format 3. An uncompressed length that the block cannot hold (LZ4 expands at most
//! ~255 times) is corrupt before anything is allocated; the block is decompressed on the
//! first event read, so a reader of the header alone (a lookup) does not pay for it.
//!
//! Stores written before format 3 hold one event per record: format 2 (checksummed)
//! and format 1 (older, unchecked) are `FORMAT + stream key + version (u64) + event id +
//! event type + schema version + recorded_at + metadata + payload` (+ CRC32C in format 2).
//! They read as records of one event.
//!
//! The checksum is verified before anything is decoded, and a record decodes only if every
//! length fits exactly; anything else is reported as corrupt, never a panic and never a
//! decoded value.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cqrs_core::{Error, EventData, Metadata, Position, RecordedEvent, Result, StreamId};
use uuid::Uuid;

use crate::record::{CRC32C, be_u64, put_stream_key};

/// The record format written: several events of one stream, checksummed.
const FORMAT: u8 = 3;
/// Format 3 with its events compressed (one LZ4 block).
const FORMAT_PACKED: u8 = 4;
/// One event, checksummed (stores written before format 3).
const FORMAT_ONE: u8 = 2;
/// One event, without a checksum (stores written before checksums).
const FORMAT_UNCHECKED: u8 = 1;

/// A log record is cut after the event that takes it past this many bytes: small enough
/// to stay inline in sled's pages (sled moves values above ~128 KiB to blob files), large
/// enough that a replay reads a few sled entries per hundred events.
pub(crate) const CHUNK_BYTES: usize = 16 * 1024;

/// Records whose events take fewer bytes than this are not compressed: a single small
/// event (the usual command) gains little and would pay for the attempt on every append.
pub(crate) const PACK_MIN_BYTES: usize = 512;

/// LZ4 writes at most one byte per 255 bytes of output (a match length continues in
/// bytes of 255): a block claiming more than this many times its own size is corrupt.
const MAX_RATIO: usize = 255;

/// The fewest bytes one event takes in a record of format 3 or 4 (id, type length,
/// schema version, flags, metadata count, payload length): bounds the count a record may
/// claim by its size.
const MIN_EVENT_BYTES: usize = 16 + 2 + 4 + 1 + 4 + 4;

/// The encoded size of `event` in a record, near enough to cut records.
fn size_of(event: &EventData) -> usize {
    let meta = &event.metadata;
    let values: usize = meta.values.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    16 + 2 + event.event_type.len() + 4 + 1 + 32 + 4 + values + 4 + event.payload.len()
}

/// Splits a batch into runs that each make one log record of about [`CHUNK_BYTES`] or
/// less (a run of one event may be larger).
pub(crate) fn runs(events: &[EventData]) -> impl Iterator<Item = &[EventData]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 0;
        let mut len = 0;
        for event in rest {
            size += size_of(event);
            len += 1;
            if size >= CHUNK_BYTES {
                break;
            }
        }
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(run)
    })
}

/// Encodes a run of events of `stream`, the first at `first_version`, as one log record:
/// format 4 if `compress` and that is smaller, else format 3.
pub(crate) fn encode(
    stream: &StreamId,
    first_version: u64,
    events: &[EventData],
    recorded_at: SystemTime,
    compress: bool,
) -> Result<Vec<u8>> {
    let too_big =
        |what: &str| Error::invalid_input(format!("{what} of an event in {stream} is too large"));
    let size: usize = events.iter().map(size_of).sum();
    let mut out = Vec::with_capacity(32 + stream.aggregate_type().len() + stream.id().len() + size);
    out.push(FORMAT);
    put_stream_key(&mut out, stream);
    out.extend_from_slice(&first_version.to_be_bytes());
    let count = u32::try_from(events.len()).map_err(|_| too_big("the batch"))?;
    out.extend_from_slice(&count.to_be_bytes());
    let nanos = recorded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    out.extend_from_slice(&nanos.to_be_bytes());
    let header = out.len();
    for event in events {
        out.extend_from_slice(event.event_id.as_bytes());
        let event_type = event.event_type.as_bytes();
        out.extend_from_slice(
            &u16::try_from(event_type.len())
                .map_err(|_| too_big("the type"))?
                .to_be_bytes(),
        );
        out.extend_from_slice(event_type);
        out.extend_from_slice(&event.schema_version.to_be_bytes());
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
        let pairs = u32::try_from(meta.values.len()).map_err(|_| too_big("the metadata"))?;
        out.extend_from_slice(&pairs.to_be_bytes());
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
    }
    if compress
        && out.len() - header >= PACK_MIN_BYTES
        && let Some(packed) = pack(&out, header)
    {
        out = packed;
    }
    let sum = CRC32C.checksum(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    Ok(out)
}

/// `record` (format 3, without its checksum, events from byte `header` on) as format 4
/// without its checksum, if that is smaller.
fn pack(record: &[u8], header: usize) -> Option<Vec<u8>> {
    let (head, events) = record.split_at(header);
    let len = u32::try_from(events.len()).ok()?;
    let most = lz4_flex::block::get_maximum_output_size(events.len());
    // Room for the checksum too, which the caller appends.
    let mut out = Vec::with_capacity(header + 4 + most + 4);
    out.extend_from_slice(head);
    out[0] = FORMAT_PACKED;
    out.extend_from_slice(&len.to_be_bytes());
    let block = out.len();
    out.resize(block + most, 0);
    let written = lz4_flex::block::compress_into(events, &mut out[block..]).ok()?;
    out.truncate(block + written);
    (out.len() < record.len()).then_some(out)
}

/// The events of a format-4 record: `block` decompressed to exactly `len` bytes.
fn unpack(block: &[u8], len: usize) -> std::result::Result<Vec<u8>, String> {
    check_ratio(block.len(), len)?;
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(written) if written == len => Ok(out),
        Ok(written) => Err(format!(
            "the compressed events are {written} bytes, the record says {len}"
        )),
        Err(e) => Err(format!("the compressed events do not decompress: {e}")),
    }
}

/// Refuses an uncompressed length that a block of `block` bytes cannot hold.
fn check_ratio(block: usize, len: usize) -> std::result::Result<(), String> {
    if len > block.saturating_mul(MAX_RATIO).saturating_add(16) {
        return Err(format!(
            "a compressed block of {block} bytes claims {len} bytes uncompressed"
        ));
    }
    Ok(())
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

/// The bytes of `record` to decode: after its checksum is verified, everything before it;
/// a format-1 record as it is.
fn verified(record: &[u8]) -> std::result::Result<&[u8], String> {
    match record.first() {
        Some(&FORMAT | &FORMAT_PACKED | &FORMAT_ONE) => unseal(record),
        Some(&FORMAT_UNCHECKED) => Ok(record),
        Some(format) => Err(format!("unknown record format {format}")),
        None => Err("empty record".to_owned()),
    }
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

    fn time(&mut self) -> std::result::Result<SystemTime, String> {
        Ok(UNIX_EPOCH + Duration::from_nanos(self.u64()?))
    }
}

/// The header of any format: the format byte, the stream, the first version, the count
/// and (formats 3 and 4) the time shared by the record's events. `last` is a stream to reuse (a
/// cheap clone) when the record names the same one.
type Header = (u8, StreamId, u64, u64, Option<SystemTime>);

fn header(r: &mut Reader<'_>, last: Option<&StreamId>) -> std::result::Result<Header, String> {
    let format = r.u8()?;
    let ty_len = usize::from(r.u8()?);
    let ty = r.str(ty_len, "the aggregate type")?;
    let id_len = usize::from(r.u16()?);
    let id = r.str(id_len, "the aggregate id")?;
    let stream = match last {
        Some(last) if last.aggregate_type() == ty && last.id() == id => last.clone(),
        _ => StreamId::new(ty, id).map_err(|e| e.to_string())?,
    };
    let first_version = r.u64()?;
    let (count, at) = if format == FORMAT || format == FORMAT_PACKED {
        (u64::from(r.u32()?), Some(r.time()?))
    } else {
        (1, None)
    };
    if count == 0 {
        return Err("a record of no events".to_owned());
    }
    if first_version == 0 || first_version.checked_add(count - 1).is_none() {
        return Err(format!("impossible versions {first_version} (+{count})"));
    }
    Ok((format, stream, first_version, count, at))
}

/// One decoded log record: its header, then its events one at a time.
pub(crate) struct Chunk<'a> {
    /// The stream every event of the record belongs to.
    pub(crate) stream: StreamId,
    /// The version of the first event.
    pub(crate) first_version: u64,
    /// How many events the record holds (at least 1).
    pub(crate) count: u64,
    /// The log position of the first event (the record's key).
    pub(crate) first_position: u64,
    recorded_at: Option<SystemTime>,
    /// The events' bytes: borrowed from the record, or decompressed (format 4).
    events: Cow<'a, [u8]>,
    /// How many bytes of `events` the events taken so far used.
    read: usize,
    /// A format-4 record's compressed block and its uncompressed length, until the first
    /// event is read.
    packed: Option<(&'a [u8], usize)>,
    taken: u64,
}

impl<'a> Chunk<'a> {
    /// Verifies the record stored at log key `first_position` and reads its header.
    /// `last` is the stream of the record read just before, if any (reused when equal).
    pub(crate) fn open(
        bytes: &'a [u8],
        first_position: u64,
        last: Option<&StreamId>,
    ) -> Result<Self> {
        let body = verified(bytes).map_err(|reason| {
            // Name the stream and version the damaged record claims, if its header still
            // reads: a hint to find it, never data.
            let claimed = header(&mut Reader { bytes }, None).ok();
            let location = match claimed {
                Some((_, stream, version, _, _)) => {
                    format!("stream {stream} version {version} (log position {first_position})")
                }
                None => format!("log position {first_position}"),
            };
            Error::corrupt(location, reason)
        })?;
        let at = || format!("log position {first_position}");
        let mut rest = Reader { bytes: body };
        let (format, stream, first_version, count, recorded_at) =
            header(&mut rest, last).map_err(|reason| Error::corrupt(at(), reason))?;
        if first_position.checked_add(count - 1).is_none() {
            return Err(Error::corrupt(
                at(),
                format!("{count} events do not fit in the log"),
            ));
        }
        let (events, packed) = if format == FORMAT_PACKED {
            let len = rest
                .len32()
                .map_err(|reason| Error::corrupt(at(), reason))?;
            check_ratio(rest.bytes.len(), len).map_err(|reason| Error::corrupt(at(), reason))?;
            (len, Some((rest.bytes, len)))
        } else {
            (rest.bytes.len(), None)
        };
        if format != FORMAT_ONE && format != FORMAT_UNCHECKED {
            let most = events / MIN_EVENT_BYTES;
            if usize::try_from(count).map_or(true, |count| count > most) {
                return Err(Error::corrupt(
                    at(),
                    format!("{count} events cannot fit in {events} bytes"),
                ));
            }
        }
        Ok(Chunk {
            stream,
            first_version,
            count,
            first_position,
            recorded_at,
            events: Cow::Borrowed(if packed.is_some() { &[] } else { rest.bytes }),
            read: 0,
            packed,
            taken: 0,
        })
    }

    /// Whether the record was stored compressed (format 4).
    #[cfg(test)]
    pub(crate) fn compressed(&self) -> bool {
        self.packed.is_some() || matches!(self.events, Cow::Owned(_))
    }

    /// The version of the record's last event.
    pub(crate) fn last_version(&self) -> u64 {
        self.first_version + (self.count - 1)
    }

    /// The log position of the record's last event.
    pub(crate) fn last_position(&self) -> u64 {
        self.first_position + (self.count - 1)
    }

    /// Checks that the record is where `stream` and its index entry say it is: in that
    /// stream, ending at `last_version`.
    pub(crate) fn expect(&self, stream: &StreamId, last_version: u64) -> Result<()> {
        if self.stream == *stream && self.last_version() == last_version {
            return Ok(());
        }
        Err(Error::corrupt(
            format!(
                "stream {stream} version {last_version} (log position {})",
                self.first_position
            ),
            format!(
                "the record names stream {} versions {}..={}",
                self.stream,
                self.first_version,
                self.last_version()
            ),
        ))
    }

    /// Decodes the next event, or skips it (`keep` false: `Ok(None)`), or `None` after
    /// the last one. After an error the record yields nothing more.
    pub(crate) fn next_event(&mut self, keep: bool) -> Option<Result<Option<RecordedEvent>>> {
        if self.taken == self.count {
            return None;
        }
        let version = self.first_version + self.taken;
        let position = self.first_position + self.taken;
        self.taken += 1;
        let decoded = self.body(version, position, keep).and_then(|event| {
            let left = self.events.len() - self.read;
            if self.taken == self.count && left != 0 {
                return Err(format!("{left} unexpected bytes after the last payload"));
            }
            Ok(event)
        });
        Some(decoded.map_err(|reason| {
            self.taken = self.count;
            Error::corrupt(
                format!(
                    "stream {} version {version} (log position {position})",
                    self.stream
                ),
                reason,
            )
        }))
    }

    fn body(
        &mut self,
        version: u64,
        position: u64,
        keep: bool,
    ) -> std::result::Result<Option<RecordedEvent>, String> {
        if let Some((block, len)) = self.packed.take() {
            self.events = Cow::Owned(unpack(block, len)?);
        }
        let bytes = &self.events[self.read..];
        let mut r = Reader { bytes };
        let event = decode_event(&mut r, &self.stream, self.recorded_at, keep).map(|event| {
            event.map(|mut event| {
                event.version = version;
                event.position = Position::new(0, position);
                event
            })
        });
        self.read += bytes.len() - r.bytes.len();
        event
    }
}

/// Decodes (or with `keep` false, walks over) one event of a record of `stream`; its
/// version and position are left at 0 for the caller to set. `recorded_at` is the time
/// shared by the record's events (formats 3 and 4), else read from the event.
fn decode_event(
    r: &mut Reader<'_>,
    stream: &StreamId,
    recorded_at: Option<SystemTime>,
    keep: bool,
) -> std::result::Result<Option<RecordedEvent>, String> {
    let event_id = r.uuid()?;
    let type_len = usize::from(r.u16()?);
    let event_type = r.str(type_len, "the event type")?;
    let schema_version = r.u32()?;
    let recorded_at = match recorded_at {
        Some(at) => at,
        None => r.time()?,
    };
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
    let pairs = r.u32()?;
    let mut values = BTreeMap::new();
    for _ in 0..pairs {
        let len = r.len32()?;
        let key = r.str(len, "a metadata key")?;
        let len = r.len32()?;
        let value = r.str(len, "a metadata value")?;
        if keep {
            values.insert(key.to_owned(), value.to_owned());
        }
    }
    metadata.values = values;
    let len = r.len32()?;
    let payload = r.take(len)?;
    if !keep {
        return Ok(None);
    }
    Ok(Some(RecordedEvent {
        event_id,
        stream: stream.clone(),
        version: 0,
        position: Position::new(0, 0),
        event_type: event_type.to_owned(),
        schema_version,
        recorded_at,
        payload: payload.to_vec(),
        metadata,
    }))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::encode_old;
