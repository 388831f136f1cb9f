//! Deleting, truncating and restoring streams ([`StreamLifecycle`]).
//!
//! Each operation is one transaction that first takes the `events` table in `SHARE ROW
//! EXCLUSIVE` mode. That lock conflicts with itself and with the `ROW EXCLUSIVE` lock
//! every append takes before it reads the stream's head (the one-statement appends take
//! it before their snapshot; `append_events` takes it in its first statement, since
//! migration 5), so while a delete, truncation or restore runs, no append is in flight
//! anywhere in the schema: the operation waits for the appends that started before it
//! to commit, and the appends that start after it wait, then read the stream as it
//! left it.
//!
//! Without the lock, an append that read the head before the stream's last event
//! committed could insert at a version whose row a delete or truncation had just
//! removed (a unique index does not count a row deleted by a committed transaction as
//! a conflict) and land below the tombstone, or among the truncated versions. Appends
//! pay nothing for the lock; the cost is that appends stall while one of these rare
//! operations runs ([`LOCK_TIMEOUT`] bounds its wait for the lock).
//!
//! A deleted stream's last row is its tombstone: the append statements already read
//! the stream's head row, so they refuse a deleted stream by its event type, with no
//! extra lookup (migration 5 and `Statements::append_fast`).

use cqrs_core::{
    AppendResult, Error, ExpectedVersion, Position, RecordedEvent, Result, STREAM_DELETED,
    SnapshotRecord, StreamDeleted, StreamId, StreamLifecycle, check_truncation, validate_restore,
};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use crate::PostgresEventStore;
use crate::checksum;
use crate::row::{UnixMicros, decode_event, decode_snapshot, exact_i64, store_error, stored_u64};
use crate::schema::EVENT_COLUMNS;

/// How long a lifecycle operation waits for the `events` table lock (for appends in
/// flight, e.g. a long transaction that called `append_in`) before it gives up with
/// [`Error::Store`], having changed nothing. Appends queue behind the waiting lock, so
/// this also bounds how long they can stall because of it.
pub(crate) const LOCK_TIMEOUT: &str = "10s";

/// The SQL of the lifecycle operations, built once per store from its schema.
#[derive(Debug)]
pub(crate) struct LifecycleStatements {
    lock: String,
    head: String,
    delete_snapshot: String,
    delete_events: String,
    insert_tombstone: String,
    snapshot_for_update: String,
    used_event_id: String,
    used_position: String,
    limits: String,
    delete_tombstone: String,
    restore: String,
}

impl LifecycleStatements {
    /// `s` is the quoted schema name.
    pub(crate) fn new(s: &str) -> Self {
        LifecycleStatements {
            lock: format!(
                "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
                 LOCK TABLE {s}.events IN SHARE ROW EXCLUSIVE MODE"
            ),
            head: format!(
                "SELECT e.version, e.event_type FROM {s}.events e \
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 \
                 ORDER BY e.version DESC LIMIT 1"
            ),
            delete_snapshot: format!(
                "DELETE FROM {s}.snapshots WHERE aggregate_type = $1 AND aggregate_id = $2"
            ),
            delete_events: format!(
                "DELETE FROM {s}.events \
                 WHERE aggregate_type = $1 AND aggregate_id = $2 AND version < $3"
            ),
            // A new position like an append's: this transaction's id and the next log id.
            insert_tombstone: format!(
                "INSERT INTO {s}.events AS e (transaction_id, event_id, aggregate_type, \
                 aggregate_id, version, event_type, schema_version, payload, metadata, \
                 checksum) \
                 VALUES (pg_current_xact_id()::text::bigint, $3, $1, $2, $4, $5, $6, $7, \
                 $8::json, $9) RETURNING {EVENT_COLUMNS}"
            ),
            // Locked, so a concurrent `save_snapshot` waits for the truncation.
            snapshot_for_update: format!(
                "SELECT version, schema_version, payload, checksum FROM {s}.snapshots \
                 WHERE aggregate_type = $1 AND aggregate_id = $2 FOR UPDATE"
            ),
            used_event_id: format!(
                "SELECT e.event_id, e.aggregate_type, e.aggregate_id \
                 FROM unnest($1::uuid[]) WITH ORDINALITY AS b(event_id, ord) \
                 JOIN {s}.events e ON e.event_id = b.event_id ORDER BY b.ord LIMIT 1"
            ),
            used_position: format!(
                "SELECT e.id FROM unnest($1::bigint[]) WITH ORDINALITY AS b(id, ord) \
                 JOIN {s}.events e ON e.id = b.id ORDER BY b.ord LIMIT 1"
            ),
            // This transaction's id (every committed one is below it) and the last log
            // id handed out (0 before the first).
            limits: format!(
                "SELECT pg_current_xact_id()::text::bigint, \
                 coalesce(pg_sequence_last_value(pg_get_serial_sequence('{s}.events', 'id') \
                 ::regclass), 0)"
            ),
            delete_tombstone: format!(
                "DELETE FROM {s}.events WHERE aggregate_type = $1 AND aggregate_id = $2 \
                 AND event_type = '{STREAM_DELETED}'"
            ),
            restore: format!(
                "INSERT INTO {s}.events (id, transaction_id, event_id, aggregate_type, \
                 aggregate_id, version, event_type, schema_version, recorded_at, payload, \
                 metadata, checksum) OVERRIDING SYSTEM VALUE \
                 SELECT b.id, b.tx, b.event_id, $1, $2, b.version, b.event_type, \
                 b.schema_version, b.recorded_at, b.payload, b.metadata::json, b.checksum \
                 FROM unnest($3::bigint[], $4::bigint[], $5::uuid[], $6::bigint[], \
                 $7::text[], $8::bigint[], $9::timestamptz[], $10::bytea[], $11::text[], \
                 $12::integer[]) AS b(id, tx, event_id, version, event_type, schema_version, \
                 recorded_at, payload, metadata, checksum)"
            ),
        }
    }
}

/// A stream's state, read under the table lock.
enum Head {
    /// No events.
    Missing,
    /// Live, at this version.
    Live(u64),
    /// Deleted: its tombstone is at this version.
    Deleted(u64),
}

impl PostgresEventStore {
    fn lifecycle_sql(&self) -> &LifecycleStatements {
        &self.statements().lifecycle
    }

    /// Takes the table lock (see the module's docs) in the transaction on `conn`.
    async fn lock_events(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(self.lifecycle_sql().lock.clone()))
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn head(&self, conn: &mut PgConnection, stream: &StreamId) -> Result<Head> {
        let row = sqlx::query(AssertSqlSafe(self.lifecycle_sql().head.clone()))
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .fetch_optional(&mut *conn)
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(Head::Missing);
        };
        let location = || format!("stream {stream}");
        let version: i64 = row.try_get(0).map_err(store_error)?;
        let version = stored_u64(version, location, "version")?;
        let event_type: String = row.try_get(1).map_err(store_error)?;
        Ok(if event_type == STREAM_DELETED {
            Head::Deleted(version)
        } else {
            Head::Live(version)
        })
    }

    /// The live version of `stream`, or the error for a missing or deleted one.
    async fn live_version(&self, conn: &mut PgConnection, stream: &StreamId) -> Result<u64> {
        match self.head(conn, stream).await? {
            Head::Live(version) => Ok(version),
            Head::Missing => Err(Error::StreamNotFound {
                stream: stream.clone(),
            }),
            Head::Deleted(version) => Err(Error::StreamDeleted {
                stream: stream.clone(),
                version,
            }),
        }
    }

    /// Removes the events of `stream` below `before`; returns how many.
    async fn delete_events(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        before: u64,
    ) -> Result<u64> {
        let removed = sqlx::query(AssertSqlSafe(self.lifecycle_sql().delete_events.clone()))
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .bind(exact_i64(before, "version")?)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        Ok(removed.rows_affected())
    }

    /// Writes the tombstone of `stream` at `version`, after its last event, and returns
    /// it as stored.
    async fn insert_tombstone(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        version: u64,
    ) -> Result<RecordedEvent> {
        let last = version.saturating_sub(1);
        let tombstone = StreamDeleted::new(last).event_data();
        let metadata =
            serde_json::to_string(&tombstone.metadata).map_err(|source| Error::Encode {
                what: format!("metadata of the tombstone of {stream}"),
                source: source.into(),
            })?;
        let checksum = checksum::event(
            tombstone.event_id,
            &tombstone.event_type,
            tombstone.schema_version,
            &tombstone.payload,
        );
        let row = sqlx::query(AssertSqlSafe(self.lifecycle_sql().insert_tombstone.clone()))
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .bind(tombstone.event_id)
            .bind(exact_i64(version, "version")?)
            .bind(&tombstone.event_type)
            .bind(i64::from(tombstone.schema_version))
            .bind(&tombstone.payload)
            .bind(metadata)
            .bind(checksum)
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error)?;
        decode_event(&row)
    }

    /// The stream's snapshot, locked until the transaction ends; a damaged one counts
    /// as none (it could not be loaded either).
    async fn snapshot_for_update(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
    ) -> Result<Option<SnapshotRecord>> {
        let row = sqlx::query(AssertSqlSafe(
            self.lifecycle_sql().snapshot_for_update.clone(),
        ))
        .bind(stream.aggregate_type())
        .bind(stream.id())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        match decode_snapshot(&row, 0, stream) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(Error::Corrupt { reason, .. }) => {
                tracing::warn!(%stream, %reason, "a damaged snapshot does not cover a truncation");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Refuses a restore whose ids or positions are in use, or whose positions this
    /// store never handed out.
    async fn check_restore_slots(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        columns: &RestoreColumns,
    ) -> Result<()> {
        let sql = self.lifecycle_sql();
        let used = sqlx::query(AssertSqlSafe(sql.used_event_id.clone()))
            .bind(&columns.event_ids)
            .fetch_optional(&mut *conn)
            .await
            .map_err(store_error)?;
        if let Some(row) = used {
            let event_id: Uuid = row.try_get(0).map_err(store_error)?;
            let aggregate_type: String = row.try_get(1).map_err(store_error)?;
            let aggregate_id: String = row.try_get(2).map_err(store_error)?;
            let existing_stream = StreamId::new(aggregate_type, aggregate_id)
                .map_err(|e| Error::corrupt(format!("event {event_id}"), e.to_string()))?;
            return Err(Error::DuplicateEventId {
                event_id,
                existing_stream,
            });
        }
        let limits = sqlx::query(AssertSqlSafe(sql.limits.clone()))
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error)?;
        let current_transaction: i64 = limits.try_get(0).map_err(store_error)?;
        let last_id: i64 = limits.try_get(1).map_err(store_error)?;
        let foreign = columns
            .ids
            .iter()
            .zip(&columns.transactions)
            .position(|(&id, &tx)| id > last_id || tx >= current_transaction);
        if let Some(i) = foreign {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: position {} of version {} was never handed out by this \
                 store",
                columns.positions[i], columns.versions[i]
            )));
        }
        let taken: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.used_position.clone()))
            .bind(&columns.ids)
            .fetch_optional(&mut *conn)
            .await
            .map_err(store_error)?;
        if let Some(i) = taken.and_then(|id| columns.ids.iter().position(|&x| x == id)) {
            return Err(Error::invalid_input(format!(
                "restore to {stream}: position {} of version {} is taken",
                columns.positions[i], columns.versions[i]
            )));
        }
        Ok(())
    }
}

/// The columns of a restore, checked and converted before the transaction starts.
struct RestoreColumns {
    /// The records' positions, for messages.
    positions: Vec<Position>,
    ids: Vec<i64>,
    transactions: Vec<i64>,
    event_ids: Vec<Uuid>,
    versions: Vec<i64>,
    types: Vec<String>,
    schema_versions: Vec<i64>,
    recorded_at: Vec<UnixMicros>,
    payloads: Vec<Vec<u8>>,
    metadata: Vec<String>,
    checksums: Vec<i32>,
}

impl RestoreColumns {
    fn new(stream: &StreamId, records: Vec<RecordedEvent>) -> Result<Self> {
        let n = records.len();
        let mut columns = RestoreColumns {
            positions: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            transactions: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            recorded_at: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            checksums: Vec::with_capacity(n),
        };
        for record in records {
            let not_ours = || {
                Error::invalid_input(format!(
                    "restore to {stream}: position {} of version {} cannot be this store's",
                    record.position, record.version
                ))
            };
            // Transaction ids and log ids of this store are positive BIGINTs.
            let id = i64::try_from(record.position.sequence)
                .ok()
                .filter(|&id| id > 0)
                .ok_or_else(not_ours)?;
            let transaction = i64::try_from(record.position.commit)
                .ok()
                .filter(|&tx| tx > 0)
                .ok_or_else(not_ours)?;
            let recorded_at =
                UnixMicros::from_system_time(record.recorded_at).ok_or_else(|| {
                    Error::invalid_input(format!(
                        "restore to {stream}: the time of version {} is out of range",
                        record.version
                    ))
                })?;
            let metadata =
                serde_json::to_string(&record.metadata).map_err(|source| Error::Encode {
                    what: format!("metadata of {stream} version {}", record.version),
                    source: source.into(),
                })?;
            columns.checksums.push(checksum::event(
                record.event_id,
                &record.event_type,
                record.schema_version,
                &record.payload,
            ));
            columns.positions.push(record.position);
            columns.ids.push(id);
            columns.transactions.push(transaction);
            columns.event_ids.push(record.event_id);
            columns.versions.push(exact_i64(record.version, "version")?);
            columns
                .schema_versions
                .push(i64::from(record.schema_version));
            columns.recorded_at.push(recorded_at);
            columns.metadata.push(metadata);
            columns.types.push(record.event_type);
            columns.payloads.push(record.payload);
        }
        Ok(columns)
    }
}

/// Delete, truncate and restore, each in one transaction under the `events` table lock
/// (see the crate's `lifecycle` module). A delete's tombstone gets a new position like an
/// append and goes through the inline projections in the delete's transaction; removed
/// events leave holes in the log; restored events get their old positions back.
///
/// A broken connection is reported as [`Error::Store`], not retried: the operation
/// may or may not have committed (read the stream to find out).
impl StreamLifecycle for PostgresEventStore {
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let mut tx = self.inner.pool.begin().await.map_err(store_error)?;
        self.lock_events(&mut tx).await?;
        let last = self.live_version(&mut tx, stream).await?;
        if !expected.matches(last) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: last,
            });
        }
        sqlx::query(AssertSqlSafe(self.lifecycle_sql().delete_snapshot.clone()))
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let version = last
            .checked_add(1)
            .ok_or_else(|| Error::invalid_input(format!("{stream} is at the last version")))?;
        self.delete_events(&mut tx, stream, version).await?;
        let tombstone = self.insert_tombstone(&mut tx, stream, version).await?;
        self.run_inline(&mut tx, std::slice::from_ref(&tombstone))
            .await?;
        tx.commit().await.map_err(store_error)?;
        self.notify_appended();
        Ok(AppendResult {
            version: tombstone.version,
            position: tombstone.position,
            duplicate: false,
        })
    }

    async fn truncate_stream(&self, stream: &StreamId, before: u64) -> Result<u64> {
        let mut tx = self.inner.pool.begin().await.map_err(store_error)?;
        self.lock_events(&mut tx).await?;
        let version = self.live_version(&mut tx, stream).await?;
        let snapshot = self.snapshot_for_update(&mut tx, stream).await?;
        check_truncation(stream, before, version, snapshot.as_ref())?;
        let removed = self.delete_events(&mut tx, stream, before).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(removed)
    }

    async fn restore_stream(&self, stream: &StreamId, records: Vec<RecordedEvent>) -> Result<u64> {
        validate_restore(stream, &records)?;
        let Some(last) = records.last().map(|r| r.version) else {
            return Ok(0);
        };
        let count = u64::try_from(records.len()).unwrap_or(u64::MAX);
        let columns = RestoreColumns::new(stream, records)?;
        let mut tx = self.inner.pool.begin().await.map_err(store_error)?;
        self.lock_events(&mut tx).await?;
        let follows = last.checked_add(1);
        match self.head(&mut tx, stream).await? {
            Head::Missing => {}
            Head::Deleted(version) if Some(version) == follows => {}
            Head::Deleted(actual) | Head::Live(actual) => {
                return Err(Error::Conflict {
                    stream: stream.clone(),
                    expected: ExpectedVersion::Exact(follows.unwrap_or(last)),
                    actual,
                });
            }
        }
        self.check_restore_slots(&mut tx, stream, &columns).await?;
        let sql = self.lifecycle_sql();
        sqlx::query(AssertSqlSafe(sql.delete_tombstone.clone()))
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query(AssertSqlSafe(sql.restore.clone()))
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .bind(&columns.ids)
            .bind(&columns.transactions)
            .bind(&columns.event_ids)
            .bind(&columns.versions)
            .bind(&columns.types)
            .bind(&columns.schema_versions)
            .bind(&columns.recorded_at)
            .bind(&columns.payloads)
            .bind(&columns.metadata)
            .bind(&columns.checksums)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        self.notify_appended();
        Ok(count)
    }
}
