//! Opening a store: checking the directory, taking sled's lock, the format marker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cqrs_core::LogNotifier;
use uuid::Uuid;

use crate::chunk::Chunk;
use crate::config::{DamagedLog, Durability, SledConfig};
use crate::contain::guard;
use crate::error::OpenError;
use crate::flush::{Flusher, SyncFiles, Watermarks};
use crate::mark::{self, MarkWriter};
use crate::record::{be_u64, id_key, log_key};
use crate::store::{CHECKPOINTS_TREE, EVENTS_TREE, Heads, Inner, SNAPSHOTS_TREE, SledEventStore};

/// How often, and how patiently, opening retries a database that is locked.
const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
/// Key (in sled's default tree) of this crate's on-disk format number.
pub(crate) const FORMAT_KEY: &[u8] = b"cqrs-sled.format";
/// Format 2: log records of several events (ADR 0028). Format 1 (one event per record)
/// reads with the same code, so a format-1 store is marked 2 when it is opened: versions
/// that only know format 1 then refuse it instead of misreading its new records.
const FORMAT: &[u8] = &[2];
const FORMAT_ONE: &[u8] = &[1];
/// Format 3: format 2 whose log may have holes and tombstones (a stream was deleted,
/// truncated or restored; `lifecycle.rs`). The first such operation marks the store, in
/// its own transaction: versions that know only format 2 would count the holes as
/// events and read a tombstone's index entry as damage, so they refuse it instead.
pub(crate) const FORMAT_HOLES: &[u8] = &[3];
/// Format 4: format 3 whose log records may be compressed (record format 4, ADR 0032).
/// A store is marked when it is opened with compression on (before it writes such a
/// record): versions that cannot decompress would report every compressed record as
/// damaged, so they refuse it instead. Lifecycle operations keep this mark.
pub(crate) const FORMAT_PACKED: &[u8] = &[4];

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
        let marked = match db.get(FORMAT_KEY).map_err(io)? {
            Some(format) if [FORMAT, FORMAT_HOLES, FORMAT_PACKED].contains(&&*format) => {
                Some(format)
            }
            Some(format) if &*format != FORMAT_ONE => {
                return Err(OpenError::Corrupt {
                    path: shown,
                    reason: format!("unknown store format {:?}", &*format),
                });
            }
            Some(_) | None => None,
        };
        let packed = marked.as_deref() == Some(FORMAT_PACKED) || config.compress_records;
        if packed && marked.as_deref() != Some(FORMAT_PACKED) {
            db.insert(FORMAT_KEY, FORMAT_PACKED).map_err(io)?;
        } else if marked.is_none() {
            db.insert(FORMAT_KEY, FORMAT).map_err(io)?;
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
        let max_id = greatest_id(&events).map_err(io)?;
        let (damage, mark) = match &config.path {
            Some(path) => check_mark(path, &events, last, config.damaged_log)?,
            None => (None, None),
        };
        // The log's end is its last record or its last hole, whichever is later: a
        // restore may have removed the last record (a tombstone), and its position must
        // not be handed out again.
        let holes_end = guard(|| crate::holes::last_hole(&events)).map_err(|e| OpenError::Io {
            path: shown.clone(),
            source: e.into(),
        })?;
        let last = last.max(holes_end);
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
                writer: Mutex::new(Heads {
                    max_id,
                    ..Heads::default()
                }),
                snapshot_writer: Mutex::new(()),
                lifecycle: tokio::sync::Mutex::new(()),
                marks,
                flusher,
                notifier: LogNotifier::new(),
                mark,
                damage,
                compress: config.compress_records,
                holes_format: if packed { FORMAT_PACKED } else { FORMAT_HOLES },
            }),
        })
    }
}

/// The greatest event id in the id index, `None` if there is none: an append skips the
/// index lookup of greater ids. A key of the wrong size makes every id look stored (the
/// lookup then reports the damage).
fn greatest_id(events: &sled::Tree) -> sled::Result<Option<Uuid>> {
    let last = events
        .range(id_key(Uuid::nil())..=id_key(Uuid::max()))
        .next_back()
        .transpose()?;
    Ok(last.map(|(key, _)| Uuid::from_slice(&key[1..]).unwrap_or(Uuid::max())))
}

/// The store's damage (with [`DamagedLog::Inspect`]) and its mark writer.
type MarkCheck = (Option<(String, String)>, Option<Arc<MarkWriter>>);

/// Compares the log as sled recovered it (ending at `last`) with the store's mark of its
/// durable end, and acts on a difference as `choice` says.
pub(crate) fn check_mark(
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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use cqrs_core::{EventData, EventLog, ExpectedVersion, Inspect, Position, StreamId};
    use futures::TryStreamExt;

    use super::*;
    use crate::chunk::encode_old;
    use crate::record::stream_key;

    /// Writes a store in the layout of format 1 (one record, one stream-index entry and one
    /// id-index entry per event) with sled directly, as an older version wrote it.
    pub(crate) fn write_old_store(path: &Path, events: &[(StreamId, u64, EventData)]) {
        let db = sled::open(path).unwrap();
        db.insert(FORMAT_KEY, FORMAT_ONE).unwrap();
        let tree = db.open_tree(EVENTS_TREE).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (position, (stream, version, event)) in (1u64..).zip(events) {
            // The first record is of format 1 (before checksums), the others of format 2.
            let record = encode_old(stream, *version, event, at, position > 1);
            tree.insert(log_key(position), record).unwrap();
            tree.insert(stream_key(stream, *version), &position.to_be_bytes())
                .unwrap();
            tree.insert(id_key(event.event_id), &position.to_be_bytes())
                .unwrap();
        }
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn a_store_of_the_one_event_layout_opens_reads_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        let a = StreamId::new("account", "a").unwrap();
        let b = StreamId::new("account", "b").unwrap();
        let event = |n: u32| EventData::new("Happened", n.to_string().into_bytes());
        let old = vec![
            (a.clone(), 1, event(1)),
            (b.clone(), 1, event(2)),
            (a.clone(), 2, event(3)),
            (a.clone(), 3, event(4)),
        ];
        write_old_store(&path, &old);

        let store = SledConfig::new(&path).open().unwrap();
        let log: Vec<_> = store
            .read_all(Position::START, None)
            .try_collect()
            .await
            .unwrap();
        let ids: Vec<_> = log.iter().map(|e| e.event_id).collect();
        let want: Vec<_> = old.iter().map(|(_, _, e)| e.event_id).collect();
        assert_eq!(ids, want);
        let positions: Vec<_> = log.iter().map(|e| e.position.sequence).collect();
        assert_eq!(positions, [1, 2, 3, 4]);
        let stream_a: Vec<_> = store.read_stream(&a, 2).try_collect().await.unwrap();
        assert_eq!(
            stream_a.iter().map(|e| e.version).collect::<Vec<_>>(),
            [2, 3]
        );
        let found = store.find_event(&b, old[1].2.event_id).await.unwrap();
        assert_eq!(found.map(|e| e.position.sequence), Some(2));
        // Re-appending an old event is the idempotent no-op it always was.
        let again = store
            .append(&a, ExpectedVersion::Exact(2), vec![old[3].2.clone()])
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!((again.version, again.position.sequence), (3, 4));
        // New appends go on after the old records, in the new layout.
        let new: Vec<_> = (5..8).map(event).collect();
        let done = store
            .append(&a, ExpectedVersion::Exact(3), new.clone())
            .await
            .unwrap();
        assert_eq!((done.version, done.position.sequence), (6, 7));
        drop(store);

        let store = SledConfig::new(&path).open().unwrap();
        assert_eq!(
            store.db().get(FORMAT_KEY).unwrap().as_deref(),
            Some(FORMAT_PACKED),
            "the store is marked with the new format (compressed records, the default)"
        );
        let stream_a: Vec<_> = store.read_stream(&a, 1).try_collect().await.unwrap();
        assert_eq!(
            stream_a.iter().map(|e| e.version).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        let tail: Vec<_> = store
            .read_all(Position::new(0, 3), None)
            .try_collect()
            .await
            .unwrap();
        let ids: Vec<_> = tail.iter().map(|e| e.event_id).collect();
        let want: Vec<_> = std::iter::once(old[3].2.event_id)
            .chain(new.iter().map(|e| e.event_id))
            .collect();
        assert_eq!(ids, want);
        let mid: Vec<_> = store
            .read_all(Position::new(0, 5), Some(1))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(mid.len(), 1);
        assert_eq!(mid[0].event_id, new[1].event_id);
        assert_eq!(store.count_events(Position::START).await.unwrap(), 7);
    }

    /// The log records of `store`, as stored: (position of the first event, bytes).
    fn records(store: &SledEventStore) -> Vec<(u64, sled::IVec)> {
        store
            .inner
            .events
            .range(log_key(0)..=log_key(u64::MAX))
            .map(|kv| {
                let (key, value) = kv.unwrap();
                (be_u64(&key[1..]).unwrap(), value)
            })
            .collect()
    }

    /// A store written without compression holds format-3 records and keeps the mark of
    /// format 2, which versions before compressed records open; opened with compression
    /// on, it reads as before, is marked 4, and new records are compressed.
    #[tokio::test]
    async fn records_written_uncompressed_read_the_same_with_compression_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        let a = StreamId::new("account", "a").unwrap();
        let batch = |from: u32| -> Vec<EventData> {
            (from..from + 100)
                .map(|n| {
                    let payload = format!(r#"{{"amount_cents":{n},"note":"monthly salary"}}"#);
                    EventData::new("Deposited", payload.into_bytes())
                })
                .collect()
        };
        let first = batch(0);
        {
            let store = SledConfig::new(&path)
                .compress_records(false)
                .open()
                .unwrap();
            store
                .append(&a, ExpectedVersion::NoStream, first.clone())
                .await
                .unwrap();
            let formats: Vec<u8> = records(&store).iter().map(|(_, r)| r[0]).collect();
            assert!(!formats.is_empty());
            assert!(formats.iter().all(|&f| f == 3), "{formats:?}");
            assert_eq!(store.db().get(FORMAT_KEY).unwrap().as_deref(), Some(FORMAT));
        }
        let store = SledConfig::new(&path).open().unwrap();
        assert_eq!(
            store.db().get(FORMAT_KEY).unwrap().as_deref(),
            Some(FORMAT_PACKED)
        );
        let second = batch(100);
        store
            .append(&a, ExpectedVersion::Exact(100), second.clone())
            .await
            .unwrap();
        let formats: Vec<u8> = records(&store).iter().map(|(_, r)| r[0]).collect();
        assert_eq!(formats.first(), Some(&3));
        assert_eq!(formats.last(), Some(&4), "{formats:?}");
        let want: Vec<_> = first.iter().chain(&second).map(|e| e.event_id).collect();
        let log: Vec<_> = store
            .read_all(Position::START, None)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(log.iter().map(|e| e.event_id).collect::<Vec<_>>(), want);
        for (event, data) in log.iter().zip(first.iter().chain(&second)) {
            assert_eq!(event.payload, data.payload);
        }
        let stream: Vec<_> = store.read_stream(&a, 95).try_collect().await.unwrap();
        assert_eq!(
            stream.iter().map(|e| e.version).collect::<Vec<_>>(),
            (95..=200).collect::<Vec<_>>()
        );
        let found = store.find_event(&a, second[50].event_id).await.unwrap();
        assert_eq!(found.map(|e| e.version), Some(151));
        drop(store);
        // Opened without compression again, the mark stays 4: records of format 4 exist.
        let store = SledConfig::new(&path)
            .compress_records(false)
            .open()
            .unwrap();
        assert_eq!(
            store.db().get(FORMAT_KEY).unwrap().as_deref(),
            Some(FORMAT_PACKED)
        );
        assert_eq!(store.count_events(Position::START).await.unwrap(), 200);
    }
}
