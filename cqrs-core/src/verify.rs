//! Walking a whole store to find damage: [`verify`].

use std::pin::pin;

use futures::StreamExt;

use crate::{Error, Inspect, Position, RecordedEvent, Result, SnapshotStore, StreamId};

/// At most this many problems are kept in a [`Verification`]; the rest are counted.
pub const MAX_REPORTED_PROBLEMS: usize = 1000;

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Records read from the global log, readable or not.
    pub log_records: u64,
    /// Streams listed by the store.
    pub streams: u64,
    /// Records read through the streams, readable or not.
    pub stream_records: u64,
    /// The problems found, in the order found, at most [`MAX_REPORTED_PROBLEMS`].
    pub problems: Vec<Problem>,
    /// How many problems were found beyond those kept in `problems`.
    pub more_problems: u64,
}

impl Verification {
    /// Whether nothing was found damaged.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems were found in all.
    pub fn problem_count(&self) -> u64 {
        self.problems.len() as u64 + self.more_problems
    }

    /// Records a problem found by a check of its own (kept if fewer than
    /// [`MAX_REPORTED_PROBLEMS`] are, counted otherwise).
    pub fn add(&mut self, problem: Problem) {
        self.found(problem);
    }

    fn found(&mut self, problem: Problem) {
        if self.problems.len() < MAX_REPORTED_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.more_problems += 1;
        }
    }
}

/// One damaged thing [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A record cannot be read: a checksum mismatch, a record that does not decode, a
    /// missing record an index points at (the error names it).
    Unreadable {
        /// Where: the record's location as the store's error names it.
        location: String,
        /// The store's error.
        error: String,
    },
    /// The global log went backwards or repeated a position.
    LogOrder {
        /// The position read before.
        previous: Position,
        /// The position read after it.
        position: Position,
    },
    /// A stream skipped or repeated a version, or ended before its reported version.
    StreamGap {
        /// The stream.
        stream: StreamId,
        /// The version expected next.
        expected: u64,
        /// The version found (`None`: the stream ended).
        found: Option<u64>,
    },
    /// The counts disagree: the log, the store's own count of it, and the streams must
    /// hold the same number of events.
    CountMismatch {
        /// Records in the global log.
        log: u64,
        /// What `count_events` reports.
        counted: u64,
        /// Records in all the streams.
        streams: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unreadable { location, error } => write!(f, "unreadable: {location}: {error}"),
            Problem::LogOrder { previous, position } => {
                write!(f, "log out of order: position {position} after {previous}")
            }
            Problem::StreamGap {
                stream,
                expected,
                found: Some(found),
            } => write!(
                f,
                "stream {stream}: version {found} where {expected} was expected"
            ),
            Problem::StreamGap {
                stream,
                expected,
                found: None,
            } => write!(f, "stream {stream}: ends before version {expected}"),
            Problem::CountMismatch {
                log,
                counted,
                streams,
            } => write!(
                f,
                "counts disagree: {log} records in the log, {counted} counted, {streams} in the streams"
            ),
        }
    }
}

/// Reads the whole store and reports what is damaged: every record of the global log
/// (each must be readable; positions must increase), every stream (versions `1..=n`
/// without a gap, each record readable; a deleted stream starts at its tombstone, a
/// truncated one at the first event its snapshot does not cover), and the counts (the log, the store's
/// `count_events` and the streams must agree). Memory stays bounded: records are
/// streamed, and at most [`MAX_REPORTED_PROBLEMS`] problems are kept.
///
/// `on_progress` gets the number of records read so far (log and streams), to show
/// progress on a large store.
///
/// A store that keeps checksums (sled) finds flipped bytes this way; one that does not
/// finds what its decoder refuses.
///
/// # Errors
/// A failure that is not about a record (the store is unreachable, an I/O error):
/// verification cannot go on, so it is an error, not a problem.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, InMemoryEventStore, StreamId, verify};
///
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new("account", "a")?;
/// store
///     .append(&stream, ExpectedVersion::Any, vec![EventData::new("Opened", b"{}".to_vec())])
///     .await?;
/// let found = verify(&store, |_| {}).await?;
/// assert!(found.is_intact());
/// assert_eq!((found.log_records, found.streams), (1, 1));
/// # Ok(())
/// # }
/// ```
pub async fn verify<S: Inspect + SnapshotStore>(
    store: &S,
    mut on_progress: impl FnMut(u64),
) -> Result<Verification> {
    let mut found = Verification::default();
    let mut previous: Option<Position> = None;
    let mut log = pin!(store.read_all(Position::START, None));
    while let Some(item) = log.next().await {
        found.log_records += 1;
        match item {
            Ok(record) => {
                if let Some(previous) = previous
                    && record.position <= previous
                {
                    found.found(Problem::LogOrder {
                        previous,
                        position: record.position,
                    });
                }
                previous = Some(record.position);
            }
            Err(e) => found.found(unreadable(e)?),
        }
        on_progress(found.log_records);
    }
    let mut streams = pin!(store.list_streams());
    while let Some(info) = streams.next().await {
        let info = info?;
        found.streams += 1;
        let mut expected = 1;
        let mut records = pin!(store.read_stream(&info.stream, 1));
        while let Some(item) = records.next().await {
            found.stream_records += 1;
            match item {
                Ok(record) => {
                    let first = found_first(&mut expected, &record);
                    if first && record.version > 1 && !retired(store, &record).await? {
                        found.found(Problem::StreamGap {
                            stream: info.stream.clone(),
                            expected: 1,
                            found: Some(record.version),
                        });
                    } else if !first && record.version != expected {
                        found.found(Problem::StreamGap {
                            stream: info.stream.clone(),
                            expected,
                            found: Some(record.version),
                        });
                    }
                    expected = record.version + 1;
                }
                // The record is unreadable, but its slot is there: go on counting.
                Err(e) => {
                    found.found(unreadable(e)?);
                    expected += 1;
                }
            }
            on_progress(found.log_records + found.stream_records);
        }
        if expected <= info.version {
            found.found(Problem::StreamGap {
                stream: info.stream.clone(),
                expected,
                found: None,
            });
        }
    }
    let counted = store.count_events(Position::START).await?;
    if found.log_records != counted || found.log_records != found.stream_records {
        found.found(Problem::CountMismatch {
            log: found.log_records,
            counted,
            streams: found.stream_records,
        });
    }
    Ok(found)
}

/// Whether `record` is the first one read of its stream (`expected` is still 1, and
/// becomes the record's version: a retired stream starts later).
fn found_first(expected: &mut u64, record: &RecordedEvent) -> bool {
    let first = *expected == 1;
    if first {
        *expected = record.version;
    }
    first
}

/// Whether a stream whose first record is `first` (at a version above 1) was retired on
/// purpose: deleted (the record is its tombstone) or truncated (a snapshot covers the
/// events before it, ADR 0031). Otherwise its first events are missing.
async fn retired<S: SnapshotStore>(store: &S, first: &RecordedEvent) -> Result<bool> {
    if crate::StreamDeleted::is_tombstone(first) {
        return Ok(true);
    }
    let snapshot = store.load_snapshot(&first.stream).await?;
    Ok(snapshot.is_some_and(|s| s.version >= first.version))
}

/// A record error as a problem; any other error stops verification.
fn unreadable(e: Error) -> Result<Problem> {
    match &e {
        Error::Corrupt { location, .. } => Ok(Problem::Unreadable {
            location: location.clone(),
            error: e.to_string(),
        }),
        Error::Decode {
            stream, version, ..
        }
        | Error::UnknownEventType {
            stream, version, ..
        } => Ok(Problem::Unreadable {
            location: format!("stream {stream} version {version}"),
            error: e.to_string(),
        }),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        EventData, EventLog, ExpectedVersion, InMemoryEventStore, SnapshotRecord, SnapshotStore,
        StreamId, StreamLifecycle, verify,
    };

    fn events(n: usize) -> Vec<EventData> {
        (0..n)
            .map(|_| EventData::new("E", b"{}".to_vec()))
            .collect()
    }

    /// A deleted stream (its tombstone alone) and a truncated one (from its snapshot's
    /// event on) are intact; a stream restored without the snapshot that covered its
    /// start is a gap.
    #[tokio::test]
    async fn retired_streams_are_intact_and_a_start_without_snapshot_is_a_gap() {
        let store = InMemoryEventStore::new();
        let (deleted, cut) = (
            StreamId::new("t", "deleted").unwrap(),
            StreamId::new("t", "cut").unwrap(),
        );
        store
            .append(&deleted, ExpectedVersion::NoStream, events(3))
            .await
            .unwrap();
        store
            .append(&cut, ExpectedVersion::NoStream, events(5))
            .await
            .unwrap();
        store
            .delete_stream(&deleted, ExpectedVersion::Exact(3))
            .await
            .unwrap();
        let snapshot = SnapshotRecord {
            version: 4,
            schema_version: 1,
            payload: b"{}".to_vec(),
        };
        store.save_snapshot(&cut, snapshot).await.unwrap();
        assert_eq!(store.truncate_stream(&cut, 4).await.unwrap(), 3);
        let found = verify(&store, |_| {}).await.unwrap();
        assert!(found.is_intact(), "{:?}", found.problems);

        // Records restored from version 3 on, with no snapshot: the start is missing.
        let (gone, orphan) = (
            StreamId::new("t", "gone").unwrap(),
            StreamId::new("t", "orphan").unwrap(),
        );
        store
            .append(&gone, ExpectedVersion::NoStream, events(4))
            .await
            .unwrap();
        let records: Vec<_> = {
            use futures::TryStreamExt;
            store.read_stream(&gone, 3).try_collect().await.unwrap()
        };
        store
            .delete_stream(&gone, ExpectedVersion::Exact(4))
            .await
            .unwrap();
        let moved = records.into_iter().map(|mut r| {
            r.stream = orphan.clone();
            r
        });
        store
            .restore_stream(&orphan, moved.collect())
            .await
            .unwrap();
        let found = verify(&store, |_| {}).await.unwrap();
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert!(matches!(
            &found.problems[0],
            crate::Problem::StreamGap { stream, expected: 1, found: Some(3) } if *stream == orphan
        ));
    }
}
