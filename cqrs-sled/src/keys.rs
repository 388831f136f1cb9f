//! The subject keys of crypto-shredding, in a tree of the store's database.

use cqrs_core::{Error, ForgetOutcome, KeyState, KeyStore, Result, SubjectKey, validate_subject};

use crate::SledEventStore;
use crate::contain::guard;

/// A sled error as a store error (sled panics on some damaged files: see `contain`).
fn sled(e: sled::Error) -> Error {
    Error::store(crate::error::SledError(e))
}

/// The tree of subject keys: key the subject id, value the 32 key bytes, or nothing
/// once the subject is forgotten (the tombstone that refuses new personal data).
const TREE: &str = "cqrs.subject_keys";

/// The [`KeyStore`] of a [`SledEventStore`]: the keys of data subjects for
/// [`Shredded`](cqrs_core::Shredded), in a tree of the same database (so a backup of the
/// directory holds both, and a deleted key is deleted with the database).
///
/// Every change is flushed before it returns. A forgotten key is removed from the tree
/// at once, but sled's files are log-structured: the old bytes of the key may stay in a
/// segment of the files until sled rewrites it (they are then unreachable through sled).
/// Personal data in plaintext never reaches the files; see `docs/10-data-lifecycle.md`.
///
/// # Examples
/// ```
/// use cqrs_core::{KeyState, KeyStore, Shredded};
/// use cqrs_sled::{SledEventStore, SledKeyStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let events = SledEventStore::temporary()?;
/// let keys = SledKeyStore::new(&events)?;
/// let store = Shredded::new(events, keys);
/// assert_eq!(store.shredder().keys().load_key("s1").await?, KeyState::Missing);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SledKeyStore {
    tree: sled::Tree,
}

impl SledKeyStore {
    /// The key store in `store`'s database.
    ///
    /// # Errors
    /// [`Error::Store`] if sled cannot open the tree.
    pub fn new(store: &SledEventStore) -> Result<Self> {
        let tree = guard(|| store.db().open_tree(TREE).map_err(sled))?;
        Ok(SledKeyStore { tree })
    }

    async fn flush(&self) -> Result<()> {
        self.tree.flush_async().await.map_err(sled)?;
        Ok(())
    }
}

fn state(subject: &str, value: Option<&[u8]>) -> Result<KeyState> {
    match value {
        None => Ok(KeyState::Missing),
        Some([]) => Ok(KeyState::Forgotten),
        Some(bytes) => match <[u8; 32]>::try_from(bytes) {
            Ok(key) => Ok(KeyState::Active(SubjectKey::from_bytes(key))),
            Err(_) => Err(Error::corrupt(
                format!("key of data subject {subject:?}"),
                format!("{} bytes, not 32", bytes.len()),
            )),
        },
    }
}

impl KeyStore for SledKeyStore {
    async fn load_key<'a>(&'a self, subject: &'a str) -> Result<KeyState> {
        validate_subject(subject)?;
        let value = guard(|| self.tree.get(subject).map_err(sled))?;
        state(subject, value.as_deref())
    }

    async fn create_key<'a>(&'a self, subject: &'a str, key: SubjectKey) -> Result<KeyState> {
        validate_subject(subject)?;
        let bytes = &key.as_bytes()[..];
        let swapped = guard(|| {
            let swap = self
                .tree
                .compare_and_swap(subject, None::<&[u8]>, Some(bytes));
            swap.map_err(sled)
        })?;
        match swapped {
            Ok(()) => {
                self.flush().await?;
                Ok(KeyState::Active(key))
            }
            Err(current) => state(subject, current.current.as_deref()),
        }
    }

    async fn forget_key<'a>(&'a self, subject: &'a str) -> Result<ForgetOutcome> {
        validate_subject(subject)?;
        loop {
            let current = guard(|| self.tree.get(subject).map_err(sled))?;
            let outcome = match state(subject, current.as_deref()) {
                Ok(KeyState::Missing) => return Ok(ForgetOutcome::UnknownSubject),
                Ok(KeyState::Forgotten) => ForgetOutcome::AlreadyForgotten,
                // A damaged entry is forgotten too: that is what was asked.
                Ok(KeyState::Active(_)) | Err(_) => ForgetOutcome::Forgotten,
            };
            if outcome == ForgetOutcome::AlreadyForgotten {
                // A forget whose flush failed is completed by the next one.
                self.flush().await?;
                return Ok(outcome);
            }
            let swapped = guard(|| {
                let swap = self.tree.compare_and_swap(subject, current, Some(&[][..]));
                swap.map_err(sled)
            })?;
            if swapped.is_ok() {
                self.flush().await?;
                return Ok(outcome);
            }
            // Another writer changed the entry between the read and the swap: again.
        }
    }
}
