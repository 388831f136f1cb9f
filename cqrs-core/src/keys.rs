//! Subject keys: the [`KeyStore`] trait and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::{Error, Result};

/// A data subject's key: 256 random bits. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey([u8; 32]);

impl SubjectKey {
    /// A fresh random key, from the operating system's generator.
    ///
    /// # Errors
    /// [`Error::Store`] if the operating system has no randomness to give.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::store(e.to_string()))?;
        Ok(SubjectKey(bytes))
    }

    /// The key with these bytes (a key store reading what it stored).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SubjectKey(bytes)
    }

    /// The key's bytes (a key store writing it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// What a [`KeyStore`] holds for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Nothing: the subject never had personal data stored.
    Missing,
    /// The subject's key.
    Active(SubjectKey),
    /// The subject was forgotten: its key is deleted, and new personal data for it is
    /// refused.
    Forgotten,
}

/// What [`KeyStore::forget_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetOutcome {
    /// The key was deleted now.
    Forgotten,
    /// The subject had been forgotten before: nothing changed.
    AlreadyForgotten,
    /// The store has no key for the subject: nothing was written.
    UnknownSubject,
}

/// Where the keys of data subjects live: the event store's backend (a table, a tree), or
/// an external KMS behind this trait.
///
/// Three methods, each on one subject. A forgotten subject is remembered (a tombstone)
/// so that new personal data for it is refused rather than encrypted with a new key.
/// Implementations: [`InMemoryKeyStore`], `cqrs_sled::SledKeyStore`,
/// `cqrs_postgres::PostgresKeyStore`.
///
/// # Cancel safety
/// Dropping a future leaves the subject's entry as it was or as the call would leave
/// it; each call is one atomic change.
///
/// # Examples
/// ```
/// use cqrs_core::{ForgetOutcome, InMemoryKeyStore, KeyState, KeyStore, SubjectKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// let keys = InMemoryKeyStore::new();
/// let key = SubjectKey::generate()?;
/// assert_eq!(keys.create_key("s1", key.clone()).await?, KeyState::Active(key));
/// assert_eq!(keys.forget_key("s1").await?, ForgetOutcome::Forgotten);
/// assert_eq!(keys.load_key("s1").await?, KeyState::Forgotten);
/// assert_eq!(keys.forget_key("s2").await?, ForgetOutcome::UnknownSubject);
/// # Ok(())
/// # }
/// ```
pub trait KeyStore: Send + Sync {
    /// What the store holds for `subject`.
    ///
    /// # Errors
    /// [`Error::Store`] if the backend fails; [`Error::Corrupt`] for a damaged entry.
    fn load_key<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Future<Output = Result<KeyState>> + Send + 'a;

    /// Stores `key` for `subject` unless the store holds something for it already, and
    /// returns what it holds then: `Active(key)`, another process's key that won a race,
    /// or `Forgotten`.
    ///
    /// # Errors
    /// As for [`load_key`](KeyStore::load_key).
    fn create_key<'a>(
        &'a self,
        subject: &'a str,
        key: SubjectKey,
    ) -> impl Future<Output = Result<KeyState>> + Send + 'a;

    /// Deletes the key of `subject` and remembers the subject as forgotten.
    ///
    /// # Errors
    /// [`Error::Store`] if the backend fails: then the key may or may not be deleted;
    /// call again (it is idempotent).
    fn forget_key<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Future<Output = Result<ForgetOutcome>> + Send + 'a;
}

impl<K: KeyStore + ?Sized> KeyStore for Arc<K> {
    fn load_key<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Future<Output = Result<KeyState>> + Send + 'a {
        (**self).load_key(subject)
    }

    fn create_key<'a>(
        &'a self,
        subject: &'a str,
        key: SubjectKey,
    ) -> impl Future<Output = Result<KeyState>> + Send + 'a {
        (**self).create_key(subject, key)
    }

    fn forget_key<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Future<Output = Result<ForgetOutcome>> + Send + 'a {
        (**self).forget_key(subject)
    }
}

/// The object-safe twin of [`KeyStore`], with boxed futures; every `KeyStore`
/// implements it. See [`BoxKeyStore`].
pub trait DynKeyStore: Send + Sync + 'static {
    /// [`KeyStore::load_key`], boxed.
    fn load_key_boxed<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<KeyState>>;
    /// [`KeyStore::create_key`], boxed.
    fn create_key_boxed<'a>(
        &'a self,
        subject: &'a str,
        key: SubjectKey,
    ) -> BoxFuture<'a, Result<KeyState>>;
    /// [`KeyStore::forget_key`], boxed.
    fn forget_key_boxed<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<ForgetOutcome>>;
}

impl<K: KeyStore + 'static> DynKeyStore for K {
    fn load_key_boxed<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<KeyState>> {
        Box::pin(self.load_key(subject))
    }

    fn create_key_boxed<'a>(
        &'a self,
        subject: &'a str,
        key: SubjectKey,
    ) -> BoxFuture<'a, Result<KeyState>> {
        Box::pin(self.create_key(subject, key))
    }

    fn forget_key_boxed<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<ForgetOutcome>> {
        Box::pin(self.forget_key(subject))
    }
}

/// A shared handle to a key store whose type is chosen at run time (beside a
/// [`BoxEventStore`](crate::BoxEventStore)). Cloning it clones an `Arc`.
#[derive(Clone)]
pub struct BoxKeyStore(Arc<dyn DynKeyStore>);

impl BoxKeyStore {
    /// Boxes `keys`.
    pub fn new(keys: impl KeyStore + 'static) -> Self {
        BoxKeyStore(Arc::new(keys))
    }
}

impl fmt::Debug for BoxKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxKeyStore(..)")
    }
}

impl KeyStore for BoxKeyStore {
    fn load_key<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Future<Output = Result<KeyState>> + Send + 'a {
        self.0.load_key_boxed(subject)
    }

    fn create_key<'a>(
        &'a self,
        subject: &'a str,
        key: SubjectKey,
    ) -> impl Future<Output = Result<KeyState>> + Send + 'a {
        self.0.create_key_boxed(subject, key)
    }

    fn forget_key<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Future<Output = Result<ForgetOutcome>> + Send + 'a {
        self.0.forget_key_boxed(subject)
    }
}

/// Checks a subject id: 1 to 256 bytes, no NUL. Key stores and the
/// [`Shredded`](crate::Shredded) store refuse others.
///
/// # Errors
/// [`Error::InvalidInput`] naming the problem.
pub fn validate_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > 256 || subject.contains('\0') {
        return Err(Error::invalid_input(format!(
            "a data subject id must be 1 to 256 bytes without NUL, got {subject:?}"
        )));
    }
    Ok(())
}

/// A [`KeyStore`] in memory, for tests and beside the
/// [`InMemoryEventStore`](crate::InMemoryEventStore). Clones share the keys.
#[derive(Debug, Clone, Default)]
pub struct InMemoryKeyStore {
    /// `None`: forgotten.
    keys: Arc<Mutex<HashMap<String, Option<SubjectKey>>>>,
}

impl InMemoryKeyStore {
    /// An empty key store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<SubjectKey>>> {
        // Every change is one map operation: a poisoned map is still consistent.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn state(entry: Option<&Option<SubjectKey>>) -> KeyState {
    match entry {
        None => KeyState::Missing,
        Some(Some(key)) => KeyState::Active(key.clone()),
        Some(None) => KeyState::Forgotten,
    }
}

impl KeyStore for InMemoryKeyStore {
    async fn load_key<'a>(&'a self, subject: &'a str) -> Result<KeyState> {
        validate_subject(subject)?;
        Ok(state(self.lock().get(subject)))
    }

    async fn create_key<'a>(&'a self, subject: &'a str, key: SubjectKey) -> Result<KeyState> {
        validate_subject(subject)?;
        let mut keys = self.lock();
        let entry = keys.entry(subject.to_owned()).or_insert(Some(key));
        Ok(state(Some(entry)))
    }

    async fn forget_key<'a>(&'a self, subject: &'a str) -> Result<ForgetOutcome> {
        validate_subject(subject)?;
        Ok(match self.lock().get_mut(subject) {
            None => ForgetOutcome::UnknownSubject,
            Some(None) => ForgetOutcome::AlreadyForgotten,
            Some(entry) => {
                *entry = None;
                ForgetOutcome::Forgotten
            }
        })
    }
}
