//! The append path: the one-statement hot path, the `append_events` function for the
//! cases it leaves, appends inside a caller's transaction, and inline projections.

use cqrs_core::{
    AppendResult, Error, EventData, ExpectedVersion, Position, RecordedEvent, Result, StreamId,
    validate_batch,
};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use uuid::Uuid;

use crate::PostgresEventStore;
use crate::batch::Outcome;
use crate::checksum;
use crate::conn::{is_broken_connection, is_unique_violation};
use crate::row::{decode_event, saturating_i64, store_error, stored_u64};

/// How often an append that lost a race on a unique index (a concurrent append of the
/// same version or event id) is re-run before the conflict is reported. Each re-run
/// sees the winner's commit, so it ends in a result, a conflict or the idempotent match;
/// only `Any`/`StreamExists` appends under heavy contention on one stream need more than
/// one.
const MAX_APPEND_ATTEMPTS: u32 = 64;

/// The bound arguments of one append, owning its events' columns (the group-commit
/// task writes them after the caller handed them over).
pub(crate) struct AppendArgs {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) expected_kind: i16,
    pub(crate) expected_version: i64,
    pub(crate) ids: Vec<Uuid>,
    pub(crate) types: Vec<String>,
    pub(crate) schema_versions: Vec<i64>,
    pub(crate) payloads: Vec<Vec<u8>>,
    pub(crate) metadata: Vec<String>,
    pub(crate) checksums: Vec<i32>,
}

impl AppendArgs {
    /// Binds `$1` to `$10`, which the fast statement and `append_events` share.
    pub(crate) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.stream.aggregate_type())
            .bind(self.stream.id())
            .bind(self.expected_kind)
            .bind(self.expected_version)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.checksums)
    }

    /// Takes the events' columns without copying their payloads.
    pub(crate) fn new(
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<Self> {
        let (expected_kind, expected_version) = match expected {
            ExpectedVersion::Any => (0, 0),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            // A version beyond BIGINT is never a stream's version: -1 never matches.
            ExpectedVersion::Exact(v) => (3, i64::try_from(v).unwrap_or(-1)),
        };
        let n = events.len();
        let mut args = AppendArgs {
            stream: stream.clone(),
            expected,
            expected_kind,
            expected_version,
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            checksums: Vec::with_capacity(n),
        };
        for e in events {
            let metadata = serde_json::to_string(&e.metadata).map_err(|source| Error::Encode {
                what: format!("metadata of {}", e.event_type),
                source: source.into(),
            })?;
            args.checksums.push(checksum::event(
                e.event_id,
                &e.event_type,
                e.schema_version,
                &e.payload,
            ));
            args.metadata.push(metadata);
            args.ids.push(e.event_id);
            args.schema_versions.push(i64::from(e.schema_version));
            args.types.push(e.event_type);
            args.payloads.push(e.payload);
        }
        Ok(args)
    }
}

impl PostgresEventStore {
    /// An append in a transaction of its own (with the inline projections, if any),
    /// through the group-commit task when it is on and no inline projection is
    /// registered (ADR 0027).
    pub(crate) async fn append_batch(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        let args = AppendArgs::new(stream, expected, events)?;
        if !self.inner.inline.is_empty() {
            return self.append_with_inline(&args).await;
        }
        let Some(batcher) = self.batcher() else {
            return self.append_direct(&args, true).await;
        };
        if let Some(_slot) = batcher.idle(stream) {
            // A slot free, nothing queued, no write of this stream in flight: write at
            // once, alone; appends made meanwhile queue for the next batch.
            return self.append_direct(&args, true).await;
        }
        let args = Arc::new(args);
        match batcher.submit(Arc::clone(&args)).await {
            Outcome::Written(result) => Ok(result),
            Outcome::Alone { mismatch } => self.append_direct(&args, !mismatch).await,
        }
    }

    /// Appends within the caller's transaction (or connection): the events commit or roll
    /// back with it, for example together with an outbox row. Inline projections are not
    /// run here, and readers are not notified before the caller commits.
    ///
    /// The append runs in a savepoint, so a lost race on the stream's version is
    /// retried without aborting the caller's transaction.
    ///
    /// Run it in a `READ COMMITTED` transaction (PostgreSQL's default). In `REPEATABLE
    /// READ` or `SERIALIZABLE` the append reads the stream as of the transaction's
    /// snapshot: if a [`delete_stream`](cqrs_core::StreamLifecycle::delete_stream) or
    /// [`truncate_stream`](cqrs_core::StreamLifecycle::truncate_stream) of the stream
    /// committed after that snapshot was taken, the append can write at a version the
    /// operation removed (below the tombstone or the truncation) instead of failing.
    ///
    /// # Errors
    /// As for [`EventLog::append`](cqrs_core::EventLog::append).
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        let args = AppendArgs::new(stream, expected, events)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut savepoint = conn.begin().await.map_err(store_error)?;
            match self
                .call_append(
                    &mut savepoint,
                    &args,
                    self.inner.channel.as_deref(),
                    attempt > 1,
                    true,
                )
                .await
            {
                Err(e) if is_unique_violation(&e) && attempt < MAX_APPEND_ATTEMPTS => {
                    savepoint.rollback().await.map_err(store_error)?;
                }
                Err(e) => return Err(self.append_error(e, &args).await),
                Ok(outcome) => {
                    let outcome = outcome?;
                    savepoint.commit().await.map_err(store_error)?;
                    return Ok(outcome);
                }
            }
        }
    }

    /// Runs the append function once: `Err` is the driver's error (maybe a unique
    /// violation to retry), `Ok(Err)` the typed refusal. Without `try_fast` (the
    /// expected version is known not to match) it goes straight to the function.
    async fn call_append(
        &self,
        conn: &mut PgConnection,
        args: &AppendArgs,
        notify_in_transaction: Option<&str>,
        check_ids: bool,
        try_fast: bool,
    ) -> std::result::Result<Result<AppendResult>, sqlx::Error> {
        if try_fast && !check_ids && notify_in_transaction.is_none() {
            let fast = args
                .bind(sqlx::query(AssertSqlSafe(
                    self.inner.sql.append_fast.clone(),
                )))
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(row) = fast {
                return Ok(decode_append(&row, args));
            }
            // The expected version did not match: the function sorts out what happened.
        }
        let row = args
            .bind(sqlx::query(AssertSqlSafe(self.inner.sql.append.clone())))
            .bind(notify_in_transaction)
            .bind(check_ids)
            .fetch_one(conn)
            .await?;
        Ok(decode_append(&row, args))
    }

    /// A driver error from an append that will not be retried.
    async fn append_error(&self, error: sqlx::Error, args: &AppendArgs) -> Error {
        if !is_unique_violation(&error) {
            return store_error(error);
        }
        // Only after MAX_APPEND_ATTEMPTS lost races (a stream hammered by `Any` appends):
        // report the contention as the conflict it is, with the stream's version now.
        let actual = self
            .retrying(|| {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(self.inner.sql.stream_version.clone()))
                    .bind(args.stream.aggregate_type())
                    .bind(args.stream.id())
                    .fetch_one(&self.inner.pool)
            })
            .await;
        match actual {
            Ok(actual) => match stored_u64(actual, || format!("stream {}", args.stream), "version")
            {
                Ok(actual) => Error::Conflict {
                    stream: args.stream.clone(),
                    expected: args.expected,
                    actual,
                },
                Err(e) => e,
            },
            Err(e) => store_error(e),
        }
    }

    /// The hot path without group commit: one statement on a pooled connection,
    /// autocommit. Without `try_fast` (a batch found the expected version not matching)
    /// the first attempt goes straight to the function that tells a conflict from an
    /// idempotent re-append.
    async fn append_direct(&self, args: &AppendArgs, try_fast: bool) -> Result<AppendResult> {
        let mut attempt = 0;
        let mut broken = 0;
        loop {
            attempt += 1;
            let mut conn = self.inner.pool.acquire().await.map_err(store_error)?;
            match self
                .call_append(&mut conn, args, None, attempt > 1, try_fast)
                .await
            {
                Err(e) if is_unique_violation(&e) && attempt < MAX_APPEND_ATTEMPTS => {}
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    // Whether it committed is unknown; running it again is safe because
                    // appends are idempotent by event id (the re-run finds them).
                    broken += 1;
                    conn.close_on_drop();
                }
                Err(e) => return Err(self.append_error(e, args).await),
                Ok(outcome) => return outcome,
            }
        }
    }

    /// With inline projections: the append, the read-back of its records and every inline
    /// projection in one transaction.
    async fn append_with_inline(&self, args: &AppendArgs) -> Result<AppendResult> {
        let mut attempt = 0;
        let mut broken = 0;
        loop {
            attempt += 1;
            let mut tx = self.inner.pool.begin().await.map_err(store_error)?;
            let outcome = match self
                .call_append(&mut tx, args, None, attempt > 1, true)
                .await
            {
                Err(e) if is_unique_violation(&e) && attempt < MAX_APPEND_ATTEMPTS => continue,
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    broken += 1;
                    continue;
                }
                Err(e) => return Err(self.append_error(e, args).await),
                Ok(outcome) => outcome?,
            };
            if outcome.duplicate {
                // Already stored: the inline projections ran with the original append.
                return Ok(outcome);
            }
            let result = outcome;
            let count = u64::try_from(args.ids.len()).unwrap_or(u64::MAX);
            let first = result.version.saturating_sub(count);
            let records: Vec<RecordedEvent> =
                sqlx::query(AssertSqlSafe(self.inner.sql.events_of_transaction.clone()))
                    .bind(args.stream.aggregate_type())
                    .bind(args.stream.id())
                    .bind(saturating_i64(first))
                    .bind(saturating_i64(result.version))
                    .fetch(&mut *tx)
                    .map(|row| row.map_err(store_error).and_then(|row| decode_event(&row)))
                    .try_collect()
                    .await?;
            self.run_inline(&mut tx, &records).await?;
            match tx.commit().await {
                Ok(()) => return Ok(result),
                Err(e) if is_unique_violation(&e) && attempt < MAX_APPEND_ATTEMPTS => {}
                // The commit's outcome is unknown: run it again; if it did commit, the
                // re-run finds the events and returns the original result (the inline
                // projections committed with them).
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    broken += 1;
                }
                Err(e) => return Err(self.append_error(e, args).await),
            }
        }
    }
}

pub(crate) fn decode_append(row: &PgRow, args: &AppendArgs) -> Result<AppendResult> {
    let location = || format!("append to {}", args.stream);
    let outcome: i16 = row.try_get(0).map_err(store_error)?;
    let version = |row: &PgRow| -> Result<u64> {
        let v: i64 = row.try_get(1).map_err(store_error)?;
        stored_u64(v, location, "version")
    };
    let result = |row: &PgRow, duplicate: bool| -> Result<AppendResult> {
        let commit: i64 = row.try_get(2).map_err(store_error)?;
        let sequence: i64 = row.try_get(3).map_err(store_error)?;
        Ok(AppendResult {
            version: version(row)?,
            position: Position::new(
                stored_u64(commit, location, "transaction id")?,
                stored_u64(sequence, location, "log id")?,
            ),
            duplicate,
        })
    };
    match outcome {
        0 => result(row, false),
        3 => result(row, true),
        1 => Err(Error::Conflict {
            stream: args.stream.clone(),
            expected: args.expected,
            actual: version(row)?,
        }),
        4 => Err(Error::StreamDeleted {
            stream: args.stream.clone(),
            version: version(row)?,
        }),
        2 => {
            let event_id: Uuid = row.try_get(4).map_err(store_error)?;
            let aggregate_type: String = row.try_get(5).map_err(store_error)?;
            let aggregate_id: String = row.try_get(6).map_err(store_error)?;
            let existing_stream = StreamId::new(aggregate_type, aggregate_id)
                .map_err(|e| Error::corrupt(format!("event {event_id}"), e.to_string()))?;
            Err(Error::DuplicateEventId {
                event_id,
                existing_stream,
            })
        }
        other => Err(Error::corrupt(
            location(),
            format!("unknown append outcome {other}"),
        )),
    }
}
