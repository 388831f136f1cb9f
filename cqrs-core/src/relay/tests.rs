//! The relay with several publish calls in flight, acknowledged out of order: the
//! checkpoint stays on the acknowledged prefix, one message per stream is in flight, the
//! window is never exceeded, and shutdown awaits what is in flight.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{
    Ack, CheckpointStore, EventData, EventLog, ExpectedVersion, InMemoryEventStore,
    InMemoryPublisher, OutboundMessage, Position, PublishError, Publisher, Relay, RelayConfig,
    StreamId, SubjectScheme,
};

/// A publisher whose calls wait until the test releases them, in any order.
#[derive(Clone, Default)]
struct Gated {
    inner: InMemoryPublisher,
    state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    /// The waiting calls, oldest first.
    gates: Vec<oneshot::Sender<()>>,
    streams_in_flight: HashSet<StreamId>,
    messages_in_flight: usize,
    most_messages_in_flight: usize,
    most_calls_in_flight: usize,
    calls_in_flight: usize,
    /// A stream that had two messages in flight at once.
    violation: Option<StreamId>,
}

impl Gated {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases the newest waiting call; false if none waits.
    fn release_newest(&self) -> bool {
        let gate = self.state().gates.pop();
        gate.map(|gate| gate.send(())).is_some()
    }
}

impl Publisher for Gated {
    async fn publish<'a>(&'a self, batch: &'a [OutboundMessage]) -> Vec<Result<Ack, PublishError>> {
        let (open, opened) = oneshot::channel();
        {
            let mut state = self.state();
            for message in batch {
                if !state.streams_in_flight.insert(message.stream.clone()) {
                    state.violation = Some(message.stream.clone());
                }
            }
            state.messages_in_flight += batch.len();
            state.most_messages_in_flight =
                state.most_messages_in_flight.max(state.messages_in_flight);
            state.calls_in_flight += 1;
            state.most_calls_in_flight = state.most_calls_in_flight.max(state.calls_in_flight);
            state.gates.push(open);
        }
        let _ = opened.await;
        let results = self.inner.publish(batch).await;
        let mut state = self.state();
        for message in batch {
            state.streams_in_flight.remove(&message.stream);
        }
        state.messages_in_flight -= batch.len();
        state.calls_in_flight -= 1;
        results
    }
}

/// `streams` streams of `events` events each, appended round robin (one event per append).
async fn populate(store: &InMemoryEventStore, streams: usize, events: usize) -> Vec<StreamId> {
    let ids: Vec<_> = (0..streams)
        .map(|i| StreamId::new("account", format!("{i}")).expect("id"))
        .collect();
    for _ in 0..events {
        for id in &ids {
            let event = EventData::new("Ev", b"{}".to_vec());
            store
                .append(id, ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
        }
    }
    ids
}

/// Every event at or before the saved checkpoint is acknowledged (stored by the broker).
async fn checkpoint_is_on_the_acknowledged_prefix(
    store: &InMemoryEventStore,
    broker: &InMemoryPublisher,
) -> Position {
    let checkpoint = store
        .load_checkpoint("relay:gated")
        .await
        .expect("load")
        .unwrap_or(Position::START);
    let acked: HashSet<Position> = broker.messages().iter().map(|m| m.position).collect();
    for sequence in 1..=checkpoint.sequence {
        assert!(
            acked.contains(&Position::new(0, sequence)),
            "the checkpoint {checkpoint} is past the unacknowledged event {sequence}"
        );
    }
    checkpoint
}

fn relay_config() -> RelayConfig {
    RelayConfig {
        window: 256,
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn calls_acknowledged_out_of_order_keep_the_checkpoint_on_the_acknowledged_prefix() {
    let store = InMemoryEventStore::new();
    let ids = populate(&store, 300, 3).await;
    let publisher = Gated::default();
    let scheme = SubjectScheme::new("bank").expect("prefix");
    let mut task = {
        let (store, publisher) = (store.clone(), publisher.clone());
        tokio::spawn(async move {
            Relay::new("gated", &store, publisher, scheme)
                .with_config(relay_config())
                .catch_up()
                .await
        })
    };
    let stats = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // Let the relay fill its window, then answer the newest call first.
            tokio::time::sleep(Duration::from_millis(2)).await;
            checkpoint_is_on_the_acknowledged_prefix(&store, &publisher.inner).await;
            if !publisher.release_newest() && task.is_finished() {
                return (&mut task).await.expect("the relay task");
            }
        }
    })
    .await
    .expect("the relay catches up within 30 s")
    .expect("the relay catches up");

    assert_eq!(stats.published, 900);
    assert_eq!(stats.checkpoint, Position::new(0, 900));
    assert_eq!(
        checkpoint_is_on_the_acknowledged_prefix(&store, &publisher.inner).await,
        Position::new(0, 900)
    );
    let state = publisher.state();
    assert_eq!(state.violation, None, "one message in flight per stream");
    assert!(
        state.most_calls_in_flight > 1,
        "several publish calls were in flight at once"
    );
    assert!(
        state.most_messages_in_flight <= 256,
        "never more than the window"
    );
    let messages = publisher.inner.messages();
    for id in &ids {
        let versions: Vec<u64> = messages
            .iter()
            .filter(|m| &m.stream == id)
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, [1, 2, 3], "{id} in order");
    }
}

#[tokio::test]
async fn shutdown_awaits_the_calls_in_flight_and_sends_nothing_new() {
    let store = InMemoryEventStore::new();
    populate(&store, 300, 2).await;
    let publisher = Gated::default();
    let scheme = SubjectScheme::new("bank").expect("prefix");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = {
        let (store, publisher) = (store.clone(), publisher.clone());
        tokio::spawn(async move {
            Relay::new("gated", &store, publisher, scheme)
                .with_config(relay_config())
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    // Wait until the relay has calls in flight, then ask it to stop.
    let in_flight = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let calls = publisher.state().gates.len();
            if calls > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                return publisher.state().messages_in_flight;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the relay publishes within 10 s");
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(5)).await;
    while publisher.release_newest() {}
    let stats = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the relay stops within 10 s")
        .expect("the relay task")
        .expect("the relay stops without error");
    let sent = publisher.inner.messages().len();
    assert!(in_flight > 0);
    assert_eq!(
        stats.published,
        u64::try_from(sent).expect("a count"),
        "what was in flight was awaited and counted"
    );
    assert!(sent < 600, "not everything was sent: the relay stopped");
    let checkpoint = checkpoint_is_on_the_acknowledged_prefix(&store, &publisher.inner).await;
    assert_eq!(
        checkpoint, stats.checkpoint,
        "checkpointed before returning"
    );
    assert!(checkpoint > Position::START);
}
