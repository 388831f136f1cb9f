//! The relay: the global log, published to a broker, at least once, in order per stream.

#[cfg(test)]
mod tests;
mod window;

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::time::Instant;

use crate::{
    Ack, CheckpointStore, EventLog, OutboundMessage, Position, PublishError, Publisher,
    RetryPolicy, StreamId, SubjectScheme,
};
use window::Pending;

/// The most messages in one [`Publisher::publish`] call (or `window / 8` if larger, and
/// never more than the window): several calls are in flight at once, and each one that
/// completes frees room for the next.
const CALL_SIZE: usize = 32;

/// The longest the relay keeps an acknowledged prefix without saving the checkpoint
/// while publishes are in flight (it also saves after every `window` acknowledged
/// events, and whenever nothing is in flight).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How a [`Relay`] publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Messages in flight at once (published, acknowledgement awaited), at most one per
    /// stream, over several [`Publisher::publish`] calls that overlap: as a call
    /// completes, its room goes to the next. At least 1.
    pub window: usize,
    /// Events read ahead of the oldest unacknowledged one: the relay's memory bound.
    /// At least [`window`](Self::window).
    pub read_ahead: usize,
    /// How long the relay waits for the store's notification before it reads anyway
    /// (a fallback: it wakes at once on a notified append).
    pub poll_interval: Duration,
    /// The backoff after a publish call that had failures: no new call starts until it
    /// has passed, and the failed messages are then sent again (`max_attempts` is not
    /// used: see [`refused_attempts`](Self::refused_attempts)).
    pub backoff: RetryPolicy,
    /// How many times one message may be refused by the broker before the relay stops
    /// with [`RelayError::Refused`]. An unavailable broker is waited for without limit.
    pub refused_attempts: u32,
}

impl Default for RelayConfig {
    /// A window of 256, reading 4,096 ahead, polling every second, backoff from 10 ms
    /// to 5 s, 10 refusals.
    fn default() -> Self {
        RelayConfig {
            window: 256,
            read_ahead: 4096,
            poll_interval: Duration::from_secs(1),
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_secs(5),
            },
            refused_attempts: 10,
        }
    }
}

/// What a relay has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages the broker acknowledged as new.
    pub published: u64,
    /// Messages the broker acknowledged as duplicates (republished after a crash).
    pub duplicates: u64,
    /// Publishes that failed and were retried.
    pub failures: u64,
    /// The checkpoint: every event up to it is acknowledged.
    pub checkpoint: Position,
}

/// Why a relay stopped.
///
/// Handling: run the relay under a [`Supervisor`](crate::Supervisor), which restarts it
/// from its checkpoint with backoff; a `Refused` message needs an operator (the broker's
/// limits or its stream's subjects).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Reading the log or the checkpoint, or saving the checkpoint, failed.
    #[error("the relay's store failed")]
    Store(#[source] crate::Error),
    /// The broker refused one message too many times.
    #[error("the broker refused event {event_id} ({stream} version {version}) {attempts} times")]
    Refused {
        /// The event id (the message id).
        event_id: uuid::Uuid,
        /// Its stream.
        stream: StreamId,
        /// Its version.
        version: u64,
        /// How many times it was refused.
        attempts: u32,
        /// The last refusal.
        #[source]
        source: PublishError,
    },
}

/// Publishes the store's global log to a broker: each event once acknowledged, in order
/// per stream, resuming after a restart from its checkpoint.
///
/// The relay reads the log after its checkpoint (stored in the store's
/// [`CheckpointStore`] under [`checkpoint_name`](Self::checkpoint_name),
/// `relay:<name>`), publishes each event as an [`OutboundMessage`] (message id = event
/// id, subject from the [`SubjectScheme`]) and waits for the broker's acknowledgements.
/// Only then does it move the checkpoint, over the longest prefix of the log that is
/// acknowledged (saved after every `window` acknowledged events, at least every 100 ms
/// while publishes are in flight, and whenever none is). So delivery is at least once:
/// after a crash, the relay republishes what it had read and not yet checkpointed, and
/// the broker drops those it already holds (deduplication by message id).
///
/// # Throughput
/// Publish calls overlap: the window is split into calls of up to 32 messages (or
/// `window / 8`), and each call that completes frees room for the next, so acks keep
/// coming back while new messages go out; the log is read ahead in pieces of a window
/// between refills.
///
/// # Order
/// Up to [`RelayConfig::window`] messages are in flight at once, but at most one per
/// stream: the next event of a stream is published only once the previous one is
/// acknowledged. So when message *k* of a stream fails, *k + 1* has not been sent, and
/// the broker never holds *k + 1* before *k*, whatever fails and is retried. (A second
/// in-flight message of the stream could be stored while *k* is lost on a broken
/// connection, and deduplication would then keep it ahead of the retried *k*.)
///
/// # Exactly one relay
/// Run one relay per store and name. On sled the store is one process's. On
/// PostgreSQL, run it under the store's worker lock:
/// `let lock = store.lock_worker("relay:bank", retry).await?;` then
/// `relay.run_until(async { tokio::select! { () = shutdown => {}, () = lock.lost(heartbeat) => {} } })`
/// (`docs/08-relay.md` has the whole loop).
///
/// # Examples
/// ```
/// use cqrs_core::{
///     EventData, EventLog, ExpectedVersion, InMemoryEventStore, InMemoryPublisher, Relay,
///     StreamId, SubjectScheme,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new("account", "42")?;
/// let opened = EventData::new("AccountOpened", br#"{"owner":"ada"}"#.to_vec());
/// store.append(&stream, ExpectedVersion::NoStream, vec![opened]).await?;
///
/// let broker = InMemoryPublisher::new();
/// let mut relay = Relay::new("bank", &store, broker.clone(), SubjectScheme::new("bank")?);
/// let stats = relay.catch_up().await?; // or `run_until(shutdown)` to keep going live
/// assert_eq!(stats.published, 1);
/// assert_eq!(broker.messages()[0].subject, "bank.account.42");
/// # Ok(())
/// # }
/// ```
pub struct Relay<S, P> {
    name: String,
    store: S,
    publisher: P,
    scheme: SubjectScheme,
    config: RelayConfig,
    stats: RelayStats,
}

impl<S, P> std::fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("scheme", &self.scheme)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S, P> Relay<S, P>
where
    S: EventLog + CheckpointStore,
    P: Publisher,
{
    /// A relay named `name` (its checkpoint is `relay:<name>`) from `store` to
    /// `publisher`, with the default [`RelayConfig`].
    pub fn new(name: impl Into<String>, store: S, publisher: P, scheme: SubjectScheme) -> Self {
        Relay {
            name: name.into(),
            store,
            publisher,
            scheme,
            config: RelayConfig::default(),
            stats: RelayStats::default(),
        }
    }

    /// Sets the configuration (a window or read-ahead of 0 counts as 1).
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// The name of the relay's checkpoint: `relay:<name>`.
    pub fn checkpoint_name(&self) -> String {
        format!("relay:{}", self.name)
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Publishes everything in the log after the checkpoint, up to its end when the call
    /// started reading, and returns once all of it is acknowledged and checkpointed.
    ///
    /// # Errors
    /// As for [`run_until`](Self::run_until).
    pub async fn catch_up(&mut self) -> Result<RelayStats, RelayError> {
        self.run(std::future::pending(), false).await
    }

    /// Publishes the log and then every new event as it is appended (woken by
    /// [`EventLog::watch`]), until `shutdown` completes. On shutdown nothing new is
    /// sent; the publish calls in flight are awaited and the acknowledged prefix is
    /// checkpointed before it returns; a wait for a broker retry or for new events ends
    /// at once.
    ///
    /// # Errors
    /// [`RelayError::Store`] if the store fails; [`RelayError::Refused`] if the broker
    /// refuses a message [`RelayConfig::refused_attempts`] times. Broker unavailability
    /// is retried with backoff, without limit.
    pub async fn run_until(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RelayStats, RelayError> {
        self.run(shutdown, true).await
    }

    async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        live: bool,
    ) -> Result<RelayStats, RelayError> {
        let Relay {
            name,
            store,
            publisher,
            scheme,
            config,
            stats,
        } = self;
        let publisher = &*publisher;
        let window = config.window.max(1);
        let read_ahead = config.read_ahead.max(window);
        // Reads of at most a window's worth, between refills of the window: a long read
        // would let the messages in flight drain while nothing new is sent.
        let read_size = window;
        let call_size = window.min(CALL_SIZE.max(window / 8));
        let refused_limit = config.refused_attempts.max(1);
        let checkpoint_name = format!("relay:{name}");
        let mut shutdown = pin!(shutdown.fuse());
        let mut watcher = store.watch();
        let loaded = store
            .load_checkpoint(&checkpoint_name)
            .await
            .map_err(RelayError::Store)?
            .unwrap_or(Position::START);
        stats.checkpoint = loaded;
        let mut read_to = loaded;
        let mut pending = Pending::default();
        let mut calls = FuturesUnordered::new();
        let mut checkpoint = Checkpoint::new(window);
        let mut failed_rounds: u32 = 0;
        let mut paused_until: Option<Instant> = None;
        // Set on shutdown or a refusal: nothing new is sent, the calls in flight are awaited.
        let mut stopping = false;
        let mut refused: Option<RelayError> = None;
        let can_wake = watcher.can_wake();
        // Whether the log may hold events after `read_to` that are not read yet.
        let mut more = true;
        let mut caught_up = false;
        loop {
            if !more && can_wake && watcher.changed().now_or_never().is_some() {
                more = true;
            }
            let room = read_ahead.saturating_sub(pending.len());
            if (more || !can_wake)
                && !caught_up
                && !stopping
                && room > 0
                && (room >= read_size || pending.is_empty())
            {
                // Mark before reading: an append after the read wakes the wait below.
                watcher.mark_seen();
                let want = u64::try_from(room.min(read_size)).unwrap_or(u64::MAX);
                let mut records = pin!(store.read_all(read_to, Some(want)));
                let mut read = 0u64;
                while let Some(mut record) = records.try_next().await.map_err(RelayError::Store)? {
                    read_to = record.position;
                    read += 1;
                    // The payload is moved into the message rather than copied.
                    let payload = std::mem::take(&mut record.payload);
                    let mut message = OutboundMessage::from_record(&record, scheme);
                    message.payload = payload;
                    pending.push(message);
                }
                more = read >= want;
                caught_up = !live && !more;
            }
            if paused_until.is_some_and(|until| Instant::now() >= until) {
                paused_until = None;
            }
            if calls.is_empty() && (stopping || pending.is_empty()) {
                checkpoint
                    .save(&mut pending, store, &checkpoint_name, stats, true)
                    .await?;
                if let Some(error) = refused {
                    return Err(error);
                }
                if stopping || !live {
                    return Ok(*stats);
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(*stats),
                    () = watcher.changed() => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
                more = true;
                continue;
            }
            // Refill the window: calls of up to `call_size` messages, `window` in all.
            while !stopping
                && paused_until.is_none()
                && pending.in_flight() < window
                && pending.has_ready()
            {
                let (indices, batch) = pending.take(call_size.min(window - pending.in_flight()));
                calls.push(async move {
                    let results = publisher.publish(&batch).await;
                    (indices, batch, results)
                });
            }
            checkpoint
                .save(
                    &mut pending,
                    store,
                    &checkpoint_name,
                    stats,
                    calls.is_empty(),
                )
                .await?;
            if calls.is_empty() {
                // Nothing in flight and events held: a backoff after failures.
                let until = paused_until.unwrap_or_else(Instant::now);
                tokio::select! {
                    () = &mut shutdown, if !stopping => stopping = true,
                    () = tokio::time::sleep_until(until) => paused_until = None,
                }
                continue;
            }
            let pause = paused_until;
            tokio::select! {
                biased;
                Some((indices, batch, results)) = calls.next() => {
                    let failures = settle(
                        &mut pending, stats, name, refused_limit, (indices, batch, results),
                        &mut refused,
                    );
                    if refused.is_some() {
                        stopping = true;
                    }
                    if failures == 0 {
                        failed_rounds = 0;
                    } else if paused_until.is_none() {
                        failed_rounds = failed_rounds.saturating_add(1);
                        paused_until = Some(Instant::now() + config.backoff.delay(failed_rounds));
                    }
                }
                () = &mut shutdown, if !stopping => stopping = true,
                () = tokio::time::sleep_until(pause.unwrap_or_else(Instant::now)), if pause.is_some() => {
                    paused_until = None;
                }
            }
        }
    }
}

/// One completed publish call: the slots' indices, the messages, the broker's answers.
type Call = (
    Vec<u64>,
    Vec<OutboundMessage>,
    Vec<Result<Ack, PublishError>>,
);

/// Applies a completed call's answers to `pending` and `stats`; returns how many
/// messages failed, and records in `refused` the first one refused `refused_limit` times.
fn settle(
    pending: &mut Pending,
    stats: &mut RelayStats,
    name: &str,
    refused_limit: u32,
    (indices, batch, results): Call,
    refused: &mut Option<RelayError>,
) -> u32 {
    let mut results = results.into_iter();
    let mut failures = 0;
    for (index, message) in indices.into_iter().zip(batch) {
        match results.next() {
            Some(Ok(ack)) => {
                if ack.duplicate {
                    stats.duplicates += 1;
                    crate::telemetry::relayed(name, "duplicate");
                } else {
                    stats.published += 1;
                    crate::telemetry::relayed(name, "published");
                }
                pending.acked(index, &message);
            }
            Some(Err(error)) => {
                failures += 1;
                stats.failures += 1;
                crate::telemetry::relayed(name, "failed");
                tracing::warn!(relay = %name, event_id = %message.message_id,
                    stream = %message.stream, version = message.version,
                    %error, "publish failed; will retry");
                let is_refused = error.is_refused();
                let (event_id, version) = (message.message_id, message.version);
                let stream = is_refused.then(|| message.stream.clone());
                let refusals = pending.failed(index, message, is_refused);
                if let Some(stream) = stream
                    && refusals >= refused_limit
                    && refused.is_none()
                {
                    *refused = Some(RelayError::Refused {
                        event_id,
                        stream,
                        version,
                        attempts: refusals,
                        source: error,
                    });
                }
            }
            // A publisher that answered fewer results than messages: retry those.
            None => {
                failures += 1;
                pending.failed(index, message, false);
            }
        }
    }
    failures
}

/// The relay's checkpoint: the acknowledged prefix, saved every `every` events, every
/// [`CHECKPOINT_EVERY`], or when asked to.
struct Checkpoint {
    unsaved: Option<Position>,
    unsaved_events: u64,
    every: u64,
    saved_at: Instant,
}

impl Checkpoint {
    fn new(every: usize) -> Self {
        Checkpoint {
            unsaved: None,
            unsaved_events: 0,
            every: u64::try_from(every).unwrap_or(u64::MAX),
            saved_at: Instant::now(),
        }
    }

    /// Drops the acknowledged prefix of `pending` and, if `now` or it is due, saves the
    /// checkpoint at its end.
    async fn save<S: CheckpointStore>(
        &mut self,
        pending: &mut Pending,
        store: &S,
        name: &str,
        stats: &mut RelayStats,
        now: bool,
    ) -> Result<(), RelayError> {
        if let Some((position, events)) = pending.pop_acked_prefix() {
            self.unsaved = Some(position);
            self.unsaved_events += events;
        }
        let Some(position) = self.unsaved else {
            return Ok(());
        };
        if !now && self.unsaved_events < self.every && self.saved_at.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        // Progress after acknowledgements: lost with the database's last moments, it only
        // sends those events again (consumers deduplicate by event id).
        store
            .advance_checkpoint(name, position)
            .await
            .map_err(RelayError::Store)?;
        self.unsaved = None;
        self.unsaved_events = 0;
        self.saved_at = Instant::now();
        stats.checkpoint = position;
        crate::telemetry::relay_checkpoint(name.strip_prefix("relay:").unwrap_or(name), position);
        Ok(())
    }
}
