//! Running a projection: catch-up, live tailing, rebuild, error policy.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::retry::retry;
use crate::telemetry;
use crate::{
    CheckpointStrategy, Codec, InMemoryCheckpoint, Inspect, JsonCodec, Position, Projection,
    ProjectionError, RetryPolicy,
};

mod batch;
mod pass;
mod progress;
mod tally;

pub use progress::Progress;

use batch::{PassError, store_failed, strategy_error, warn};

/// How a [`ProjectionRunner`] reads and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Records read per batch (and per checkpoint).
    pub batch_size: usize,
    /// How long a live runner waits for a store notification before it polls anyway.
    pub poll_interval: Duration,
    /// Retries of a failing batch, checkpoint save or log read before the runner stops.
    pub retry: RetryPolicy,
}

impl Default for RunnerConfig {
    /// Batches of 500, polling every second, 5 attempts with delays from 50 ms to 2 s.
    fn default() -> Self {
        RunnerConfig {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(2),
            },
        }
    }
}

/// When a runner saves a checkpoint that is written apart from its batch
/// ([`StoreCheckpoint`](crate::StoreCheckpoint), [`InMemoryCheckpoint`]): after `events`
/// records were read since the last save, or `interval` passed since it, whichever
/// comes first, and always when a pass reaches the end of the log or stops. Set with
/// [`ProjectionRunner::with_checkpoint_cadence`].
///
/// The default saves after every batch. Saving less often saves a store write per
/// batch; after a crash, an at-least-once projection then gets again what was applied
/// since the last save. Transactional strategies write the checkpoint in each batch's
/// transaction whatever the cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointCadence {
    /// Records read since the last save that call for a save (1: every batch).
    pub events: u64,
    /// Time since the last save that calls for a save.
    pub interval: Duration,
}

impl Default for CheckpointCadence {
    /// After every batch.
    fn default() -> Self {
        CheckpointCadence {
            events: 1,
            interval: Duration::ZERO,
        }
    }
}

/// Runs one [`Projection`] over an event log's global log ([`Inspect`]: it reads the log and counts it for progress), keeping its checkpoint
/// as its [`CheckpointStrategy`] `K` says.
///
/// - [`catch_up`](Self::catch_up) reads from the checkpoint to the end of the log in
///   batches, applying and checkpointing each (or as the [`CheckpointCadence`] says);
///   the next batch is read while the current one is applied;
/// - [`run_until`](Self::run_until) catches up, then follows the log live: woken by the
///   store's notifications, polling every [`RunnerConfig::poll_interval`] as a fallback;
/// - [`rebuild`](Self::rebuild) resets the read model and its checkpoint and replays the
///   whole log, reporting [`Progress`].
///
/// Build it with [`new`](Self::new) for a read model in memory (its checkpoint stays in
/// memory: [`InMemoryCheckpoint`]), or with [`with_strategy`](Self::with_strategy)
/// for any other [`CheckpointStrategy`]: [`StoreCheckpoint`](crate::StoreCheckpoint) for
/// external sinks and process managers, the backends' `TransactionalCheckpoint` for read
/// models in the store's own database.
///
/// Error policy: a failing batch is retried with backoff; if it still fails, the runner
/// applies its events one by one to find the failing event, and stops with
/// [`ProjectionError::Stopped`] naming it. An event that cannot be decoded stops the
/// runner at once (retrying cannot help). Nothing is skipped silently: the checkpoint
/// stays just before the failing event.
///
/// # Examples
/// ```
/// # use std::sync::{Arc, Mutex};
/// # use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// # #[derive(Debug, Default)]
/// # struct Total(u64);
/// # impl Projection for Total {
/// #     type Event = CounterEvent;
/// #     fn name(&self) -> &str { "total" }
/// #     async fn apply(&mut self, _: &mut (), batch: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
/// #         for e in batch { let CounterEvent::Incremented { by } = e.event; self.0 += by; }
/// #         Ok(())
/// #     }
/// # }
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, InMemoryEventStore, ProjectionRunner, StreamId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new("counter", "c1")?;
/// let event = EventData::new("Incremented", br#"{"Incremented":{"by":3}}"#.to_vec());
/// store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
///
/// let mut runner = ProjectionRunner::new(store.clone(), Total::default());
/// runner.catch_up().await?;
/// assert_eq!(runner.projection().0, 3);
/// # Ok(())
/// # }
/// ```
pub struct ProjectionRunner<S, P, K = InMemoryCheckpoint, C = JsonCodec> {
    store: S,
    projection: P,
    strategy: K,
    codec: C,
    config: RunnerConfig,
    cadence: CheckpointCadence,
    read_ahead: bool,
    by_type: bool,
}

impl<S, P, K, C> fmt::Debug for ProjectionRunner<S, P, K, C>
where
    K: CheckpointStrategy + fmt::Debug,
    P: Projection<K::Context>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &self.projection.name())
            .field("strategy", &self.strategy)
            .field("config", &self.config)
            .field("cadence", &self.cadence)
            .field("read_ahead", &self.read_ahead)
            .field("by_type", &self.by_type)
            .finish_non_exhaustive()
    }
}

impl<S: Inspect, P: Projection> ProjectionRunner<S, P> {
    /// A runner for a read model in memory, with a new [`InMemoryCheckpoint`]: the
    /// runner starts by rebuilding the read model from the whole log. JSON codec,
    /// default configuration.
    pub fn new(store: S, projection: P) -> Self {
        Self::with_strategy(store, projection, InMemoryCheckpoint::new())
    }
}

impl<S, P, K> ProjectionRunner<S, P, K>
where
    S: Inspect,
    K: CheckpointStrategy,
    P: Projection<K::Context>,
{
    /// A runner keeping the checkpoint as `strategy` says. JSON codec, default
    /// configuration.
    pub fn with_strategy(store: S, projection: P, strategy: K) -> Self {
        ProjectionRunner {
            store,
            projection,
            strategy,
            codec: JsonCodec::new(),
            config: RunnerConfig::default(),
            cadence: CheckpointCadence::default(),
            read_ahead: true,
            by_type: true,
        }
    }
}

impl<S, P, K, C> ProjectionRunner<S, P, K, C>
where
    S: Inspect,
    K: CheckpointStrategy,
    P: Projection<K::Context>,
    C: Codec,
{
    /// Uses another codec (for example a [`JsonCodec`] with upcasters).
    pub fn with_codec<C2: Codec>(self, codec: C2) -> ProjectionRunner<S, P, K, C2> {
        ProjectionRunner {
            store: self.store,
            projection: self.projection,
            strategy: self.strategy,
            codec,
            config: self.config,
            cadence: self.cadence,
            read_ahead: self.read_ahead,
            by_type: self.by_type,
        }
    }

    /// Sets the configuration.
    pub fn with_config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Whether the next batch is read while the current one is applied (the default:
    /// yes). Turn it off when reading and applying share a single connection, or to
    /// measure what it gains.
    pub fn with_read_ahead(mut self, read_ahead: bool) -> Self {
        self.read_ahead = read_ahead;
        self
    }

    /// Whether the runner asks the store only for the records its projection can take
    /// (the default: yes, on a store that [filters by type](crate::EventLog::filters_types)
    /// with a codec that [names the stored types](Codec::stored_types)).
    ///
    /// The types asked for are `P::Event::EVENT_TYPES` and the stored types the codec
    /// may upcast into them; [`Projection::wants`] then narrows. Records of other types
    /// are passed over in the store: they never reach `wants`, whatever it says, as a
    /// projection cannot decode them. Progress then counts the records of those types.
    /// Turn it off to read every record (or to measure what it gains).
    pub fn with_type_filter(mut self, by_type: bool) -> Self {
        self.by_type = by_type;
        self
    }

    /// Sets when a checkpoint written apart from its batch is saved (the default: after
    /// every batch).
    pub fn with_checkpoint_cadence(mut self, cadence: CheckpointCadence) -> Self {
        self.cadence = cadence;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The projection, mutably.
    pub fn projection_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// The projection, giving up the runner (a new runner over it, with a new
    /// [`InMemoryCheckpoint`], rebuilds it).
    pub fn into_projection(self) -> P {
        self.projection
    }

    /// The checkpoint strategy.
    pub fn strategy(&self) -> &K {
        &self.strategy
    }

    /// The stored checkpoint ([`Position::START`] if there is none). With an
    /// [`InMemoryCheckpoint`], where the read model is.
    ///
    /// # Errors
    /// [`ProjectionError::Store`] or [`ProjectionError::Projection`] if it cannot be read
    /// after retries.
    pub async fn checkpoint(&mut self) -> Result<Position, ProjectionError> {
        let name = self.projection.name().to_owned();
        let loaded = retry!(
            self.config.retry,
            self.strategy.load(&name).await,
            warn(&name, "cannot load the checkpoint")
        );
        loaded
            .map(|position| position.unwrap_or(Position::START))
            .map_err(|(e, _)| strategy_error(&name, "load_checkpoint", e))
    }

    /// Where a run starts: the strategy's [`start`](CheckpointStrategy::start).
    async fn start(&mut self) -> Result<Position, ProjectionError> {
        let name = self.projection.name().to_owned();
        let started = retry!(
            self.config.retry,
            self.strategy.start(&mut self.projection).await,
            warn(&name, "cannot start")
        );
        started.map_err(|(e, _)| {
            telemetry::stopped(&name);
            strategy_error(&name, "start", e)
        })
    }

    /// Processes the log from the checkpoint to its current end; returns the records read.
    ///
    /// # Errors
    /// See [`ProjectionError`]; the checkpoint stays at the last batch applied.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError> {
        let mut position = self.start().await?;
        self.process(&mut position, None, &mut || false).await
    }

    /// Catches up, then follows the log live until `shutdown` completes.
    ///
    /// Shutdown is checked between batches, never in the middle of one.
    ///
    /// # Errors
    /// See [`ProjectionError`].
    pub async fn run_until(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ProjectionError> {
        let mut shutdown = pin!(shutdown);
        let mut stopped = false;
        let mut watcher = self.store.watch();
        let mut position = self.start().await?;
        loop {
            // Mark before reading: an append that lands while we read still wakes us.
            watcher.mark_seen();
            let mut should_stop = || {
                stopped = stopped || shutdown.as_mut().now_or_never().is_some();
                stopped
            };
            self.process(&mut position, None, &mut should_stop).await?;
            if should_stop() {
                return Ok(());
            }
            tokio::select! {
                () = watcher.changed() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = shutdown.as_mut() => return Ok(()),
            }
        }
    }

    /// Resets the read model and its checkpoint, then replays the whole log, calling
    /// `progress` after each batch once the log is counted (the count runs beside the
    /// first batches, not before them) and after the last one. Returns the records read.
    ///
    /// With a blue/green strategy (both transactional ones), the new read model is built
    /// beside the old one, which readers keep seeing until the whole log is applied; a
    /// rebuild that fails leaves the old model and checkpoint as they were
    /// ([`CheckpointStrategy::finish_rebuild`]).
    ///
    /// Run it while no other runner of this projection is running (stop the live runner
    /// first; across processes, the PostgreSQL backend's worker lock ensures it).
    ///
    /// # Errors
    /// See [`ProjectionError`].
    pub async fn rebuild(
        &mut self,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        let name = self.projection.name().to_owned();
        let reset = retry!(
            self.config.retry,
            self.strategy.reset(&mut self.projection).await,
            warn(&name, "reset failed")
        );
        reset.map_err(|(e, _)| strategy_error(&name, "reset", e))?;
        let mut position = Position::START;
        let read = self
            .process(&mut position, Some(&mut progress), &mut || false)
            .await?;
        let finished = retry!(
            self.config.retry,
            self.strategy.finish_rebuild(&mut self.projection).await,
            warn(&name, "cannot finish the rebuild")
        );
        finished.map_err(|(e, _)| strategy_error(&name, "finish_rebuild", e))?;
        Ok(read)
    }

    /// Reads from `position` to the end of the log (retrying failed reads from the last
    /// checkpoint), applying batches; stops early when `should_stop` says so.
    async fn process(
        &mut self,
        position: &mut Position,
        progress: Option<&mut (dyn FnMut(Progress) + Send)>,
        should_stop: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<u64, ProjectionError> {
        let name = self.projection.name().to_owned();
        let retry = self.config.retry;
        // The total is counted beside the first pass's reads (a query: only when someone
        // is watching).
        let mut report = progress.map(|callback| (callback, None, Instant::now()));
        let mut done = 0u64;
        // A failed read is retried from the last checkpoint; a projection error is final.
        let outcome = retry!(
            retry,
            match self
                .pass(&name, position, &mut done, &mut report, should_stop)
                .await
            {
                Err(PassError::Store(e)) => Err(e),
                Err(PassError::Projection(e)) => Ok(Err(e)),
                Ok(()) => Ok(Ok(())),
            },
            warn(&name, "reading the log failed")
        );
        let outcome = match outcome {
            Ok(Ok(())) => return Ok(done),
            Ok(Err(e)) => e,
            Err((source, _)) => store_failed(&name, source),
        };
        telemetry::stopped(&name);
        Err(outcome)
    }
}
