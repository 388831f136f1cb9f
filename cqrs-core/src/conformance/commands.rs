//! The command layer over a store: a duplicate command that races its original.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::support::{join, read_stream};
use crate::{
    Aggregate, AppendResult, Codec, CommandOptions, DomainEvent, EventData, EventLog,
    ExpectedVersion, Inspect, JsonCodec, LogWatcher, Position, RecordedEvent, Repository, Result,
    SnapshotPolicy, SnapshotRecord, SnapshotStore, StoreStats, StreamId, StreamInfo, StreamItem,
};

/// How long the case waits for one step before it fails (it never hangs).
const STEP: Duration = Duration::from_secs(30);

/// **Contract 3 (idempotent commands), with a clock.** An aggregate whose `handle` reads
/// a clock from its services decides differently on every run. A command (with a
/// command id) is started; once it has loaded and decided, and is about to append, the
/// same command runs again to completion (the original wins). Then the first run's
/// append goes through: every event id is already stored, so the store reports a
/// duplicate, and the repository reports `already_applied` with the stored version, and
/// caches and snapshots nothing of its own decision. The stored event, the snapshot, a
/// load and the state cache (read through the next command's event) all hold the
/// winner's time.
pub async fn duplicate_command_race_keeps_the_stored_decision<
    S: SnapshotStore + Inspect + Clone + 'static,
>(
    store: S,
) {
    let gated = Gated::new(store.clone());
    let (arrived, release) = gated.hold_first_append();
    let repo = Repository::<Stamps, _>::new(gated, Clock::default())
        .with_snapshots(SnapshotPolicy::EveryEvents(1))
        .with_background_snapshots(false)
        .with_cache(16);
    let id = format!("duplicate-race-{}", Uuid::new_v4());
    let stream = Stamps::stream_id(&id).expect("a valid stamp id");
    let options = CommandOptions::new().with_command_id(Uuid::new_v4());

    let late = tokio::spawn({
        let (repo, id, options) = (repo.clone(), id.clone(), options.clone());
        async move { repo.execute_with(&id, &Stamp, &options).await }
    });
    match tokio::time::timeout(STEP, arrived).await {
        Ok(Ok(())) => {}
        other => panic!("the first run must reach its append within {STEP:?}, got {other:?}"),
    }
    // The first run decided with time 1 and waits; this run decides with time 2 and wins.
    let winner = match repo.execute_with(&id, &Stamp, &options).await {
        Ok(done) => done,
        Err(e) => panic!("the second run of the command must succeed, got {e:?}"),
    };
    assert_eq!(
        (winner.already_applied, winner.events, winner.version),
        (false, 1, 1),
        "the run that appended first wrote its event"
    );
    let _ = release.send(());
    let loser = match tokio::time::timeout(STEP, join(late)).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => panic!("[contract 3] the duplicate run must succeed, got {e:?}"),
        Err(_) => panic!("the duplicate run must finish within {STEP:?}"),
    };
    assert_eq!(
        (
            loser.already_applied,
            loser.events,
            loser.version,
            loser.snapshot_taken
        ),
        (true, 0, 1, false),
        "[contract 3, idempotent append] the run whose events were already stored reports \
         already_applied with the stored version, writes nothing and takes no snapshot"
    );
    assert_eq!(
        loser.position, winner.position,
        "[contract 3, idempotent append] the duplicate reports the original's position"
    );

    let stored = read_stream(&store, &stream, 1).await;
    assert_eq!(stored.len(), 1, "one event is stored");
    let codec = JsonCodec::new();
    let stored_event: StampEvent = codec.decode(&stored[0]).expect("a stamp decodes");
    assert_eq!(
        stored_event.at, 2,
        "the stored event is the winner's (time 2)"
    );

    let snapshot = match store.load_snapshot(&stream).await {
        Ok(Some(snapshot)) => snapshot,
        other => panic!("the winner's snapshot (every event) must be stored, got {other:?}"),
    };
    let snapshotted: Stamps = codec
        .decode_snapshot(&snapshot.payload)
        .expect("a stamps snapshot decodes");
    assert_eq!(
        snapshotted.last,
        Some(2),
        "[contract 3] the snapshot holds the stored decision, not the duplicate's"
    );
    let loaded = match repo.load(&id).await {
        Ok(loaded) => loaded,
        Err(e) => panic!("loading {id} must succeed, got {e:?}"),
    };
    assert_eq!(
        loaded.state.last,
        Some(2),
        "a load gives the stored decision"
    );

    // The next command runs on the cached state: its event carries the state's last time.
    let next = match repo.execute(&id, &Stamp).await {
        Ok(next) => next,
        Err(e) => panic!("a command after the race must succeed, got {e:?}"),
    };
    assert_eq!(next.version, 2);
    let stored = read_stream(&store, &stream, 2).await;
    let next_event: StampEvent = codec.decode(&stored[0]).expect("a stamp decodes");
    assert_eq!(
        next_event.previous,
        Some(2),
        "[contract 3] the state cache holds the stored decision, not the duplicate's"
    );
}

/// A clock that never gives the same time twice: each `handle` decides differently.
#[derive(Debug, Default)]
struct Clock(AtomicU64);

impl Clock {
    fn now(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// An aggregate that stamps the time of each command.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Stamps {
    last: Option<u64>,
}

#[derive(Debug)]
struct Stamp;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StampEvent {
    at: u64,
    previous: Option<u64>,
}

impl DomainEvent for StampEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Stamped"];

    fn event_type(&self) -> &'static str {
        "Stamped"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Stamps {
    const TYPE: &'static str = "conformance-stamps";
    type Command = Stamp;
    type Event = StampEvent;
    type Error = Never;
    type Services = Clock;

    fn handle(&self, _: &Stamp, clock: &Clock) -> std::result::Result<Vec<StampEvent>, Never> {
        Ok(vec![StampEvent {
            at: clock.now(),
            previous: self.last,
        }])
    }

    fn apply(&mut self, event: StampEvent) {
        self.last = Some(event.at);
    }
}

/// A store that holds the first append until released, and forwards everything else
/// (every method, so the backend's own versions of the provided ones are kept).
#[derive(Debug, Clone)]
struct Gated<S> {
    store: S,
    #[allow(clippy::type_complexity)]
    first: Arc<Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>>,
}

impl<S> Gated<S> {
    fn new(store: S) -> Self {
        Gated {
            store,
            first: Arc::new(Mutex::new(None)),
        }
    }

    /// Holds the next append: the first receiver fires when it arrives, and it goes on
    /// when the sender is used (or dropped).
    fn hold_first_append(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (arrived_tx, arrived_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some((arrived_tx, release_rx));
        (arrived_rx, release_tx)
    }
}

impl<S: EventLog> EventLog for Gated<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let gate = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((arrived, release)) = gate {
            let _ = arrived.send(());
            let _ = tokio::time::timeout(STEP, release).await;
        }
        self.store.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.store.read_stream(stream, from_version)
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.store.read_all(after, limit)
    }

    fn watch(&self) -> LogWatcher {
        self.store.watch()
    }
}

impl<S: SnapshotStore> SnapshotStore for Gated<S> {
    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
        self.store.read_stream_from_snapshot(stream)
    }

    fn load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Future<Output = Result<Option<SnapshotRecord>>> + Send + 'a {
        self.store.load_snapshot(stream)
    }

    fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: SnapshotRecord,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.store.save_snapshot(stream, snapshot)
    }
}

impl<S: Inspect> Inspect for Gated<S> {
    fn find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>>> + Send + 'a {
        self.store.find_event(stream, event_id)
    }

    fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.store.count_events(after)
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        self.store.list_streams()
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
        self.store.stats()
    }
}

/// **Contract 2 through the command layer.** 8 tasks run 12 `Add` commands each on one
/// tally at once, half of them through a repository with a state cache and half
/// through one without, with a retry policy of 64 attempts. Every command succeeds or
/// ends in `CommandError::Conflict` (nothing else), and the stored stream is exactly the
/// successful commands: as many events as successes, versions contiguous, and the
/// loaded state's sum is the sum of the successful commands' amounts.
pub async fn concurrent_commands_apply_once_each<S: Inspect + Clone + 'static>(store: S) {
    use super::tally::{Tally, TallyCommand, fresh_tally_id};

    const TASKS: u64 = 8;
    const COMMANDS: u64 = 12;
    let id = fresh_tally_id("concurrent-commands");
    let plain =
        Repository::<Tally, S>::new(store.clone(), ()).with_retry(crate::RetryPolicy::attempts(64));
    let cached = plain.clone().with_cache(16);
    let barrier = Arc::new(tokio::sync::Barrier::new(
        usize::try_from(TASKS).unwrap_or(8),
    ));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let repo = if task % 2 == 0 {
                plain.clone()
            } else {
                cached.clone()
            };
            let (id, barrier) = (id.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut outcomes = Vec::new();
                for i in 0..COMMANDS {
                    let n = task * 100 + i + 1;
                    outcomes.push((n, repo.execute(&id, &TallyCommand::Add(n)).await));
                }
                outcomes
            })
        })
        .collect();
    let (mut succeeded, mut sum) = (0u64, 0u64);
    for task in tasks {
        for (n, outcome) in join(task).await {
            match outcome {
                Ok(done) => {
                    assert_eq!(
                        (done.events, done.already_applied),
                        (1, false),
                        "[contract 2] a successful Add appends its one event"
                    );
                    succeeded += 1;
                    sum += n;
                }
                Err(crate::CommandError::Conflict { .. }) => {}
                Err(other) => panic!(
                    "[contract 2] a contended command succeeds or ends in a conflict, got \
                     {other:?}"
                ),
            }
        }
    }
    assert!(
        succeeded > 0,
        "[contract 2] some contended commands succeed"
    );
    let stream = Tally::stream_id(&id).expect("a valid tally id");
    let stored = read_stream(&store, &stream, 1).await;
    assert_eq!(
        stored.iter().map(|r| r.version).collect::<Vec<_>>(),
        (1..=succeeded).collect::<Vec<_>>(),
        "[contract 2] the stream holds exactly the successful commands, contiguous"
    );
    let loaded = match plain.load(&id).await {
        Ok(loaded) => loaded,
        Err(e) => panic!("loading tally {id} must succeed, got {e:?}"),
    };
    assert_eq!(
        (loaded.state.sum, loaded.state.adds, loaded.version),
        (sum, succeeded, succeeded),
        "[contract 2] the state is the sum of the successful commands, each applied once"
    );
}
