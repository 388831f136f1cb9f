//! Crypto-shredding: [`Shredder`] seals and opens personal values; [`Shredded`] is a
//! store that does it on every write and read.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::keys::validate_subject;
use crate::personal::MARKER;
use crate::{
    AppendResult, CheckpointStore, Error, EventData, EventLog, ExpectedVersion, ForgetOutcome,
    Inspect, KeyState, KeyStore, LogWatcher, Personal, Position, RecordedEvent, Result,
    SnapshotRecord, SnapshotStore, StoreStats, StreamId, StreamInfo, StreamLifecycle, SubjectKey,
};

/// Associated data of every ciphertext, before the subject id: a ciphertext opens only
/// as a personal value of the subject it was sealed for.
const AAD_PREFIX: &[u8] = b"cqrs-personal-v1\0";

/// The bytes every payload with a personal value holds (serde_json writes keys as is).
const MARKER_BYTES: &[u8] = b"\"$personal\"";

/// What one call has looked up in the key store: each subject once per call, never
/// across calls, so a forget (in any process) holds from the next read on.
type Looked = HashMap<String, KeyState>;

/// What [`Shredder::forget`] did when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// The subject's key was deleted now.
    Now,
    /// The subject had been forgotten before; nothing changed.
    Already,
}

/// Seals personal values ([`Personal`]) with their subject's key from a [`KeyStore`],
/// opens them again, and forgets subjects. [`Shredded`] uses it on every write and read;
/// use it directly to open a [`Personal::Sealed`] value that a read model kept.
///
/// Values are sealed with XChaCha20-Poly1305 (a random 192-bit nonce per value; the
/// subject id is associated data), under a random 256-bit key per subject, created when
/// the subject's first personal value is written.
#[derive(Debug, Clone)]
pub struct Shredder<K> {
    keys: K,
}

impl<K: KeyStore> Shredder<K> {
    /// A shredder over `keys`.
    pub fn new(keys: K) -> Self {
        Shredder { keys }
    }

    /// The key store.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// Deletes `subject`'s key: from now on every read gives its personal values as
    /// [`Personal::Erased`], snapshots holding them are not used, and new personal data
    /// for the subject is refused ([`Error::SubjectForgotten`]).
    ///
    /// # Errors
    /// [`Error::UnknownSubject`] if the key store has nothing for `subject` (nothing is
    /// written); [`Error::InvalidInput`] for a subject id that [`validate_subject`]
    /// refuses; [`Error::Store`] if the key store fails (call again: it is idempotent).
    pub async fn forget(&self, subject: &str) -> Result<Forgotten> {
        validate_subject(subject)?;
        match self.keys.forget_key(subject).await? {
            ForgetOutcome::Forgotten => Ok(Forgotten::Now),
            ForgetOutcome::AlreadyForgotten => Ok(Forgotten::Already),
            ForgetOutcome::UnknownSubject => Err(Error::UnknownSubject {
                subject: subject.to_owned(),
            }),
        }
    }

    /// Opens a [`Personal::Sealed`] value: [`Personal::Value`] while the subject's key
    /// exists, [`Personal::Erased`] once it is forgotten. Other forms come back as they
    /// are.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the ciphertext does not open with the subject's key
    /// (tampered) or its plaintext is not a `T`; [`Error::Store`] if the key store fails.
    pub async fn unseal<T: DeserializeOwned>(&self, value: Personal<T>) -> Result<Personal<T>> {
        let Personal::Sealed { subject, sealed } = value else {
            return Ok(value);
        };
        let location = || format!("personal value of subject {subject:?}");
        match self.keys.load_key(&subject).await? {
            KeyState::Active(key) => {
                let plaintext = open(&key, &subject, &sealed.nonce, &sealed.ciphertext)
                    .map_err(|reason| Error::corrupt(location(), reason))?;
                let value = serde_json::from_slice(&plaintext)
                    .map_err(|e| Error::corrupt(location(), e.to_string()))?;
                Ok(Personal::Value { subject, value })
            }
            KeyState::Forgotten | KeyState::Missing => Ok(Personal::Erased { subject }),
        }
    }

    /// The key to seal `subject`'s values with, created on first use.
    async fn sealing_key(&self, subject: &str, looked: &mut Looked) -> Result<SubjectKey> {
        if !looked.contains_key(subject) {
            validate_subject(subject)?;
            let state = match self.keys.load_key(subject).await? {
                KeyState::Missing => {
                    let created = self.keys.create_key(subject, SubjectKey::generate()?);
                    created.await?
                }
                state => state,
            };
            looked.insert(subject.to_owned(), state);
        }
        match looked.get(subject) {
            Some(KeyState::Active(key)) => Ok(key.clone()),
            _ => Err(Error::SubjectForgotten {
                subject: subject.to_owned(),
            }),
        }
    }

    /// `payload` with every plain personal value sealed; unchanged if it holds none (or
    /// is not JSON).
    async fn seal(&self, payload: Vec<u8>, looked: &mut Looked) -> Result<Vec<u8>> {
        let Some(mut json) = parse(&payload) else {
            return Ok(payload);
        };
        let mut subjects = Vec::new();
        visit(&mut json, &mut |body| {
            if body.contains_key("value") {
                match body.get("subject") {
                    Some(Value::String(subject)) => subjects.push(subject.clone()),
                    _ => return Err("a personal value without a subject id".to_owned()),
                }
            }
            Ok(())
        })
        .map_err(Error::invalid_input)?;
        if subjects.is_empty() {
            return Ok(payload);
        }
        for subject in &subjects {
            self.sealing_key(subject, looked).await?;
        }
        visit(&mut json, &mut |body| {
            let (Some(Value::String(subject)), Some(value)) =
                (body.get("subject").cloned(), body.remove("value"))
            else {
                return Ok(());
            };
            let Some(KeyState::Active(key)) = looked.get(&subject) else {
                return Err(format!("no key for subject {subject:?}"));
            };
            let (nonce, ciphertext) = seal(key, &subject, &value)?;
            body.clear();
            body.insert("subject".into(), Value::String(subject));
            body.insert("nonce".into(), Value::String(nonce));
            body.insert("ciphertext".into(), Value::String(ciphertext));
            Ok(())
        })
        .map_err(|reason| Error::Encode {
            what: "personal value".into(),
            source: reason.into(),
        })?;
        serde_json::to_vec(&json).map_err(|e| Error::Encode {
            what: "personal value".into(),
            source: e.into(),
        })
    }

    /// `payload` with every sealed personal value opened, or erased if its subject was
    /// forgotten; and whether one was erased. Unchanged if it holds none.
    async fn reveal(
        &self,
        payload: Vec<u8>,
        location: &(dyn Fn() -> String + Sync),
        looked: &mut Looked,
    ) -> Result<(Vec<u8>, bool)> {
        let Some(mut json) = parse(&payload) else {
            return Ok((payload, false));
        };
        let mut subjects = Vec::new();
        visit(&mut json, &mut |body| {
            if body.contains_key("ciphertext") {
                match body.get("subject") {
                    Some(Value::String(subject)) => subjects.push(subject.clone()),
                    _ => return Err("a sealed personal value without a subject id".to_owned()),
                }
            }
            Ok(())
        })
        .map_err(|reason| Error::corrupt(location(), reason))?;
        if subjects.is_empty() {
            return Ok((payload, false));
        }
        for subject in subjects {
            if let std::collections::hash_map::Entry::Vacant(slot) = looked.entry(subject) {
                let state = self.keys.load_key(slot.key()).await?;
                slot.insert(state);
            }
        }
        let mut erased = false;
        visit(&mut json, &mut |body| {
            let (Some(Value::String(subject)), Some(Value::String(nonce)), Some(ciphertext)) = (
                body.get("subject").cloned(),
                body.get("nonce").cloned(),
                body.remove("ciphertext"),
            ) else {
                return Ok(());
            };
            let Value::String(ciphertext) = ciphertext else {
                return Err(format!(
                    "the ciphertext of subject {subject:?} is not a string"
                ));
            };
            body.clear();
            body.insert("subject".into(), Value::String(subject.clone()));
            match looked.get(&subject) {
                Some(KeyState::Active(key)) => {
                    let plaintext = open(key, &subject, &nonce, &ciphertext)?;
                    let value = serde_json::from_slice(&plaintext).map_err(|e| {
                        format!("the personal value of subject {subject:?} is not JSON: {e}")
                    })?;
                    body.insert("value".into(), value);
                }
                _ => {
                    erased = true;
                    body.insert("erased".into(), Value::Bool(true));
                }
            }
            Ok(())
        })
        .map_err(|reason| Error::corrupt(location(), reason))?;
        let bytes =
            serde_json::to_vec(&json).map_err(|e| Error::corrupt(location(), e.to_string()))?;
        Ok((bytes, erased))
    }

    async fn reveal_record(
        &self,
        mut record: RecordedEvent,
        looked: &mut Looked,
    ) -> Result<RecordedEvent> {
        let payload = std::mem::take(&mut record.payload);
        let location = || format!("stream {} version {}", record.stream, record.version);
        record.payload = self.reveal(payload, &location, looked).await?.0;
        Ok(record)
    }
}

/// The payload as JSON, if it may hold a personal value.
fn parse(payload: &[u8]) -> Option<Value> {
    if !payload
        .windows(MARKER_BYTES.len())
        .any(|w| w == MARKER_BYTES)
    {
        return None;
    }
    serde_json::from_slice(payload).ok()
}

/// What [`visit`] calls on each marker's body.
type MarkerVisitor<'a> = dyn FnMut(&mut Map<String, Value>) -> Result<(), String> + 'a;

/// Calls `f` on the body of every personal marker in `json` (not inside one).
fn visit(json: &mut Value, f: &mut MarkerVisitor<'_>) -> Result<(), String> {
    match json {
        Value::Object(object) => {
            if object.len() == 1
                && let Some(Value::Object(body)) = object.get_mut(MARKER)
            {
                return f(body);
            }
            object.values_mut().try_for_each(|v| visit(v, f))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| visit(v, f)),
        _ => Ok(()),
    }
}

fn cipher(key: &SubjectKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Key::from(*key.as_bytes()))
}

fn aad(subject: &str) -> Vec<u8> {
    [AAD_PREFIX, subject.as_bytes()].concat()
}

/// Seals a JSON value: its nonce and ciphertext, base64.
fn seal(key: &SubjectKey, subject: &str, value: &Value) -> Result<(String, String), String> {
    let plaintext = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let mut nonce = [0; 24];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let payload = Payload {
        msg: &plaintext,
        aad: &aad(subject),
    };
    let ciphertext = cipher(key)
        .encrypt(&XNonce::from(nonce), payload)
        .map_err(|_| "encryption failed".to_owned())?;
    Ok((BASE64.encode(nonce), BASE64.encode(ciphertext)))
}

/// Opens a sealed value: its JSON plaintext.
fn open(key: &SubjectKey, subject: &str, nonce: &str, ciphertext: &str) -> Result<Vec<u8>, String> {
    let bad =
        |what: &str| format!("the {what} of a personal value of subject {subject:?} is damaged");
    let nonce = BASE64.decode(nonce).map_err(|_| bad("nonce"))?;
    let ciphertext = BASE64.decode(ciphertext).map_err(|_| bad("ciphertext"))?;
    let nonce: [u8; 24] = nonce.try_into().map_err(|_| bad("nonce"))?;
    let payload = Payload {
        msg: &ciphertext,
        aad: &aad(subject),
    };
    cipher(key)
        .decrypt(&XNonce::from(nonce), payload)
        .map_err(|_| {
            format!("a personal value of subject {subject:?} does not open with its key (tampered)")
        })
}

/// A store that crypto-shreds: it seals every [`Personal`] value of a payload (events and
/// snapshots) with its subject's key before the inner store keeps it, and opens it on
/// every read, so loads, `read_all`, projections, the operations subcommand and the relay
/// all see plaintext, and no plaintext of a personal value reaches the inner store.
///
/// After [`forget`](Shredded::forget), every read still works: the subject's values read
/// as [`Personal::Erased`]; a snapshot that holds one is not used (a load replays the
/// stream instead, so the state is what a replay of the erased events gives).
///
/// It implements every store trait over an inner store that has it; checksums and the
/// other record checks of the inner store are on the stored (sealed) bytes. Only JSON
/// payloads are looked into; other bytes pass through untouched. Key lookups are not
/// cached across calls: each read call asks the key store once per subject it meets, so a
/// forget made by any process holds from the next read on (a read already under way may
/// still open values it met before the forget).
///
/// # Examples
/// ```
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, InMemoryEventStore, InMemoryKeyStore};
/// use cqrs_core::{Personal, Shredded, StreamId};
/// use futures::TryStreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// let (inner, keys) = (InMemoryEventStore::new(), InMemoryKeyStore::new());
/// let store = Shredded::new(inner.clone(), keys);
/// let stream = StreamId::new("account", "42")?;
/// let owner = Personal::new("42", "Ada Lovelace".to_owned());
/// let payload = serde_json::to_vec(&owner).unwrap();
/// store.append(&stream, ExpectedVersion::NoStream, vec![EventData::new("Opened", payload)]).await?;
///
/// // The inner store holds only ciphertext; the wrapper reads plaintext.
/// let stored: Vec<_> = inner.read_stream(&stream, 1).try_collect().await?;
/// assert!(!String::from_utf8_lossy(&stored[0].payload).contains("Ada"));
/// let read: Vec<_> = store.read_stream(&stream, 1).try_collect().await?;
/// let back: Personal<String> = serde_json::from_slice(&read[0].payload).unwrap();
/// assert_eq!(back, owner);
///
/// store.forget("42").await?;
/// let read: Vec<_> = store.read_stream(&stream, 1).try_collect().await?;
/// let back: Personal<String> = serde_json::from_slice(&read[0].payload).unwrap();
/// assert!(back.is_erased());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Shredded<S, K> {
    inner: S,
    shredder: Shredder<K>,
}

impl<S, K: KeyStore> Shredded<S, K> {
    /// `inner`, with the personal values of its payloads sealed under keys from `keys`.
    pub fn new(inner: S, keys: K) -> Self {
        Shredded {
            inner,
            shredder: Shredder::new(keys),
        }
    }

    /// The inner store (it holds sealed payloads).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The shredder (to open values a read model kept sealed).
    pub fn shredder(&self) -> &Shredder<K> {
        &self.shredder
    }

    /// Forgets `subject`: see [`Shredder::forget`].
    ///
    /// # Errors
    /// As for [`Shredder::forget`].
    pub async fn forget(&self, subject: &str) -> Result<Forgotten> {
        self.shredder.forget(subject).await
    }
}

impl<S: Send + Sync, K: KeyStore> Shredded<S, K> {
    fn reveal_stream<'a>(
        &'a self,
        records: impl Stream<Item = Result<RecordedEvent>> + Send + 'a,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        let state = (Box::pin(records), Looked::new());
        futures::stream::unfold(state, move |(mut records, mut looked)| async move {
            let revealed = match records.next().await? {
                Ok(record) => self.shredder.reveal_record(record, &mut looked).await,
                Err(e) => Err(e),
            };
            Some((revealed, (records, looked)))
        })
    }
}

impl<S: EventLog, K: KeyStore> EventLog for Shredded<S, K> {
    async fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        mut events: Vec<EventData>,
    ) -> Result<AppendResult> {
        // A batch the store would refuse creates no key.
        crate::validate_batch(stream, &events)?;
        let mut looked = Looked::new();
        for event in &mut events {
            let payload = std::mem::take(&mut event.payload);
            event.payload = self.shredder.seal(payload, &mut looked).await?;
        }
        self.inner.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.reveal_stream(self.inner.read_stream(stream, from_version))
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.reveal_stream(self.inner.read_all(after, limit))
    }

    fn watch(&self) -> LogWatcher {
        self.inner.watch()
    }
}

/// Snapshots are sealed like events. A snapshot that holds an erased value is not used:
/// [`load_snapshot`](SnapshotStore::load_snapshot) answers `None`, and
/// [`read_stream_from_snapshot`](SnapshotStore::read_stream_from_snapshot) says
/// [`SnapshotIgnored::Erased`](crate::SnapshotIgnored::Erased), so a load replays the
/// stream and a repository that takes snapshots replaces the snapshot at once with one
/// holding the erased value: the forgotten subject's sealed data leaves the snapshot.
impl<S: SnapshotStore, K: KeyStore> SnapshotStore for Shredded<S, K> {
    async fn load_snapshot<'a>(&'a self, stream: &'a StreamId) -> Result<Option<SnapshotRecord>> {
        Ok(self.open_snapshot(stream).await?.ok())
    }

    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<crate::StreamItem>> + Send + 'a {
        let snapshot = async move {
            match self.open_snapshot(stream).await? {
                Ok(snapshot) => Ok(Ok(Some(snapshot))),
                Err(Some(ignored)) => Ok(Err(ignored)),
                Err(None) => Ok(Ok(None)),
            }
        };
        crate::snapshot_store::snapshot_then_tail(self, stream, snapshot)
    }

    async fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        mut snapshot: SnapshotRecord,
    ) -> Result<()> {
        let payload = std::mem::take(&mut snapshot.payload);
        snapshot.payload = self.shredder.seal(payload, &mut Looked::new()).await?;
        self.inner.save_snapshot(stream, snapshot).await
    }
}

impl<S: SnapshotStore, K: KeyStore> Shredded<S, K> {
    /// The stream's snapshot, opened; `Err(None)` if there is none, `Err(Some(why))` if
    /// it holds an erased value.
    async fn open_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Result<SnapshotRecord, Option<crate::SnapshotIgnored>>> {
        let Some(mut snapshot) = self.inner.load_snapshot(stream).await? else {
            return Ok(Err(None));
        };
        let location = || format!("snapshot of {stream}");
        let payload = std::mem::take(&mut snapshot.payload);
        let looked = &mut Looked::new();
        let (payload, erased) = self.shredder.reveal(payload, &location, looked).await?;
        if erased {
            let version = snapshot.version;
            return Ok(Err(Some(crate::SnapshotIgnored::Erased { version })));
        }
        snapshot.payload = payload;
        Ok(Ok(snapshot))
    }
}

impl<S: CheckpointStore, K: KeyStore> CheckpointStore for Shredded<S, K> {
    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send + 'a {
        self.inner.load_checkpoint(name)
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.inner.save_checkpoint(name, position)
    }
}

/// Archives keep the sealed values: [`read_stored`](StreamLifecycle::read_stored) reads
/// the inner store, and [`restore_stream`](StreamLifecycle::restore_stream) puts the
/// sealed records back as they were. A subject forgotten since the archive was made
/// stays forgotten: its values come back erased.
impl<S: StreamLifecycle, K: KeyStore> StreamLifecycle for Shredded<S, K> {
    fn delete_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
    ) -> impl Future<Output = Result<AppendResult>> + Send + 'a {
        self.inner.delete_stream(stream, expected)
    }

    fn truncate_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        before: u64,
    ) -> impl Future<Output = Result<u64>> + Send + 'a {
        self.inner.truncate_stream(stream, before)
    }

    fn restore_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        records: Vec<RecordedEvent>,
    ) -> impl Future<Output = Result<u64>> + Send + 'a {
        self.inner.restore_stream(stream, records)
    }

    fn read_stored<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.inner.read_stored(stream, from_version)
    }
}

impl<S: Inspect, K: KeyStore> Inspect for Shredded<S, K> {
    async fn find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>> {
        match self.inner.find_event(stream, event_id).await? {
            Some(record) => {
                let mut looked = Looked::new();
                let revealed = self.shredder.reveal_record(record, &mut looked);
                Ok(Some(revealed.await?))
            }
            None => Ok(None),
        }
    }

    fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.inner.count_events(after)
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        self.inner.list_streams()
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
        self.inner.stats()
    }
}
