//! Group commit (ADR 0027): the appends that wait while a batch of this store is being
//! written go out together in the next one, as one statement and one commit.
//!
//! One write is in flight at a time: it holds the store's one write slot. An append
//! that finds the slot free takes it and writes alone, at once, on the caller's own
//! task (a lone append costs exactly what it costs without group commit). An append
//! that finds it taken queues for the store's task, which takes the slot when it is
//! free and writes everything queued as one batch (one append per stream: a second
//! append to a stream waits for the batch after).
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
use std::sync::Arc;

use cqrs_core::{AppendResult, Position, StreamId};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::append::{AppendArgs, decode_append};
use crate::conn::is_broken_connection;
use crate::row::stored_u64;

/// The most appends in one batch.
const MAX_APPENDS: usize = 512;

/// The most events in one batch, unless its first append alone has more.
const MAX_EVENTS: usize = 8_192;

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

struct Request {
    args: Arc<AppendArgs>,
    reply: oneshot::Sender<Outcome>,
}

/// What the task needs of its store (not the store itself: the store owns the task).
#[derive(Clone)]
struct Shared {
    pool: PgPool,
    append_fast: Arc<str>,
    append_many: Arc<str>,
}

/// The handle on a store's group-commit task; aborts the task when dropped.
pub(crate) struct Batcher {
    requests: mpsc::UnboundedSender<Request>,
    /// The write slot: one permit, held by the write in flight (a lone append or a
    /// batch). Tokio's semaphore is fair: once the task waits for it, a released
    /// permit goes to the task, not to a caller's `try_acquire`.
    slot: Arc<Semaphore>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Batcher {
    /// Starts the task on `runtime`.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        pool: PgPool,
        append_fast: Arc<str>,
        append_many: Arc<str>,
    ) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        let shared = Shared {
            pool,
            append_fast,
            append_many,
        };
        let slot = Arc::new(Semaphore::new(1));
        Batcher {
            requests,
            task: runtime.spawn(run(shared, queue, Arc::clone(&slot))),
            slot,
        }
    }

    /// The write slot when nothing is in flight: the caller then writes alone, at once,
    /// and frees the slot by dropping the permit (also when it is cancelled).
    pub(crate) fn idle(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slot).try_acquire_owned().ok()
    }

    /// Hands an append to the task and waits for its outcome. If the task is gone
    /// (it never panics by design, but a runtime shutting down stops it), the caller
    /// appends alone.
    ///
    /// Cancel safety: as for a plain append, an append whose caller stops waiting may
    /// or may not be written.
    pub(crate) async fn submit(&self, args: Arc<AppendArgs>) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        if self.requests.send(Request { args, reply }).is_err() {
            return ALONE;
        }
        outcome.await.unwrap_or(ALONE)
    }
}

/// The task: waits for queued appends, takes the write slot, and writes everything
/// queued by then as one batch. Ends when the store (the only sender) is gone.
async fn run(shared: Shared, mut incoming: mpsc::UnboundedReceiver<Request>, slot: Arc<Semaphore>) {
    let mut queue: VecDeque<Request> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match incoming.recv().await {
                Some(request) => queue.push_back(request),
                None => return,
            }
        }
        // The slot is taken (that is why these appends queued): wait for it. Appends
        // keep queueing meanwhile and go in this batch.
        let Ok(permit) = Arc::clone(&slot).acquire_owned().await else {
            return;
        };
        while let Ok(request) = incoming.try_recv() {
            queue.push_back(request);
        }
        write(&shared, take_batch(&mut queue)).await;
        drop(permit);
    }
}

/// The next batch from the front of the queue: appends in queue order, at most one per
/// stream (a later append to a stream in the batch stays queued, ahead of the appends
/// behind it), within [`MAX_APPENDS`] and [`MAX_EVENTS`].
fn take_batch(queue: &mut VecDeque<Request>) -> Vec<Request> {
    let mut batch: Vec<Request> = Vec::new();
    let mut streams: HashSet<StreamId> = HashSet::new();
    let mut deferred: Vec<Request> = Vec::new();
    let mut events = 0;
    while let Some(request) = queue.pop_front() {
        let n = request.args.ids.len();
        if batch.len() == MAX_APPENDS || (!batch.is_empty() && events + n > MAX_EVENTS) {
            queue.push_front(request);
            break;
        }
        if streams.contains(&request.args.stream) {
            deferred.push(request);
            continue;
        }
        streams.insert(request.args.stream.clone());
        events += n;
        batch.push(request);
    }
    for request in deferred.into_iter().rev() {
        queue.push_front(request);
    }
    batch
}

/// Writes one batch and answers each of its callers.
async fn write(shared: &Shared, batch: Vec<Request>) {
    let outcomes = if let [one] = batch.as_slice() {
        vec![write_one(shared, &one.args).await]
    } else {
        write_many(shared, &batch).await
    };
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
