//! Reading one stream: its stream-index entries, then the log records they name.

use std::sync::atomic::Ordering;

use cqrs_core::{Error, RecordedEvent, Result, StreamId};

use crate::chunk::Chunk;
use crate::record::{self, log_key, stream_key};
use crate::store::{READ_CHUNK, SledEventStore, store_error};

/// How often a chunk is read again when a lifecycle operation changed the stream under
/// it (they run one at a time, so a second try nearly always reads a settled stream).
const ATTEMPTS: usize = 3;

impl SledEventStore {
    /// At least `READ_CHUNK` events of `stream` from `version` on (unless the stream ends
    /// first), and where to go on.
    ///
    /// sled's iterators do not read a snapshot: a truncation committed while a chunk is
    /// read could show the chunk old events and then, after a jump, the kept ones. A
    /// chunk whose versions jump while a lifecycle operation ran is read again, so each
    /// chunk is a consistent read of the stream, as the in-memory store's chunks are.
    pub(crate) fn stream_chunk(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> (Vec<Result<RecordedEvent>>, Option<u64>) {
        let changes = &self.inner.marks.lifecycle;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = changes.load(Ordering::Acquire);
            let (out, next) = self.stream_chunk_once(stream, from);
            let raced = before % 2 == 1 || changes.load(Ordering::Acquire) != before;
            if !raced || attempt == ATTEMPTS || !jumps(&out) {
                return (out, next);
            }
        }
    }

    /// One try of [`stream_chunk`](Self::stream_chunk).
    fn stream_chunk_once(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> (Vec<Result<RecordedEvent>>, Option<u64>) {
        let mut out = Vec::new();
        // Each index entry names the last version of one log record, so the first entry
        // at or after `from` is the record holding `from`.
        let range = self
            .inner
            .events
            .range(stream_key(stream, from)..=stream_key(stream, u64::MAX));
        for item in range {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    out.push(Err(store_error(e)));
                    return (out, None);
                }
            };
            let Some(last) = record::version_of_stream_key(&key) else {
                out.push(Err(Error::corrupt(
                    format!("stream {stream}"),
                    "bad stream index key",
                )));
                return (out, None);
            };
            if let Err(e) = self.events_of_record(stream, last, &value, from, &mut out) {
                out.push(Err(e));
            }
            if out.len() >= READ_CHUNK {
                return (out, last.checked_add(1));
            }
        }
        (out, None)
    }

    /// Pushes the events from version `from` on of the log record that the index entry
    /// of `stream` at version `last` (with value `index_value`) names.
    fn events_of_record(
        &self,
        stream: &StreamId,
        last: u64,
        index_value: &[u8],
        from: u64,
        out: &mut Vec<Result<RecordedEvent>>,
    ) -> Result<()> {
        let location = || format!("stream {stream} version {last}");
        let entry = |value: &[u8]| {
            record::decode_index_value(value)
                .map(|(position, _)| position)
                .ok_or_else(|| Error::corrupt(location(), "the stream index entry is not 8 bytes"))
        };
        let mut position = entry(index_value)?;
        let bytes = loop {
            let bytes = self
                .inner
                .events
                .get(log_key(position))
                .map_err(store_error)?;
            if let Some(bytes) = bytes {
                break bytes;
            }
            // A truncation or a delete may have moved or removed the record since the
            // index entry was read: read the entry again.
            let again = self
                .inner
                .events
                .get(stream_key(stream, last))
                .map_err(store_error)?;
            match again.map(|value| entry(&value)).transpose()? {
                None => return Ok(()),
                Some(moved) if moved != position => position = moved,
                Some(_) => {
                    return Err(Error::corrupt(
                        location(),
                        format!("log position {position} is missing"),
                    ));
                }
            }
        };
        let mut chunk = Chunk::open(&bytes, position, Some(stream)).map_err(|e| match e {
            // Name the record as the index does: the damaged header may name nothing.
            Error::Corrupt { reason, .. } => Error::corrupt(
                format!("stream {stream} version {last} (log position {position})"),
                reason,
            ),
            e => e,
        })?;
        chunk.expect(stream, last)?;
        let mut version = chunk.first_version;
        while let Some(event) = chunk.next_event(version >= from) {
            version += 1;
            match event {
                Ok(Some(event)) => out.push(Ok(event)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(())
    }
}

/// Whether the versions of the events read jump (a gap between two of them).
fn jumps(events: &[Result<RecordedEvent>]) -> bool {
    events.windows(2).any(|w| match (&w[0], &w[1]) {
        (Ok(a), Ok(b)) => b.version != a.version + 1,
        _ => false,
    })
}
