//! The event-store trait every backend implements.

use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use uuid::Uuid;

use crate::{EventData, ExpectedVersion, LogWatcher, Position, RecordedEvent, Result, StreamId};

/// What a successful append reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppendResult {
    /// The stream's version after the append: the version of the batch's last event.
    pub version: u64,
    /// The global position of the batch's last event.
    pub position: Position,
    /// `true` when every event id of the batch was already stored in this stream (an
    /// idempotent re-append): nothing was written, and `version` and `position` are
    /// those of the original append. The events stored are the original's, which may
    /// differ from the re-appended ones in everything but their ids.
    pub duplicate: bool,
}

/// A stored snapshot of an aggregate's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The stream version the snapshot covers: it is the state after applying events
    /// 1 to `version`.
    pub version: u64,
    /// The aggregate's snapshot schema version when the snapshot was taken; a snapshot
    /// with another schema version is ignored on load.
    pub schema_version: u32,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// An item of [`EventStore::read_stream_from_snapshot`]: the stream's snapshot, then
/// its events.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The stream's latest snapshot; only ever the first item.
    Snapshot(SnapshotRecord),
    /// The stream has a stored snapshot that cannot be used; only ever the first item,
    /// and the events that follow start at version 1.
    SnapshotIgnored(SnapshotIgnored),
    /// An event of the stream.
    Event(RecordedEvent),
}

/// Why a stored snapshot was not used by [`EventStore::read_stream_from_snapshot`].
///
/// A snapshot is an optimisation only: an unusable one is skipped (and logged), and the
/// stream is read from its first event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotIgnored {
    /// The stored record is damaged: its fields do not decode as a snapshot record.
    Damaged {
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot covers a version that the stream does not have (a restored backup
    /// of the events, a hand edit): using it would start every load past the stream's
    /// head.
    AheadOfStream {
        /// The version the snapshot claims to cover.
        version: u64,
    },
}

impl std::fmt::Display for SnapshotIgnored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotIgnored::Damaged { reason } => write!(f, "damaged snapshot record: {reason}"),
            SnapshotIgnored::AheadOfStream { version } => write!(
                f,
                "snapshot at version {version} is ahead of the stream (it has no event {version})"
            ),
        }
    }
}

/// A stream and its current version, as listed by [`EventStore::list_streams`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamId,
    /// Its current version (the number of events in it).
    pub version: u64,
}

/// Store-wide counts, as reported by [`EventStore::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Streams with at least one event.
    pub streams: u64,
    /// Events in the global log.
    pub events: u64,
    /// Streams with a stored snapshot.
    pub snapshots: u64,
}

/// An event store: the narrow trait a backend implements, over serialized records.
///
/// Typing, upcasting and applying events happen once, in `cqrs-core`; a backend only
/// stores and returns [`EventData`] and [`RecordedEvent`]s and keeps the contracts that
/// the [conformance suite](crate#the-store-conformance-suite) checks:
///
/// 1. versions in a stream start at 1 and have no holes;
/// 2. [`append`](EventStore::append) is atomic and checks the [`ExpectedVersion`]; of N
///    concurrent appends expecting the same version exactly one wins;
/// 3. appends are idempotent by event id;
/// 4. [`read_all`](EventStore::read_all) yields every event once, in one commit order,
///    resumable from any position it handed out;
/// 5. reads are streams in bounded memory;
/// 6. records carry the full envelope;
/// 7. snapshots are an optimisation only; 8. checkpoints are stored per name;
/// 9. bad data gives typed errors, never panics.
///
/// Methods return `impl Future + Send` and `impl Stream + Send`, so calls are statically
/// dispatched. Where the store is chosen at run time, wrap it in a
/// [`BoxEventStore`](crate::BoxEventStore).
///
/// # Cancel safety
/// Dropping an [`append`](EventStore::append) future before it completes leaves the
/// append either fully done or not done at all; which one is unknown, so re-append the
/// same event ids (idempotent) to find out. Dropping a read stream stops the read.
///
/// # Examples
/// ```
/// use cqrs_core::{EventData, EventStore, ExpectedVersion, InMemoryEventStore, StreamId};
/// use futures::TryStreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new("account", "42")?;
/// let batch = vec![EventData::new("AccountOpened", br#"{"owner":"ada"}"#.to_vec())];
/// let appended = store.append(&stream, ExpectedVersion::NoStream, batch).await?;
/// assert_eq!(appended.version, 1);
///
/// let events: Vec<_> = store.read_stream(&stream, 1).try_collect().await?;
/// assert_eq!(events[0].event_type, "AccountOpened");
/// # Ok(())
/// # }
/// ```
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream`, atomically, if the stream is at the `expected`
    /// version.
    ///
    /// If every event id of the batch is already in this stream, at consecutive versions
    /// in the same order, nothing is written and the original result is returned
    /// (idempotent append; the version check is skipped).
    ///
    /// # Errors
    /// - [`Error::Conflict`](crate::Error::Conflict) if the stream is not at `expected`,
    ///   or if some but not all of the ids are already in the stream;
    /// - [`Error::DuplicateEventId`](crate::Error::DuplicateEventId) if an id is used in
    ///   another stream;
    /// - [`Error::InvalidInput`](crate::Error::InvalidInput) for an empty batch or an id
    ///   repeated within the batch;
    /// - [`Error::Store`](crate::Error::Store) if the backend fails.
    ///
    /// Nothing is written when any other error is returned. A store failure means the
    /// outcome is unknown: the batch may have been
    /// committed before the failure (a lost connection after the commit, a failed flush
    /// after sled applied the batch). Re-append the same event ids to find out: the
    /// idempotent append then returns the original result or writes the batch.
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult>> + Send + 'a;

    /// Reads the events of `stream` whose version is `from_version` or later, in version
    /// order. A stream with no events yields nothing (it is not an error).
    ///
    /// # Errors
    /// Items are [`Error::Store`](crate::Error::Store) if the backend fails and
    /// [`Error::Corrupt`](crate::Error::Corrupt) for a damaged record.
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a;

    /// Reads `stream` for a load: its latest usable snapshot first, if it has one, then
    /// its events after the snapshot's version (all of them without a snapshot), in
    /// version order.
    ///
    /// A snapshot is usable only if the stream has an event at the snapshot's version. A
    /// snapshot ahead of the stream, or a damaged snapshot record, is skipped with a
    /// warning: the first item is then [`StreamItem::SnapshotIgnored`] and the events
    /// start at version 1.
    ///
    /// This is what the command layer calls to load an aggregate that takes snapshots.
    /// The default asks [`load_snapshot`](EventStore::load_snapshot), then
    /// [`read_stream`](EventStore::read_stream) from the snapshot's version: two reads.
    /// Backends where each read is a round trip override it with one (PostgreSQL: one
    /// query).
    ///
    /// # Errors
    /// As for [`load_snapshot`](EventStore::load_snapshot) and
    /// [`read_stream`](EventStore::read_stream).
    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
        let from_start = move || {
            self.read_stream(stream, 1)
                .map(|e| e.map(StreamItem::Event))
        };
        futures::stream::once(async move {
            let snapshot = match self.load_snapshot(stream).await {
                Err(e) => return futures::stream::iter([Err(e)]).boxed(),
                Ok(None) => return from_start().boxed(),
                Ok(Some(snapshot)) => snapshot,
            };
            let ignored = if snapshot.version == 0 {
                SnapshotIgnored::Damaged {
                    reason: "it covers version 0".to_owned(),
                }
            } else {
                // The event at the snapshot's own version shows it is not ahead.
                let mut tail = Box::pin(self.read_stream(stream, snapshot.version));
                match tail.next().await {
                    Some(Err(e)) => return futures::stream::iter([Err(e)]).boxed(),
                    Some(Ok(event)) if event.version == snapshot.version => {
                        return futures::stream::iter([Ok(StreamItem::Snapshot(snapshot))])
                            .chain(tail.map(|e| e.map(StreamItem::Event)))
                            .boxed();
                    }
                    _ => SnapshotIgnored::AheadOfStream {
                        version: snapshot.version,
                    },
                }
            };
            tracing::warn!(%stream, reason = %ignored, "ignoring snapshot");
            futures::stream::iter([Ok(StreamItem::SnapshotIgnored(ignored))])
                .chain(from_start())
                .boxed()
        })
        .flatten()
    }

    /// Reads the global log: every event of every stream whose position is after `after`,
    /// in one total commit order, at most `limit` of them (`None`: to the current end).
    ///
    /// The stream ends at the end of what is committed and safe to read when the read
    /// starts; read again from the last position to get later events. Positions handed
    /// out here are valid cursors: resuming after any of them never skips nor repeats an
    /// event, even while writers commit concurrently.
    ///
    /// # Errors
    /// As for [`read_stream`](EventStore::read_stream).
    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_;

    /// Finds the event with id `event_id` in `stream`, if there is one.
    ///
    /// The command layer uses this to recognise a command that was already applied.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) if the backend fails.
    fn find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>>> + Send + 'a;

    /// Counts the events in the global log after `after` (for progress reports and lag).
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) if the backend fails.
    fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_;

    /// Loads the latest snapshot of `stream`.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) if the backend fails.
    fn load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Future<Output = Result<Option<SnapshotRecord>>> + Send + 'a;

    /// Saves a snapshot of `stream`, unless the store already holds one of a higher
    /// version that the stream has reached (then this is a no-op: a slow save never
    /// replaces a later one). A stored snapshot ahead of the stream's head is always
    /// replaced. Only the latest snapshot per stream is kept.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) if the backend fails.
    fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: SnapshotRecord,
    ) -> impl Future<Output = Result<()>> + Send + 'a;

    /// Loads the checkpoint stored under a projection's `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for an empty name or one longer
    /// than 256 bytes; [`Error::Store`](crate::Error::Store) if the backend fails.
    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send + 'a;

    /// Stores `position` as the checkpoint of the projection `name`, replacing any other.
    ///
    /// # Errors
    /// As for [`load_checkpoint`](EventStore::load_checkpoint).
    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a;

    /// A watcher that wakes when events are appended, for live projections.
    ///
    /// The default never wakes: readers fall back to polling. Backends that can notify
    /// (in-memory, sled, PostgreSQL `LISTEN`) override it.
    fn watch(&self) -> LogWatcher {
        LogWatcher::polling()
    }

    /// Every stream with events, with its current version, in no particular order (for
    /// operations tools: snapshot everything, inspect).
    ///
    /// The default scans the global log once and keeps one entry per stream in memory;
    /// backends with a stream index override it.
    ///
    /// # Errors
    /// Items are [`Error::Store`](crate::Error::Store) if the backend fails.
    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        futures::stream::once(async move {
            let mut versions = std::collections::HashMap::<StreamId, u64>::new();
            let mut log = std::pin::pin!(self.read_all(Position::START, None));
            while let Some(record) = futures::StreamExt::next(&mut log).await {
                let record = record?;
                versions.insert(record.stream, record.version);
            }
            Ok::<_, crate::Error>(versions)
        })
        .flat_map(|scan| {
            let items: Vec<Result<StreamInfo>> = match scan {
                Ok(versions) => versions
                    .into_iter()
                    .map(|(stream, version)| Ok(StreamInfo { stream, version }))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
    }

    /// Counts streams, events and snapshots.
    ///
    /// The default lists the streams and asks for each one's snapshot; backends override
    /// it with cheaper queries.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) if the backend fails.
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
        async move {
            let mut stats = StoreStats {
                events: self.count_events(Position::START).await?,
                ..StoreStats::default()
            };
            let mut streams = std::pin::pin!(self.list_streams());
            while let Some(info) = futures::StreamExt::next(&mut streams).await {
                let info = info?;
                stats.streams += 1;
                if self.load_snapshot(&info.stream).await?.is_some() {
                    stats.snapshots += 1;
                }
            }
            Ok(stats)
        }
    }
}

/// Checks a checkpoint (projection) name: 1 to 256 bytes, no NUL.
///
/// Backends call this so they all accept the same names.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the problem.
pub fn validate_checkpoint_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.contains('\0') {
        return Err(crate::Error::invalid_input(format!(
            "a projection name must be 1 to 256 bytes without NUL, got {name:?}"
        )));
    }
    Ok(())
}

/// Checks an append batch: not empty, no event id twice, every event type 1 to 256
/// bytes without NUL.
///
/// Backends call this before writing so they all refuse the same batches.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the problem.
pub fn validate_batch(stream: &StreamId, events: &[EventData]) -> Result<()> {
    if events.is_empty() {
        return Err(crate::Error::invalid_input(format!(
            "empty append to {stream}"
        )));
    }
    // A set, not pairwise comparisons: batches of thousands of events stay linear.
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        if !seen.insert(event.event_id) {
            return Err(crate::Error::invalid_input(format!(
                "event id {} appears twice in one append to {stream}",
                event.event_id
            )));
        }
        if event.event_type.is_empty()
            || event.event_type.len() > 256
            || event.event_type.contains('\0')
        {
            return Err(crate::Error::invalid_input(format!(
                "event type must be 1 to 256 bytes without NUL, got {:?}",
                event.event_type
            )));
        }
    }
    Ok(())
}

macro_rules! forward_event_store {
    ($($ty:ty),*) => {$(
        impl<S: EventStore> EventStore for $ty {
            fn append<'a>(
                &'a self,
                stream: &'a StreamId,
                expected: ExpectedVersion,
                events: Vec<EventData>,
            ) -> impl Future<Output = Result<AppendResult>> + Send + 'a {
                (**self).append(stream, expected, events)
            }
            fn read_stream<'a>(
                &'a self,
                stream: &'a StreamId,
                from_version: u64,
            ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
                (**self).read_stream(stream, from_version)
            }
            fn read_stream_from_snapshot<'a>(
                &'a self,
                stream: &'a StreamId,
            ) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
                (**self).read_stream_from_snapshot(stream)
            }
            fn read_all(
                &self,
                after: Position,
                limit: Option<u64>,
            ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
                (**self).read_all(after, limit)
            }
            fn find_event<'a>(
                &'a self,
                stream: &'a StreamId,
                event_id: Uuid,
            ) -> impl Future<Output = Result<Option<RecordedEvent>>> + Send + 'a {
                (**self).find_event(stream, event_id)
            }
            fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_ {
                (**self).count_events(after)
            }
            fn load_snapshot<'a>(
                &'a self,
                stream: &'a StreamId,
            ) -> impl Future<Output = Result<Option<SnapshotRecord>>> + Send + 'a {
                (**self).load_snapshot(stream)
            }
            fn save_snapshot<'a>(
                &'a self,
                stream: &'a StreamId,
                snapshot: SnapshotRecord,
            ) -> impl Future<Output = Result<()>> + Send + 'a {
                (**self).save_snapshot(stream, snapshot)
            }
            fn load_checkpoint<'a>(&'a self, name: &'a str) -> impl Future<Output = Result<Option<Position>>> + Send + 'a {
                (**self).load_checkpoint(name)
            }
            fn save_checkpoint<'a>(&'a self, name: &'a str, position: Position) -> impl Future<Output = Result<()>> + Send + 'a {
                (**self).save_checkpoint(name, position)
            }
            fn watch(&self) -> LogWatcher {
                (**self).watch()
            }
            fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
                (**self).list_streams()
            }
            fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
                (**self).stats()
            }
        }
    )*};
}

forward_event_store!(Arc<S>, &S);
