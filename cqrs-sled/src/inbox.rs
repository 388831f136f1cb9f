//! A consumer's inbox in sled: what it applied per stream, and its dead letters, in trees
//! beside its read model, written in the read model's transaction.

use std::time::{Duration, UNIX_EPOCH};

use cqrs_core::{
    BoxError, DeadLetter, Error, Inbox, InboxStats, ReceivedMessage, StreamId, StreamState,
};
use serde::{Deserialize, Serialize};
use sled::transaction::{TransactionError, Transactional, TransactionalTree};
use uuid::Uuid;

use crate::SledEventStore;
use crate::contain::guard;
use crate::projection::ReadModelTx;
use crate::read_model::{encode_generation, live_generation_key, unseal};
use crate::store::store_error;

/// The tree of stream states: key `type\0id`, value version (8 bytes BE) and parked (1).
const STREAMS: &str = "\0inbox";
/// The tree of dead letters: key id (8 bytes BE), value the letter as JSON.
const LETTERS: &str = "\0dead";
/// The read-model trees the crate keeps for itself (users' tree names hold no NUL).
pub(crate) const RESERVED_TREES: &[&str] = &[STREAMS, LETTERS];

/// A consumer's [`Inbox`] in the sled database of a [`SledEventStore`]: the read model's
/// trees, the version applied per stream and the dead letters commit in one sled
/// transaction; [`flush`](Inbox::flush) makes them durable before the consumer
/// acknowledges the messages.
///
/// The consumer's projection implements [`Projection<ReadModelTx>`](cqrs_core::Projection)
/// exactly as one run by a [`TransactionalCheckpoint`](crate::TransactionalCheckpoint),
/// and is read the same way ([`SledEventStore::read_model`]), under the consumer's name.
/// The consuming service's store may hold no events at all: it is the service's own
/// database.
///
/// # Examples
/// ```
/// use cqrs_sled::{SledEventStore, SledInbox};
///
/// let store = SledEventStore::temporary()?;
/// let inbox = SledInbox::new(store.clone(), "statements")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SledInbox {
    store: SledEventStore,
    consumer: String,
    generation: u64,
}

impl SledInbox {
    /// The inbox of the consumer `consumer` (its projection's name) in `store`'s
    /// database.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not a valid projection name;
    /// [`Error::Store`] if sled fails; [`Error::Corrupt`] if the read model's generation
    /// record is damaged.
    pub fn new(store: SledEventStore, consumer: &str) -> cqrs_core::Result<Self> {
        cqrs_core::validate_checkpoint_name(consumer)?;
        let generation = store.live_generation(consumer)?;
        if store.damage().is_none() {
            // Record the generation, as a projection's first run does, so that readers
            // and the inbox agree on it from now on.
            let checkpoints = store.checkpoints_tree();
            let key = live_generation_key(consumer);
            guard(|| {
                checkpoints
                    .compare_and_swap(
                        &key[..],
                        None::<&[u8]>,
                        Some(encode_generation(consumer, generation)),
                    )
                    .map(|_| ())
                    .map_err(store_error)
            })?;
        }
        Ok(SledInbox {
            store,
            consumer: consumer.to_owned(),
            generation,
        })
    }

    fn name(&self, what: &str) -> String {
        format!("inbox of consumer {:?}: {what}", self.consumer)
    }

    /// A committed row's value: unsealed (checked) where the generation seals rows.
    fn row<'v>(&self, name: &str, key: &[u8], value: &'v [u8]) -> cqrs_core::Result<&'v [u8]> {
        match self.generation {
            0 => Ok(value),
            _ => unseal(name, key, value),
        }
    }

    /// A committed tree of the inbox (for reads outside a transaction).
    fn tree(&self, tree: &str) -> cqrs_core::Result<sled::Tree> {
        let mut tx = ReadModelTx::new(
            self.store.db().clone(),
            self.consumer.clone(),
            self.generation,
        );
        tx.open_any(tree).cloned()
    }
}

fn stream_key(stream: &StreamId) -> Vec<u8> {
    // Types and ids hold no NUL.
    [
        stream.aggregate_type().as_bytes(),
        b"\0",
        stream.id().as_bytes(),
    ]
    .concat()
}

fn decode_state(name: &str, bytes: &[u8]) -> cqrs_core::Result<StreamState> {
    let (version, parked) = match bytes {
        [v @ .., parked] if v.len() == 8 => (v, *parked),
        _ => {
            return Err(Error::corrupt(
                name,
                format!("{} bytes, not 9", bytes.len()),
            ));
        }
    };
    let version = u64::from_be_bytes(
        version
            .try_into()
            .map_err(|_| Error::corrupt(name, "bad version"))?,
    );
    Ok(StreamState {
        version,
        parked: parked == 1,
    })
}

fn encode_state(state: StreamState) -> Vec<u8> {
    let mut bytes = state.version.to_be_bytes().to_vec();
    bytes.push(u8::from(state.parked));
    bytes
}

/// A dead letter as stored.
#[derive(Serialize, Deserialize)]
struct StoredLetter {
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    event_id: Option<Uuid>,
    stream: Option<(String, String)>,
    version: Option<u64>,
    reason: String,
    attempts: u32,
    dead_at_micros: u64,
}

impl StoredLetter {
    fn of(letter: &DeadLetter) -> Self {
        let micros = letter
            .dead_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        StoredLetter {
            subject: letter.message.subject.clone(),
            headers: letter.message.headers.clone(),
            payload: letter.message.payload.clone(),
            event_id: letter.event_id,
            stream: letter
                .stream
                .as_ref()
                .map(|s| (s.aggregate_type().to_owned(), s.id().to_owned())),
            version: letter.version,
            reason: letter.reason.clone(),
            attempts: letter.attempts,
            dead_at_micros: u64::try_from(micros).unwrap_or(u64::MAX),
        }
    }

    fn into_letter(self, id: u64) -> DeadLetter {
        DeadLetter {
            id,
            message: ReceivedMessage {
                subject: self.subject,
                headers: self.headers,
                payload: self.payload,
            },
            event_id: self.event_id,
            stream: self.stream.and_then(|(t, i)| StreamId::new(t, i).ok()),
            version: self.version,
            reason: self.reason,
            attempts: self.attempts,
            dead_at: UNIX_EPOCH + Duration::from_micros(self.dead_at_micros),
        }
    }
}

fn letter_id(name: &str, key: &[u8]) -> cqrs_core::Result<u64> {
    let bytes = <[u8; 8]>::try_from(key)
        .map_err(|_| Error::corrupt(name, "a dead letter key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Inbox for SledInbox {
    type Context = ReadModelTx;
    type Tx = ReadModelTx;

    async fn begin(&mut self) -> Result<ReadModelTx, BoxError> {
        self.store.writable()?;
        Ok(ReadModelTx::new(
            self.store.db().clone(),
            self.consumer.clone(),
            self.generation,
        ))
    }

    fn context(tx: &mut ReadModelTx) -> &mut ReadModelTx {
        tx
    }

    async fn stream_state(
        &mut self,
        tx: &mut ReadModelTx,
        stream: &StreamId,
    ) -> Result<StreamState, BoxError> {
        match tx.get_any(STREAMS, &stream_key(stream))? {
            Some(bytes) => Ok(decode_state(&self.name("a stream state"), &bytes)?),
            None => Ok(StreamState::default()),
        }
    }

    async fn set_stream_state(
        &mut self,
        tx: &mut ReadModelTx,
        stream: &StreamId,
        state: StreamState,
    ) -> Result<(), BoxError> {
        tx.write(STREAMS, &stream_key(stream), Some(encode_state(state)));
        Ok(())
    }

    async fn add_dead_letter(
        &mut self,
        tx: &mut ReadModelTx,
        letter: &DeadLetter,
    ) -> Result<(), BoxError> {
        let name = self.name("dead letters");
        let committed = guard(|| self.tree(LETTERS)?.last().map_err(store_error))?;
        let last_committed = committed
            .map(|(k, _)| letter_id(&name, &k))
            .transpose()?
            .unwrap_or(0);
        let last_pending = tx
            .pending(LETTERS)
            .and_then(|w| w.keys().next_back())
            .map(|k| letter_id(&name, k))
            .transpose()?
            .unwrap_or(0);
        let id = last_committed.max(last_pending) + 1;
        let json = serde_json::to_vec(&StoredLetter::of(letter))?;
        tx.write(LETTERS, &id.to_be_bytes(), Some(json));
        Ok(())
    }

    async fn remove_dead_letter(&mut self, tx: &mut ReadModelTx, id: u64) -> Result<(), BoxError> {
        tx.write(LETTERS, &id.to_be_bytes(), None);
        Ok(())
    }

    async fn commit(&mut self, mut tx: ReadModelTx) -> Result<(), BoxError> {
        self.store.writable()?;
        let (trees, writes) = tx.take_writes()?;
        if trees.is_empty() {
            return Ok(());
        }
        let outcome = guard(|| {
            Ok::<_, Error>(trees[..].transaction(|views: &Vec<TransactionalTree>| {
                for (view, tree_writes) in views.iter().zip(&writes) {
                    for (k, v) in tree_writes {
                        match v {
                            Some(v) => view.insert(&k[..], &v[..])?,
                            None => view.remove(&k[..])?,
                        };
                    }
                }
                Ok(())
            }))
        })?;
        match outcome {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => {
                Err(Error::corrupt(self.name("commit"), "aborted").into())
            }
            Err(TransactionError::Storage(e)) => Err(store_error(e).into()),
        }
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.store.db().flush_async().await.map_err(store_error)?;
        Ok(())
    }

    async fn dead_letters(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BoxError> {
        let name = self.name("a dead letter");
        let tree = self.tree(LETTERS)?;
        let start = after.saturating_add(1).to_be_bytes();
        let mut letters = Vec::new();
        for row in tree.range(start..).take(limit) {
            let (key, value) = row.map_err(store_error)?;
            let id = letter_id(&name, &key)?;
            let json = self.row(&name, &key, &value)?;
            let stored: StoredLetter =
                serde_json::from_slice(json).map_err(|e| Error::corrupt(&name, e.to_string()))?;
            letters.push(stored.into_letter(id));
        }
        Ok(letters)
    }

    async fn stats(&mut self) -> Result<InboxStats, BoxError> {
        let name = self.name("a stream state");
        let mut stats = InboxStats {
            dead_letters: self.tree(LETTERS)?.len() as u64,
            ..InboxStats::default()
        };
        for row in self.tree(STREAMS)?.iter() {
            let (key, value) = row.map_err(store_error)?;
            let state = decode_state(&name, self.row(&name, &key, &value)?)?;
            stats.streams += 1;
            stats.parked += u64::from(state.parked);
        }
        Ok(stats)
    }
}
