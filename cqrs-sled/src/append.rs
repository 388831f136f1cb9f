//! The append path: the idempotency check and the commit under the single writer.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use cqrs_core::{AppendResult, Error, EventData, ExpectedVersion, Position, Result, StreamId};
use uuid::Uuid;

use crate::chunk;
use crate::record::{id_key, log_key, stream_key};
use crate::store::{BLOB_HINT, HEADS_CACHE, Head, SledEventStore, lock, store_error};

impl SledEventStore {
    /// The idempotency check, exactly as the in-memory store does it. `max_id` is the
    /// greatest stored event id: a greater one is new without a lookup.
    fn check_duplicates(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
        max_id: Option<Uuid>,
    ) -> Result<Option<Result<AppendResult>>> {
        let mut found = Vec::with_capacity(events.len());
        for event in events {
            found.push(if max_id.is_some_and(|max| event.event_id <= max) {
                self.locate(event.event_id)?
            } else {
                None
            });
        }
        if found.iter().all(Option::is_none) {
            return Ok(None);
        }
        if let Some((event, (other, _, _))) = events
            .iter()
            .zip(&found)
            .find_map(|(e, f)| f.as_ref().filter(|(s, _, _)| s != stream).map(|f| (e, f)))
        {
            return Ok(Some(Err(Error::DuplicateEventId {
                event_id: event.event_id,
                existing_stream: other.clone(),
            })));
        }
        let full_match = found.iter().all(Option::is_some)
            && found.windows(2).all(|w| match (&w[0], &w[1]) {
                (Some(a), Some(b)) => b.1 == a.1 + 1,
                _ => false,
            });
        Ok(Some(match found.last() {
            Some(Some((_, version, position))) if full_match => Ok(AppendResult {
                version: *version,
                position: Position::new(0, *position),
                duplicate: true,
            }),
            _ => Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: self.head(stream)?,
            }),
        }))
    }

    /// Checks and commits one append under the single writer. Returns the result and
    /// whether anything was written.
    pub(crate) fn commit(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<(AppendResult, bool)> {
        let inner = &*self.inner;
        let mut heads = lock(&inner.writer);
        // The deleted check costs nothing more: the cached head carries the tombstone
        // mark, and on a miss the lookup of the version reads it from the same entry.
        let head = match heads.streams.get(stream) {
            Some(&head) => head,
            None => self.head_entry(stream)?,
        };
        if head.deleted {
            return Err(Error::StreamDeleted {
                stream: stream.clone(),
                version: head.version,
            });
        }
        if let Some(outcome) = self.check_duplicates(stream, expected, events, heads.max_id)? {
            return outcome.map(|result| (result, false));
        }
        let actual = head.version;
        if !expected.matches(actual) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let recorded_at = SystemTime::now();
        let mut position = inner.marks.committed.load(Ordering::Acquire);
        let mut version = actual;
        let mut batch = sled::Batch::default();
        let mut large = false;
        // One log record and one stream-index entry per run of events, one id-index
        // entry per event (ADR 0028).
        for run in chunk::runs(events) {
            let first = position + 1;
            let bytes = chunk::encode(stream, version + 1, run, recorded_at, inner.compress)?;
            large |= bytes.len() >= BLOB_HINT;
            batch.insert(&log_key(first)[..], bytes);
            for event in run {
                position += 1;
                version += 1;
                batch.insert(&id_key(event.event_id)[..], &position.to_be_bytes()[..]);
            }
            batch.insert(stream_key(stream, version), &first.to_be_bytes()[..]);
        }
        // One batch on one tree: sled applies it atomically, also across a crash.
        if let Err(e) = inner.events.apply_batch(batch) {
            // Part of the batch may be in sled's memory: look every id up from now on.
            heads.max_id = Some(Uuid::max());
            return Err(store_error(e));
        }
        if large {
            inner.marks.blob_pending.store(true, Ordering::Release);
        }
        inner.marks.committed.store(position, Ordering::Release);
        if heads.streams.len() >= HEADS_CACHE {
            heads.streams.clear();
        }
        heads.streams.insert(
            stream.clone(),
            Head {
                version,
                deleted: false,
            },
        );
        heads.max_id = events.iter().map(|e| e.event_id).chain(heads.max_id).max();
        if inner.flusher.is_none() {
            inner.marks.visible.store(position, Ordering::Release);
        }
        Ok((
            AppendResult {
                version,
                position: Position::new(0, position),
                duplicate: false,
            },
            true,
        ))
    }
}
