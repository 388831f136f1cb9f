//! Where sled read models live: their trees per generation, the generation readers see,
//! the checksum of each row, and [`ReadModel`], the handle queries read through.
//!
//! A projection's trees belong to a *generation*. Readers see the live one; a rebuild
//! writes the next one beside it and switches when complete (blue/green, ADR 0019), so
//! a rebuild that fails leaves the live model as it was. Generation 0 is the layout of
//! stores written before generations existed: its trees keep their old names, and its
//! rows have no checksum. Every later generation seals each row with a CRC32C over its
//! key and value, verified on every read.

use cqrs_core::{Error, Result};

use crate::SledEventStore;
use crate::contain::{guard, guard_next};
use crate::record::CRC32C;
use crate::store::store_error;

/// Prefix of the trees of generation 0 (`cqrs.rm.<projection>\0<tree>`).
const LEGACY_PREFIX: &str = "cqrs.rm.";
/// Prefix of the trees of later generations (`cqrs.rmg.<projection>\0<gen>\0<tree>`).
const PREFIX: &str = "cqrs.rmg.";
/// Prefix (in the checkpoints tree) of a projection's live generation (8 bytes, BE).
/// Projection names hold no NUL, so these keys never clash with a checkpoint.
pub(crate) const LIVE_GENERATION: &[u8] = b"\0gen\0";
/// Prefix (in the checkpoints tree) of the checkpoint of a rebuild in progress.
pub(crate) const BUILD_CHECKPOINT: &[u8] = b"\0build\0";

/// The prefix of the names of a projection's trees in `generation`.
pub(crate) fn generation_prefix(projection: &str, generation: u64) -> String {
    match generation {
        0 => format!("{LEGACY_PREFIX}{projection}\0"),
        g => format!("{}{g}\0", generations_prefix(projection)),
    }
}

/// The prefix of the names of a projection's trees in every generation but 0.
pub(crate) fn generations_prefix(projection: &str) -> String {
    // The projection name has no NUL (checked): NUL separates it from what follows.
    format!("{PREFIX}{projection}\0")
}

/// The sled name of `tree` in a projection's `generation`.
pub(crate) fn tree_name(projection: &str, generation: u64, tree: &str) -> String {
    format!("{}{tree}", generation_prefix(projection, generation))
}

/// The key, in the checkpoints tree, of a projection's live generation.
pub(crate) fn live_generation_key(projection: &str) -> Vec<u8> {
    [LIVE_GENERATION, projection.as_bytes()].concat()
}

/// The key, in the checkpoints tree, of a projection's rebuild checkpoint.
pub(crate) fn build_checkpoint_key(projection: &str) -> Vec<u8> {
    [BUILD_CHECKPOINT, projection.as_bytes()].concat()
}

/// The stored form of a projection's live generation: 8 bytes (BE) sealed with the
/// CRC32C of its key and value, so a damaged generation is never followed to the wrong
/// trees.
pub(crate) fn encode_generation(projection: &str, generation: u64) -> Vec<u8> {
    seal(&live_generation_key(projection), &generation.to_be_bytes())
}

pub(crate) fn decode_generation(projection: &str, stored: &[u8]) -> Result<u64> {
    let name = format!("generation of read model {projection:?}");
    let value = unseal(&name, &live_generation_key(projection), stored)?;
    let bytes = <[u8; 8]>::try_from(value)
        .map_err(|_| Error::corrupt(&name, format!("{} bytes, not 8", value.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Tree names hold no NUL: it separates the parts of sled names.
pub(crate) fn validate_tree(projection: &str, tree: &str) -> Result<()> {
    if tree.contains('\0') {
        let reason = "a read-model tree name must not contain NUL";
        return Err(Error::invalid_input(format!(
            "{reason}: {tree:?} of projection {projection:?}"
        )));
    }
    Ok(())
}

impl SledEventStore {
    /// The generation of `projection` that readers see. A store that never recorded one
    /// is at generation 0 if it has trees of the old layout, 1 otherwise (the first
    /// runner records it).
    pub(crate) fn live_generation(&self, projection: &str) -> Result<u64> {
        guard(|| {
            let key = live_generation_key(projection);
            let stored = self.checkpoints_tree().get(&key).map_err(store_error)?;
            match stored {
                Some(bytes) => decode_generation(projection, &bytes),
                None => {
                    let legacy = generation_prefix(projection, 0);
                    let names = self.db().tree_names();
                    let old = names.iter().any(|n| n.starts_with(legacy.as_bytes()));
                    Ok(if old { 0 } else { 1 })
                }
            }
        })
    }

    /// The tree `tree` of the projection `projection`, for reading the read model: its
    /// live generation, as of this call. Get a new handle for each query: after a
    /// rebuild, an older handle reads the discarded generation.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad projection or tree name; [`Error::Store`] if
    /// sled fails.
    pub fn read_model(&self, projection: &str, tree: &str) -> Result<ReadModel> {
        cqrs_core::validate_checkpoint_name(projection)?;
        validate_tree(projection, tree)?;
        let generation = self.live_generation(projection)?;
        let name = tree_name(projection, generation, tree);
        let opened = guard(|| self.db().open_tree(name).map_err(store_error))?;
        Ok(ReadModel {
            tree: opened,
            checked: generation > 0,
            name: format!("{projection}/{tree}"),
        })
    }
}

/// A read-model tree's projection, generation and tree name, from its sled name.
pub(crate) fn parse_tree_name(name: &[u8]) -> Option<(String, u64, String)> {
    let name = std::str::from_utf8(name).ok()?;
    if let Some(rest) = name.strip_prefix(PREFIX) {
        let mut parts = rest.splitn(3, '\0');
        let (projection, generation, tree) = (parts.next()?, parts.next()?, parts.next()?);
        return Some((projection.into(), generation.parse().ok()?, tree.into()));
    }
    let (projection, tree) = name.strip_prefix(LEGACY_PREFIX)?.split_once('\0')?;
    Some((projection.into(), 0, tree.into()))
}

/// Seals a row of a checksummed generation: the value, then the CRC32C of key and value.
pub(crate) fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut digest = CRC32C.digest();
    digest.update(key);
    digest.update(value);
    let mut sealed = Vec::with_capacity(value.len() + 4);
    sealed.extend_from_slice(value);
    sealed.extend_from_slice(&digest.finalize().to_be_bytes());
    sealed
}

/// The value of a sealed row, after its checksum is verified; [`Error::Corrupt`] naming
/// the row (`name` is `projection/tree`) if it does not match.
pub(crate) fn unseal<'a>(name: &str, key: &[u8], sealed: &'a [u8]) -> Result<&'a [u8]> {
    let damaged = |reason: &str| {
        let key = String::from_utf8_lossy(key);
        Error::corrupt(format!("read model {name} key {key:?}"), reason)
    };
    let split = sealed
        .len()
        .checked_sub(4)
        .ok_or_else(|| damaged("too short"))?;
    let (value, sum) = sealed.split_at(split);
    let mut digest = CRC32C.digest();
    digest.update(key);
    digest.update(value);
    if digest.finalize().to_be_bytes() != sum {
        return Err(damaged("checksum mismatch"));
    }
    Ok(value)
}

/// A read-model tree of a sled projection, for queries
/// ([`SledEventStore::read_model`]). Every row read is verified against its checksum: a
/// damaged row is an [`Error::Corrupt`] naming it, never a value.
#[derive(Debug, Clone)]
pub struct ReadModel {
    pub(crate) tree: sled::Tree,
    /// Rows carry a checksum (every generation but 0).
    pub(crate) checked: bool,
    /// `projection/tree`, for errors.
    pub(crate) name: String,
}

impl ReadModel {
    pub(crate) fn value(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
        if self.checked {
            Ok(unseal(&self.name, key, stored)?.to_vec())
        } else {
            Ok(stored.to_vec())
        }
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// [`Error::Store`] if sled fails; [`Error::Corrupt`] if the row is damaged.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let stored = guard(|| self.tree.get(key).map_err(store_error))?;
        stored.map(|v| self.value(key, &v)).transpose()
    }

    /// The entries whose key starts with `prefix`, in key order, read lazily.
    ///
    /// # Errors
    /// Items are [`Error::Store`] if sled fails, [`Error::Corrupt`] for a damaged row;
    /// the iteration ends after the first error.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + use<> {
        let mut entries = self.tree.scan_prefix(prefix);
        let this = self.clone();
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let item =
                guard_next(&mut entries)?.and_then(|(k, v)| Ok((k.to_vec(), this.value(&k, &v)?)));
            failed = item.is_err();
            Some(item)
        })
    }

    /// The number of entries (walks the tree).
    pub fn len(&self) -> usize {
        guard(|| Ok::<_, Error>(self.tree.len())).unwrap_or(0)
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        guard(|| Ok::<_, Error>(self.tree.is_empty())).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_row_opens_only_under_its_own_key() {
        let sealed = seal(b"k1", b"value");
        assert_eq!(unseal("p/t", b"k1", &sealed).unwrap(), b"value");
        assert!(unseal("p/t", b"k2", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[1] ^= 0x10;
        let e = unseal("p/t", b"k1", &flipped).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("p/t"), "{e}");
        assert!(unseal("p/t", b"k1", b"abc").is_err());
    }

    #[test]
    fn a_damaged_generation_is_an_error_never_another_generation() {
        let stored = encode_generation("p", 7);
        assert_eq!(decode_generation("p", &stored).unwrap(), 7);
        assert!(
            decode_generation("q", &stored).is_err(),
            "another projection's"
        );
        for at in 0..stored.len() {
            let mut damaged = stored.clone();
            damaged[at] ^= 0x04;
            let e = decode_generation("p", &damaged).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        }
        assert!(decode_generation("p", &7u64.to_be_bytes()).is_err());
    }

    #[test]
    fn tree_names_parse_back() {
        let parsed = |p, g, t| parse_tree_name(tree_name(p, g, t).as_bytes());
        assert_eq!(parsed("p", 0, "t"), Some(("p".into(), 0, "t".into())));
        assert_eq!(parsed("p", 12, "t"), Some(("p".into(), 12, "t".into())));
        assert_eq!(parse_tree_name(b"cqrs.checkpoints"), None);
    }

    #[test]
    fn generations_never_share_a_tree_name() {
        assert_eq!(tree_name("p", 0, "t"), "cqrs.rm.p\0t");
        assert_eq!(tree_name("p", 1, "t"), "cqrs.rmg.p\u{0}1\u{0}t");
        assert!(!tree_name("p", 1, "t").starts_with(&generation_prefix("p", 0)));
        assert!(!tree_name("p", 12, "t").starts_with(&generation_prefix("p", 1)));
    }
}
