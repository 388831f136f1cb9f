//! The subscribing side: messages from a broker, and the inbox that applies each event
//! once in the consuming service's own database.
//!
//! A broker crate implements [`Subscription`] (and its [`Delivery`]); a storage crate
//! implements [`Inbox`] for the read model's database; the
//! [`Consumer`](crate::Consumer) joins them to a [`Projection`](crate::Projection). See
//! ADR 0023.

use std::future::Future;
use std::time::SystemTime;

use uuid::Uuid;

use crate::{BoxError, StreamId};

/// One message received from a broker, not yet acknowledged.
///
/// Dropping a delivery without [`ack`](Delivery::ack)ing it leaves it to the broker,
/// which delivers it again later (after its acknowledgement timeout, or when the
/// subscription reconnects).
pub trait Delivery: Send + Sync + 'static {
    /// The subject (NATS) or routing key (AMQP) it was published to.
    fn subject(&self) -> &str;

    /// The value of the header `name` (the first, if there are several).
    fn header(&self, name: &str) -> Option<&str>;

    /// Every header, in the order received (what a dead letter keeps).
    fn headers(&self) -> Vec<(String, String)>;

    /// The body.
    fn payload(&self) -> &[u8];

    /// Tells the broker the message is handled: it is not delivered again.
    ///
    /// # Errors
    /// [`SubscribeError::Unavailable`] if the broker did not take the acknowledgement;
    /// the message will then be delivered again, which the inbox recognises.
    fn ack(&self) -> impl Future<Output = Result<(), SubscribeError>> + Send;
}

/// A durable subscription: the messages of one consumer, in the order the broker
/// holds them, each delivered until it is acknowledged.
///
/// # Contract
/// - [`next`](Subscription::next) waits for the next message, reconnecting by itself
///   when the broker goes away and comes back (it keeps failing with
///   [`SubscribeError::Unavailable`] meanwhile).
/// - Messages published to one subject are delivered in that order; a message not
///   acknowledged may be delivered again, possibly after later ones.
/// - `next` is cancel safe: dropping its future loses no message.
pub trait Subscription: Send {
    /// The messages it yields.
    type Delivery: Delivery;

    /// The next message.
    ///
    /// # Errors
    /// [`SubscribeError::Unavailable`] while the broker cannot be reached (the
    /// [`Consumer`](crate::Consumer) retries with backoff); [`SubscribeError::Closed`]
    /// once the subscription is gone for good (deleted on the broker).
    fn next(&mut self) -> impl Future<Output = Result<Self::Delivery, SubscribeError>> + Send;
}

/// Why a subscription gave no message, or an acknowledgement did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The broker cannot be reached now; retrying later may work.
    #[error("the broker is unavailable")]
    Unavailable {
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The subscription is gone (deleted on the broker, or closed by the client).
    #[error("the subscription is closed")]
    Closed {
        /// Why, if known.
        #[source]
        source: Option<BoxError>,
    },
}

/// A received message, copied out of its [`Delivery`]: what a [`DeadLetter`] keeps so
/// that it can be applied again without the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The subject or routing key.
    pub subject: String,
    /// The headers, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: Vec<u8>,
}

impl ReceivedMessage {
    /// Copies a delivery.
    pub fn of(delivery: &impl Delivery) -> Self {
        ReceivedMessage {
            subject: delivery.subject().to_owned(),
            headers: delivery.headers(),
            payload: delivery.payload().to_vec(),
        }
    }

    /// The value of the header `name` (the first, if there are several).
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        found.next().map(|(_, v)| v.as_str())
    }
}

/// What an inbox knows of one stream of the publishing service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The last version applied (0: none yet).
    pub version: u64,
    /// Whether the stream is parked behind a dead letter: later events of the stream
    /// go to the dead letters too, in order, until a
    /// [redrive](crate::Consumer::redrive) applies them.
    pub parked: bool,
}

/// A message the consumer could not apply: kept in the inbox's database with the reason,
/// until an operator redrives or discards it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its number in the inbox, increasing (assigned by [`Inbox::add_dead_letter`]).
    pub id: u64,
    /// The message as received.
    pub message: ReceivedMessage,
    /// Its event id, if its headers carried a valid one.
    pub event_id: Option<Uuid>,
    /// Its stream, if its headers named a valid one.
    pub stream: Option<StreamId>,
    /// Its version in the stream, if known.
    pub version: Option<u64>,
    /// Why it is here, in words (the error chain).
    pub reason: String,
    /// How many times applying it was tried (0: never, such as a message that is not
    /// one of ours, or one parked behind an earlier dead letter).
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_at: SystemTime,
}

/// Counts of an inbox, for `stats` and health checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Streams with at least one event applied or parked.
    pub streams: u64,
    /// Streams parked behind a dead letter.
    pub parked: u64,
    /// Dead letters waiting.
    pub dead_letters: u64,
}

/// Where a consumer records, per stream, what it has applied, and keeps its dead
/// letters: in the read model's own database, written in the read model's transaction.
/// One crate per database implements it (`cqrs_postgres::PgInbox`,
/// `cqrs_sled::SledInbox`; [`InMemoryInbox`](crate::InMemoryInbox) for tests).
///
/// An inbox belongs to one consumer (it is made with the consumer's name). The
/// [`Consumer`](crate::Consumer) drives it: [`begin`](Inbox::begin) a transaction, read
/// and set [`StreamState`]s, let the projection write through
/// [`context`](Inbox::context), add or remove dead letters, [`commit`](Inbox::commit).
/// Dropping a transaction without committing it rolls it back.
///
/// # Contract (checked by the [inbox conformance suite](crate::conformance::inbox))
/// - Reads in a transaction see its own writes; nothing is visible to other
///   transactions before `commit`, and a commit keeps all of a transaction or nothing.
/// - After [`flush`](Inbox::flush) returns, every committed transaction survives a
///   crash of the process (and, for a database that promises it, of the machine).
/// - Dead letters get increasing ids and are listed in id order.
/// - A PostgreSQL inbox locks a stream's state when a transaction reads it, so two
///   processes applying to one stream take turns.
pub trait Inbox: Send + 'static {
    /// What the projection's `apply` gets (`()`, an open transaction, a
    /// `cqrs_sled::ReadModelTx`).
    type Context: Send;
    /// An open transaction.
    type Tx: Send;

    /// Opens a transaction.
    ///
    /// # Errors
    /// The database's error (the consumer retries with backoff).
    fn begin(&mut self) -> impl Future<Output = Result<Self::Tx, BoxError>> + Send;

    /// The projection's view of a transaction.
    fn context(tx: &mut Self::Tx) -> &mut Self::Context;

    /// The state of `stream` (the default, version 0, for a stream never seen).
    ///
    /// # Errors
    /// The database's error, or a damaged record.
    fn stream_state(
        &mut self,
        tx: &mut Self::Tx,
        stream: &StreamId,
    ) -> impl Future<Output = Result<StreamState, BoxError>> + Send;

    /// Records the state of `stream`.
    ///
    /// # Errors
    /// The database's error.
    fn set_stream_state(
        &mut self,
        tx: &mut Self::Tx,
        stream: &StreamId,
        state: StreamState,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Adds a dead letter (its `id` is ignored: the inbox assigns the next one).
    ///
    /// # Errors
    /// The database's error.
    fn add_dead_letter(
        &mut self,
        tx: &mut Self::Tx,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Removes the dead letter `id` (nothing if there is none).
    ///
    /// # Errors
    /// The database's error.
    fn remove_dead_letter(
        &mut self,
        tx: &mut Self::Tx,
        id: u64,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Commits a transaction.
    ///
    /// # Errors
    /// The database's error; nothing of the transaction is kept.
    fn commit(&mut self, tx: Self::Tx) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Makes every committed transaction durable (a no-op where commits are durable
    /// already). The consumer calls it before acknowledging messages.
    ///
    /// # Errors
    /// The database's error.
    fn flush(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Up to `limit` dead letters with ids above `after`, in id order.
    ///
    /// # Errors
    /// The database's error, or a damaged record.
    fn dead_letters(
        &mut self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, BoxError>> + Send;

    /// Counts of streams, parked streams and dead letters.
    ///
    /// # Errors
    /// The database's error.
    fn stats(&mut self) -> impl Future<Output = Result<InboxStats, BoxError>> + Send;
}
