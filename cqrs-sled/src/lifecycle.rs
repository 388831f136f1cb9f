//! Deleting, truncating and restoring streams: [`StreamLifecycle`] for the sled store.
//!
//! Each operation runs under the single writer (the lock that hands out positions), so
//! no append can slip in between its checks and its commit, and reads what it changes
//! before it writes: sled's transactions cannot range-scan, and only the writer changes
//! the log, the indexes and the holes, so what it read stays true until it commits. It
//! then writes everything in **one sled transaction** over the events tree, the
//! snapshots tree (a delete removes the snapshot) and the default tree (the store's
//! format, see `open.rs`): a crash keeps all of it or none.
//!
//! - **Delete** removes the stream's log records, their stream-index entries and
//!   id-index entries, and its snapshot; records the removed positions as holes; and
//!   appends the tombstone at the next position, with a stream-index entry that carries
//!   the deleted mark (`record.rs`). The writer caches that mark with the stream's
//!   version, so appends refuse the stream without another lookup.
//! - **Truncate** removes the records wholly below the cut and rewrites the record that
//!   straddles it: the kept events keep their positions, so the new record is keyed at
//!   the position of its first kept event (a reader seeking a position in the removed
//!   part finds an earlier record, skips it, and goes on to the rewritten one), and the
//!   stream-index entry (keyed by the record's last version) names the new key.
//! - **Restore** writes the records back at their positions, which must be holes,
//!   grouped into log records of consecutive positions and one `recorded_at`, and
//!   removes the tombstone (its position becomes a hole: positions are never reused).
//!
//! All three follow the store's [`Durability`](crate::Durability) like appends, and hold
//! the durable mark (`mark.rs`) so that a crash never finds it fingerprinting a record
//! they removed or rewrote. They run one at a time (an async lock held until each is
//! durable); appends only wait for the writer while an operation commits.
//!
//! Cancel safety: as for appends. Dropped while it waits for its turn, an operation did
//! nothing; once it committed (before it waits for the flush) it stays committed.

use std::collections::BTreeSet;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use cqrs_core::{
    AppendResult, Error, EventData, ExpectedVersion, Position, RecordedEvent, Result,
    StreamDeleted, StreamId, StreamLifecycle, check_truncation, validate_restore,
};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use uuid::Uuid;

use crate::chunk::{self, Chunk};
use crate::contain::guard;
use crate::holes::HoleEdit;
use crate::mark::MarkHold;
use crate::open::FORMAT_KEY;
use crate::record::{
    bare_stream_key, decode_index_value, decode_snapshot, id_key, index_value, log_key, stream_key,
    version_of_stream_key,
};
use crate::store::{BLOB_HINT, Head, Heads, SledEventStore, lock, store_error};

/// The writes of one operation, applied in one transaction.
#[derive(Debug, Default)]
struct Writes {
    /// Keys of the events tree to set (`Some`) or remove (`None`).
    events: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The snapshot to remove (a delete).
    snapshot: Option<Vec<u8>>,
    /// The log keys of the records removed or rewritten (for the durable mark).
    touched: BTreeSet<u64>,
    /// A record large enough to become a sled blob file is written.
    large: bool,
}

impl Writes {
    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.large |= value.len() >= BLOB_HINT;
        self.events.push((key.to_vec(), Some(value)));
    }

    fn remove(&mut self, key: &[u8]) {
        self.events.push((key.to_vec(), None));
    }

    /// Removes `record`'s events from `first` on: the ids of `events`, the log record,
    /// and (if `index`) its stream-index entry; their positions become holes.
    fn remove_record(
        &mut self,
        holes: &mut HoleEdit<'_>,
        record: &StoredRecord,
        removed: &[RecordedEvent],
        index: bool,
    ) -> Result<()> {
        for event in removed {
            self.remove(&id_key(event.event_id));
        }
        self.remove(&log_key(record.first));
        if index {
            self.remove(&record.index_key);
        }
        self.touched.insert(record.first);
        match removed.len() {
            0 => Ok(()),
            n => holes.add(record.first, record.first + (n as u64 - 1)),
        }
    }
}

/// One log record of a stream, as its stream-index entry names it, decoded.
#[derive(Debug)]
struct StoredRecord {
    index_key: Vec<u8>,
    /// The record's key: the position of its first event.
    first: u64,
    first_version: u64,
    last_version: u64,
    events: Vec<RecordedEvent>,
}

/// Refuses a deleted stream or one without events.
fn live(stream: &StreamId, head: Head) -> Result<()> {
    if head.deleted {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
            version: head.version,
        });
    }
    if head.version == 0 {
        return Err(Error::StreamNotFound {
            stream: stream.clone(),
        });
    }
    Ok(())
}

fn data_of(event: &RecordedEvent) -> EventData {
    EventData {
        event_id: event.event_id,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        payload: event.payload.clone(),
        metadata: event.metadata.clone(),
    }
}

impl SledEventStore {
    fn cached_head(&self, heads: &Heads, stream: &StreamId) -> Result<Head> {
        match heads.streams.get(stream) {
            Some(&head) => Ok(head),
            None => self.head_entry(stream),
        }
    }

    /// Calls `f` with each log record of `stream`, in version order, until it returns
    /// `false`. A record that cannot be read fails the operation (nothing is written).
    fn for_each_record(
        &self,
        stream: &StreamId,
        mut f: impl FnMut(StoredRecord) -> Result<bool>,
    ) -> Result<()> {
        let events = &self.inner.events;
        for item in events.range(stream_key(stream, 0)..=stream_key(stream, u64::MAX)) {
            let (key, value) = item.map_err(store_error)?;
            let corrupt = |what: String| Error::corrupt(format!("stream {stream}"), what);
            let last = version_of_stream_key(&key)
                .ok_or_else(|| corrupt("bad stream index key".to_owned()))?;
            let (first, _) = decode_index_value(&value)
                .ok_or_else(|| corrupt(format!("bad stream index entry at version {last}")))?;
            let bytes = events
                .get(log_key(first))
                .map_err(store_error)?
                .ok_or_else(|| corrupt(format!("log position {first} is missing")))?;
            let mut chunk = Chunk::open(&bytes, first, Some(stream))?;
            chunk.expect(stream, last)?;
            let mut decoded = Vec::with_capacity(usize::try_from(chunk.count).unwrap_or(0));
            while let Some(event) = chunk.next_event(true) {
                decoded.extend(event?);
            }
            let record = StoredRecord {
                index_key: key.to_vec(),
                first,
                first_version: chunk.first_version,
                last_version: last,
                events: decoded,
            };
            if !f(record)? {
                break;
            }
        }
        Ok(())
    }

    /// Holds the durable mark for `writes` (see `mark.rs`), if the store keeps one.
    fn hold_mark(&self, writes: &Writes) -> Result<Option<MarkHold>> {
        self.inner
            .mark
            .as_ref()
            .map(|mark| mark.hold(&writes.touched))
            .transpose()
    }

    /// Applies `writes` in one transaction. On failure, forgets what the writer knew.
    fn apply(&self, writes: &Writes, heads: &mut MutexGuard<'_, Heads>) -> Result<()> {
        let inner = &*self.inner;
        let meta: &sled::Tree = &inner.db;
        // Odd while the transaction applies: stream readers that see it move read again.
        inner.marks.lifecycle.fetch_add(1, Ordering::AcqRel);
        let applied =
            (meta, &inner.events, &inner.snapshots).transaction(|(meta, events, snapshots)| {
                meta.insert(FORMAT_KEY, inner.holes_format)?;
                for (key, value) in &writes.events {
                    match value {
                        Some(value) => events.insert(&key[..], &value[..])?,
                        None => events.remove(&key[..])?,
                    };
                }
                if let Some(key) = &writes.snapshot {
                    snapshots.remove(&key[..])?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            });
        inner.marks.lifecycle.fetch_add(1, Ordering::AcqRel);
        match applied {
            Ok(()) => {
                if writes.large {
                    inner.marks.blob_pending.store(true, Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                heads.streams.clear();
                heads.max_id = Some(Uuid::max());
                Err(match e {
                    TransactionError::Storage(e) => store_error(e),
                    TransactionError::Abort(()) => Error::store("a sled transaction aborted"),
                })
            }
        }
    }

    fn delete_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(AppendResult, Option<MarkHold>)> {
        let inner = &*self.inner;
        let mut heads = lock(&inner.writer);
        // Held until the commit: a snapshot saved meanwhile would outlive the stream.
        let _snapshots = lock(&inner.snapshot_writer);
        let head = self.cached_head(&heads, stream)?;
        live(stream, head)?;
        if !expected.matches(head.version) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: head.version,
            });
        }
        let mut writes = Writes::default();
        let mut holes = HoleEdit::new(&inner.events);
        self.for_each_record(stream, |record| {
            writes.remove_record(&mut holes, &record, &record.events, true)?;
            Ok(true)
        })?;
        let committed = inner.marks.committed.load(Ordering::Acquire);
        let position = committed
            .checked_add(1)
            .ok_or_else(|| Error::store("the log is full"))?;
        let version = head.version + 1;
        let tombstone = StreamDeleted::new(head.version).event_data();
        let bytes = chunk::encode(
            stream,
            version,
            std::slice::from_ref(&tombstone),
            SystemTime::now(),
            inner.compress,
        )?;
        writes.put(&log_key(position), bytes);
        writes.put(&stream_key(stream, version), index_value(position, true));
        writes.put(&id_key(tombstone.event_id), position.to_be_bytes().to_vec());
        writes.events.extend(holes.changes());
        writes.snapshot = Some(bare_stream_key(stream));
        let hold = self.hold_mark(&writes)?;
        self.apply(&writes, &mut heads)?;
        inner.marks.committed.store(position, Ordering::Release);
        heads.streams.insert(
            stream.clone(),
            Head {
                version,
                deleted: true,
            },
        );
        heads.max_id = heads.max_id.max(Some(tombstone.event_id));
        if inner.flusher.is_none() {
            inner.marks.visible.store(position, Ordering::Release);
        }
        let result = AppendResult {
            version,
            position: Position::new(0, position),
            duplicate: false,
        };
        Ok((result, hold))
    }

    fn truncate_now(&self, stream: &StreamId, before: u64) -> Result<(u64, Option<MarkHold>)> {
        let inner = &*self.inner;
        let mut heads = lock(&inner.writer);
        // Held until the commit: the snapshot the truncation relies on stays.
        let _snapshots = lock(&inner.snapshot_writer);
        let head = self.cached_head(&heads, stream)?;
        live(stream, head)?;
        let snapshot = inner
            .snapshots
            .get(bare_stream_key(stream))
            .map_err(store_error)?
            .and_then(|bytes| decode_snapshot(&bytes).ok());
        check_truncation(stream, before, head.version, snapshot.as_ref())?;
        let mut writes = Writes::default();
        let mut holes = HoleEdit::new(&inner.events);
        let mut removed = 0u64;
        self.for_each_record(stream, |record| {
            if record.last_version < before {
                writes.remove_record(&mut holes, &record, &record.events, true)?;
                removed += record.events.len() as u64;
                return Ok(true);
            }
            if record.first_version < before {
                // The record straddles the cut: rewrite it with the kept events, keyed
                // at the position of the first of them (positions never move).
                let cut = usize::try_from(before - record.first_version)
                    .ok()
                    .filter(|&cut| cut < record.events.len())
                    .ok_or_else(|| {
                        Error::corrupt(format!("stream {stream}"), "a record lost events")
                    })?;
                let (gone, kept) = record.events.split_at(cut);
                let first = record.first + cut as u64;
                let data: Vec<EventData> = kept.iter().map(data_of).collect();
                let bytes =
                    chunk::encode(stream, before, &data, kept[0].recorded_at, inner.compress)?;
                writes.remove_record(&mut holes, &record, gone, false)?;
                writes.put(&log_key(first), bytes);
                writes.put(&record.index_key, index_value(first, false));
                removed += cut as u64;
            }
            Ok(false)
        })?;
        if removed == 0 {
            return Ok((0, None));
        }
        writes.events.extend(holes.changes());
        let hold = self.hold_mark(&writes)?;
        self.apply(&writes, &mut heads)?;
        Ok((removed, hold))
    }

    fn restore_now(
        &self,
        stream: &StreamId,
        records: &[RecordedEvent],
    ) -> Result<(u64, Option<MarkHold>)> {
        let inner = &*self.inner;
        let Some(last_version) = records.last().map(|r| r.version) else {
            return Ok((0, None));
        };
        let mut heads = lock(&inner.writer);
        let head = self.cached_head(&heads, stream)?;
        let tombstone = if head.version == 0 {
            None
        } else if head.deleted && head.version == last_version + 1 {
            Some(self.tombstone_of(stream, head.version)?)
        } else {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected: ExpectedVersion::Exact(last_version + 1),
                actual: head.version,
            });
        };
        for record in records {
            if let Some((existing_stream, _, _)) = self.locate(record.event_id)? {
                return Err(Error::DuplicateEventId {
                    event_id: record.event_id,
                    existing_stream,
                });
            }
        }
        let committed = inner.marks.committed.load(Ordering::Acquire);
        let taken = |record: &RecordedEvent| {
            Error::invalid_input(format!(
                "restore to {stream}: position {} of version {} is taken or not this store's",
                record.position, record.version
            ))
        };
        if let Some(record) = records.iter().find(|r| {
            r.position.commit != 0 || r.position.sequence == 0 || r.position.sequence > committed
        }) {
            return Err(taken(record));
        }
        let mut writes = Writes::default();
        let mut holes = HoleEdit::new(&inner.events);
        // Log records of consecutive positions sharing one `recorded_at`, cut at the
        // size of an append's records.
        let mut rest = records;
        while let Some(head) = rest.first() {
            let len = rest
                .windows(2)
                .take_while(|w| {
                    w[1].position.sequence == w[0].position.sequence + 1
                        && w[1].recorded_at == head.recorded_at
                })
                .count()
                + 1;
            let (group, tail) = rest.split_at(len);
            rest = tail;
            let data: Vec<EventData> = group.iter().map(data_of).collect();
            let mut at = 0;
            for run in chunk::runs(&data) {
                let (start, end) = (&group[at], &group[at + run.len() - 1]);
                at += run.len();
                if !holes.fill(start.position.sequence, end.position.sequence)? {
                    return Err(taken(start));
                }
                let bytes =
                    chunk::encode(stream, start.version, run, head.recorded_at, inner.compress)?;
                let position = start.position.sequence;
                writes.put(&log_key(position), bytes);
                writes.put(
                    &stream_key(stream, end.version),
                    index_value(position, false),
                );
                for (event, record) in run.iter().zip(&group[at - run.len()..at]) {
                    let at_position = record.position.sequence.to_be_bytes().to_vec();
                    writes.put(&id_key(event.event_id), at_position);
                }
            }
        }
        if let Some((position, event_id)) = tombstone {
            writes.remove(&log_key(position));
            writes.remove(&stream_key(stream, head.version));
            writes.remove(&id_key(event_id));
            writes.touched.insert(position);
            holes.add(position, position)?;
        }
        writes.events.extend(holes.changes());
        let hold = self.hold_mark(&writes)?;
        self.apply(&writes, &mut heads)?;
        heads.streams.insert(
            stream.clone(),
            Head {
                version: last_version,
                deleted: false,
            },
        );
        let greatest = records.iter().map(|r| r.event_id).max();
        heads.max_id = heads.max_id.max(greatest);
        Ok((records.len() as u64, hold))
    }

    /// The position and event id of the tombstone of `stream`, at `version`.
    fn tombstone_of(&self, stream: &StreamId, version: u64) -> Result<(u64, Uuid)> {
        let corrupt = |what: &str| {
            Error::corrupt(
                format!("stream {stream} version {version}"),
                format!("the tombstone {what}"),
            )
        };
        let events = &self.inner.events;
        let value = events
            .get(stream_key(stream, version))
            .map_err(store_error)?
            .ok_or_else(|| corrupt("has no stream-index entry"))?;
        let (position, _) =
            decode_index_value(&value).ok_or_else(|| corrupt("has a bad stream-index entry"))?;
        let bytes = events
            .get(log_key(position))
            .map_err(store_error)?
            .ok_or_else(|| corrupt("is missing from the log"))?;
        let mut chunk = Chunk::open(&bytes, position, Some(stream))?;
        chunk.expect(stream, version)?;
        match chunk.next_event(true) {
            Some(Ok(Some(event))) if StreamDeleted::is_tombstone(&event) => {
                Ok((position, event.event_id))
            }
            Some(Err(e)) => Err(e),
            _ => Err(corrupt("is not a tombstone")),
        }
    }

    /// Makes a lifecycle operation durable as the store's durability asks, then lets
    /// the durable mark move on. `position`: the one it handed out (a delete).
    async fn settle(&self, hold: Option<MarkHold>, position: Option<u64>) -> Result<()> {
        let Some(flusher) = &self.inner.flusher else {
            // `Buffered`: nothing waits; the mark stays where the hold left it until
            // the next flush or the close.
            return Ok(());
        };
        // What the wait makes durable: the delete's own position (appends committed
        // since may not be), or everything committed before a flush that starts later.
        let durable = match position {
            Some(position) => {
                flusher.wait_durable(position).await?;
                position
            }
            None => {
                let committed = self.inner.marks.committed.load(Ordering::Acquire);
                flusher.wait_flushed(&self.inner.marks).await?;
                committed
            }
        };
        if let Some(hold) = hold
            && let Err(e) = hold.durable(durable)
        {
            tracing::warn!(error = %e, "cannot record the durable mark of the sled event store");
        }
        Ok(())
    }
}

impl StreamLifecycle for SledEventStore {
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        self.writable()?;
        let _one_at_a_time = self.inner.lifecycle.lock().await;
        let (result, hold) = guard(|| self.delete_now(stream, expected))?;
        self.settle(hold, Some(result.position.sequence)).await?;
        self.inner.notifier.notify();
        Ok(result)
    }

    async fn truncate_stream(&self, stream: &StreamId, before: u64) -> Result<u64> {
        self.writable()?;
        let _one_at_a_time = self.inner.lifecycle.lock().await;
        let (removed, hold) = guard(|| self.truncate_now(stream, before))?;
        if removed > 0 {
            self.settle(hold, None).await?;
        }
        Ok(removed)
    }

    async fn restore_stream(&self, stream: &StreamId, records: Vec<RecordedEvent>) -> Result<u64> {
        validate_restore(stream, &records)?;
        self.writable()?;
        let _one_at_a_time = self.inner.lifecycle.lock().await;
        let (restored, hold) = guard(|| self.restore_now(stream, &records))?;
        self.settle(hold, None).await?;
        self.inner.notifier.notify();
        Ok(restored)
    }
}

#[cfg(test)]
mod tests;
