//! Inspection: counts and listings for operations tools, with provided bodies.

use futures::StreamExt;
use uuid::Uuid;

use crate::{EventLog, Position, RecordedEvent, Result, StreamId};

/// A stream and its current version, as listed by [`Inspect::list_streams`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamId,
    /// Its current version (the number of events in it).
    pub version: u64,
}

/// Store-wide counts, as reported by [`Inspect::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Streams with at least one event.
    pub streams: u64,
    /// Events in the global log.
    pub events: u64,
    /// Streams with a stored snapshot; `None` when the store does not report it (the
    /// provided [`Inspect::stats`] knows nothing of snapshots).
    pub snapshots: Option<u64>,
}

/// The table of [`Inspect`], read by the macros of `crate::forward`.
macro_rules! inspect_table {
    ($callback:ident!($($args:tt)*)) => {
        $callback! {
            ($($args)*)
            /// Inspection of a log: finding an event, counting, listing streams. Every
            /// method has a body built on [`EventLog`] reads; a backend with an index
            /// overrides the ones it can answer faster (the in-memory, sled and
            /// PostgreSQL stores override them all). A log-only backend opts in with an
            /// empty `impl Inspect for MyStore {}`.
            ///
            /// The command layer uses [`find_event`](Inspect::find_event) to recognise a
            /// command that was already applied; the operations tools use the rest.
            pub trait Inspect: [EventLog];
            /// The object-safe twin of [`Inspect`].
            pub trait DynInspect: [crate::DynEventLog];
            required {}
            provided {
                /// Finds the event with id `event_id` in `stream`, if there is one.
                ///
                /// The default reads the stream.
                ///
                /// # Errors
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn find_event<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    event_id: Uuid,
                ) -> future<'a> Result<Option<RecordedEvent>> {
                    async move {
                        let mut events = std::pin::pin!(self.read_stream(stream, 1));
                        while let Some(event) = events.next().await {
                            let event = event?;
                            if event.event_id == event_id {
                                return Ok(Some(event));
                            }
                        }
                        Ok(None)
                    }
                }

                /// Counts the events in the global log after `after` (for progress
                /// reports and lag).
                ///
                /// The default reads the log.
                ///
                /// # Errors
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn count_events(&self, after: Position) -> future<'_> Result<u64> {
                    async move {
                        let mut log = std::pin::pin!(self.read_all(after, None));
                        let mut count = 0;
                        while let Some(event) = log.next().await {
                            event?;
                            count += 1;
                        }
                        Ok(count)
                    }
                }

                /// Counts the events in the global log after `after` whose stored type
                /// is one of `types`: the total of a
                /// [`read_all_of_types`](EventLog::read_all_of_types) (for the progress
                /// and lag of projections that read only their types).
                ///
                /// The default reads the log.
                ///
                /// # Errors
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn count_events_of_types<'a>(
                    &'a self,
                    after: Position,
                    types: &'a [String],
                ) -> future<'a> Result<u64> {
                    async move {
                        let mut log = std::pin::pin!(self.read_all_of_types(after, None, types));
                        let mut count = 0;
                        while let Some(item) = log.next().await {
                            if let crate::LogItem::Event(_) = item? {
                                count += 1;
                            }
                        }
                        Ok(count)
                    }
                }

                /// Every stream with events, with its current version, in no particular
                /// order (for operations tools: snapshot everything, inspect).
                ///
                /// The default scans the global log once and keeps one entry per stream
                /// in memory; backends with a stream index override it.
                ///
                /// # Errors
                /// Items are [`Error::Store`](crate::Error::Store) if the backend fails.
                fn list_streams(&self) -> stream<'_> Result<StreamInfo> {
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

                /// Counts streams and events, and snapshots where the store knows them.
                ///
                /// The default counts from [`list_streams`](Inspect::list_streams) and
                /// [`count_events`](Inspect::count_events) and reports no snapshot count;
                /// backends override it with cheaper queries.
                ///
                /// # Errors
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn stats(&self) -> future<'_> Result<StoreStats> {
                    async move {
                        let events = self.count_events(Position::START).await?;
                        let mut streams = std::pin::pin!(self.list_streams());
                        let mut count = 0;
                        while let Some(info) = streams.next().await {
                            info?;
                            count += 1;
                        }
                        Ok(StoreStats { streams: count, events, snapshots: None })
                    }
                }
            }
        }
    };
}
pub(crate) use inspect_table;

inspect_table!(define_store_trait!());
