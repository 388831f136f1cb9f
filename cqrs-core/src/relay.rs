//! The relay: the global log, published to a broker, at least once, in order per stream.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::{FutureExt, TryStreamExt};

use crate::{
    CheckpointStore, EventLog, OutboundMessage, Position, PublishError, Publisher, RetryPolicy,
    StreamId, SubjectScheme,
};

/// How a [`Relay`] publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Messages in flight at once (published, acknowledgement awaited): at most this
    /// many per batch, at most one per stream. At least 1.
    pub window: usize,
    /// Events read ahead of the oldest unacknowledged one: the relay's memory bound.
    /// At least [`window`](Self::window).
    pub read_ahead: usize,
    /// How long the relay waits for the store's notification before it reads anyway
    /// (a fallback: it wakes at once on a notified append).
    pub poll_interval: Duration,
    /// The backoff between rounds that had failures (`max_attempts` is not used: see
    /// [`refused_attempts`](Self::refused_attempts)).
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

struct Slot {
    message: OutboundMessage,
    acked: bool,
    refusals: u32,
}

/// Publishes the store's global log to a broker: each event once acknowledged, in order
/// per stream, resuming after a restart from its checkpoint.
///
/// The relay reads the log after its checkpoint (stored in the store's
/// [`CheckpointStore`] under [`checkpoint_name`](Self::checkpoint_name),
/// `relay:<name>`), publishes each event as an [`OutboundMessage`] (message id = event
/// id, subject from the [`SubjectScheme`]) and waits for the broker's acknowledgements.
/// Only then does it move the checkpoint, over the longest prefix of the log that is
/// acknowledged. So delivery is at least once: after a crash, the relay republishes what
/// it had in flight and not yet checkpointed, and the broker drops those it already
/// holds (deduplication by message id).
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
    /// [`EventLog::watch`]), until `shutdown` completes. Shutdown is taken between
    /// batches: a batch in flight is awaited and checkpointed first; a wait for a broker
    /// retry or for new events ends at once.
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
        let window = self.config.window.max(1);
        let read_ahead = self.config.read_ahead.max(window);
        let checkpoint_name = self.checkpoint_name();
        let mut shutdown = pin!(shutdown.fuse());
        let mut watcher = self.store.watch();
        let mut checkpoint = self
            .store
            .load_checkpoint(&checkpoint_name)
            .await
            .map_err(RelayError::Store)?
            .unwrap_or(Position::START);
        self.stats.checkpoint = checkpoint;
        let mut read_to = checkpoint;
        let mut pending: VecDeque<Slot> = VecDeque::new();
        let mut failed_rounds: u32 = 0;
        let can_wake = watcher.can_wake();
        // Whether the log may hold events after `read_to` that are not read yet.
        let mut more = true;
        let mut caught_up = false;
        loop {
            if !more && can_wake && watcher.changed().now_or_never().is_some() {
                more = true;
            }
            if (more || !can_wake) && !caught_up && pending.len() < read_ahead {
                // Mark before reading: an append after the read wakes the wait below.
                watcher.mark_seen();
                let want = u64::try_from(read_ahead - pending.len()).unwrap_or(u64::MAX);
                let records: Vec<_> = self
                    .store
                    .read_all(read_to, Some(want))
                    .try_collect()
                    .await
                    .map_err(RelayError::Store)?;
                more = u64::try_from(records.len()).unwrap_or(u64::MAX) >= want;
                caught_up = !live && !more;
                for record in &records {
                    read_to = record.position;
                    pending.push_back(Slot {
                        message: OutboundMessage::from_record(record, &self.scheme),
                        acked: false,
                        refusals: 0,
                    });
                }
            }
            if pending.is_empty() {
                if !live {
                    return Ok(self.stats);
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(self.stats),
                    () = watcher.changed() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
                more = true;
                continue;
            }

            // One round: the oldest unacknowledged event of each stream, up to the window.
            let mut blocked: HashSet<&StreamId> = HashSet::new();
            let mut picked: Vec<usize> = Vec::new();
            for (i, slot) in pending.iter().enumerate() {
                if slot.acked || !blocked.insert(&slot.message.stream) {
                    continue;
                }
                picked.push(i);
                if picked.len() == window {
                    break;
                }
            }
            let batch: Vec<OutboundMessage> =
                picked.iter().map(|&i| pending[i].message.clone()).collect();
            let results = self.publisher.publish(&batch).await;
            let mut failures = 0u32;
            for (k, &i) in picked.iter().enumerate() {
                let slot = &mut pending[i];
                match results.get(k) {
                    Some(Ok(ack)) => {
                        slot.acked = true;
                        if ack.duplicate {
                            self.stats.duplicates += 1;
                        } else {
                            self.stats.published += 1;
                        }
                    }
                    Some(Err(error)) => {
                        failures += 1;
                        self.stats.failures += 1;
                        tracing::warn!(relay = %self.name, event_id = %slot.message.message_id,
                            stream = %slot.message.stream, version = slot.message.version,
                            %error, "publish failed; will retry");
                        if error.is_refused() {
                            slot.refusals += 1;
                        }
                    }
                    // A publisher that answered fewer results than messages: retry those.
                    None => failures += 1,
                }
            }
            if let Some((k, i)) = picked.iter().enumerate().find_map(|(k, &i)| {
                (pending[i].refusals >= self.config.refused_attempts.max(1)).then_some((k, i))
            }) {
                let (event_id, stream, version, attempts) = {
                    let slot = &pending[i];
                    let m = &slot.message;
                    (m.message_id, m.stream.clone(), m.version, slot.refusals)
                };
                let source = match results.into_iter().nth(k) {
                    Some(Err(error)) => error,
                    _ => PublishError::Refused {
                        source: "refused".into(),
                    },
                };
                self.save_progress(&mut pending, &mut checkpoint, &checkpoint_name)
                    .await?;
                return Err(RelayError::Refused {
                    event_id,
                    stream,
                    version,
                    attempts,
                    source,
                });
            }
            self.save_progress(&mut pending, &mut checkpoint, &checkpoint_name)
                .await?;
            if shutdown.as_mut().now_or_never().is_some() {
                return Ok(self.stats);
            }
            if failures > 0 {
                failed_rounds = failed_rounds.saturating_add(1);
                let delay = self.config.backoff.delay(failed_rounds);
                tokio::select! {
                    () = &mut shutdown => return Ok(self.stats),
                    () = tokio::time::sleep(delay) => {}
                }
            } else {
                failed_rounds = 0;
            }
        }
    }

    /// Drops the acknowledged prefix of `pending` and saves the checkpoint at its end.
    async fn save_progress(
        &mut self,
        pending: &mut VecDeque<Slot>,
        checkpoint: &mut Position,
        checkpoint_name: &str,
    ) -> Result<(), RelayError> {
        let mut advanced = None;
        while pending.front().is_some_and(|slot| slot.acked) {
            advanced = pending.pop_front().map(|slot| slot.message.position);
        }
        if let Some(position) = advanced {
            self.store
                .save_checkpoint(checkpoint_name, position)
                .await
                .map_err(RelayError::Store)?;
            *checkpoint = position;
            self.stats.checkpoint = position;
        }
        Ok(())
    }
}
