//! Group commit (ADR 0027): the appends that wait while the writes of this store are
//! in flight go out together in the next batch, as one statement and one commit.
//!
//! A store has a few write slots (the pipeline depth, 2 by default): each write in
//! flight, a lone append or a batch, holds one. An append that finds a slot free,
//! nothing queued and no write of its stream in flight takes the slot and writes alone,
//! at once, on the caller's own task (a lone append costs exactly what it costs without
//! group commit). Any other append queues for the store's task, which starts a batch of
//! everything queued whenever a slot is free. So batch k+1's statement runs while batch
//! k waits for its WAL flush.
//!
//! One write per stream in flight: a queued append whose stream is in a batch being
//! formed, or in any write in flight (lone or batch), stays queued, ahead of those
//! behind it, until that write has ended. Two writes of one stream are never in flight
//! at once, so a batch never reads a head that an uncommitted write is about to move.
//!
//! The task only settles the plain case: the expected version matched and every row
//! went in. Everything else goes back to the caller, which appends alone on the path
//! without group commit, where conflicts, idempotent re-appends, duplicate ids, lost
//! races and broken connections are sorted out as they always were:
//! - an append whose expected version did not match (the rest of the batch is written);
//! - every append of a batch whose statement failed (a stored event id, a lost race on
//!   a version, a broken connection, any driver error): nothing of it was committed, or,
//!   after a broken connection, its commit is unknown and the re-run finds the events
//!   by their ids;
//! - an append whose result row is missing or does not decode (committed or not, the
//!   re-run finds out, so a committed append is never reported as failed: ADR 0017).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cqrs_core::{AppendResult, Position, StreamId};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::append::{AppendArgs, decode_append};
use crate::conn::is_broken_connection;
use crate::row::stored_u64;

/// The most appends in one batch.
const MAX_APPENDS: usize = 512;

/// The most events in one batch, unless its first append alone has more.
const MAX_EVENTS: usize = 8_192;

/// Writes in flight at once when the builder does not say (ADR 0027).
pub(crate) const DEFAULT_PIPELINE: usize = 2;

/// What the task did with an append.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written and committed in a batch.
    Written(AppendResult),
    /// Not settled by a batch: the caller appends alone. `mismatch` says the expected
    /// version did not match when the batch ran (the fast statement would fail again).
    Alone { mismatch: bool },
}

const ALONE: Outcome = Outcome::Alone { mismatch: false };

/// A queued append.
struct Request {
    args: Arc<AppendArgs>,
    reply: oneshot::Sender<Outcome>,
    waiting: Waiting,
}

/// Counts its append as waiting (see [`State::waiting`]) until a batch takes it or it
/// is dropped unanswered (the task gone).
struct Waiting(Option<Arc<Slots>>);

impl Waiting {
    /// Taken into a batch: no longer waiting. Called with the state locked.
    fn taken(&mut self, state: &mut State) {
        if self.0.take().is_some() {
            state.waiting = state.waiting.saturating_sub(1);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(slots) = self.0.take() {
            let mut state = slots.lock();
            state.waiting = state.waiting.saturating_sub(1);
        }
    }
}

/// What the task needs of its store (not the store itself: the store owns the task).
struct Shared {
    pool: PgPool,
    append_fast: Arc<str>,
    append_many: Arc<str>,
}

/// The write slots and the streams of the writes in flight.
struct Slots {
    /// The most writes in flight at once (at least 1).
    depth: usize,
    state: Mutex<State>,
    /// Signalled when a write ends (a slot and its streams are free again).
    freed: Notify,
}

#[derive(Default)]
struct State {
    /// Writes in flight (lone appends and batches).
    in_flight: usize,
    /// The streams of the writes in flight: one write per stream at a time.
    streams: HashSet<StreamId>,
    /// Appends handed to the task and not yet in a batch. While there are any, a new
    /// append queues behind them instead of overtaking them on a free slot.
    waiting: usize,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned lock still holds a
        // consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One write in flight: frees its slot and its streams when dropped (also when the
/// write is cancelled).
pub(crate) struct Slot {
    slots: Arc<Slots>,
    streams: Vec<StreamId>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("streams", &self.streams)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut state = self.slots.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            for stream in &self.streams {
                state.streams.remove(stream);
            }
        }
        self.slots.freed.notify_one();
    }
}

/// The handle on a store's group-commit task; aborts the task (and the batches it has
/// in flight) when dropped.
pub(crate) struct Batcher {
    requests: mpsc::UnboundedSender<Request>,
    slots: Arc<Slots>,
    /// The task's inputs until it starts (with the first queued append, on the runtime
    /// of that append), then its handle.
    task: Mutex<Task>,
}

enum Task {
    NotStarted(Shared, mpsc::UnboundedReceiver<Request>),
    Running(JoinHandle<()>),
    /// No runtime to start it on (appends then go alone), or being started.
    None,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("depth", &self.slots.depth)
            .finish_non_exhaustive()
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Task::Running(handle) = task {
            handle.abort();
        }
    }
}

impl Batcher {
    /// A batcher with up to `depth` writes in flight (at least 1). Its task starts
    /// with the first append that queues.
    pub(crate) fn new(
        pool: PgPool,
        append_fast: Arc<str>,
        append_many: Arc<str>,
        depth: usize,
    ) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        let shared = Shared {
            pool,
            append_fast,
            append_many,
        };
        Batcher {
            requests,
            slots: Arc::new(Slots {
                depth: depth.max(1),
                state: Mutex::new(State::default()),
                freed: Notify::new(),
            }),
            task: Mutex::new(Task::NotStarted(shared, queue)),
        }
    }

    /// Starts the task on the current runtime if it has not started; `false` if it
    /// cannot run (no runtime).
    fn ensure_task(&self) -> bool {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        match &*task {
            Task::Running(_) => return true,
            Task::None => return false,
            Task::NotStarted(..) => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let Task::NotStarted(shared, queue) = std::mem::replace(&mut *task, Task::None) else {
            return false;
        };
        *task = Task::Running(runtime.spawn(run(Arc::new(shared), Arc::clone(&self.slots), queue)));
        true
    }

    /// A write slot for an append to `stream`, if it can be written alone at once: a
    /// slot is free, nothing is queued, and no write of the stream is in flight. The
    /// caller then writes alone and frees the slot by dropping it (also when it is
    /// cancelled).
    pub(crate) fn idle(&self, stream: &StreamId) -> Option<Slot> {
        let mut state = self.slots.lock();
        if state.waiting > 0
            || state.in_flight >= self.slots.depth
            || state.streams.contains(stream)
        {
            return None;
        }
        state.in_flight += 1;
        state.streams.insert(stream.clone());
        drop(state);
        Some(Slot {
            slots: Arc::clone(&self.slots),
            streams: vec![stream.clone()],
        })
    }

    /// Hands an append to the task and waits for its outcome. If the task is gone
    /// (it never panics by design, but a runtime shutting down stops it) or cannot
    /// start, the caller appends alone.
    ///
    /// Cancel safety: as for a plain append, an append whose caller stops waiting may
    /// or may not be written.
    pub(crate) async fn submit(&self, args: Arc<AppendArgs>) -> Outcome {
        if !self.ensure_task() {
            return ALONE;
        }
        let (reply, outcome) = oneshot::channel();
        self.slots.lock().waiting += 1;
        let request = Request {
            args,
            reply,
            waiting: Waiting(Some(Arc::clone(&self.slots))),
        };
        // A failed send hands the request back; dropping it stops it waiting.
        if self.requests.send(request).is_err() {
            return ALONE;
        }
        outcome.await.unwrap_or(ALONE)
    }
}

/// The task: whenever appends are queued and a slot is free, takes the next batch and
/// writes it on a task of its own, keeping up to the depth in flight. Ends when the
/// store (the only sender) is gone.
async fn run(
    shared: Arc<Shared>,
    slots: Arc<Slots>,
    mut incoming: mpsc::UnboundedReceiver<Request>,
) {
    let mut queue: VecDeque<Request> = VecDeque::new();
    let mut writes: JoinSet<()> = JoinSet::new();
    loop {
        while writes.try_join_next().is_some() {}
        while let Ok(request) = incoming.try_recv() {
            queue.push_back(request);
        }
        if let Some((batch, slot)) = start_batch(&slots, &mut queue) {
            writes.spawn(write(Arc::clone(&shared), batch, slot));
            continue;
        }
        tokio::select! {
            request = incoming.recv() => match request {
                Some(request) => queue.push_back(request),
                None => {
                    // The store is gone: let the writes in flight finish.
                    writes.detach_all();
                    return;
                }
            },
            () = slots.freed.notified() => {}
        }
    }
}

/// The next batch, if a slot is free and the queue holds an append whose stream has no
/// write in flight; takes the slot for it.
fn start_batch(slots: &Arc<Slots>, queue: &mut VecDeque<Request>) -> Option<(Vec<Request>, Slot)> {
    if queue.is_empty() {
        return None;
    }
    let mut state = slots.lock();
    if state.in_flight >= slots.depth {
        return None;
    }
    let batch = take_batch(queue, &mut state);
    if batch.is_empty() {
        return None;
    }
    let streams: Vec<StreamId> = batch.iter().map(|r| r.args.stream.clone()).collect();
    state.in_flight += 1;
    state.streams.extend(streams.iter().cloned());
    drop(state);
    let slot = Slot {
        slots: Arc::clone(slots),
        streams,
    };
    Some((batch, slot))
}

/// The next batch from the front of the queue: appends in queue order, at most one per
/// stream and none of a stream with a write in flight (such an append stays queued,
/// ahead of the appends behind it), within [`MAX_APPENDS`] and [`MAX_EVENTS`].
fn take_batch(queue: &mut VecDeque<Request>, state: &mut State) -> Vec<Request> {
    let mut batch: Vec<Request> = Vec::new();
    let mut streams: HashSet<StreamId> = HashSet::new();
    let mut deferred: Vec<Request> = Vec::new();
    let mut events = 0;
    while let Some(mut request) = queue.pop_front() {
        let n = request.args.ids.len();
        if batch.len() == MAX_APPENDS || (!batch.is_empty() && events + n > MAX_EVENTS) {
            queue.push_front(request);
            break;
        }
        let stream = &request.args.stream;
        if state.streams.contains(stream) || streams.contains(stream) {
            deferred.push(request);
            continue;
        }
        streams.insert(stream.clone());
        request.waiting.taken(state);
        events += n;
        batch.push(request);
    }
    for request in deferred.into_iter().rev() {
        queue.push_front(request);
    }
    batch
}

/// Writes one batch, frees its slot and answers each of its callers.
async fn write(shared: Arc<Shared>, batch: Vec<Request>, slot: Slot) {
    let outcomes = if let [one] = batch.as_slice() {
        vec![write_one(&shared, &one.args).await]
    } else {
        write_many(&shared, &batch).await
    };
    // The batch has committed (or failed): its streams may be written again.
    drop(slot);
    for (request, outcome) in batch.into_iter().zip(outcomes) {
        // A caller that stopped waiting does not need its answer.
        let _ = request.reply.send(outcome);
    }
}

/// A batch of one: the fast statement of a plain append (the same statement and round
/// trip as without group commit).
async fn write_one(shared: &Shared, args: &AppendArgs) -> Outcome {
    let Ok(mut conn) = shared.pool.acquire().await else {
        return ALONE;
    };
    let row = args
        .bind(sqlx::query(AssertSqlSafe(Arc::clone(&shared.append_fast))))
        .fetch_optional(&mut *conn)
        .await;
    match row {
        Ok(Some(row)) => match decode_append(&row, args) {
            Ok(result) => Outcome::Written(result),
            Err(_) => ALONE,
        },
        Ok(None) => Outcome::Alone { mismatch: true },
        Err(e) => {
            if is_broken_connection(&e) {
                conn.close_on_drop();
            }
            ALONE
        }
    }
}

/// A batch of many: one statement (autocommit: one transaction, one commit).
async fn write_many(shared: &Shared, batch: &[Request]) -> Vec<Outcome> {
    let alone = || batch.iter().map(|_| ALONE).collect();
    let appends = batch.len();
    let events: usize = batch.iter().map(|r| r.args.ids.len()).sum();
    let mut types = Vec::with_capacity(appends);
    let mut ids = Vec::with_capacity(appends);
    let mut kinds = Vec::with_capacity(appends);
    let mut expected = Vec::with_capacity(appends);
    let mut of_append: Vec<i64> = Vec::with_capacity(events);
    let mut ords: Vec<i64> = Vec::with_capacity(events);
    let mut event_ids: Vec<Uuid> = Vec::with_capacity(events);
    let mut event_types: Vec<&str> = Vec::with_capacity(events);
    let mut schema_versions: Vec<i64> = Vec::with_capacity(events);
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(events);
    let mut metadata: Vec<&str> = Vec::with_capacity(events);
    let mut checksums: Vec<i32> = Vec::with_capacity(events);
    for (n, request) in (1i64..).zip(batch) {
        let args = &request.args;
        types.push(args.stream.aggregate_type());
        ids.push(args.stream.id());
        kinds.push(args.expected_kind);
        expected.push(args.expected_version);
        for (ord, i) in (1i64..).zip(0..args.ids.len()) {
            of_append.push(n);
            ords.push(ord);
            event_ids.push(args.ids[i]);
            event_types.push(&args.types[i]);
            schema_versions.push(args.schema_versions[i]);
            payloads.push(&args.payloads[i]);
            metadata.push(&args.metadata[i]);
            checksums.push(args.checksums[i]);
        }
    }
    let Ok(mut conn) = shared.pool.acquire().await else {
        return alone();
    };
    let rows = sqlx::query(AssertSqlSafe(Arc::clone(&shared.append_many)))
        .bind(&types)
        .bind(&ids)
        .bind(&kinds)
        .bind(&expected)
        .bind(&of_append)
        .bind(&ords)
        .bind(&event_ids)
        .bind(&event_types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&checksums)
        .fetch_all(&mut *conn)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            if is_broken_connection(&e) {
                conn.close_on_drop();
            }
            return alone();
        }
    };
    let mut outcomes: Vec<Outcome> = alone();
    for row in &rows {
        if let Some((n, outcome)) = decode_many(row, batch)
            && let Some(slot) = outcomes.get_mut(n)
        {
            *slot = outcome;
        }
    }
    outcomes
}

/// One result row of `append_many`: the append's index in the batch and its outcome;
/// `None` if the row does not decode (that append then goes alone).
fn decode_many(row: &PgRow, batch: &[Request]) -> Option<(usize, Outcome)> {
    let n: i64 = row.try_get(0).ok()?;
    let index = usize::try_from(n).ok()?.checked_sub(1)?;
    let args = &batch.get(index)?.args;
    let version: Option<i64> = row.try_get(1).ok()?;
    let Some(version) = version else {
        return Some((index, Outcome::Alone { mismatch: true }));
    };
    let commit: i64 = row.try_get(2).ok()?;
    let sequence: i64 = row.try_get(3).ok()?;
    let location = || format!("append to {}", args.stream);
    let result = AppendResult {
        version: stored_u64(version, location, "version").ok()?,
        position: Position::new(
            stored_u64(commit, location, "transaction id").ok()?,
            stored_u64(sequence, location, "log id").ok()?,
        ),
        duplicate: false,
    };
    Some((index, Outcome::Written(result)))
}
