//! Stream lifecycle: deleting (a tombstone), truncating and restoring streams.

use serde::{Deserialize, Serialize};

use crate::{AppendResult, Error, EventData, ExpectedVersion, RecordedEvent, Result, StreamId};

/// The event type of a tombstone, the last record of a deleted stream.
///
/// The type starts with `$`, which [`validate_batch`](crate::validate_batch) refuses in
/// appends, so only [`StreamLifecycle::delete_stream`] writes it.
pub const STREAM_DELETED: &str = "$stream-deleted";

/// The payload of a tombstone: what a projection gets when a stream is deleted.
///
/// A projection that keeps rows per stream handles it by dropping the stream's rows:
/// make it a variant of the projection's event type, named [`STREAM_DELETED`]. The
/// record's `stream` says which stream went.
///
/// # Examples
/// ```
/// use cqrs_core::{DomainEvent, StreamDeleted};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum AccountRow {
///     Opened { owner: String },
///     #[event(name = "$stream-deleted")]
///     Deleted(StreamDeleted),
/// }
/// # assert!(AccountRow::EVENT_TYPES.contains(&cqrs_core::STREAM_DELETED));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamDeleted {
    /// The version of the stream's last event before the tombstone (0 if it had none).
    pub last_version: u64,
}

impl StreamDeleted {
    /// The tombstone of a stream whose last event was `last_version`.
    pub fn new(last_version: u64) -> Self {
        StreamDeleted { last_version }
    }

    /// The tombstone to append (backends call this, so all write the same record).
    pub fn event_data(self) -> EventData {
        // Serialising two integers into a `Vec` cannot fail.
        let payload = serde_json::to_vec(&self).unwrap_or_default();
        EventData::new(STREAM_DELETED, payload)
    }

    /// `true` if `record` is a tombstone.
    pub fn is_tombstone(record: &RecordedEvent) -> bool {
        record.event_type == STREAM_DELETED
    }
}

/// The table of [`StreamLifecycle`], read by the macros of `crate::forward`.
macro_rules! lifecycle_table {
    ($callback:ident!($($args:tt)*)) => {
        $callback! {
            ($($args)*)
            /// Retiring streams: deleting one for good, cutting off its old history, and
            /// putting back one that was deleted (from an archive). The in-memory, sled
            /// and PostgreSQL stores implement it; the provided bodies refuse with
            /// [`Error::Unsupported`](crate::Error::Unsupported).
            ///
            /// The global log keeps its shape through all three: **positions never
            /// move**. Removed events leave holes that readers skip; a restored event
            /// gets its old position back. Checkpoints stay valid cursors.
            ///
            /// | operation | the stream after it | projections |
            /// |---|---|---|
            /// | [`delete_stream`](StreamLifecycle::delete_stream) | only a tombstone ([`STREAM_DELETED`]); appends fail with [`Error::StreamDeleted`](crate::Error::StreamDeleted); its snapshot is gone | a live runner reads the tombstone; a rebuild sees the tombstone only |
            /// | [`truncate_stream`](StreamLifecycle::truncate_stream) | the events from a version on, and the snapshot that covers the rest | a rebuild sees the kept events only |
            /// | [`restore_stream`](StreamLifecycle::restore_stream) | exactly the records given, at their old versions and positions, no tombstone | the records are behind live checkpoints: rebuild the projections that dropped the stream |
            ///
            /// The operations subcommand builds `archive`, `restore` and `delete` on
            /// these (see `cqrs-cli`).
            pub trait StreamLifecycle: [crate::SnapshotStore];
            /// The object-safe twin of [`StreamLifecycle`].
            pub trait DynStreamLifecycle: [crate::DynSnapshotStore];
            required {}
            provided {
                /// Deletes `stream` if it is at the `expected` version: removes its events
                /// and its snapshot and appends a tombstone (type [`STREAM_DELETED`],
                /// payload [`StreamDeleted`]) at the next version and a new position, in
                /// one atomic step. Returns the tombstone's version and position.
                ///
                /// # Errors
                /// - [`Error::StreamNotFound`](crate::Error::StreamNotFound) if the stream
                ///   has no events;
                /// - [`Error::StreamDeleted`](crate::Error::StreamDeleted) if it is
                ///   already deleted;
                /// - [`Error::Conflict`](crate::Error::Conflict) if it is not at
                ///   `expected`;
                /// - [`Error::Store`](crate::Error::Store) if the backend fails.
                ///
                /// Nothing is changed when an error is returned (a store failure: as
                /// for [`append`](crate::EventLog::append)).
                fn delete_stream<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    expected: ExpectedVersion,
                ) -> future<'a> Result<AppendResult> {
                    let _ = expected;
                    async move { Err(crate::Error::unsupported("delete_stream", stream)) }
                }

                /// Removes the events of `stream` whose version is below `before`,
                /// keeping the stream's version, its later events and its snapshot.
                /// Returns how many events were removed (0 when there were none left
                /// below `before`).
                ///
                /// A load then starts from the snapshot, so one must exist at version
                /// `before` or later, and not ahead of the stream: the event at the
                /// snapshot's own version stays, and shows a load that the snapshot is
                /// not ahead (see [`check_truncation`](crate::check_truncation)).
                ///
                /// # Errors
                /// - [`Error::StreamNotFound`](crate::Error::StreamNotFound) if the stream
                ///   has no events;
                /// - [`Error::StreamDeleted`](crate::Error::StreamDeleted) if it is
                ///   deleted;
                /// - [`Error::InvalidInput`](crate::Error::InvalidInput) if `before` is
                ///   0 or past the next version, or if no snapshot is at `before` or
                ///   later;
                /// - [`Error::Store`](crate::Error::Store) if the backend fails.
                fn truncate_stream<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    before: u64,
                ) -> future<'a> Result<u64> {
                    let _ = before;
                    async move { Err(crate::Error::unsupported("truncate_stream", stream)) }
                }

                /// Puts back the `records` of `stream` exactly as they were stored (ids,
                /// versions, positions, types, payloads, metadata, times) and removes the
                /// stream's tombstone, in one atomic step. The stream must be deleted
                /// (its tombstone right after the records' last version) or have no
                /// events at all. Returns how many records were restored.
                ///
                /// `records` come from [`read_stored`](StreamLifecycle::read_stored) of
                /// this store (an archive): positions are the store's own, so another
                /// store may refuse them as taken.
                ///
                /// # Errors
                /// - [`Error::InvalidInput`](crate::Error::InvalidInput) if the records
                ///   are empty, of another stream, not at consecutive versions, hold a
                ///   tombstone, or if a position is taken;
                /// - [`Error::Conflict`](crate::Error::Conflict) if the stream has live
                ///   events, or its tombstone does not follow the records;
                /// - [`Error::DuplicateEventId`](crate::Error::DuplicateEventId) if an
                ///   event id is stored already;
                /// - [`Error::Store`](crate::Error::Store) if the backend fails.
                ///
                /// Nothing is changed when an error is returned.
                fn restore_stream<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    records: Vec<RecordedEvent>,
                ) -> future<'a> Result<u64> {
                    let _ = records;
                    async move { Err(crate::Error::unsupported("restore_stream", stream)) }
                }

                /// The records of `stream` from `from_version` on, exactly as stored: what
                /// an archive keeps. The same as [`read_stream`](crate::EventLog::read_stream)
                /// except for wrappers that change records on the way out, such as
                /// [`Shredded`](crate::Shredded), whose archive keeps the sealed values.
                ///
                /// # Errors
                /// As for [`read_stream`](crate::EventLog::read_stream).
                fn read_stored<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    from_version: u64,
                ) -> stream<'a> Result<RecordedEvent> {
                    self.read_stream(stream, from_version)
                }
            }
        }
    };
}
pub(crate) use lifecycle_table;

lifecycle_table!(define_store_trait!());

/// Checks the records of a [`restore_stream`](StreamLifecycle::restore_stream): not
/// empty, all of `stream`, consecutive versions from 1 or more, no tombstone, no event id
/// twice, positions rising with versions, event types of 1 to 256 bytes without NUL.
///
/// Backends call this before writing so they all refuse the same restores.
///
/// # Errors
/// [`Error::InvalidInput`] naming the problem.
pub fn validate_restore(stream: &StreamId, records: &[RecordedEvent]) -> Result<()> {
    let Some(first) = records.first() else {
        return Err(Error::invalid_input(format!(
            "nothing to restore to {stream}"
        )));
    };
    if first.version == 0 {
        return Err(Error::invalid_input(format!(
            "restore to {stream}: versions start at 1"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        if record.stream != *stream {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: record {} is of stream {}",
                record.event_id, record.stream
            )));
        }
        if record.version != first.version + i as u64 {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: version {} follows version {}",
                record.version,
                first.version + i as u64 - 1
            )));
        }
        if i > 0 && record.position <= records[i - 1].position {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: version {} is not after version {} in the log",
                record.version,
                record.version - 1
            )));
        }
        if StreamDeleted::is_tombstone(record) {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: version {} is a tombstone",
                record.version
            )));
        }
        if !seen.insert(record.event_id) {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: event id {} appears twice",
                record.event_id
            )));
        }
        crate::log::validate_event_type(&record.event_type)?;
    }
    Ok(())
}
