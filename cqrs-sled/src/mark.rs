//! The durable mark: a small file beside sled's own, recording how far the log was known
//! to be durable. sled's recovery stops at the first damaged entry of its log and opens
//! with what came before, without an error; comparing the recovered log with this mark
//! is how the store notices that events were dropped (ADR 0018).
//!
//! The file (`cqrs-sled.mark`) holds 25 bytes: a magic (8), a format (1), the last durable
//! log position (u64), the CRC32C of the log record holding that position (u32), and a CRC32C
//! of the 21 bytes before it (u32). It is replaced atomically: written to a temporary
//! file, synced, then renamed over the old one, so it is always either the old mark or
//! the new one, never a mix. It only ever claims positions that a flush had made durable
//! before it was written, and it may lag behind them (it is written at most every
//! [`MARK_EVERY`] under load): it is a lower bound, which is all the check needs.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::chunk::Chunk;
use crate::contain::guard;
use crate::record::{be_u64, log_key};
use crate::store::{lock, record_holding, store_error};

/// The name of the mark file in the database directory.
pub(crate) const MARK_FILE: &str = "cqrs-sled.mark";
const TEMP_FILE: &str = "cqrs-sled.mark.tmp";
const MAGIC: &[u8; 8] = b"cqrsmark";
const FORMAT: u8 = 1;
const LEN: usize = 25;
/// Under a steady load, the mark is rewritten at most this often.
pub(crate) const MARK_EVERY: Duration = Duration::from_millis(100);

use crate::record::CRC32C;

/// What the mark file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Every log position up to this one was durable.
    pub(crate) position: u64,
    /// The CRC32C of the stored bytes of the record holding `position`.
    pub(crate) record: u32,
}

/// The fingerprint of a stored log record (the one holding the marked position), as the
/// mark keeps it.
pub(crate) fn fingerprint(record: &[u8]) -> u32 {
    CRC32C.checksum(record)
}

fn encode(mark: Mark) -> [u8; LEN] {
    let mut out = [0; LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8] = FORMAT;
    out[9..17].copy_from_slice(&mark.position.to_be_bytes());
    out[17..21].copy_from_slice(&mark.record.to_be_bytes());
    let sum = CRC32C.checksum(&out[..21]);
    out[21..].copy_from_slice(&sum.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<Mark, String> {
    let bytes: &[u8; LEN] = bytes
        .try_into()
        .map_err(|_| format!("{} bytes where {LEN} were expected", bytes.len()))?;
    let stored = u32::from_be_bytes([bytes[21], bytes[22], bytes[23], bytes[24]]);
    let actual = CRC32C.checksum(&bytes[..21]);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    if &bytes[..8] != MAGIC || bytes[8] != FORMAT {
        return Err("not a mark file of this format".to_owned());
    }
    let mut position = [0; 8];
    position.copy_from_slice(&bytes[9..17]);
    let record = u32::from_be_bytes([bytes[17], bytes[18], bytes[19], bytes[20]]);
    Ok(Mark {
        position: u64::from_be_bytes(position),
        record,
    })
}

/// Reads the mark of the database in `dir`: `None` if there is none (a new store, or one
/// written by a version without marks), `Some(Err(reason))` if it is damaged.
pub(crate) fn read(dir: &Path) -> std::io::Result<Option<Result<Mark, String>>> {
    match std::fs::read(dir.join(MARK_FILE)) {
        Ok(bytes) => Ok(Some(decode(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the mark of the database in `dir` atomically (temporary file, fsync, rename).
fn write(dir: &Path, mark: Mark) -> std::io::Result<()> {
    let temp = dir.join(TEMP_FILE);
    let mut file = File::create(&temp)?;
    file.write_all(&encode(mark))?;
    // Synced before the rename: after a power loss the mark is the old one or the new
    // one, never an empty or half-written file (which would read as damage).
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(MARK_FILE))
}

/// Writes the mark of one open store. Shared by the flusher thread and the store (which
/// writes it after an explicit flush and when it closes); writes are serialised and the
/// mark only moves forward, except when a lifecycle operation moves it back (below).
///
/// A delete, truncation or restore removes or rewrites log records, maybe the one the
/// mark fingerprints. It first [holds](MarkWriter::hold) the mark: moves it back to a
/// record it does not touch (or removes it if there is none), and keeps every other
/// writer from moving it until the operation is durable. A crash at any moment then
/// finds a mark whose record is there, as it was.
#[derive(Debug)]
pub(crate) struct MarkWriter {
    dir: PathBuf,
    events: sled::Tree,
    written: Mutex<Written>,
}

#[derive(Debug)]
struct Written {
    /// The position the mark file holds now (0: none).
    position: u64,
    /// Lifecycle operations in flight: while there is one, only they move the mark.
    holds: u32,
}

impl MarkWriter {
    /// A writer for the database in `dir` whose mark file holds `written` (0: none).
    pub(crate) fn new(dir: PathBuf, events: sled::Tree, written: u64) -> Self {
        MarkWriter {
            dir,
            events,
            written: Mutex::new(Written {
                position: written,
                holds: 0,
            }),
        }
    }

    /// Records that the log is durable up to `position` (which a flush has made durable).
    /// Nothing happens if the mark already says so, or while a lifecycle operation holds
    /// the mark.
    pub(crate) fn record(&self, position: u64) -> cqrs_core::Result<()> {
        let mut written = lock(&self.written);
        if written.holds > 0 {
            return Ok(());
        }
        self.write_locked(&mut written, position, false)
    }

    /// Writes the mark at the last event at or before `position` (removed events leave
    /// holes, even at the end of the log); a lower one only if `lower` allows it.
    fn write_locked(
        &self,
        written: &mut Written,
        position: u64,
        lower: bool,
    ) -> cqrs_core::Result<()> {
        if position <= written.position && !lower {
            return Ok(());
        }
        let record = guard(|| record_holding(&self.events, position))?;
        let Some((first, bytes)) = record else {
            if !lower {
                // Something was flushed up to `position`: at least a tombstone stays.
                return Err(cqrs_core::Error::corrupt(
                    format!("log position {position}"),
                    "the record is missing although it was flushed",
                ));
            }
            self.remove()?;
            written.position = 0;
            return Ok(());
        };
        let at = match Chunk::open(&bytes, first, None) {
            Ok(chunk) => chunk.last_position().min(position),
            Err(_) => {
                return Err(cqrs_core::Error::corrupt(
                    format!("log position {position}"),
                    "the record is damaged although it was flushed",
                ));
            }
        };
        if at <= written.position && !lower {
            return Ok(());
        }
        let mark = Mark {
            position: at,
            record: fingerprint(&bytes),
        };
        write(&self.dir, mark).map_err(cqrs_core::Error::store)?;
        written.position = at;
        Ok(())
    }

    fn remove(&self) -> cqrs_core::Result<()> {
        match std::fs::remove_file(self.dir.join(MARK_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(cqrs_core::Error::store(e)),
            _ => Ok(()),
        }
    }

    /// Holds the mark for a lifecycle operation that removes or rewrites the log records
    /// keyed at `touched`: if the mark's record is one of them, moves the mark back to
    /// the last position of the last record before it that is not (a lower bound that a
    /// flush made durable), or removes the mark if there is none. Until the hold is
    /// released, only the operation writes the mark.
    pub(crate) fn hold(self: &Arc<Self>, touched: &BTreeSet<u64>) -> cqrs_core::Result<MarkHold> {
        let mut written = lock(&self.written);
        written.holds += 1;
        let hold = MarkHold {
            writer: Some(self.clone()),
        };
        let position = written.position;
        if position == 0 {
            return Ok(hold);
        }
        let events = &self.events;
        // Walk back from the mark's record to the first record the operation leaves.
        // Records at or before the mark that an operation wrote (a restore, a rewritten
        // truncation) may be younger than the mark: flush first if the mark must move, so
        // whichever record it lands on is on disk. (Operations run one at a time and wait
        // for their own flush unless the durability is `Buffered`.)
        let must_move = guard(|| record_holding(events, position))?
            .is_some_and(|(first, _)| touched.contains(&first));
        if must_move {
            guard(|| events.flush().map_err(store_error))?;
        }
        let safe = guard(|| {
            let keys = events.range(log_key(0)..=log_key(position)).keys().rev();
            for (i, key) in keys.enumerate() {
                let key = key.map_err(store_error)?;
                let first = be_u64(&key[1..]).ok_or_else(|| {
                    cqrs_core::Error::corrupt("the log", "a log key is not 9 bytes")
                })?;
                if !touched.contains(&first) {
                    return Ok::<_, cqrs_core::Error>(Some((i == 0, first)));
                }
            }
            Ok(None)
        })?;
        match safe {
            // The mark's own record is untouched: it stays.
            Some((true, _)) => {}
            Some((false, first)) => {
                let last = self.last_of(first)?.min(position);
                self.write_locked(&mut written, last, true)?;
            }
            None => {
                self.remove()?;
                written.position = 0;
            }
        }
        Ok(hold)
    }

    /// The last position of the record keyed at `first`.
    fn last_of(&self, first: u64) -> cqrs_core::Result<u64> {
        let bytes = guard(|| self.events.get(log_key(first)).map_err(store_error))?;
        Ok(bytes
            .and_then(|bytes| {
                Chunk::open(&bytes, first, None)
                    .ok()
                    .map(|c| c.last_position())
            })
            .unwrap_or(first))
    }

    /// Releases a hold; the last one out marks `durable` if given (the operation made
    /// everything up to it durable).
    fn release(&self, durable: Option<u64>) -> cqrs_core::Result<()> {
        let mut written = lock(&self.written);
        written.holds = written.holds.saturating_sub(1);
        match durable {
            Some(position) if written.holds == 0 => {
                self.write_locked(&mut written, position, false)
            }
            _ => Ok(()),
        }
    }

    /// Replaces the mark with `position` even if it is lower (the operator accepted a
    /// shorter log), or removes it when the log is empty.
    pub(crate) fn reset(&self, position: u64) -> cqrs_core::Result<()> {
        let mut written = lock(&self.written);
        if position == 0 {
            self.remove()?;
            written.position = 0;
            return Ok(());
        }
        self.write_locked(&mut written, position, true)
    }
}

/// A lifecycle operation's hold on the mark (see [`MarkWriter::hold`]); dropping it
/// releases the hold without writing.
#[derive(Debug)]
pub(crate) struct MarkHold {
    writer: Option<Arc<MarkWriter>>,
}

impl MarkHold {
    /// Releases the hold after the operation became durable up to `position`, marking
    /// it if no other operation holds the mark.
    pub(crate) fn durable(mut self, position: u64) -> cqrs_core::Result<()> {
        match self.writer.take() {
            Some(writer) => writer.release(Some(position)),
            None => Ok(()),
        }
    }
}

impl Drop for MarkHold {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Err(e) = writer.release(None)
        {
            tracing::warn!(error = %e, "cannot release the durable mark of the sled event store");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_any_flipped_bit_is_refused() {
        let mark = Mark {
            position: 0x0102_0304_0506_0708,
            record: 0xdead_beef,
        };
        let bytes = encode(mark);
        assert_eq!(decode(&bytes), Ok(mark));
        for bit in 0..LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit}");
        }
        assert!(decode(&bytes[..24]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn writing_replaces_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        for position in [1, 2, 300] {
            let mark = Mark {
                position,
                record: 7,
            };
            write(dir.path(), mark).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(Ok(mark)));
        }
        assert!(!dir.path().join(TEMP_FILE).exists());
    }
}
