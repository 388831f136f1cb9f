//! Lookups by event id: the id index, then the log record holding the position.

use cqrs_core::{Error, RecordedEvent, Result, StreamId};
use uuid::Uuid;

use crate::chunk::Chunk;
use crate::record::{be_u64, id_key};
use crate::store::{SledEventStore, store_error};

/// How often a lookup reads again when a delete, truncation or restore changed the id
/// index under it (each can change an entry once).
const ATTEMPTS: usize = 3;

impl SledEventStore {
    /// Where an already stored event id is: its stream, version and position.
    pub(crate) fn locate(&self, event_id: Uuid) -> Result<Option<(StreamId, u64, u64)>> {
        let Some(value) = self
            .inner
            .events
            .get(id_key(event_id))
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let location = || format!("event id index entry {event_id}");
        let position = be_u64(&value).ok_or_else(|| Error::corrupt(location(), "not 8 bytes"))?;
        let (first, bytes) = self.record_holding(position)?.ok_or_else(|| {
            Error::corrupt(location(), format!("log position {position} is missing"))
        })?;
        let chunk = Chunk::open(&bytes, first, None)?;
        let version = chunk.first_version + (position - first);
        Ok(Some((chunk.stream, version, position)))
    }

    /// The event `event_id` of `stream`, if stored. A lookup that finds the log changed
    /// under it (the event removed or its record rewritten meanwhile) reads again.
    pub(crate) fn find(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entry = self
                .inner
                .events
                .get(id_key(event_id))
                .map_err(store_error)?;
            if entry.is_none() {
                return Ok(None);
            }
            match self.find_now(stream, event_id) {
                Err(e @ Error::Corrupt { .. }) if attempt < ATTEMPTS => {
                    let again = self
                        .inner
                        .events
                        .get(id_key(event_id))
                        .map_err(store_error)?;
                    if again == entry {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    fn find_now(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let Some((found, _, position)) = self.locate(event_id)? else {
            return Ok(None);
        };
        if found != *stream {
            return Ok(None);
        }
        let (first, bytes) = self.record_holding(position)?.ok_or_else(|| {
            Error::corrupt(format!("log position {position}"), "the record is missing")
        })?;
        let mut chunk = Chunk::open(&bytes, first, Some(stream))?;
        let mut at = first;
        while let Some(event) = chunk.next_event(at == position) {
            at += 1;
            if let Some(event) = event? {
                if event.event_id != event_id {
                    return Err(Error::corrupt(
                        format!("event id index entry {event_id}"),
                        format!("log position {position} holds event {}", event.event_id),
                    ));
                }
                return Ok(Some(event));
            }
        }
        Err(Error::corrupt(
            format!("event id index entry {event_id}"),
            format!("log position {position} is missing"),
        ))
    }
}
