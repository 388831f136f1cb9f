//! `PostgresEventStore`: the `EventStore` over a PostgreSQL pool.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cqrs_core::{
    AppendResult, Error, EventData, EventLog, ExpectedVersion, Inspect, LogItem, LogNotifier,
    LogWatcher, Position, RecordedEvent, Result, SnapshotRecord, SnapshotStore, StoreStats,
    StreamId, StreamInfo, StreamItem,
};
use futures::future::Either;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, stream};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::batch::Batcher;
use crate::checksum;
use crate::inline::InlineProjection;
use crate::row::{
    SnapshotRow, decode_event, decode_rows, decode_snapshot, event_version, exact_i64,
    saturating_i64, snapshot_of_row, store_error, stored_u64,
};
use crate::schema::{Schema, Statements};
use crate::{listen, migrate, reader};

/// A PostgreSQL [`EventStore`](cqrs_core::EventStore): events, snapshots and checkpoints in tables of one schema,
/// written through a [`PgPool`].
///
/// - **One round trip per append**: the expected-version check and the insert of the
///   whole batch are one statement; a version mismatch or a stored event id goes on to a
///   PL/pgSQL function that [`migrate`](Self::migrate) installs, which tells a conflict
///   from an idempotent re-append.
/// - **One round trip per load**: [`read_stream_from_snapshot`] reads the latest
///   snapshot and the events after it in one statement, so a command (load + append)
///   is two round trips with or without snapshots.
/// - **Gap-safe global log**: each event records its writer's transaction id;
///   [`read_all`](cqrs_core::EventLog::read_all) reads in `(transaction id, id)` order and only
///   below the oldest transaction still running, so a reader never passes an append that
///   may still commit. Positions are `Position { commit: transaction id, sequence: id }`.
/// - **Stream lifecycle** ([`StreamLifecycle`](cqrs_core::StreamLifecycle)): delete (a
///   tombstone at a new position), truncate and restore, each one transaction that holds
///   appends off the schema's `events` table while it runs; removed events leave holes.
/// - **Live readers** are woken by `LISTEN`/`NOTIFY` (see [`watch`](cqrs_core::EventLog::watch)),
///   with the runner's polling as a fallback.
///
/// Clones share the pool and the notifier.
///
/// [`read_stream_from_snapshot`]: cqrs_core::SnapshotStore::read_stream_from_snapshot
///
/// # Examples
/// ```no_run
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, StreamId};
/// use cqrs_postgres::PostgresEventStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresEventStore::connect("postgres://postgres@127.0.0.1/postgres").await?;
/// store.migrate().await?;
/// let stream = StreamId::new("account", "42")?;
/// let opened = EventData::new("AccountOpened", br#"{"owner":"ada"}"#.to_vec());
/// store.append(&stream, ExpectedVersion::NoStream, vec![opened]).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresEventStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) schema: Schema,
    pub(crate) sql: Statements,
    /// The `NOTIFY` channel, when appends notify.
    pub(crate) channel: Option<String>,
    pub(crate) notify_interval: Duration,
    pub(crate) settle: Duration,
    /// Whether `read_all` decodes on a task of its own (on a multi-threaded runtime).
    pub(crate) read_on_task: bool,
    pub(crate) notifier: Arc<LogNotifier>,
    pub(crate) listener: Mutex<Option<JoinHandle<()>>>,
    /// Wakes the task that sends this store's coalesced `NOTIFY`s.
    pub(crate) notify_wanted: Arc<tokio::sync::Notify>,
    pub(crate) notify_task: OnceLock<JoinHandle<()>>,
    pub(crate) inline: Vec<Arc<dyn InlineProjection>>,
    /// Whether appends go through the group-commit task (ADR 0027).
    pub(crate) group_commit: bool,
    /// The group-commit task, started with the first append that uses it.
    pub(crate) batcher: Option<Batcher>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let listener = self
            .listener
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(task) = listener.take() {
            task.abort();
        }
        if let Some(task) = self.notify_task.get() {
            task.abort();
        }
    }
}

impl fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("schema", &self.inner.schema)
            .field("notify", &self.inner.channel.is_some())
            .field("read_settle", &self.inner.settle)
            .field("read_on_task", &self.inner.read_on_task)
            .field("group_commit", &self.inner.group_commit)
            .field(
                "inline_projections",
                &self
                    .inner
                    .inline
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// How long [`PostgresEventStore::connect_pool`] waits for the server.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl PostgresEventStore {
    /// Connects with a small default pool (10 connections) and the default options
    /// (schema `cqrs`, notifications on).
    ///
    /// The pool does not ping a connection before handing it out (sqlx's default does,
    /// which costs a round trip per call): a connection found dead is replaced, and an
    /// append that failed on one is retried (safe: appends are idempotent by event id).
    /// Configure your own pool the same way for one round trip per append.
    ///
    /// # Errors
    /// [`crate::Error::Connect`] if the server cannot be reached.
    pub async fn connect(url: &str) -> crate::Result<Self> {
        Self::builder(Self::connect_pool(url, 10).await?).build()
    }

    /// A pool for `url` with the settings the store wants (no test query before each
    /// use, at most `max_connections`), for [`builder`](Self::builder). It first opens one
    /// connection directly, within 10 seconds, so an unreachable server fails fast with
    /// the real cause (connection refused, unknown host, password refused) instead of
    /// the pool's "timed out while waiting for an open connection" after 30 seconds.
    ///
    /// # Errors
    /// [`crate::Error::Connect`] with the driver's error.
    pub async fn connect_pool(url: &str, max_connections: u32) -> crate::Result<PgPool> {
        let connect = |source| crate::Error::Connect { source };
        let options: PgConnectOptions = url.parse().map_err(connect)?;
        let first =
            tokio::time::timeout(CONNECT_TIMEOUT, sqlx::ConnectOptions::connect(&options)).await;
        let timed_out = || {
            let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s");
            connect(sqlx::Error::Io(io))
        };
        sqlx::Connection::close(first.map_err(|_| timed_out())?.map_err(connect)?)
            .await
            .ok();
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options))
    }

    /// Creates the schema and its tables, or brings them up to date. Safe to run from many
    /// processes at once (they take turns) and again on every start; returns the schema's
    /// migration version.
    ///
    /// # Errors
    /// [`crate::Error::Migrate`] naming the failed migration (rolled back),
    /// [`crate::Error::SchemaTooNew`], or [`crate::Error::Connect`].
    pub async fn migrate(&self) -> crate::Result<i64> {
        migrate::run(&self.inner.pool, &self.inner.schema).await
    }

    /// The pool, for read models kept in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        self.inner.schema.name()
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.inner.sql
    }

    pub(crate) fn schema_ref(&self) -> &Schema {
        &self.inner.schema
    }

    pub(crate) fn connect_options(&self) -> PgConnectOptions {
        (*self.inner.pool.connect_options()).clone()
    }

    /// The highest transaction id below which every transaction has ended, waiting up to
    /// the settle timeout for older transactions when committed events sit above it.
    pub(crate) async fn horizon(&self) -> Result<i64> {
        Ok(self.settle(false).await?.0)
    }

    /// The [`horizon`](Self::horizon) and the position of the last event below it (`None`
    /// when there is none), from the same statements.
    pub(crate) async fn horizon_and_last(&self) -> Result<(i64, Option<Position>)> {
        self.settle(true).await
    }

    /// The horizon, waiting for it to pass the newest event's transaction as
    /// [`horizon`](Self::horizon) says, and with `last`, the last event's position below it.
    async fn settle(&self, last: bool) -> Result<(i64, Option<Position>)> {
        let sql = &self.inner.sql;
        let (first, now) = match last {
            true => (&sql.horizon_last, &sql.horizon_last_now),
            false => (&sql.horizon, &sql.horizon_now),
        };
        let query = |sql: &Arc<str>| {
            let sql = sql.clone();
            self.retrying(move || {
                sqlx::query(AssertSqlSafe(sql.clone())).fetch_one(&self.inner.pool)
            })
        };
        let row = query(first).await.map_err(store_error)?;
        let mut horizon: i64 = row.try_get(0).map_err(store_error)?;
        let mut below = if last { last_position(&row, 2)? } else { None };
        let Some(top) = row.try_get::<Option<i64>, _>(1).map_err(store_error)? else {
            return Ok((horizon, below));
        };
        let deadline = tokio::time::Instant::now() + self.inner.settle;
        let mut pause = Duration::from_millis(1);
        while horizon <= top && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            let row = query(now).await.map_err(store_error)?;
            horizon = row.try_get(0).map_err(store_error)?;
            if last {
                below = last_position(&row, 1)?;
            }
        }
        Ok((horizon, below))
    }

    /// The group-commit batcher (its task starts with the first append that queues);
    /// `None` when group commit is off.
    pub(crate) fn batcher(&self) -> Option<&Batcher> {
        self.inner.batcher.as_ref()
    }

    /// Wakes this process's watchers now, and other processes' through the coalesced
    /// `NOTIFY` task (started with the first append).
    pub(crate) fn notify_appended(&self) {
        self.inner.notifier.notify();
        // Outside a Tokio runtime (never the case under sqlx's tokio runtime, but no
        // reason to panic) other nodes' readers poll.
        if let (Some(channel), Ok(runtime)) =
            (&self.inner.channel, tokio::runtime::Handle::try_current())
        {
            self.inner.notify_task.get_or_init(|| {
                runtime.spawn(listen::notify_loop(
                    self.connect_options(),
                    channel.clone(),
                    self.inner.notify_interval,
                    Arc::clone(&self.inner.notify_wanted),
                ))
            });
            self.inner.notify_wanted.notify_one();
        }
    }
}

impl EventLog for PostgresEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let result = self.append_batch(stream, expected, events).await?;
        self.notify_appended();
        Ok(result)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        decode_rows(self.restarting(move || {
            sqlx::query(AssertSqlSafe(self.inner.sql.read_stream.clone()))
                .bind(stream.aggregate_type())
                .bind(stream.id())
                .bind(saturating_i64(from_version))
                .fetch(&self.inner.pool)
        }))
    }

    /// The rows are decoded in the caller's polls; with
    /// [`read_on_task(true)`](crate::PostgresEventStoreBuilder::read_on_task), on a
    /// multi-threaded runtime, on a task of their own, a few hundred records ahead of
    /// the caller.
    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        if self.inner.read_on_task && reader::can_read_beside() {
            Either::Left(reader::read_all_beside(self.clone(), after, limit))
        } else {
            Either::Right(self.read_all_here(after, limit))
        }
    }

    /// The server leaves the records of other types out (`event_type = ANY(…)` in the
    /// read's query); a read that ends before its limit passes to the last event below
    /// its horizon (every transaction under it has ended; the horizon query finds it),
    /// so a reader of rare types moves its cursor to the end of the log. Decoded as
    /// `read_all` decodes.
    fn read_all_of_types<'a>(
        &'a self,
        after: Position,
        limit: Option<u64>,
        types: &'a [String],
    ) -> impl Stream<Item = Result<LogItem>> + Send + 'a {
        if self.inner.read_on_task && reader::can_read_beside() {
            let types = types.to_vec();
            Either::Left(reader::read_all_of_types_beside(
                self.clone(),
                after,
                limit,
                types,
            ))
        } else {
            Either::Right(self.read_all_of_types_here(after, limit, types))
        }
    }

    fn filters_types(&self) -> bool {
        true
    }

    /// A watcher woken by appends through this store at once, and by appends of other
    /// processes through `LISTEN` on the schema's channel (when
    /// [`notify`](crate::PostgresEventStoreBuilder::notify) is on). The listener task starts
    /// with the first watcher, on the current Tokio runtime (outside one, the watcher
    /// only sees this process's appends), reconnects when its connection is lost, and
    /// stops with the store.
    fn watch(&self) -> LogWatcher {
        if let Some(channel) = &self.inner.channel {
            let mut listener = self
                .inner
                .listener
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let running = listener.as_ref().is_some_and(|task| !task.is_finished());
            if !running && let Ok(runtime) = tokio::runtime::Handle::try_current() {
                *listener = Some(runtime.spawn(listen::run(
                    self.connect_options(),
                    channel.clone(),
                    Arc::clone(&self.inner.notifier),
                )));
            }
        }
        self.inner.notifier.watcher()
    }
}

impl SnapshotStore for PostgresEventStore {
    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
        let rows = self.restarting(move || {
            sqlx::query(AssertSqlSafe(self.inner.sql.read_from_snapshot.clone()))
                .bind(stream.aggregate_type())
                .bind(stream.id())
                .fetch(&self.inner.pool)
        });
        let events = |rows: BoxStream<'a, std::result::Result<PgRow, sqlx::Error>>| {
            rows.map(|row| {
                row.map_err(store_error)
                    .and_then(|row| decode_event(&row))
                    .map(StreamItem::Event)
            })
        };
        stream::once(async move {
            let mut rows = rows.boxed();
            let first = match rows.next().await {
                None => return stream::empty().boxed(),
                Some(Err(e)) => return stream::iter([Err(store_error(e))]).boxed(),
                Some(Ok(row)) => row,
            };
            let snapshot = match snapshot_of_row(&first, stream) {
                Ok(snapshot) => snapshot,
                Err(e) => return stream::iter([Err(e)]).boxed(),
            };
            match snapshot {
                SnapshotRow::None => {
                    let head = match event_version(&first) {
                        Ok(None) => None,
                        Ok(Some(_)) => Some(decode_event(&first).map(StreamItem::Event)),
                        Err(e) => Some(Err(e)),
                    };
                    stream::iter(head).chain(events(rows)).boxed()
                }
                SnapshotRow::Usable(snapshot) => {
                    // The tail must go on right after the snapshot's version.
                    let next = snapshot.version.saturating_add(1);
                    let mut tail = events(rows).peekable();
                    let hole = match std::pin::Pin::new(&mut tail).peek().await {
                        Some(Ok(StreamItem::Event(e))) if e.version != next => Some(e.version),
                        _ => None,
                    };
                    let head = match hole {
                        None => Ok(StreamItem::Snapshot(snapshot)),
                        Some(found) => Err(Error::corrupt(
                            format!("stream {stream}"),
                            format!(
                                "the events after the snapshot at version {} do not start at \
                                 version {next} (found {found})",
                                snapshot.version
                            ),
                        )),
                    };
                    stream::iter([head]).chain(tail).boxed()
                }
                SnapshotRow::Ignored(ignored) => {
                    drop(rows);
                    tracing::warn!(%stream, reason = %ignored, "ignoring snapshot");
                    stream::iter([Ok(StreamItem::SnapshotIgnored(ignored))])
                        .chain(
                            self.read_stream(stream, 1)
                                .map(|e| e.map(StreamItem::Event)),
                        )
                        .boxed()
                }
            }
        })
        .flatten()
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotRecord>> {
        let row = self
            .retrying(|| {
                sqlx::query(AssertSqlSafe(self.inner.sql.load_snapshot.clone()))
                    .bind(stream.aggregate_type())
                    .bind(stream.id())
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        match decode_snapshot(&row, 0, stream) {
            Ok(snapshot) => Ok(Some(snapshot)),
            // A snapshot is only an optimisation: a damaged one is ignored, not fatal.
            Err(Error::Corrupt { reason, .. }) => {
                tracing::warn!(%stream, %reason, "ignoring a damaged snapshot record");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: SnapshotRecord) -> Result<()> {
        let version = exact_i64(snapshot.version, "snapshot version")?;
        let checksum =
            checksum::snapshot(snapshot.version, snapshot.schema_version, &snapshot.payload);
        // An upsert: safe to run again after a broken connection. In a transaction that
        // first waits for a delete in flight, so a late save never revives a snapshot of
        // a deleted stream.
        let (sql, payload) = (&self.inner.sql, &snapshot.payload);
        let schema_version = i64::from(snapshot.schema_version);
        self.retrying(|| async move {
            let mut tx = self.inner.pool.begin().await?;
            let lock = AssertSqlSafe(sql.lock_for_snapshot.clone());
            sqlx::query(lock).execute(&mut *tx).await?;
            sqlx::query(AssertSqlSafe(sql.save_snapshot.clone()))
                .bind(stream.aggregate_type())
                .bind(stream.id())
                .bind(version)
                .bind(schema_version)
                .bind(payload)
                .bind(checksum)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
        .map_err(store_error)?;
        Ok(())
    }
}

impl Inspect for PostgresEventStore {
    async fn find_event(&self, stream: &StreamId, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let row = self
            .retrying(|| {
                sqlx::query(AssertSqlSafe(self.inner.sql.find_event.clone()))
                    .bind(event_id)
                    .bind(stream.aggregate_type())
                    .bind(stream.id())
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        row.as_ref().map(decode_event).transpose()
    }

    async fn count_events(&self, after: Position) -> Result<u64> {
        self.count_after(after, None).await
    }

    async fn count_events_of_types<'a>(
        &'a self,
        after: Position,
        types: &'a [String],
    ) -> Result<u64> {
        self.count_after(after, Some(types)).await
    }

    /// Every stream with its version: one grouped scan of the stream index, streamed.
    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        self.restarting(|| {
            sqlx::query(AssertSqlSafe(self.inner.sql.list_streams.clone())).fetch(&self.inner.pool)
        })
        .map(|row| {
            let row = row.map_err(store_error)?;
            let aggregate_type: String = row.try_get(0).map_err(store_error)?;
            let aggregate_id: String = row.try_get(1).map_err(store_error)?;
            let version: i64 = row.try_get(2).map_err(store_error)?;
            let location = || format!("stream {aggregate_type}/{aggregate_id}");
            let stream = StreamId::new(&aggregate_type, &aggregate_id)
                .map_err(|e| Error::corrupt(location(), e.to_string()))?;
            Ok(StreamInfo {
                version: stored_u64(version, location, "version")?,
                stream,
            })
        })
    }

    /// Streams, events (every committed one) and snapshots, in one query.
    async fn stats(&self) -> Result<StoreStats> {
        let row = self
            .retrying(|| {
                sqlx::query(AssertSqlSafe(self.inner.sql.stats.clone())).fetch_one(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        let count = |i: usize| -> Result<u64> {
            let n: i64 = row.try_get(i).map_err(store_error)?;
            stored_u64(n, || "store statistics".into(), "count")
        };
        Ok(StoreStats {
            streams: count(0)?,
            events: count(1)?,
            snapshots: Some(count(2)?),
        })
    }
}

/// The position in columns `first` (transaction id) and `first + 1` (log id) of `row`, if
/// they are not `NULL`.
fn last_position(row: &PgRow, first: usize) -> Result<Option<Position>> {
    let transaction_id: Option<i64> = row.try_get(first).map_err(store_error)?;
    let id: Option<i64> = row.try_get(first + 1).map_err(store_error)?;
    let location = || "the log's last position".to_owned();
    match (transaction_id, id) {
        (Some(transaction_id), Some(id)) => Ok(Some(Position::new(
            stored_u64(transaction_id, location, "transaction id")?,
            stored_u64(id, location, "log id")?,
        ))),
        _ => Ok(None),
    }
}
