//! Holes in the log: the positions of removed events (see `record.rs`, keyspace `H`).
//!
//! Holes are stored as maximal runs, `H` + first position → last position. A lifecycle
//! operation edits them with a [`HoleEdit`]: it reads the runs around what it changes,
//! edits them in memory, and writes the difference in its own transaction. Only the
//! single writer edits holes, so what it read stays true until it commits.

use std::collections::BTreeMap;

use cqrs_core::{Error, Result};

use crate::record::{be_u64, hole_key};
use crate::store::store_error;

/// One stored run of holes.
fn run(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(u64, u64)> {
    let (key, value) = item.map_err(store_error)?;
    match (be_u64(&key[1..]), be_u64(&value)) {
        (Some(first), Some(last)) if first <= last && first > 0 => Ok((first, last)),
        _ => Err(Error::corrupt(
            "the hole index of the log",
            "an entry is not a run of positions",
        )),
    }
}

/// The stored run keyed at or before `position`, if any.
fn run_at_or_before(events: &sled::Tree, position: u64) -> Result<Option<(u64, u64)>> {
    events
        .range(hole_key(0)..=hole_key(position))
        .next_back()
        .map(run)
        .transpose()
}

/// How many positions in `first..=last` are holes.
pub(crate) fn holes_between(events: &sled::Tree, first: u64, last: u64) -> Result<u64> {
    if first > last {
        return Ok(0);
    }
    let mut count = 0;
    if let Some((_, end)) = run_at_or_before(events, first)?
        && end >= first
    {
        count += end.min(last) - first + 1;
    }
    if let Some(after) = first.checked_add(1) {
        for item in events.range(hole_key(after)..=hole_key(last)) {
            let (start, end) = run(item)?;
            count += end.min(last) - start + 1;
        }
    }
    Ok(count)
}

/// The last position of the last run of holes (0 if there is none).
pub(crate) fn last_hole(events: &sled::Tree) -> Result<u64> {
    Ok(run_at_or_before(events, u64::MAX)?.map_or(0, |(_, last)| last))
}

/// An edit of the holes, in memory until [`HoleEdit::changes`] writes it.
#[derive(Debug)]
pub(crate) struct HoleEdit<'a> {
    events: &'a sled::Tree,
    /// The stored runs read so far, as stored.
    stored: BTreeMap<u64, u64>,
    /// The runs read so far, as edited (merged where they touch).
    runs: BTreeMap<u64, u64>,
}

impl<'a> HoleEdit<'a> {
    pub(crate) fn new(events: &'a sled::Tree) -> Self {
        HoleEdit {
            events,
            stored: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }

    /// Reads the stored runs that overlap or touch `first..=last`.
    fn load(&mut self, first: u64, last: u64) -> Result<()> {
        let mut found = Vec::new();
        let before = first.saturating_sub(1);
        if let Some((start, end)) = run_at_or_before(self.events, before)?
            && end >= before
        {
            found.push((start, end));
        }
        let from = before.saturating_add(1);
        for item in self
            .events
            .range(hole_key(from)..=hole_key(last.saturating_add(1)))
        {
            found.push(run(item)?);
        }
        for (start, end) in found {
            if self.stored.insert(start, end).is_none() {
                self.merge(start, end);
            }
        }
        Ok(())
    }

    /// Adds `first..=last` to the edited runs, merging the runs it touches.
    fn merge(&mut self, first: u64, last: u64) {
        let (mut start, mut end) = (first, last);
        let touching: Vec<u64> = self
            .runs
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|&(_, &e)| e.saturating_add(1) >= first)
            .map(|(&s, _)| s)
            .collect();
        for s in touching {
            if let Some(e) = self.runs.remove(&s) {
                start = start.min(s);
                end = end.max(e);
            }
        }
        self.runs.insert(start, end);
    }

    /// Makes `first..=last` (positions of events being removed) holes.
    pub(crate) fn add(&mut self, first: u64, last: u64) -> Result<()> {
        self.load(first, last)?;
        self.merge(first, last);
        Ok(())
    }

    /// Fills `first..=last` (positions of events being restored). `false` if one of them
    /// is not a hole.
    pub(crate) fn fill(&mut self, first: u64, last: u64) -> Result<bool> {
        self.load(first, last)?;
        let Some((&start, &end)) = self.runs.range(..=first).next_back() else {
            return Ok(false);
        };
        if end < last {
            return Ok(false);
        }
        self.runs.remove(&start);
        if start < first {
            self.runs.insert(start, first - 1);
        }
        if last < end {
            self.runs.insert(last + 1, end);
        }
        Ok(true)
    }

    /// The writes that turn the stored runs into the edited ones: `(key, Some(value))`
    /// to insert, `(key, None)` to remove.
    pub(crate) fn changes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for start in self.stored.keys() {
            if !self.runs.contains_key(start) {
                out.push((hole_key(*start).to_vec(), None));
            }
        }
        for (start, end) in &self.runs {
            if self.stored.get(start) != Some(end) {
                out.push((hole_key(*start).to_vec(), Some(end.to_be_bytes().to_vec())));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(tree: &sled::Tree, edit: &HoleEdit<'_>) {
        for (key, value) in edit.changes() {
            match value {
                Some(value) => tree.insert(key, value).unwrap(),
                None => tree.remove(key).unwrap(),
            };
        }
    }

    fn runs(tree: &sled::Tree) -> Vec<(u64, u64)> {
        tree.range(hole_key(0)..=hole_key(u64::MAX))
            .map(|item| run(item).unwrap())
            .collect()
    }

    #[test]
    fn runs_merge_split_and_count() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut edit = HoleEdit::new(&tree);
        edit.add(3, 4).unwrap();
        edit.add(8, 8).unwrap();
        edit.add(1, 1).unwrap();
        apply(&tree, &edit);
        assert_eq!(runs(&tree), [(1, 1), (3, 4), (8, 8)]);
        assert_eq!(holes_between(&tree, 1, 10).unwrap(), 4);
        assert_eq!(holes_between(&tree, 4, 8).unwrap(), 2);
        assert_eq!(holes_between(&tree, 5, 7).unwrap(), 0);
        assert_eq!(holes_between(&tree, 9, 2).unwrap(), 0);
        assert_eq!(last_hole(&tree).unwrap(), 8);

        // A later edit merges with the stored runs it touches.
        let mut edit = HoleEdit::new(&tree);
        edit.add(5, 7).unwrap();
        edit.add(2, 2).unwrap();
        apply(&tree, &edit);
        assert_eq!(runs(&tree), [(1, 8)]);

        // Filling splits a run; a position that is not a hole cannot be filled.
        let mut edit = HoleEdit::new(&tree);
        assert!(edit.fill(3, 4).unwrap());
        assert!(!edit.fill(4, 4).unwrap());
        assert!(!edit.fill(8, 9).unwrap());
        assert!(edit.fill(8, 8).unwrap());
        apply(&tree, &edit);
        assert_eq!(runs(&tree), [(1, 2), (5, 7)]);
        let mut edit = HoleEdit::new(&tree);
        assert!(edit.fill(1, 2).unwrap());
        assert!(edit.fill(5, 7).unwrap());
        apply(&tree, &edit);
        assert_eq!(runs(&tree), []);
        assert_eq!(last_hole(&tree).unwrap(), 0);
    }
}
