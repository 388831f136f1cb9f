//! The sled event store.

use std::collections::HashMap;
use std::fmt;
use std::future::ready;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use cqrs_core::{
    AppendResult, Error, EventData, EventStore, ExpectedVersion, LogNotifier, LogWatcher, Position,
    RecordedEvent, Result, SnapshotRecord, StoreStats, StreamId, StreamInfo, validate_batch,
    validate_checkpoint_name,
};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use uuid::Uuid;

use crate::config::{Durability, SledConfig};
use crate::error::OpenError;
use crate::flush::{Flusher, SyncFiles, Watermarks};
use crate::record::{self, be_u64, decode, decode_header, encode, id_key, log_key, stream_key};

/// Records a reader takes from sled per step: reads never hold a whole stream or log.
const READ_CHUNK: usize = 256;
/// Records at least this large may become sled blob files (sled's threshold is a quarter
/// of its 512 KiB segment, minus headers), which `Synced` must fsync separately.
const BLOB_HINT: usize = 96 * 1024;

pub(crate) const EVENTS_TREE: &str = "cqrs.events";
pub(crate) const SNAPSHOTS_TREE: &str = "cqrs.snapshots";
pub(crate) const CHECKPOINTS_TREE: &str = "cqrs.checkpoints";
/// How often, and how patiently, opening retries a database that is locked.
const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
/// Key (in sled's default tree) of this crate's on-disk format number.
const FORMAT_KEY: &[u8] = b"cqrs-sled.format";
const FORMAT: &[u8] = &[1];

/// An [`EventStore`] in an embedded sled database: one process, durable, with group
/// commit.
///
/// Open it with [`SledEventStore::open`] (or [`SledConfig`] for options, or
/// [`SledEventStore::temporary`] in tests). Clones share the same database. Appends are
/// serialised by one writer that hands out gap-free global positions
/// (`Position::new(0, n)`, `n` from 1), so the log is in commit order by construction.
///
/// Reads run on the calling task (sled reads are memory or page-cache reads); an append
/// with a flushing [`Durability`] waits for the flusher thread without blocking the
/// runtime. Readers of the log ([`read_all`](EventStore::read_all),
/// [`count_events`](EventStore::count_events)) only see appends that are durable under
/// the configured durability, so a projection never gets ahead of what survives a crash.
///
/// # Cancel safety
/// An append is committed (atomically, all or nothing) before its future first waits;
/// dropping the future while it waits for the flush leaves the append committed, and
/// durable after the next flush. Re-append the same event ids to learn the outcome (the
/// idempotent path returns the original result). Dropping a read stream stops the read.
///
/// Dropping the last clone of a store joins its flusher thread (at most one flush).
///
/// # Errors after a commit
/// With a flushing durability, a flush that fails after the batch was committed makes
/// the append return [`Error::Store`] although the batch is in sled (and may still reach
/// the disk): the one case where an error does not mean that nothing was written, as for
/// a lost connection at commit time on a server database. Re-append the same ids to
/// find out.
///
/// # Examples
/// ```
/// use cqrs_core::{EventData, EventStore, ExpectedVersion, StreamId};
/// use cqrs_sled::SledEventStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SledEventStore::open(dir.path().join("events"))?;
/// let stream = StreamId::new("account", "42")?;
/// let done = store
///     .append(&stream, ExpectedVersion::NoStream, vec![EventData::new("Opened", b"{}".to_vec())])
///     .await?;
/// assert_eq!(done.version, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SledEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// The log, stream index and id index (see `record.rs`).
    events: sled::Tree,
    snapshots: sled::Tree,
    pub(crate) checkpoints: sled::Tree,
    path: Option<PathBuf>,
    durability: Durability,
    /// The single writer: held while checking and committing one append. It guards a
    /// cache of stream heads (only this writer changes them, so a cached head is exact).
    writer: Mutex<Heads>,
    snapshot_writer: Mutex<()>,
    marks: Arc<Watermarks>,
    flusher: Option<Flusher>,
    notifier: LogNotifier,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(flusher) = &self.flusher {
            flusher.stop();
        }
    }
}

impl fmt::Debug for SledEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledEventStore")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .field(
                "committed",
                &self.inner.marks.committed.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is `()` or a cache that is updated only after a successful
    // commit, in one step: a panic elsewhere cannot leave it inconsistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stream heads recently appended to, so an append needs no index lookup for its
/// version. Bounded: cleared when it grows past `HEADS_CACHE` streams.
#[derive(Debug, Default)]
struct Heads(HashMap<StreamId, u64>);

const HEADS_CACHE: usize = 65_536;

pub(crate) fn store_error(e: sled::Error) -> Error {
    Error::store(e)
}

impl SledEventStore {
    /// Opens (or creates) the store in the directory `path` with the default options:
    /// [`Durability::Flushed`], a 32 MiB cache. A missing directory is created.
    ///
    /// # Errors
    /// [`OpenError`](crate::OpenError) naming the path: not a directory, locked by
    /// another process, not a sled database, or an I/O failure.
    pub fn open(path: impl AsRef<Path>) -> crate::Result<Self> {
        SledConfig::new(path).open()
    }

    /// A store in a temporary database, deleted when the last clone is dropped (tests).
    ///
    /// # Errors
    /// [`OpenError::Io`](crate::OpenError::Io) if the temporary database cannot be made.
    pub fn temporary() -> crate::Result<Self> {
        SledConfig::temporary().open()
    }

    pub(crate) fn open_with(config: SledConfig) -> crate::Result<Self> {
        let shown = config
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("<temporary>"));
        if let Some(path) = &config.path {
            check_directory(path, config.create_if_missing)?;
        }
        let mut sled_config = sled::Config::new()
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(config.flush_every_ms);
        sled_config = match &config.path {
            Some(path) => sled_config.path(path),
            None => sled_config.temporary(true),
        };
        let mut attempt = 0;
        let db = loop {
            attempt += 1;
            // sled 0.34 can panic on some damaged files instead of returning an error.
            match catch_unwind(AssertUnwindSafe(|| sled_config.open())) {
                Ok(Ok(db)) => break db,
                Ok(Err(e)) => match open_error(&shown, e) {
                    // A store of this process that was just dropped may still be closing
                    // (sled's background tasks hold the file for a moment): wait a little.
                    OpenError::Locked { .. } if attempt < LOCK_RETRIES => {
                        std::thread::sleep(LOCK_RETRY_DELAY);
                    }
                    e => return Err(e),
                },
                Err(_) => {
                    return Err(OpenError::NotADatabase {
                        path: shown,
                        reason: "sled could not read its files".into(),
                    });
                }
            }
        };
        let io = |e: sled::Error| OpenError::Io {
            path: shown.clone(),
            source: e.into(),
        };
        match db.get(FORMAT_KEY).map_err(io)? {
            Some(format) if &*format != FORMAT => {
                return Err(OpenError::Corrupt {
                    path: shown,
                    reason: format!("unknown store format {:?}", &*format),
                });
            }
            Some(_) => {}
            None => {
                db.insert(FORMAT_KEY, FORMAT).map_err(io)?;
            }
        }
        let events = db.open_tree(EVENTS_TREE).map_err(io)?;
        let snapshots = db.open_tree(SNAPSHOTS_TREE).map_err(io)?;
        let checkpoints = db.open_tree(CHECKPOINTS_TREE).map_err(io)?;
        let last = match events
            .range(log_key(0)..=log_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(io)?
        {
            Some((key, _)) => be_u64(&key[1..]).ok_or_else(|| OpenError::Corrupt {
                path: shown.clone(),
                reason: "a log key is not 9 bytes".into(),
            })?,
            None => 0,
        };
        let marks = Arc::new(Watermarks::default());
        marks.committed.store(last, Ordering::Release);
        marks.visible.store(last, Ordering::Release);
        let sync = match (&config.path, config.durability) {
            (Some(path), Durability::Synced) => Some(SyncFiles {
                data: std::fs::File::open(path.join("db")).map_err(|e| OpenError::Io {
                    path: shown.clone(),
                    source: e.into(),
                })?,
                blobs: path.join("blobs"),
            }),
            _ => None,
        };
        let flusher = match config.durability {
            Durability::Buffered => None,
            Durability::Flushed | Durability::Synced => Some(
                Flusher::start(db.clone(), marks.clone(), sync).map_err(|e| OpenError::Io {
                    path: shown.clone(),
                    source: e.into(),
                })?,
            ),
        };
        Ok(SledEventStore {
            inner: Arc::new(Inner {
                db,
                events,
                snapshots,
                checkpoints,
                path: config.path,
                durability: config.durability,
                writer: Mutex::new(Heads::default()),
                snapshot_writer: Mutex::new(()),
                marks,
                flusher,
                notifier: LogNotifier::new(),
            }),
        })
    }

    /// The database directory (`None` for a temporary store).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The durability of appends.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Flushes everything written so far (appends, snapshots, checkpoints, read models)
    /// to disk, whatever the durability. Blocks the calling thread until done.
    ///
    /// # Errors
    /// [`Error::Store`] if sled cannot write.
    pub fn flush(&self) -> Result<()> {
        self.inner.db.flush().map_err(store_error)?;
        let committed = self.inner.marks.committed.load(Ordering::Acquire);
        self.inner
            .marks
            .visible
            .fetch_max(committed, Ordering::AcqRel);
        Ok(())
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    pub(crate) fn checkpoints_tree(&self) -> &sled::Tree {
        &self.inner.checkpoints
    }

    /// Stores `bytes` as the snapshot record of `stream`, as they are, for tests of
    /// damaged records (a real snapshot record is the version, the schema version and the
    /// payload; fewer than 12 bytes cannot be one).
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails.
    #[cfg(feature = "fault-injection")]
    pub fn put_raw_snapshot(&self, stream: &StreamId, bytes: &[u8]) -> Result<()> {
        self.inner
            .snapshots
            .insert(record::bare_stream_key(stream), bytes)
            .map_err(store_error)?;
        Ok(())
    }

    /// The version of `stream`: the version in its last stream-index key.
    fn head(&self, stream: &StreamId) -> Result<u64> {
        let last = self
            .inner
            .events
            .range(stream_key(stream, 0)..=stream_key(stream, u64::MAX))
            .next_back()
            .transpose()
            .map_err(store_error)?;
        match last {
            None => Ok(0),
            Some((key, _)) => record::version_of_stream_key(&key)
                .ok_or_else(|| Error::corrupt(format!("stream {stream}"), "bad stream index key")),
        }
    }

    /// The record at `position`, undecoded.
    fn raw_record(&self, position: u64) -> Result<Option<sled::IVec>> {
        self.inner
            .events
            .get(log_key(position))
            .map_err(store_error)
    }

    /// Where an already stored event id is: its stream, version and position.
    fn locate(&self, event_id: Uuid) -> Result<Option<(StreamId, u64, u64)>> {
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
        let bytes = self.raw_record(position)?.ok_or_else(|| {
            Error::corrupt(location(), format!("log position {position} is missing"))
        })?;
        let (stream, version) = decode_header(&bytes)
            .map_err(|reason| Error::corrupt(format!("log position {position}"), reason))?;
        Ok(Some((stream, version, position)))
    }

    /// The idempotency check, exactly as the in-memory store does it.
    fn check_duplicates(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<Option<Result<AppendResult>>> {
        let mut found = Vec::with_capacity(events.len());
        for event in events {
            found.push(self.locate(event.event_id)?);
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
    fn commit(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<(AppendResult, bool)> {
        let inner = &*self.inner;
        let mut heads = lock(&inner.writer);
        if let Some(outcome) = self.check_duplicates(stream, expected, events)? {
            return outcome.map(|result| (result, false));
        }
        let actual = match heads.0.get(stream) {
            Some(&version) => version,
            None => self.head(stream)?,
        };
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
        for event in events {
            version += 1;
            position += 1;
            let bytes = encode(stream, version, event, recorded_at)?;
            large |= bytes.len() >= BLOB_HINT;
            let at = position.to_be_bytes();
            batch.insert(&log_key(position)[..], bytes);
            batch.insert(stream_key(stream, version), &at[..]);
            batch.insert(&id_key(event.event_id)[..], &at[..]);
        }
        // One batch on one tree: sled applies it atomically, also across a crash.
        inner.events.apply_batch(batch).map_err(store_error)?;
        if large {
            inner.marks.blob_pending.store(true, Ordering::Release);
        }
        inner.marks.committed.store(position, Ordering::Release);
        if heads.0.len() >= HEADS_CACHE {
            heads.0.clear();
        }
        heads.0.insert(stream.clone(), version);
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

    /// The first stream whose index keys are at or after `start`, its version, and the
    /// key just past its range.
    fn next_stream(&self, start: &[u8]) -> Result<Option<(StreamInfo, Vec<u8>)>> {
        let Some(first) = self
            .inner
            .events
            .range(start..&[record::STREAM + 1][..])
            .next()
            .transpose()
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let stream = record::stream_of_index_key(&first.0)
            .ok_or_else(|| Error::corrupt("the stream index", "a key does not name a stream"))?;
        let version = self.head(&stream)?;
        let mut next = stream_key(&stream, u64::MAX);
        next.push(0);
        Ok(Some((StreamInfo { stream, version }, next)))
    }

    /// Up to `READ_CHUNK` events of `stream` from `version` on, and where to go on.
    fn stream_chunk(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> (Vec<Result<RecordedEvent>>, Option<u64>) {
        let mut out = Vec::new();
        let mut next = None;
        let range = self
            .inner
            .events
            .range(stream_key(stream, from)..=stream_key(stream, u64::MAX));
        for item in range.take(READ_CHUNK) {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    out.push(Err(store_error(e)));
                    return (out, None);
                }
            };
            let Some(version) = record::version_of_stream_key(&key) else {
                out.push(Err(Error::corrupt(
                    format!("stream {stream}"),
                    "bad stream index key",
                )));
                return (out, None);
            };
            next = version.checked_add(1);
            out.push(self.event_at(stream, version, &value));
        }
        if out.len() < READ_CHUNK {
            next = None;
        }
        (out, next)
    }

    fn event_at(
        &self,
        stream: &StreamId,
        version: u64,
        index_value: &[u8],
    ) -> Result<RecordedEvent> {
        let location = || format!("stream {stream} version {version}");
        let position = be_u64(index_value)
            .ok_or_else(|| Error::corrupt(location(), "the stream index entry is not 8 bytes"))?;
        let bytes = self.raw_record(position)?.ok_or_else(|| {
            Error::corrupt(location(), format!("log position {position} is missing"))
        })?;
        decode(&bytes, position, Some((stream, version)), None)
    }

    /// Up to `READ_CHUNK` log records from position `from` to `end`, and where to go on.
    fn log_chunk(&self, from: u64, end: u64) -> (Vec<Result<RecordedEvent>>, Option<u64>) {
        let mut out = Vec::with_capacity(READ_CHUNK);
        let mut next = None;
        for item in self
            .inner
            .events
            .range(log_key(from)..=log_key(end))
            .take(READ_CHUNK)
        {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    out.push(Err(store_error(e)));
                    return (out, None);
                }
            };
            let Some(position) = be_u64(&key[1..]) else {
                out.push(Err(Error::corrupt("the log", "a log key is not 9 bytes")));
                return (out, None);
            };
            next = position.checked_add(1);
            let last = match out.last() {
                Some(Ok(record)) => Some(&record.stream),
                _ => None,
            };
            let record = decode(&value, position, None, last);
            out.push(record);
        }
        if out.len() < READ_CHUNK {
            next = None;
        }
        (out, next)
    }
}

fn check_directory(path: &Path, create: bool) -> crate::Result<()> {
    let io = |e: std::io::Error| OpenError::Io {
        path: path.to_owned(),
        source: e.into(),
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(OpenError::NotADirectory {
            path: path.to_owned(),
        }),
        Ok(_) => {
            let mut entries = std::fs::read_dir(path).map_err(io)?;
            let is_empty = entries.next().is_none();
            if !is_empty && !path.join("conf").is_file() {
                return Err(OpenError::NotADatabase {
                    path: path.to_owned(),
                    reason: "the directory is not empty and has no sled `conf` file".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if create {
                std::fs::create_dir_all(path).map_err(io)
            } else {
                Err(OpenError::Missing {
                    path: path.to_owned(),
                })
            }
        }
        Err(e) => Err(io(e)),
    }
}

fn open_error(path: &Path, e: sled::Error) -> OpenError {
    let path = path.to_owned();
    match e {
        // sled reports a held lock as an `Other` I/O error with this text; there is no
        // other way to tell it apart.
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            OpenError::Locked {
                path,
                source: io.into(),
            }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => OpenError::NotADatabase {
            path,
            reason: e.to_string(),
        },
        other => OpenError::Io {
            path,
            source: other.into(),
        },
    }
}

fn encode_position(position: Position) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&position.commit.to_be_bytes());
    out[8..].copy_from_slice(&position.sequence.to_be_bytes());
    out
}

pub(crate) fn decode_position(bytes: &[u8], name: &str) -> Result<Position> {
    match (
        bytes.get(..8).and_then(be_u64),
        bytes.get(8..).and_then(be_u64),
    ) {
        (Some(commit), Some(sequence)) => Ok(Position::new(commit, sequence)),
        _ => Err(Error::corrupt(
            format!("checkpoint {name:?}"),
            format!("{} bytes instead of 16", bytes.len()),
        )),
    }
}

pub(crate) fn position_bytes(position: Position) -> [u8; 16] {
    encode_position(position)
}

impl EventStore for SledEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        let (result, written) = self.commit(stream, expected, &events)?;
        if let Some(flusher) = &self.inner.flusher {
            flusher.wait_durable(result.position.sequence).await?;
        }
        if written {
            self.inner.notifier.notify();
        }
        Ok(result)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        stream::unfold(Some(from_version.max(1)), move |next| {
            let step = next.map(|from| {
                let (chunk, next) = self.stream_chunk(stream, from);
                (stream::iter(chunk), next)
            });
            ready(step.filter(|(chunk, _)| chunk.size_hint().0 > 0))
        })
        .flatten()
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        // Positions with a commit part come from another store and sort after all of ours.
        let first = (after.commit == 0).then(|| after.sequence.saturating_add(1));
        // End at the end of the visible log as it is now, so a reader under constant
        // writes ends.
        let visible = self.inner.marks.visible.load(Ordering::Acquire);
        let end = limit.map_or(visible, |l| visible.min(after.sequence.saturating_add(l)));
        let first = first.filter(|&f| f <= end && limit != Some(0));
        stream::unfold(first, move |next| {
            let step = next.map(|from| {
                let (chunk, next) = self.log_chunk(from, end);
                (stream::iter(chunk), next)
            });
            ready(step.filter(|(chunk, _)| chunk.size_hint().0 > 0))
        })
        .flatten()
    }

    async fn find_event(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let Some((found, _, position)) = self.locate(event_id)? else {
            return Ok(None);
        };
        if found != *stream {
            return Ok(None);
        }
        let bytes = self.raw_record(position)?.ok_or_else(|| {
            Error::corrupt(format!("log position {position}"), "the record is missing")
        })?;
        decode(&bytes, position, None, None).map(Some)
    }

    async fn count_events(&self, after: Position) -> Result<u64> {
        let visible = self.inner.marks.visible.load(Ordering::Acquire);
        Ok(if after.commit > 0 {
            0
        } else {
            visible.saturating_sub(after.sequence)
        })
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotRecord>> {
        let key = record::bare_stream_key(stream);
        let Some(bytes) = self.inner.snapshots.get(key).map_err(store_error)? else {
            return Ok(None);
        };
        match (bytes.get(..8).and_then(be_u64), bytes.get(8..12)) {
            (Some(version), Some(schema)) => Ok(Some(SnapshotRecord {
                version,
                schema_version: u32::from_be_bytes([schema[0], schema[1], schema[2], schema[3]]),
                payload: bytes[12..].to_vec(),
            })),
            _ => {
                // A snapshot is only an optimisation: a damaged one is ignored, not fatal.
                tracing::warn!(%stream, "ignoring a damaged snapshot record");
                Ok(None)
            }
        }
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: SnapshotRecord) -> Result<()> {
        let key = record::bare_stream_key(stream);
        let _writer = lock(&self.inner.snapshot_writer);
        // A later snapshot stays, unless it is ahead of the stream (then it is junk).
        if let Some(existing) = self.inner.snapshots.get(&key).map_err(store_error)?
            && let Some(existing) = existing.get(..8).and_then(be_u64)
            && existing > snapshot.version
            && existing <= self.head(stream)?
        {
            return Ok(());
        }
        let mut value = Vec::with_capacity(12 + snapshot.payload.len());
        value.extend_from_slice(&snapshot.version.to_be_bytes());
        value.extend_from_slice(&snapshot.schema_version.to_be_bytes());
        value.extend_from_slice(&snapshot.payload);
        self.inner
            .snapshots
            .insert(key, value)
            .map_err(store_error)?;
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_checkpoint_name(name)?;
        self.inner
            .checkpoints
            .get(name.as_bytes())
            .map_err(store_error)?
            .map(|bytes| decode_position(&bytes, name))
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_checkpoint_name(name)?;
        self.inner
            .checkpoints
            .insert(name.as_bytes(), &encode_position(position)[..])
            .map_err(store_error)?;
        Ok(())
    }

    fn watch(&self) -> LogWatcher {
        self.inner.notifier.watcher()
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        // Walk the stream index one stream at a time: find the next stream's first key,
        // read its head, then jump past its key range. Memory stays bounded.
        stream::unfold(Some(vec![record::STREAM]), move |start| {
            ready(start.map(|start| match self.next_stream(&start) {
                Ok(Some((info, next))) => (Ok(info), Some(next)),
                Ok(None) => (Err(None), None),
                Err(e) => (Err(Some(e)), None),
            }))
        })
        .filter_map(|item| {
            ready(match item {
                Ok(info) => Some(Ok(info)),
                Err(e) => e.map(Err),
            })
        })
    }

    async fn stats(&self) -> Result<StoreStats> {
        let streams = self
            .list_streams()
            .try_fold(0u64, |n, _| ready(Ok(n + 1)))
            .await?;
        Ok(StoreStats {
            streams,
            events: self.count_events(Position::START).await?,
            snapshots: u64::try_from(self.inner.snapshots.len()).unwrap_or(u64::MAX),
        })
    }
}
