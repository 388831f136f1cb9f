//! Crypto-shredding: [`Shredder`] seals and opens personal values; [`Shredded`] is a
//! store that does it on every write and read.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

mod store;

pub use store::Shredded;

use crate::keys::validate_subject;
use crate::personal::MARKER;
use crate::{
    Error, ForgetOutcome, KeyState, KeyStore, Personal, RecordedEvent, Result, SubjectKey,
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
