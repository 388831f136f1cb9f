//! Group commit: one background thread flushes for every waiting appender.
//!
//! An appender commits its batch in memory, bumps `committed`, then asks the flusher to
//! make it durable and waits on a watch channel. The flusher takes every request that
//! arrived, reads `committed` *before* flushing (sled's flush covers everything committed
//! before it starts), flushes once, and publishes that position as durable: all the
//! appenders that committed meanwhile return together. While one flush runs, new commits
//! pile up for the next one, so the number of flushes per second stays bounded by the
//! disk, not by the number of writers.
//!
//! After publishing a flush, the flusher also records the new durable position in the
//! store's mark file (`mark.rs`), at most every `MARK_EVERY` and once more when it goes
//! idle: the appenders never wait for that write.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use cqrs_core::{Error, Result};
use tokio::sync::watch;

use crate::mark::{MARK_EVERY, MarkWriter};

/// What the flusher has achieved so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlushState {
    /// Every position up to this one is durable.
    pub(crate) durable: u64,
    /// The number of the last successful flush (see [`Watermarks::flushes`]).
    pub(crate) flushed: u64,
    /// How many flushes failed so far, and the last failure.
    pub(crate) failures: u64,
    pub(crate) last_error: Option<String>,
}

/// Positions shared by the writer, the flusher and the readers.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    /// The last position committed to sled (in memory).
    pub(crate) committed: AtomicU64,
    /// The last position readers of the log may see: durable ones with a flushing
    /// durability, committed ones with `Buffered`.
    pub(crate) visible: AtomicU64,
    /// A record large enough to become a sled blob file was committed since the last
    /// sync (only tracked in `Synced` mode).
    pub(crate) blob_pending: AtomicBool,
    /// How many flushes the flusher started: each takes the next number before it
    /// reads `committed`, so a flush numbered above the count read after a commit covers
    /// that commit (a truncation or restore, which hands out no position).
    pub(crate) flushes: AtomicU64,
    /// Lifecycle operations as a sequence lock: odd while one applies its transaction,
    /// bumped again when it is done. A stream reader that saw it move reads again.
    pub(crate) lifecycle: AtomicU64,
}

/// What the flusher does after sled's flush.
#[derive(Debug)]
pub(crate) struct SyncFiles {
    /// sled's data file, kept open to fsync it.
    pub(crate) data: File,
    /// sled's blob directory.
    pub(crate) blobs: PathBuf,
}

#[derive(Debug)]
pub(crate) struct Flusher {
    requests: Mutex<Option<mpsc::Sender<()>>>,
    state: watch::Receiver<FlushState>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    pub(crate) fn start(
        db: sled::Db,
        marks: Arc<Watermarks>,
        sync: Option<SyncFiles>,
        mark: Option<Arc<MarkWriter>>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let (state_tx, state_rx) = watch::channel(FlushState {
            durable: marks.committed.load(Ordering::Acquire),
            ..FlushState::default()
        });
        let thread = std::thread::Builder::new()
            .name("cqrs-sled-flush".into())
            .spawn(move || run(&db, &marks, sync.as_ref(), mark.as_deref(), &rx, &state_tx))
            .map_err(Error::store)?;
        Ok(Flusher {
            requests: Mutex::new(Some(tx)),
            state: state_rx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until `position` is durable.
    pub(crate) async fn wait_durable(&self, position: u64) -> Result<()> {
        let mut state = self.state.clone();
        let failures_before = {
            let s = state.borrow_and_update();
            if s.durable >= position {
                return Ok(());
            }
            s.failures
        };
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            match requests.as_ref().map(|tx| tx.send(())) {
                Some(Ok(())) => {}
                _ => return Err(Error::store("the sled flusher thread has stopped")),
            }
        }
        let outcome = state
            .wait_for(|s| s.durable >= position || s.failures > failures_before)
            .await
            .map_err(|_| Error::store("the sled flusher thread has stopped"))?;
        if outcome.durable >= position {
            Ok(())
        } else {
            Err(Error::store(format!(
                "flushing to disk failed; the append may or may not be durable: {}",
                outcome.last_error.as_deref().unwrap_or("unknown error")
            )))
        }
    }

    /// Waits until a flush that started after this call made everything committed
    /// before it durable (for writes that hand out no position).
    pub(crate) async fn wait_flushed(&self, marks: &Watermarks) -> Result<()> {
        let mut state = self.state.clone();
        let failures_before = state.borrow_and_update().failures;
        let started = marks.flushes.load(Ordering::Acquire);
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            match requests.as_ref().map(|tx| tx.send(())) {
                Some(Ok(())) => {}
                _ => return Err(Error::store("the sled flusher thread has stopped")),
            }
        }
        let outcome = state
            .wait_for(|s| s.flushed > started || s.failures > failures_before)
            .await
            .map_err(|_| Error::store("the sled flusher thread has stopped"))?;
        if outcome.flushed > started {
            Ok(())
        } else {
            Err(Error::store(format!(
                "flushing to disk failed; the change may or may not be durable: {}",
                outcome.last_error.as_deref().unwrap_or("unknown error")
            )))
        }
    }

    /// Stops the thread and waits for it (it holds the database open).
    pub(crate) fn stop(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the sled flusher thread panicked");
        }
    }
}

fn run(
    db: &sled::Db,
    marks: &Watermarks,
    sync: Option<&SyncFiles>,
    mark: Option<&MarkWriter>,
    requests: &mpsc::Receiver<()>,
    state: &watch::Sender<FlushState>,
) {
    // The durable position not yet in the mark file, and when the mark was last written.
    let mut unmarked: Option<u64> = None;
    let mut marked_at: Option<Instant> = None;
    loop {
        let request = match (unmarked, marked_at) {
            // The mark is behind: wait no longer than until it is due.
            (Some(_), Some(at)) => requests.recv_timeout(MARK_EVERY.saturating_sub(at.elapsed())),
            (Some(_), None) => Err(mpsc::RecvTimeoutError::Timeout),
            (None, _) => requests
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match request {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                write_mark(mark, &mut unmarked, &mut marked_at);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                write_mark(mark, &mut unmarked, &mut marked_at);
                return;
            }
        }
        // Coalesce every request that is already queued: one flush serves them all.
        while requests.try_recv().is_ok() {}
        let number = marks.flushes.fetch_add(1, Ordering::AcqRel) + 1;
        let target = marks.committed.load(Ordering::Acquire);
        match flush(db, marks, sync) {
            Ok(()) => {
                marks.visible.fetch_max(target, Ordering::AcqRel);
                state.send_modify(|s| {
                    s.durable = s.durable.max(target);
                    s.flushed = s.flushed.max(number);
                });
                if mark.is_some() {
                    unmarked = Some(unmarked.map_or(target, |u| u.max(target)));
                }
                if marked_at.is_none_or(|at| at.elapsed() >= MARK_EVERY) {
                    write_mark(mark, &mut unmarked, &mut marked_at);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "flushing the sled event store failed");
                state.send_modify(|s| {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                });
            }
        }
    }
}

/// Records the durable position in the mark file, if one is waiting. A failure is only
/// logged: the mark is a lower bound, and the next write brings it up to date.
fn write_mark(mark: Option<&MarkWriter>, unmarked: &mut Option<u64>, at: &mut Option<Instant>) {
    if let (Some(mark), Some(position)) = (mark, unmarked.take()) {
        if let Err(e) = mark.record(position) {
            tracing::warn!(error = %e, "cannot record the durable mark of the sled event store");
        }
        *at = Some(Instant::now());
    }
}

fn flush(db: &sled::Db, marks: &Watermarks, sync: Option<&SyncFiles>) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    if let Some(sync) = sync {
        let blobs = marks.blob_pending.swap(false, Ordering::AcqRel);
        sync.data.sync_all()?;
        if blobs {
            // sled writes blob files without syncing them: sync them all (rare: only
            // batches with events above ~128 KiB get here) and the directory.
            for entry in std::fs::read_dir(&sync.blobs)? {
                match File::open(entry?.path()) {
                    Ok(file) => file.sync_all()?,
                    // Removed by sled's blob collection meanwhile: nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            File::open(&sync.blobs)?.sync_all()?;
        }
    }
    Ok(())
}
