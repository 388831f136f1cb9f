//! An inbox in memory: for tests of consumers, beside an in-memory read model.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::consume::{DeadLetter, Inbox, InboxStats, StreamState};
use crate::{BoxError, StreamId};

/// An [`Inbox`] in memory, for a read model in memory (its context is `()`): what
/// tests and examples use. Transactions are staged and applied at commit; clones share
/// the inbox. It can be told to fail, to test a consumer against an unavailable
/// database.
#[derive(Debug, Clone, Default)]
pub struct InMemoryInbox {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<StreamId, StreamState>,
    letters: BTreeMap<u64, DeadLetter>,
    next_letter: u64,
    unavailable: bool,
}

/// A transaction of an [`InMemoryInbox`]: its writes, applied at commit.
#[derive(Debug, Default)]
pub struct InMemoryInboxTx {
    streams: HashMap<StreamId, StreamState>,
    added: Vec<DeadLetter>,
    removed: Vec<u64>,
    cx: (),
}

#[derive(Debug, thiserror::Error)]
#[error("the in-memory inbox is down (fault injection)")]
struct Down;

impl InMemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every operation fail (`true`), as a database that is down, or work again.
    pub fn set_unavailable(&self, down: bool) {
        self.lock().unavailable = down;
    }

    /// The committed state of `stream`.
    pub fn stream(&self, stream: &StreamId) -> StreamState {
        self.lock().streams.get(stream).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn up(&self) -> Result<std::sync::MutexGuard<'_, State>, BoxError> {
        let state = self.lock();
        if state.unavailable {
            return Err(Down.into());
        }
        Ok(state)
    }
}

impl Inbox for InMemoryInbox {
    type Context = ();
    type Tx = InMemoryInboxTx;

    async fn begin(&mut self) -> Result<InMemoryInboxTx, BoxError> {
        drop(self.up()?);
        Ok(InMemoryInboxTx::default())
    }

    fn context(tx: &mut InMemoryInboxTx) -> &mut () {
        &mut tx.cx
    }

    async fn stream_state(
        &mut self,
        tx: &mut InMemoryInboxTx,
        stream: &StreamId,
    ) -> Result<StreamState, BoxError> {
        if let Some(state) = tx.streams.get(stream) {
            return Ok(*state);
        }
        Ok(self.up()?.streams.get(stream).copied().unwrap_or_default())
    }

    async fn set_stream_state(
        &mut self,
        tx: &mut InMemoryInboxTx,
        stream: &StreamId,
        state: StreamState,
    ) -> Result<(), BoxError> {
        tx.streams.insert(stream.clone(), state);
        Ok(())
    }

    async fn add_dead_letter(
        &mut self,
        tx: &mut InMemoryInboxTx,
        letter: &DeadLetter,
    ) -> Result<(), BoxError> {
        tx.added.push(letter.clone());
        Ok(())
    }

    async fn remove_dead_letter(
        &mut self,
        tx: &mut InMemoryInboxTx,
        id: u64,
    ) -> Result<(), BoxError> {
        tx.removed.push(id);
        Ok(())
    }

    async fn commit(&mut self, tx: InMemoryInboxTx) -> Result<(), BoxError> {
        let mut state = self.up()?;
        state.streams.extend(tx.streams);
        for id in tx.removed {
            state.letters.remove(&id);
        }
        for mut letter in tx.added {
            state.next_letter += 1;
            letter.id = state.next_letter;
            state.letters.insert(letter.id, letter);
        }
        Ok(())
    }

    async fn dead_letters(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BoxError> {
        let state = self.up()?;
        let range = state.letters.range(after.saturating_add(1)..);
        Ok(range.take(limit).map(|(_, l)| l.clone()).collect())
    }

    async fn stats(&mut self) -> Result<InboxStats, BoxError> {
        let state = self.up()?;
        Ok(InboxStats {
            streams: state.streams.len() as u64,
            parked: state.streams.values().filter(|s| s.parked).count() as u64,
            dead_letters: state.letters.len() as u64,
        })
    }
}
