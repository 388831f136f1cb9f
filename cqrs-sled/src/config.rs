//! Opening options.

use std::path::{Path, PathBuf};

/// When an append returns, relative to the disk.
///
/// What sled 0.34 does on Linux (read from its source, `pagecache/iobuf.rs`): a flush
/// writes the log buffers with `pwrite` and then calls `sync_file_range(WAIT_BEFORE |
/// WRITE | WAIT_AFTER)` on the written range. That waits until the data pages reach the
/// device, but it is not `fsync`/`fdatasync`: it does not write the file's metadata
/// (such as its size after the log grew) and does not ask the device to empty its
/// volatile write cache. Values above sled's blob threshold (about 128 KiB) go to files
/// under `blobs/` that sled writes without any sync. sled's background thread calls
/// `fsync` on the data file after its periodic flush (every 500 ms by default).
///
/// So: [`Flushed`](Durability::Flushed) survives a crash of the process (and the
/// operating system's page cache is written promptly), but an acknowledged append can be
/// lost on power loss or a kernel crash. [`Synced`](Durability::Synced) adds an `fsync`
/// of the data file (and of blob files when the batch had large events), which is what
/// protects against power loss on a disk that honours cache flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// An append returns once sled's flush of its bytes is done (see above: safe against
    /// a process crash). Concurrent appends share one flush (group commit). The default.
    #[default]
    Flushed,
    /// As [`Flushed`](Durability::Flushed), followed by an `fsync` of sled's files before
    /// the append returns (safe against power loss), still shared by concurrent appends.
    Synced,
    /// An append returns once its batch is in sled's memory; sled writes it within its
    /// flush interval. A crash can lose the last appends (never half a batch).
    Buffered,
}

/// What opening does when the store's log is not what it recorded as durable: sled's
/// recovery dropped the end of a damaged log ([`OpenError::LostEvents`]), or the mark
/// that records the durable end is itself damaged or names another record
/// ([`OpenError::Corrupt`]). See ADR 0018 and `docs/06-operations.md`, "Restoring a
/// damaged store".
///
/// [`OpenError::LostEvents`]: crate::OpenError::LostEvents
/// [`OpenError::Corrupt`]: crate::OpenError::Corrupt
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DamagedLog {
    /// Do not open: the error names what is missing. The default: a store that serves a
    /// shorter history answers with old balances and would hand out used positions again.
    #[default]
    Refuse,
    /// Open for inspection and export only: appends, snapshots and checkpoints are
    /// refused with [`Error::Corrupt`](cqrs_core::Error::Corrupt), a read of the log to
    /// its end ends with that error (so `verify` reports the loss and a projection stops
    /// there), and the mark is left as it is, so the next ordinary open refuses again.
    /// [`SledEventStore::damage`](crate::SledEventStore::damage) says what was found.
    Inspect,
    /// Accept the log as it is as the store's history (there is no backup to restore):
    /// the mark is rewritten to the log's end and the store opens normally. Read models
    /// built from the lost events should then be rebuilt (`replay --all`).
    Accept,
}

/// How to open a [`SledEventStore`](crate::SledEventStore).
///
/// # Examples
/// ```
/// use cqrs_sled::{Durability, SledConfig};
///
/// let dir = tempfile::tempdir()?;
/// let store = SledConfig::new(dir.path().join("events"))
///     .durability(Durability::Synced)
///     .cache_capacity(16 << 20)
///     .open()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SledConfig {
    pub(crate) path: Option<PathBuf>,
    pub(crate) durability: Durability,
    pub(crate) cache_capacity: u64,
    pub(crate) create_if_missing: bool,
    pub(crate) flush_every_ms: Option<u64>,
    pub(crate) damaged_log: DamagedLog,
    pub(crate) compress_records: bool,
}

impl SledConfig {
    /// The default page-cache budget: 32 MiB (sled's own default is 1 GiB).
    pub const DEFAULT_CACHE_CAPACITY: u64 = 32 << 20;

    /// Options for a database in the directory `path`, with [`Durability::Flushed`], a
    /// 32 MiB cache, and the directory created if it is missing.
    pub fn new(path: impl AsRef<Path>) -> Self {
        SledConfig {
            path: Some(path.as_ref().to_owned()),
            ..Self::temporary()
        }
    }

    /// Options for a temporary database, deleted when the store is dropped (for tests).
    pub fn temporary() -> Self {
        SledConfig {
            path: None,
            durability: Durability::Flushed,
            cache_capacity: Self::DEFAULT_CACHE_CAPACITY,
            create_if_missing: true,
            flush_every_ms: Some(500),
            damaged_log: DamagedLog::Refuse,
            compress_records: true,
        }
    }

    /// Sets the durability of appends.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets sled's page-cache budget in bytes. It bounds the memory of long reads and
    /// replays; sled's own default (1 GiB) is far more than an event store needs.
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Whether a missing directory is created (the default) or an
    /// [`OpenError::Missing`](crate::OpenError::Missing).
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// How often sled's background thread flushes (and fsyncs), in milliseconds;
    /// `None` turns it off. Default 500. With [`Durability::Buffered`] this bounds how
    /// many recent appends a crash can lose.
    pub fn flush_every_ms(mut self, every: Option<u64>) -> Self {
        self.flush_every_ms = every;
        self
    }

    /// Whether log records are written compressed (LZ4, record format 4; the default) or
    /// not (format 3). A record is compressed only when its events take at least 512
    /// bytes and compressing makes it smaller, so a single small event is written as it
    /// is either way. Compressed records take fewer bytes in sled's pages, on disk and in
    /// memory while a replay reads them (ADR 0032, docs/performance.md); reading them
    /// costs the decompression, a fraction of the decoding.
    ///
    /// Reads accept every format whatever this says. Opening with compression on marks
    /// the store with format 4, which versions that cannot read compressed records refuse
    /// to open; a store opened with it off keeps its mark (so a store never marked 4 can
    /// still be opened by them).
    pub fn compress_records(mut self, compress: bool) -> Self {
        self.compress_records = compress;
        self
    }

    /// What to do when the log is shorter than what the store recorded as durable, or
    /// that record is damaged: [`DamagedLog::Refuse`] (the default) unless an operator
    /// is recovering the store.
    pub fn on_damaged_log(mut self, choice: DamagedLog) -> Self {
        self.damaged_log = choice;
        self
    }
}
