//! [`SledEventStore::check_records`]: what `verify`'s walk of the log does not read.

use cqrs_core::{Error, Problem, Result};

use crate::SledEventStore;
use crate::contain::{guard, guard_next};
use crate::read_model::{BUILD_CHECKPOINT, LIVE_GENERATION, ReadModel, decode_generation};
use crate::read_model::{parse_tree_name, tree_name};
use crate::record::{decode_position, decode_snapshot};
use crate::store::store_error;

/// What [`SledEventStore::check_records`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RecordCheck {
    /// Read-model rows whose checksum was verified.
    pub rows: u64,
    /// Rows of read models written before checksums existed (generation 0), not checked.
    pub unchecked_rows: u64,
    /// Snapshots verified.
    pub snapshots: u64,
    /// Checkpoints (and read-model generations) verified.
    pub checkpoints: u64,
    /// Each damaged record ([`Error::Corrupt`]) or unreadable tree ([`Error::Store`]).
    pub damaged: Vec<Error>,
}

impl RecordCheck {
    /// The damage found, as problems for a `verify` report
    /// (`cqrs_cli::Operations::check`).
    pub fn problems(&self) -> Vec<Problem> {
        let problem = |e: &Error| match e {
            Error::Corrupt { location, reason } => Problem::Unreadable {
                location: location.clone(),
                error: reason.clone(),
            },
            e => Problem::Unreadable {
                location: "sled records".to_owned(),
                error: e.to_string(),
            },
        };
        self.damaged.iter().map(problem).collect()
    }

    /// Records the outcome of one record's check.
    fn count(&mut self, checked: Result<()>, counter: fn(&mut Self) -> &mut u64) {
        match checked {
            Ok(()) => *counter(self) += 1,
            Err(e) => self.damaged.push(e),
        }
    }
}

impl SledEventStore {
    /// Verifies the checksum of every record that a walk of the log
    /// ([`cqrs_core::verify`]) does not read: every snapshot, every checkpoint and
    /// read-model generation, and every row of every projection's live read model (a
    /// rebuild's unfinished generation is skipped: it is not served). Damaged records
    /// are reported, and the walk goes on past them. For `verify`.
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails to list its trees.
    pub fn check_records(&self) -> Result<RecordCheck> {
        let mut check = RecordCheck::default();
        self.check_snapshots(&mut check);
        self.check_checkpoints(&mut check);
        let names = guard(|| Ok::<_, Error>(self.db().tree_names()))?;
        for name in names {
            let Some((projection, generation, tree)) = parse_tree_name(&name) else {
                continue;
            };
            // A damaged generation was reported with the checkpoints.
            if self.live_generation(&projection).ok() != Some(generation) {
                continue;
            }
            self.check_rows(&mut check, &projection, generation, &tree);
        }
        Ok(check)
    }

    fn check_snapshots(&self, check: &mut RecordCheck) {
        let mut snapshots = self.inner.snapshots.iter();
        while let Some(entry) = guard_next(&mut snapshots) {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return check.damaged.push(e),
            };
            let decoded = decode_snapshot(&value).map(drop).map_err(|reason| {
                let key = String::from_utf8_lossy(&key);
                Error::corrupt(format!("snapshot {key:?}"), reason)
            });
            check.count(decoded, |c| &mut c.snapshots);
        }
    }

    fn check_checkpoints(&self, check: &mut RecordCheck) {
        let mut checkpoints = self.checkpoints_tree().iter();
        while let Some(entry) = guard_next(&mut checkpoints) {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return check.damaged.push(e),
            };
            let name = |prefix: &[u8]| String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let checked = if key.starts_with(LIVE_GENERATION) {
                decode_generation(&name(LIVE_GENERATION), &value).map(drop)
            } else if key.starts_with(BUILD_CHECKPOINT) {
                decode_position(&value, &name(BUILD_CHECKPOINT)).map(drop)
            } else if key.starts_with(b"\0") {
                continue; // a marker: its value means nothing
            } else {
                decode_position(&value, &name(b"")).map(drop)
            };
            check.count(checked, |c| &mut c.checkpoints);
        }
    }

    fn check_rows(&self, check: &mut RecordCheck, projection: &str, generation: u64, tree: &str) {
        let name = tree_name(projection, generation, tree);
        let model = match guard(|| self.db().open_tree(name).map_err(store_error)) {
            Ok(opened) => ReadModel {
                tree: opened,
                checked: generation > 0,
                name: format!("{projection}/{tree}"),
            },
            Err(e) => return check.damaged.push(e),
        };
        let mut rows = model.tree.iter();
        while let Some(row) = guard_next(&mut rows) {
            match row.and_then(|(k, v)| model.value(&k, &v)) {
                Ok(_) if generation == 0 => check.unchecked_rows += 1,
                Ok(_) => check.rows += 1,
                Err(e @ Error::Corrupt { .. }) => check.damaged.push(e),
                // A sled error ends the tree's walk.
                Err(e) => return check.damaged.push(e),
            }
        }
    }
}
