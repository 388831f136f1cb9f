//! A small in-memory read model for the consumer tests: the versions applied per
//! stream, in the order applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cqrs_core::{
    BoxError, Consumer, ConsumerStats, DomainEvent, EventData, EventLog, ExpectedVersion,
    InMemoryEventStore, InMemoryInbox, Projection, StreamId, Subscription,
};
use serde::{Deserialize, Serialize};

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

/// The versions applied per stream (shared, so the test reads it while the consumer
/// owns the projection).
pub(crate) type Applied = Arc<Mutex<BTreeMap<StreamId, Vec<u64>>>>;

/// The projection: records each applied event's version under its stream.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) applied: Applied,
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
        }
        Ok(())
    }
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

/// A consumer of the ledger on an in-memory inbox.
pub(crate) type LedgerConsumer = Consumer<InMemoryInbox, Ledger>;

/// Lets `consumer` consume `subscription` until `done(stats)`, within `limit`.
pub(crate) async fn consume_until<S: Subscription>(
    consumer: &mut LedgerConsumer,
    subscription: &mut S,
    limit: Duration,
    what: &str,
    done: impl Fn(ConsumerStats) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(consumer.stats()) {
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; the consumer's stats: {:?}",
            consumer.stats()
        );
        tokio::time::timeout(Duration::from_secs(30), consumer.drain(subscription))
            .await
            .expect("a drain ends within 30 s")
            .expect("the subscription stays open");
    }
}
