//! Command execution: load (snapshot + tail), handle, append, with retries and snapshots.

use std::fmt;

use tracing::{Instrument, field};

use crate::cache::StateCache;
use crate::snapshot::SnapshotIo;
use crate::telemetry;
use crate::{
    Aggregate, Codec, CommandError, CommandOptions, DomainEvent, Error, EventData, Executed,
    ExpectedVersion, Inspect, JsonCodec, Loaded, Result, RetryPolicy, SnapshotPolicy,
    SnapshotRecord, SnapshotStore, StreamId,
};

/// Loads aggregates and executes commands against an event log: any store with
/// [`Inspect`] (which implies [`EventLog`](crate::EventLog)); snapshots need a [`SnapshotStore`] too.
///
/// `execute` runs `load (snapshot + tail) → handle → append(Exact(version))`. On a
/// conflict it reloads and decides again, as the [`RetryPolicy`] allows; snapshots are
/// taken as the [`SnapshotPolicy`] says, after the append (in a background task by
/// default, off the caller's path; a failed snapshot is only logged).
///
/// Cloning a repository clones the store handle (use a cheaply clonable store:
/// `InMemoryEventStore`, an `Arc`, a pool).
///
/// # Examples
/// ```
/// # use cqrs_core::{Aggregate, DomainEvent};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Default, Serialize, Deserialize)]
/// # struct Counter { value: u64 }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("cannot increment by zero")]
/// # struct IncrementByZero;
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64;
/// #     type Event = CounterEvent;
/// #     type Error = IncrementByZero;
/// #     type Services = ();
/// #     fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, IncrementByZero> {
/// #         if *by == 0 { return Err(IncrementByZero); }
/// #         Ok(vec![CounterEvent::Incremented { by: *by }])
/// #     }
/// #     fn apply(&mut self, event: CounterEvent) {
/// #         match event { CounterEvent::Incremented { by } => self.value += by }
/// #     }
/// # }
/// use cqrs_core::{CommandError, InMemoryEventStore, Repository, SnapshotPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let repo = Repository::<Counter, _>::new(InMemoryEventStore::new(), ())
///     .with_snapshots(SnapshotPolicy::EveryEvents(100));
/// repo.execute("c1", &5).await?;
/// repo.execute("c1", &2).await?;
/// assert_eq!(repo.load("c1").await?.state.value, 7);
/// assert!(matches!(repo.execute("c1", &0).await, Err(CommandError::Rejected(IncrementByZero))));
/// # Ok(())
/// # }
/// ```
pub struct Repository<A: Aggregate, S, C = JsonCodec> {
    pub(crate) store: S,
    pub(crate) codec: C,
    pub(crate) services: std::sync::Arc<A::Services>,
    pub(crate) snapshots: SnapshotPolicy,
    /// Set with the policy, by [`Repository::with_snapshots`]: `None` until then.
    pub(crate) snapshot_io: Option<SnapshotIo<S>>,
    pub(crate) background_snapshots: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) cache: Option<std::sync::Arc<StateCache<A>>>,
}

impl<A: Aggregate, S: Clone, C: Clone> Clone for Repository<A, S, C> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            codec: self.codec.clone(),
            services: self.services.clone(),
            snapshots: self.snapshots,
            snapshot_io: self.snapshot_io,
            background_snapshots: self.background_snapshots,
            retry: self.retry,
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate, S, C> fmt::Debug for Repository<A, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("snapshots", &self.snapshots)
            .field("background_snapshots", &self.background_snapshots)
            .field("retry", &self.retry)
            .field("cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl<A, S> Repository<A, S, JsonCodec>
where
    A: Aggregate,
    S: Inspect + Clone + 'static,
{
    /// A repository over `store` with the JSON codec, no snapshots and the default retry
    /// policy; `services` is handed to every [`Aggregate::handle`].
    pub fn new(store: S, services: A::Services) -> Self {
        Repository {
            store,
            codec: JsonCodec::new(),
            services: std::sync::Arc::new(services),
            snapshots: SnapshotPolicy::Never,
            snapshot_io: None,
            background_snapshots: true,
            retry: RetryPolicy::default(),
            cache: None,
        }
    }
}

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: Inspect + Clone + 'static,
    C: Codec,
{
    /// Uses another codec (for example a [`JsonCodec`] with upcasters).
    pub fn with_codec<C2: Codec>(self, codec: C2) -> Repository<A, S, C2> {
        Repository {
            store: self.store,
            codec,
            services: self.services,
            snapshots: self.snapshots,
            snapshot_io: self.snapshot_io,
            background_snapshots: self.background_snapshots,
            retry: self.retry,
            cache: self.cache,
        }
    }

    /// Whether snapshots are saved by a background task (the default) or before
    /// `execute` returns (deterministic, for tests and tools).
    pub fn with_background_snapshots(mut self, background: bool) -> Self {
        self.background_snapshots = background;
        self
    }

    /// Sets the retry policy for conflicts.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Keeps the states of up to `capacity` recently used aggregates in memory, so a
    /// command on one of them skips the load: it is one append, one round trip on a
    /// server store. `0` turns the cache off (the default). Clones of the repository
    /// share the cache.
    ///
    /// Always safe, with other processes writing too: a command on a cached state
    /// appends with [`ExpectedVersion::Exact`] its version, so if another writer got
    /// there first the append is a conflict, the entry is dropped, and the command runs
    /// again on a fresh load (that retry does not count against the
    /// [`RetryPolicy`]). A command that a cached state refuses, or for which it decides
    /// no events, is decided again on a fresh load in the same way, since nothing is
    /// appended that could detect staleness: only commands that write events are
    /// served from the cache. A successful append puts the state after the new events
    /// back; a refusal on a fresh load puts that state back.
    ///
    /// The state after a command is then built by applying the events as `handle`
    /// returned them, not as they decode from the store: events must round-trip through
    /// the codec (the [test kit](crate::testkit) checks every event it sees).
    /// [`load`](Self::load) always reads the store.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| std::sync::Arc::new(StateCache::new(capacity)));
        self
    }

    /// Drops the cached state of the aggregate with this id, if the repository caches
    /// states ([`with_cache`](Self::with_cache)): the next command loads it from the
    /// store. For a change the stream's version does not show, such as a
    /// [`forget`](crate::Shredded::forget) of personal data the state holds.
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`] for a bad id.
    pub fn evict(&self, id: &str) -> Result<()> {
        let stream = A::stream_id(id)?;
        if let Some(cache) = &self.cache {
            cache.take(&stream);
        }
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Loads the aggregate with this id: its latest usable snapshot (if the policy takes
    /// snapshots) plus the events after it.
    ///
    /// A snapshot whose schema version is not [`Aggregate::SNAPSHOT_VERSION`], or that
    /// does not decode, is ignored (logged, and reported in
    /// [`Loaded::snapshot_ignored`]); the stream is then replayed in full.
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`] for a bad id; [`Error::UnknownEventType`],
    /// [`Error::Decode`] or [`Error::Corrupt`] for a record that cannot be applied;
    /// [`Error::Store`] if the store fails.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = A::stream_id(id)?;
        self.load_stream(&stream).await
    }

    /// Executes `command` on the aggregate with this id (no command id: not idempotent).
    ///
    /// # Errors
    /// See [`CommandError`].
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
    ) -> Result<Executed, CommandError<A::Error>> {
        self.execute_with(id, command, &CommandOptions::default())
            .await
    }

    /// Executes `command` with options: a command id for idempotency, metadata.
    ///
    /// # Errors
    /// See [`CommandError`].
    pub async fn execute_with(
        &self,
        id: &str,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<Executed, CommandError<A::Error>> {
        let span = tracing::info_span!(
            "cqrs.command",
            aggregate = A::TYPE,
            id,
            command_id = field::Empty,
            correlation_id = field::Empty,
            causation_id = field::Empty,
            version = field::Empty,
            events = field::Empty,
            attempts = field::Empty,
            outcome = field::Empty,
        );
        // The ids its events will carry (`CommandOptions::event_metadata`).
        let metadata = &options.metadata;
        let correlation = options.correlation_id.or(options.command_id);
        let ids = [
            ("command_id", options.command_id),
            ("correlation_id", correlation.or(metadata.correlation_id)),
            ("causation_id", options.command_id.or(metadata.causation_id)),
        ];
        for (name, id) in ids {
            if let Some(id) = id {
                span.record(name, field::display(id));
            }
        }
        let started = std::time::Instant::now();
        let result = self
            .execute_inner(id, command, options)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(done) => {
                span.record("version", done.version);
                span.record("events", done.events);
                span.record("attempts", done.attempts);
                if done.already_applied {
                    "already_applied"
                } else {
                    "ok"
                }
            }
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict { .. }) => "conflict",
            Err(CommandError::Invalid(_)) => "invalid",
            Err(CommandError::Store(_)) => "store_error",
        };
        span.record("outcome", outcome);
        telemetry::command(A::TYPE, outcome, started.elapsed());
        result
    }

    async fn execute_inner(
        &self,
        id: &str,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<Executed, CommandError<A::Error>> {
        let stream = A::stream_id(id)?;
        let metadata = options.event_metadata();
        let mut attempt = 0;
        // A cached state is used on the first attempt only; a retry loads.
        let mut cached = self.cache.as_ref().and_then(|cache| cache.take(&stream));
        loop {
            attempt += 1;
            let from_cache = cached.is_some();
            let loaded = match cached.take() {
                Some((state, version)) => Loaded {
                    state,
                    version,
                    snapshot_version: None,
                    snapshot_ignored: None,
                    events_replayed: 0,
                },
                None => self.load_stream(&stream).await?,
            };
            let decided = loaded.state.handle(command, &self.services);
            if from_cache && !matches!(&decided, Ok(events) if !events.is_empty()) {
                // A refusal or an empty decision writes nothing, so no expected-version
                // check would catch a stale cached state: decide again on a fresh load.
                attempt -= 1;
                continue;
            }
            let events = match decided {
                Ok(events) => events,
                Err(rejection) => {
                    // A redelivered command may be refused by the state its first run
                    // produced ("already open"): that is success, not a rejection.
                    if let Some(done) = self.already_applied(&stream, options, attempt).await? {
                        return Ok(done);
                    }
                    self.cache_state(&stream, loaded.state, loaded.version);
                    return Err(CommandError::Rejected(rejection));
                }
            };
            if events.is_empty() {
                self.cache_state(&stream, loaded.state, loaded.version);
                return Ok(Executed {
                    stream,
                    version: loaded.version,
                    position: None,
                    events: 0,
                    already_applied: false,
                    attempts: attempt,
                    snapshot_taken: false,
                });
            }
            let batch = events
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    Ok(EventData {
                        event_id: options.event_id(&stream, i),
                        event_type: event.event_type().to_owned(),
                        schema_version: event.schema_version(),
                        payload: self.codec.encode(event)?,
                        metadata: metadata.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let count = batch.len();
            let bytes = batch.iter().map(|event| event.payload.len()).sum();
            let expected = ExpectedVersion::Exact(loaded.version);
            let append_span = tracing::debug_span!(
                "cqrs.append",
                %stream,
                %expected,
                events = count,
                cached = from_cache,
                outcome = field::Empty
            );
            let appended = self
                .store
                .append(&stream, expected, batch)
                .instrument(append_span.clone())
                .await;
            match appended {
                Ok(result) if result.duplicate => {
                    // Every event id was already stored: an earlier run of this command
                    // (same command id) won. Its events are the ones stored, and they may
                    // differ from this run's decision (a clock, an id generator in the
                    // services), so nothing of this run is cached or snapshotted.
                    append_span.record("outcome", "duplicate");
                    return Ok(Executed {
                        stream,
                        version: result.version,
                        position: Some(result.position),
                        events: 0,
                        already_applied: true,
                        attempts: attempt,
                        snapshot_taken: false,
                    });
                }
                Ok(result) => {
                    append_span.record("outcome", "ok");
                    telemetry::appended(A::TYPE, count, bytes);
                    let snapshot_due = self.snapshots.due(loaded.version, result.version);
                    if snapshot_due || self.cache.is_some() {
                        let mut state = loaded.state;
                        for event in events {
                            state.apply(event);
                        }
                        if snapshot_due {
                            self.save_snapshot(stream.clone(), &state, result.version)
                                .await;
                        }
                        self.cache_state(&stream, state, result.version);
                    }
                    return Ok(Executed {
                        stream,
                        version: result.version,
                        position: Some(result.position),
                        events: count,
                        already_applied: false,
                        attempts: attempt,
                        snapshot_taken: snapshot_due,
                    });
                }
                Err(conflict @ Error::Conflict { .. }) => {
                    append_span.record("outcome", "conflict");
                    telemetry::conflict(A::TYPE);
                    if let Some(done) = self.already_applied(&stream, options, attempt).await? {
                        return Ok(done);
                    }
                    if from_cache {
                        // Another writer moved the stream on: load it and try again, as
                        // if the cache had missed.
                        attempt -= 1;
                        continue;
                    }
                    if attempt >= self.retry.max_attempts {
                        return Err(CommandError::Conflict {
                            stream,
                            attempts: attempt,
                            source: conflict,
                        });
                    }
                    telemetry::retry(A::TYPE);
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                }
                Err(other) => {
                    append_span.record("outcome", "error");
                    return Err(other.into());
                }
            }
        }
    }

    /// Puts a state back in the cache, if there is one.
    fn cache_state(&self, stream: &StreamId, state: A, version: u64) {
        if let Some(cache) = &self.cache {
            cache.put(stream.clone(), state, version);
        }
    }

    /// Whether a command with these options (its command id) was already applied to the
    /// aggregate with this id, and if so what it did (`already_applied` set, no events).
    ///
    /// A process manager uses this to check that a step was *not* taken before it takes
    /// an exclusive alternative (e.g. "credit the destination" only if "refund the source"
    /// did not happen), so a redelivered event cannot take both branches. Without a
    /// command id the answer is always `None`. A command that was rejected, or that
    /// decided no events, leaves no trace and is reported as not applied.
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`] for a bad id; [`Error::Store`] if the store fails.
    pub async fn find_applied(
        &self,
        id: &str,
        options: &CommandOptions,
    ) -> Result<Option<Executed>> {
        let stream = A::stream_id(id)?;
        self.already_applied(&stream, options, 0).await
    }

    /// If the command has a command id and its first event is already in the stream,
    /// the outcome of that earlier run.
    async fn already_applied(
        &self,
        stream: &StreamId,
        options: &CommandOptions,
        attempts: u32,
    ) -> Result<Option<Executed>> {
        if options.command_id.is_none() {
            return Ok(None);
        }
        let first = options.event_id(stream, 0);
        Ok(self
            .store
            .find_event(stream, first)
            .await?
            .map(|record| Executed {
                stream: stream.clone(),
                version: record.version,
                position: Some(record.position),
                events: 0,
                already_applied: true,
                attempts,
                snapshot_taken: false,
            }))
    }

    pub(crate) async fn save_snapshot(&self, stream: StreamId, state: &A, version: u64) {
        let payload = match self.codec.encode_snapshot(state) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(%stream, version, error = %e, "snapshot not taken: state does not encode");
                telemetry::snapshot(A::TYPE, false);
                return;
            }
        };
        let snapshot = SnapshotRecord {
            version,
            schema_version: A::SNAPSHOT_VERSION,
            payload,
        };
        let Some(io) = self.snapshot_io else {
            return;
        };
        let store = self.store.clone();
        let save = async move {
            let saved = (io.save)(&store, &stream, snapshot).await;
            if let Err(e) = &saved {
                tracing::warn!(%stream, version, error = %e, "snapshot not saved");
            }
            telemetry::snapshot(A::TYPE, saved.is_ok());
        };
        let save = save.instrument(tracing::debug_span!("cqrs.snapshot", version));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.background_snapshots => {
                runtime.spawn(save);
            }
            _ => save.await,
        }
    }
}

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: SnapshotStore + Inspect + Clone + 'static,
    C: Codec,
{
    /// Sets the snapshot policy. Only a store with the [`SnapshotStore`] capability
    /// keeps snapshots; over any other, loads read whole streams.
    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self.snapshot_io = Some(SnapshotIo::new());
        self
    }

    /// Takes a snapshot of the aggregate now, whatever the policy, and returns the version
    /// it covers (`None` for an aggregate without events). Loads use it unless the
    /// policy is [`SnapshotPolicy::Never`], which reads no snapshots.
    ///
    /// # Errors
    /// As for [`load`](Self::load), and [`Error::Encode`] if the state does not encode.
    pub async fn snapshot_now(&self, id: &str) -> Result<Option<u64>> {
        let stream = A::stream_id(id)?;
        let loaded = self.load_stream(&stream).await?;
        if loaded.version == 0 {
            return Ok(None);
        }
        let snapshot = SnapshotRecord {
            version: loaded.version,
            schema_version: A::SNAPSHOT_VERSION,
            payload: self.codec.encode_snapshot(&loaded.state)?,
        };
        let saved = SnapshotStore::save_snapshot(&self.store, &stream, snapshot).await;
        telemetry::snapshot(A::TYPE, saved.is_ok());
        saved?;
        Ok(Some(loaded.version))
    }
}
