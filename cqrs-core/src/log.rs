//! The event log: the one trait every backend implements.

use futures::{Stream, StreamExt};

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

/// An item of [`EventLog::read_all_of_types`]: a record of one of the types asked for,
/// or the position the read has passed without one.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// A record of one of the types asked for.
    Event(RecordedEvent),
    /// Every record up to and including this position (a record's, of another type)
    /// that was not handed out is of another type: a cursor to resume after (and to save
    /// as a checkpoint).
    Passed(Position),
}

impl LogItem {
    /// The item's position: the record's, or the one passed.
    pub fn position(&self) -> Position {
        match self {
            LogItem::Event(record) => record.position,
            LogItem::Passed(position) => *position,
        }
    }
}

/// How many records of other types in a row the default
/// [`read_all_of_types`](EventLog::read_all_of_types) passes over before it says so.
const PASSED_EVERY: u64 = 1_024;

/// The default [`EventLog::read_all_of_types`]: `records` (the whole log after a
/// position) with the records of other `types` left out, [`LogItem::Passed`] said every
/// [`PASSED_EVERY`] of them in a row and after the last, and at most `limit` records.
fn keep_types<'a>(
    records: impl Stream<Item = Result<RecordedEvent>> + Send + 'a,
    limit: Option<u64>,
    types: &'a [String],
) -> impl Stream<Item = Result<LogItem>> + Send + 'a {
    struct State<S> {
        records: std::pin::Pin<Box<futures::stream::Fuse<S>>>,
        /// Records handed out.
        kept: u64,
        /// The last record passed over since the last item, and how many in a row.
        passed: Option<(Position, u64)>,
    }
    let state = State {
        records: Box::pin(records.fuse()),
        kept: 0,
        passed: None,
    };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if limit.is_some_and(|limit| state.kept >= limit) {
                return None;
            }
            let Some(next) = state.records.next().await else {
                // The end of the read: say how far it went, if records were passed.
                let (position, _) = state.passed.take()?;
                return Some((Ok(LogItem::Passed(position)), state));
            };
            let record = match next {
                Ok(record) => record,
                Err(e) => return Some((Err(e), state)),
            };
            if types.contains(&record.event_type) {
                state.kept += 1;
                state.passed = None;
                return Some((Ok(LogItem::Event(record)), state));
            }
            let run = state.passed.map_or(0, |(_, run)| run) + 1;
            if run >= PASSED_EVERY {
                state.passed = None;
                return Some((Ok(LogItem::Passed(record.position)), state));
            }
            state.passed = Some((record.position, run));
        }
    })
}

/// The table of [`EventLog`], read by the macros of `crate::forward`.
macro_rules! event_log_table {
    ($callback:ident!($($args:tt)*)) => {
        $callback! {
            ($($args)*)
            /// The event log: streams of events and the global log they make up. This is
            /// the one trait a backend must implement; three methods are required.
            ///
            /// Typing, upcasting and applying events happen once, in `cqrs-core`; a
            /// backend only stores and returns [`EventData`] and [`RecordedEvent`]s and
            /// keeps the contracts that the
            /// [conformance suite](crate#the-store-conformance-suite) checks:
            ///
            /// 1. versions in a stream start at 1 and have no holes;
            /// 2. [`append`](EventLog::append) is atomic and checks the
            ///    [`ExpectedVersion`]; of N concurrent appends expecting the same version
            ///    exactly one wins;
            /// 3. appends are idempotent by event id;
            /// 4. [`read_all`](EventLog::read_all) yields every event once, in one commit
            ///    order, resumable from any position it handed out;
            /// 5. reads are streams in bounded memory;
            /// 6. records carry the full envelope;
            /// 7. bad data gives typed errors, never panics.
            ///
            /// The other capabilities are traits of their own, which a backend
            /// implements when it has them: [`SnapshotStore`](crate::SnapshotStore),
            /// [`CheckpointStore`](crate::CheckpointStore) and
            /// [`Inspect`](crate::Inspect) (all provided; override for speed).
            /// [`EventStore`](crate::EventStore) names a store that has them all.
            ///
            /// Methods return `impl Future + Send` and `impl Stream + Send`, so calls are
            /// statically dispatched. `&S`, `Arc<S>` and `Box<S>` forward every method,
            /// overrides included. Where the store is chosen at run time, wrap it in a
            /// [`BoxEventStore`](crate::BoxEventStore).
            ///
            /// # Cancel safety
            /// Dropping an [`append`](EventLog::append) future before it completes leaves
            /// the append either fully done or not done at all; which one is unknown, so
            /// re-append the same event ids (idempotent) to find out. Dropping a read
            /// stream stops the read.
            ///
            /// # Examples
            /// ```
            /// use cqrs_core::{EventData, EventLog, ExpectedVersion, InMemoryEventStore, StreamId};
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
            pub trait EventLog: [Send + Sync];
            /// The object-safe twin of [`EventLog`], with boxed futures and streams.
            /// Every `EventLog` implements it; see [`BoxEventStore`](crate::BoxEventStore).
            pub trait DynEventLog: [Send + Sync + 'static];
            required {
                /// Appends `events` to `stream`, atomically, if the stream is at the
                /// `expected` version.
                ///
                /// If every event id of the batch is already in this stream, at
                /// consecutive versions in the same order, nothing is written and the
                /// original result is returned with
                /// [`duplicate`](AppendResult::duplicate) set (idempotent append; the
                /// version check is skipped).
                ///
                /// # Errors
                /// - [`Error::Conflict`](crate::Error::Conflict) if the stream is not at
                ///   `expected`, or if some but not all of the ids are already in the
                ///   stream;
                /// - [`Error::DuplicateEventId`](crate::Error::DuplicateEventId) if an id
                ///   is used in another stream;
                /// - [`Error::InvalidInput`](crate::Error::InvalidInput) for a batch that
                ///   [`validate_batch`] refuses;
                /// - [`Error::Store`](crate::Error::Store) if the backend fails.
                ///
                /// Nothing is written when any other error is returned. A store failure
                /// means the outcome is unknown: the batch may have been committed before
                /// the failure (a lost connection after the commit, a failed flush after
                /// sled applied the batch). Re-append the same event ids to find out: the
                /// idempotent append then returns the original result or writes the
                /// batch.
                fn append<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    expected: ExpectedVersion,
                    events: Vec<EventData>,
                ) -> future<'a> Result<AppendResult>;

                /// Reads the events of `stream` whose version is `from_version` or later,
                /// in version order. A stream with no events yields nothing (it is not an
                /// error).
                ///
                /// # Errors
                /// Items are [`Error::Store`](crate::Error::Store) if the backend fails
                /// and [`Error::Corrupt`](crate::Error::Corrupt) for a damaged record.
                fn read_stream<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    from_version: u64,
                ) -> stream<'a> Result<RecordedEvent>;

                /// Reads the global log: every event of every stream whose position is
                /// after `after`, in one total commit order, at most `limit` of them
                /// (`None`: to the current end).
                ///
                /// The stream ends at the end of what is committed and safe to read when
                /// the read starts; read again from the last position to get later
                /// events. Positions handed out here are valid cursors: resuming after
                /// any of them never skips nor repeats an event, even while writers
                /// commit concurrently.
                ///
                /// # Errors
                /// As for [`read_stream`](EventLog::read_stream).
                fn read_all(
                    &self,
                    after: Position,
                    limit: Option<u64>,
                ) -> stream<'_> Result<RecordedEvent>;
            }
            provided {
                /// Reads the global log as [`read_all`](EventLog::read_all) does, but
                /// hands out only the records whose stored type is one of `types`:
                /// [`LogItem::Event`] for each, in the same order, and
                /// [`LogItem::Passed`] where records of other types were passed over, so
                /// that a reader can move its cursor past them without receiving them.
                ///
                /// `limit` counts the records handed out. Every position in the items
                /// is a valid cursor for either read, and a record's (a passed one is
                /// the position of a record of another type); after the last item there
                /// is no record of `types` up to the end of what the read saw. A read
                /// that finds nothing new hands out nothing (not even a passed
                /// position), so an idle reader has no cursor to move.
                ///
                /// The default reads the whole log and filters it here, saying
                /// `Passed` after every 1,024 records of other types in a row and at the
                /// end of the read; a backend that can skip records without sending
                /// them overrides it, and says so with
                /// [`filters_types`](EventLog::filters_types).
                ///
                /// # Errors
                /// As for [`read_stream`](EventLog::read_stream).
                fn read_all_of_types<'a>(
                    &'a self,
                    after: Position,
                    limit: Option<u64>,
                    types: &'a [String],
                ) -> stream<'a> Result<LogItem> {
                    keep_types(self.read_all(after, None), limit, types)
                }

                /// Whether [`read_all_of_types`](EventLog::read_all_of_types) skips
                /// records in the backend, so that asking for fewer types costs less
                /// than reading everything. Projection runners filter by type only on
                /// such stores. The default is `false`.
                fn filters_types(&self) -> value<'_> bool {
                    false
                }

                /// A watcher that wakes when events are appended, for live readers.
                ///
                /// The default never wakes: readers fall back to polling. Backends that
                /// can notify (in-memory, sled, PostgreSQL `LISTEN`) override it.
                fn watch(&self) -> value<'_> LogWatcher {
                    LogWatcher::polling()
                }
            }
        }
    };
}
pub(crate) use event_log_table;

event_log_table!(define_store_trait!());

/// Checks an append batch: not empty, no event id twice, every event type 1 to 256
/// bytes without NUL and not starting with `$` (the store's own types, such as the
/// tombstone [`STREAM_DELETED`](crate::STREAM_DELETED)).
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
        validate_event_type(&event.event_type)?;
        if event.event_type.starts_with('$') {
            return Err(crate::Error::invalid_input(format!(
                "event types starting with '$' are the store's own (such as {:?}), got {:?}",
                crate::STREAM_DELETED,
                event.event_type
            )));
        }
    }
    Ok(())
}

/// An event type is 1 to 256 bytes without NUL.
pub(crate) fn validate_event_type(event_type: &str) -> Result<()> {
    if event_type.is_empty() || event_type.len() > 256 || event_type.contains('\0') {
        return Err(crate::Error::invalid_input(format!(
            "event type must be 1 to 256 bytes without NUL, got {event_type:?}"
        )));
    }
    Ok(())
}
