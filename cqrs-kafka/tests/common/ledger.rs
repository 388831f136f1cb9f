//! A small in-memory read model for the consumer tests (the versions applied per
//! stream, in the order applied), and an inbox whose transactions take turns, as a
//! database inbox's do when two members of a group apply one stream during a
//! rebalance.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cqrs_core::{
    BoxError, DeadLetter, DomainEvent, EventData, EventLog, ExpectedVersion, InMemoryEventStore,
    InMemoryInbox, Inbox, InboxStats, Projection, StreamId, StreamState,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

/// The one event of the tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum AccountEvent {
    /// Its `round` is the stream's version less one.
    Deposited { round: u64 },
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Deposited"];

    fn event_type(&self) -> &'static str {
        "Deposited"
    }
}

/// The versions applied per stream (shared by the members of a group, and read by the
/// test while the consumers own their projections).
pub(crate) type Applied = Arc<Mutex<BTreeMap<StreamId, Vec<u64>>>>;

/// The projection: records each applied event's version under its stream, and counts
/// what this member applied.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) applied: Applied,
    pub(crate) mine: Arc<AtomicU64>,
}

impl Ledger {
    /// Another member's ledger over the same read model.
    pub(crate) fn sharing(&self) -> Ledger {
        Ledger {
            applied: Arc::clone(&self.applied),
            mine: Arc::default(),
        }
    }
}

impl Projection for Ledger {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "ledger"
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[cqrs_core::Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let mut applied = self.applied.lock().map_err(|_| "a poisoned lock")?;
        for envelope in batch {
            let AccountEvent::Deposited { round } = envelope.event;
            assert_eq!(
                round + 1,
                envelope.version,
                "the payload matches the version"
            );
            applied
                .entry(envelope.stream.clone())
                .or_default()
                .push(envelope.version);
            self.mine.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How many events the ledger holds.
pub(crate) fn total(applied: &Applied) -> u64 {
    let applied = applied.lock().expect("the ledger's lock");
    applied.values().map(|v| v.len() as u64).sum()
}

/// `count` streams with odd ids (`.`, `>`, `*`, `#`, spaces), of the aggregate type
/// `account`.
pub(crate) fn streams(count: usize) -> Vec<StreamId> {
    (0..count)
        .map(|i| StreamId::new("account", format!("acc.{i} >*#")).expect("a valid id"))
        .collect()
}

/// Appends round `round` (version `round + 1`) to each stream.
pub(crate) async fn append_round(store: &InMemoryEventStore, streams: &[StreamId], round: u64) {
    for stream in streams {
        let payload =
            serde_json::to_vec(&AccountEvent::Deposited { round }).expect("an event serializes");
        store
            .append(
                stream,
                ExpectedVersion::Exact(round),
                vec![EventData::new("Deposited", payload)],
            )
            .await
            .expect("append");
    }
}

/// Asserts that every stream has versions `1..=rounds` applied, each once, in order.
pub(crate) fn assert_exactly_once(applied: &Applied, streams: &[StreamId], rounds: u64) {
    let applied = applied.lock().expect("the ledger's lock");
    assert_eq!(applied.len(), streams.len(), "every stream is applied");
    for stream in streams {
        assert_eq!(
            applied.get(stream).map(Vec::as_slice),
            Some((1..=rounds).collect::<Vec<_>>().as_slice()),
            "{stream}: every event applied once, in version order"
        );
    }
}

/// Waits (at most `limit`) until `done()`.
pub(crate) async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An [`InMemoryInbox`] whose transactions take turns (one lock from `begin` to the
/// commit or the drop), as a PostgreSQL inbox's do on a stream's row: shared by two
/// consumers, a redelivered event waits for the other's transaction and is then seen
/// as applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct TurnInbox {
    inner: InMemoryInbox,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A [`TurnInbox`] transaction: the turn and the in-memory transaction.
#[derive(Debug)]
pub(crate) struct TurnTx {
    _turn: OwnedMutexGuard<()>,
    tx: <InMemoryInbox as Inbox>::Tx,
}

impl Inbox for TurnInbox {
    type Context = ();
    type Tx = TurnTx;

    async fn begin(&mut self) -> Result<TurnTx, BoxError> {
        let turn = Arc::clone(&self.turn).lock_owned().await;
        let tx = self.inner.begin().await?;
        Ok(TurnTx { _turn: turn, tx })
    }

    fn context(tx: &mut TurnTx) -> &mut () {
        InMemoryInbox::context(&mut tx.tx)
    }

    async fn stream_state(
        &mut self,
        tx: &mut TurnTx,
        stream: &StreamId,
    ) -> Result<StreamState, BoxError> {
        self.inner.stream_state(&mut tx.tx, stream).await
    }

    async fn set_stream_state(
        &mut self,
        tx: &mut TurnTx,
        stream: &StreamId,
        state: StreamState,
    ) -> Result<(), BoxError> {
        self.inner.set_stream_state(&mut tx.tx, stream, state).await
    }

    async fn add_dead_letter(
        &mut self,
        tx: &mut TurnTx,
        letter: &DeadLetter,
    ) -> Result<(), BoxError> {
        self.inner.add_dead_letter(&mut tx.tx, letter).await
    }

    async fn remove_dead_letter(&mut self, tx: &mut TurnTx, id: u64) -> Result<(), BoxError> {
        self.inner.remove_dead_letter(&mut tx.tx, id).await
    }

    async fn commit(&mut self, tx: TurnTx) -> Result<(), BoxError> {
        // The turn is held until the in-memory commit is done.
        let TurnTx { _turn, tx } = tx;
        self.inner.commit(tx).await
    }

    async fn dead_letters(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BoxError> {
        self.inner.dead_letters(after, limit).await
    }

    async fn stats(&mut self) -> Result<InboxStats, BoxError> {
        self.inner.stats().await
    }
}
