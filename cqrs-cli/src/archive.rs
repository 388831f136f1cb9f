//! The archive file: streams in JSON lines, with their full envelopes, checksummed.
//!
//! ```text
//! {"header":{"format":"cqrs-archive","version":1,"created_at":"2026-12-01T10:00:00.000000Z"}}
//! {"stream":{"stream":"account/42","version":3,"first_version":1,"events":3,"snapshot":null}}
//! {"event":{"event_id":"…","version":1,"position":{"commit":0,"sequence":7},…,"payload":{…}}}
//! …
//! {"end":{"streams":1,"events":3,"sha256":"…"}}
//! ```
//!
//! The `sha256` is over every byte before the `end` line. A payload is kept as JSON when
//! its bytes are exactly what `serde_json` writes back for it, and as base64 otherwise,
//! so a restore gives back the same bytes either way.

use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cqrs_core::{Metadata, Position, RecordedEvent, SnapshotRecord, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::output::rfc3339;

/// The `format` of the header line.
const FORMAT: &str = "cqrs-archive";
/// The format version this code writes and reads.
const VERSION: u32 = 1;

/// One line of an archive.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header {
        format: String,
        version: u32,
        created_at: String,
    },
    Stream(StreamHead),
    Event(ArchivedEvent),
    End {
        streams: u64,
        events: u64,
        sha256: String,
    },
}

/// The line before a stream's events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamHead {
    /// `<type>/<id>`.
    pub(crate) stream: String,
    /// The stream's version when it was archived (its last event's).
    pub(crate) version: u64,
    /// The first version kept (1 unless the stream was truncated).
    pub(crate) first_version: u64,
    /// How many event lines follow.
    pub(crate) events: u64,
    /// The stream's snapshot, if it had one.
    pub(crate) snapshot: Option<ArchivedSnapshot>,
}

/// A snapshot in an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ArchivedSnapshot {
    version: u64,
    schema_version: u32,
    #[serde(flatten)]
    payload: Payload,
}

/// An event with its full envelope (its stream is the preceding stream line's).
#[derive(Debug, Serialize, Deserialize)]
struct ArchivedEvent {
    event_id: Uuid,
    version: u64,
    position: Position,
    event_type: String,
    schema_version: u32,
    /// For people; `recorded_at_unix_ns` is what a restore uses.
    recorded_at: String,
    recorded_at_unix_ns: u64,
    metadata: Metadata,
    #[serde(flatten)]
    payload: Payload,
}

/// Payload bytes: as JSON when that round-trips byte for byte, else base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Payload {
    Payload(Value),
    PayloadBase64(String),
}

impl Payload {
    fn of(bytes: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(value) if serde_json::to_vec(&value).is_ok_and(|b| b == bytes) => {
                Payload::Payload(value)
            }
            _ => Payload::PayloadBase64(BASE64.encode(bytes)),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            Payload::Payload(value) => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Payload::PayloadBase64(text) => BASE64.decode(text).map_err(|e| e.to_string()),
        }
    }
}

impl ArchivedSnapshot {
    pub(crate) fn of(snapshot: &SnapshotRecord) -> Self {
        ArchivedSnapshot {
            version: snapshot.version,
            schema_version: snapshot.schema_version,
            payload: Payload::of(&snapshot.payload),
        }
    }

    pub(crate) fn record(&self) -> Result<SnapshotRecord, String> {
        Ok(SnapshotRecord {
            version: self.version,
            schema_version: self.schema_version,
            payload: self.payload.bytes()?,
        })
    }
}

/// Writes an archive: a header, then stream lines each followed by its events, then
/// [`finish`](Writer::finish) writes the end line with the checksum.
pub(crate) struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    streams: u64,
    events: u64,
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W) -> std::io::Result<Self> {
        let mut writer = Writer {
            out,
            hash: Sha256::new(),
            streams: 0,
            events: 0,
        };
        writer.line(&Line::Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            created_at: rfc3339(SystemTime::now()),
        })?;
        Ok(writer)
    }

    fn line(&mut self, line: &Line) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.out.write_all(&bytes)
    }

    pub(crate) fn stream(&mut self, head: StreamHead) -> std::io::Result<()> {
        self.streams += 1;
        self.line(&Line::Stream(head))
    }

    pub(crate) fn event(&mut self, record: &RecordedEvent) -> std::io::Result<()> {
        self.events += 1;
        let since = record
            .recorded_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.line(&Line::Event(ArchivedEvent {
            event_id: record.event_id,
            version: record.version,
            position: record.position,
            event_type: record.event_type.clone(),
            schema_version: record.schema_version,
            recorded_at: rfc3339(record.recorded_at),
            recorded_at_unix_ns: u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
            metadata: record.metadata.clone(),
            payload: Payload::of(&record.payload),
        }))
    }

    /// Writes the end line and returns the output and the checksum.
    pub(crate) fn finish(mut self) -> std::io::Result<(W, String)> {
        let sha256 = hex(&std::mem::take(&mut self.hash).finalize());
        let end = Line::End {
            streams: self.streams,
            events: self.events,
            sha256: sha256.clone(),
        };
        let mut bytes = serde_json::to_vec(&end).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.out.flush()?;
        Ok((self.out, sha256))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One stream read back from an archive.
#[derive(Debug)]
pub(crate) struct ArchivedStream {
    pub(crate) stream: StreamId,
    pub(crate) head: StreamHead,
    pub(crate) records: Vec<RecordedEvent>,
}

/// What a whole archive holds, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) streams: u64,
    pub(crate) events: u64,
    pub(crate) sha256: String,
}

/// Reads an archive line by line, checking its structure as it goes and its checksum at
/// the end. Errors are strings naming the line; the caller makes them
/// [`Error::BadArchive`](crate::Error::BadArchive).
pub(crate) struct Reader<R: BufRead> {
    input: R,
    hash: Sha256,
    line_no: u64,
    streams: u64,
    events: u64,
    /// The line read ahead of the current stream (the next stream line or the end).
    peeked: Option<Line>,
    ended: Option<Summary>,
}

impl<R: BufRead> Reader<R> {
    pub(crate) fn new(input: R) -> Result<Self, String> {
        let mut reader = Reader {
            input,
            hash: Sha256::new(),
            line_no: 0,
            streams: 0,
            events: 0,
            peeked: None,
            ended: None,
        };
        match reader.next_line()? {
            Some(Line::Header {
                format, version, ..
            }) if format == FORMAT && version == VERSION => Ok(reader),
            Some(Line::Header {
                format, version, ..
            }) => Err(format!(
                "line 1: an archive of format {format:?} version {version}; this program reads {FORMAT:?} version {VERSION}"
            )),
            _ => Err("line 1: not a cqrs archive (no header line)".to_owned()),
        }
    }

    fn next_line(&mut self) -> Result<Option<Line>, String> {
        let mut bytes = Vec::new();
        let n = self
            .input
            .read_until(b'\n', &mut bytes)
            .map_err(|e| format!("cannot read line {}: {e}", self.line_no + 1))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if bytes.last() != Some(&b'\n') {
            return Err(format!(
                "line {}: cut short (the archive is truncated)",
                self.line_no
            ));
        }
        let line: Line = serde_json::from_slice(&bytes)
            .map_err(|e| format!("line {}: not an archive line: {e}", self.line_no))?;
        if !matches!(line, Line::End { .. }) {
            self.hash.update(&bytes);
        }
        Ok(Some(line))
    }

    /// The next stream with its events, or `None` after the end line (checked).
    pub(crate) fn next_stream(&mut self) -> Result<Option<ArchivedStream>, String> {
        if self.ended.is_some() {
            return Ok(None);
        }
        let line = match self.peeked.take() {
            Some(line) => Some(line),
            None => self.next_line()?,
        };
        let head = match line {
            None => {
                return Err(format!(
                    "after line {}: the archive ends without its end line (it is truncated)",
                    self.line_no
                ));
            }
            Some(Line::End {
                streams,
                events,
                sha256,
            }) => {
                self.finish(streams, events, sha256)?;
                return Ok(None);
            }
            Some(Line::Stream(head)) => head,
            Some(_) => return Err(format!("line {}: expected a stream line", self.line_no)),
        };
        let at = self.line_no;
        let stream: StreamId = head
            .stream
            .parse()
            .map_err(|e| format!("line {at}: bad stream id {:?}: {e}", head.stream))?;
        let count = usize::try_from(head.events).unwrap_or(usize::MAX);
        let mut records = Vec::with_capacity(count.min(4_096));
        for i in 0..head.events {
            let event = match self.next_line()? {
                Some(Line::Event(event)) => event,
                _ => {
                    return Err(format!(
                        "line {}: stream {stream} should have {} events, found {i}",
                        self.line_no, head.events
                    ));
                }
            };
            records.push(self.record(&stream, event)?);
        }
        let last = records.last().map_or(0, |r| r.version);
        if head.events == 0 || records[0].version != head.first_version || last != head.version {
            return Err(format!(
                "line {at}: stream {stream} says versions {} to {}, its events do not match",
                head.first_version, head.version
            ));
        }
        self.streams += 1;
        self.events += head.events;
        Ok(Some(ArchivedStream {
            stream,
            head,
            records,
        }))
    }

    fn record(&self, stream: &StreamId, event: ArchivedEvent) -> Result<RecordedEvent, String> {
        let payload = event
            .payload
            .bytes()
            .map_err(|e| format!("line {}: bad payload: {e}", self.line_no))?;
        Ok(RecordedEvent {
            event_id: event.event_id,
            stream: stream.clone(),
            version: event.version,
            position: event.position,
            event_type: event.event_type,
            schema_version: event.schema_version,
            recorded_at: UNIX_EPOCH + Duration::from_nanos(event.recorded_at_unix_ns),
            payload,
            metadata: event.metadata,
        })
    }

    fn finish(&mut self, streams: u64, events: u64, sha256: String) -> Result<(), String> {
        let actual = hex(&std::mem::take(&mut self.hash).finalize());
        if actual != sha256 {
            return Err(format!(
                "checksum mismatch: the end line says sha256 {sha256}, the content has {actual} \
                 (the archive was changed or damaged)"
            ));
        }
        if (streams, events) != (self.streams, self.events) {
            return Err(format!(
                "the end line counts {streams} streams and {events} events, the archive holds {} and {}",
                self.streams, self.events
            ));
        }
        if self.next_line()?.is_some() {
            return Err(format!("line {}: data after the end line", self.line_no));
        }
        self.ended = Some(Summary {
            streams,
            events,
            sha256,
        });
        Ok(())
    }

    /// The checked totals, once [`next_stream`](Self::next_stream) returned `None`.
    pub(crate) fn summary(&self) -> Option<&Summary> {
        self.ended.as_ref()
    }
}
