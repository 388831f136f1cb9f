//! Opening a store: checking the directory, taking sled's lock, the format marker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cqrs_core::LogNotifier;

use crate::chunk::Chunk;
use crate::config::{DamagedLog, Durability, SledConfig};
use crate::contain::guard;
use crate::error::OpenError;
use crate::flush::{Flusher, SyncFiles, Watermarks};
use crate::mark::{self, MarkWriter};
use crate::record::{be_u64, log_key};
use crate::store::{CHECKPOINTS_TREE, EVENTS_TREE, Heads, Inner, SNAPSHOTS_TREE, SledEventStore};

/// How often, and how patiently, opening retries a database that is locked.
const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
/// Key (in sled's default tree) of this crate's on-disk format number.
const FORMAT_KEY: &[u8] = b"cqrs-sled.format";
/// Format 2: log records of several events (ADR 0028). Format 1 (one event per record)
/// reads with the same code, so a format-1 store is marked 2 when it is opened: versions
/// that only know format 1 then refuse it instead of misreading its new records.
const FORMAT: &[u8] = &[2];
const FORMAT_ONE: &[u8] = &[1];

impl SledConfig {
    /// Opens the store.
    ///
    /// # Errors
    /// [`OpenError`](crate::OpenError), naming the path, if the directory is missing (and
    /// may not be created), is not a directory, is locked by another process, holds
    /// something else than a sled database, or cannot be read.
    pub fn open(self) -> crate::Result<crate::SledEventStore> {
        SledEventStore::open_with(self)
    }
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
            source: crate::error::SledError(e).into(),
        };
        match db.get(FORMAT_KEY).map_err(io)? {
            Some(format) if &*format == FORMAT => {}
            Some(format) if &*format != FORMAT_ONE => {
                return Err(OpenError::Corrupt {
                    path: shown,
                    reason: format!("unknown store format {:?}", &*format),
                });
            }
            Some(_) | None => {
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
            Some((key, value)) => {
                let first = be_u64(&key[1..]).ok_or_else(|| OpenError::Corrupt {
                    path: shown.clone(),
                    reason: "a log key is not 9 bytes".into(),
                })?;
                match Chunk::open(&value, first, None) {
                    Ok(chunk) => chunk.last_position(),
                    // Reads report the damaged record; new records go after its key. (With
                    // a mark, a damaged last record is a damaged marked one: refused below.)
                    Err(e) => {
                        tracing::warn!(error = %e, "the last log record is damaged");
                        first
                    }
                }
            }
            None => 0,
        };
        let (damage, mark) = match &config.path {
            Some(path) => check_mark(path, &events, last, config.damaged_log)?,
            None => (None, None),
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
                Flusher::start(db.clone(), marks.clone(), sync, mark.clone()).map_err(|e| {
                    OpenError::Io {
                        path: shown.clone(),
                        source: e.into(),
                    }
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
                mark,
                damage,
            }),
        })
    }
}

/// The store's damage (with [`DamagedLog::Inspect`]) and its mark writer.
type MarkCheck = (Option<(String, String)>, Option<Arc<MarkWriter>>);

/// Compares the log as sled recovered it (ending at `last`) with the store's mark of its
/// durable end, and acts on a difference as `choice` says.
fn check_mark(
    path: &Path,
    events: &sled::Tree,
    last: u64,
    choice: DamagedLog,
) -> crate::Result<MarkCheck> {
    let shown = path.to_owned();
    let recorded = mark::read(path).map_err(|e| OpenError::Io {
        path: shown.clone(),
        source: e.into(),
    })?;
    let written = match &recorded {
        Some(Ok(recorded)) => recorded.position,
        _ => 0,
    };
    // What is wrong, as the open error and as the (location, reason) of `Error::Corrupt`.
    let problem: Option<(OpenError, String, String)> = match recorded {
        // A new store, or one written before marks existed: nothing to compare with.
        None => None,
        Some(Err(reason)) => Some((
            OpenError::Corrupt {
                path: shown.clone(),
                reason: format!("its mark of the durable end of the log is damaged: {reason}"),
            },
            format!("the mark file {}", mark::MARK_FILE),
            format!("damaged ({reason}): whether the log lost events is unknown"),
        )),
        Some(Ok(recorded)) if last < recorded.position => Some((
            OpenError::LostEvents {
                path: shown.clone(),
                durable: recorded.position,
                found: last,
            },
            format!("log positions {}..={}", last + 1, recorded.position),
            format!(
                "lost: sled's recovery dropped the end of a damaged log                  (positions up to {} were durable)",
                recorded.position
            ),
        )),
        Some(Ok(recorded)) => {
            let position = recorded.position;
            let record = guard(|| crate::store::record_holding(events, position));
            let differs = match record {
                // A damaged record reads as another one; a record that ends before the
                // marked position means the marked one is missing.
                Ok(Some((first, bytes))) => match Chunk::open(&bytes, first, None) {
                    Ok(chunk) if chunk.last_position() < position => Some("is missing"),
                    _ => (mark::fingerprint(&bytes) != recorded.record)
                        .then_some("is not the record that was durable there"),
                },
                Ok(None) => Some("is missing"),
                Err(_) => Some("cannot be read"),
            };
            differs.map(|what| {
                (
                    OpenError::Corrupt {
                        path: shown.clone(),
                        reason: format!(
                            "the log record at position {position}, the last one recorded                              as durable, {what}"
                        ),
                    },
                    format!("log position {position}"),
                    format!("{what}: the log may have lost or replaced events"),
                )
            })
        }
    };
    let writer = || Arc::new(MarkWriter::new(path.to_owned(), events.clone(), written));
    let Some((error, location, reason)) = problem else {
        return Ok((None, Some(writer())));
    };
    match choice {
        DamagedLog::Refuse => Err(error),
        DamagedLog::Inspect => {
            tracing::warn!(%error, "opening a damaged sled event store for inspection only");
            Ok((Some((location, reason)), None))
        }
        DamagedLog::Accept => {
            tracing::warn!(%error, "accepting the log of a damaged sled event store as it is");
            let writer = writer();
            writer.reset(last).map_err(|e| OpenError::Io {
                path: shown,
                source: e.into(),
            })?;
            Ok((None, Some(writer)))
        }
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
            reason: crate::error::SledError(e).to_string(),
        },
        other => OpenError::Io {
            path,
            source: crate::error::SledError(other).into(),
        },
    }
}
