//! `PostgresEventStore`: the `EventStore` over a PostgreSQL pool.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cqrs_core::{
    AppendResult, Error, EventData, EventStore, ExpectedVersion, LogNotifier, LogWatcher, Position,
    RecordedEvent, Result, SnapshotRecord, StoreStats, StreamId, StreamInfo, StreamItem,
    validate_batch, validate_checkpoint_name,
};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::projection::InlineProjection;
use crate::row::{
    SnapshotRow, decode_event, decode_snapshot, event_version, exact_i64, saturating_i64,
    snapshot_of_row, store_error, stored_u64,
};
use crate::schema::{Schema, Statements};
use crate::{listen, migrate};

/// How often an append that lost a race on a unique index (a concurrent append of the
/// same version or event id) is re-run before the conflict is reported. Each re-run
/// sees the winner's commit, so it ends in a result, a conflict or the idempotent match;
/// only `Any`/`StreamExists` appends under heavy contention on one stream need more than
/// one.
const MAX_APPEND_ATTEMPTS: u32 = 64;

/// A PostgreSQL [`EventStore`]: events, snapshots and checkpoints in tables of one schema,
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
///   [`read_all`](EventStore::read_all) reads in `(transaction id, id)` order and only
///   below the oldest transaction still running, so a reader never passes an append that
///   may still commit. Positions are `Position { commit: transaction id, sequence: id }`.
/// - **Live readers** are woken by `LISTEN`/`NOTIFY` (see [`watch`](EventStore::watch)),
///   with the runner's polling as a fallback.
///
/// Clones share the pool and the notifier.
///
/// [`read_stream_from_snapshot`]: EventStore::read_stream_from_snapshot
///
/// # Examples
/// ```no_run
/// use cqrs_core::{EventData, EventStore, ExpectedVersion, StreamId};
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
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: Schema,
    sql: Statements,
    /// The `NOTIFY` channel, when appends notify.
    channel: Option<String>,
    notify_interval: Duration,
    settle: Duration,
    notifier: Arc<LogNotifier>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Wakes the task that sends this store's coalesced `NOTIFY`s.
    notify_wanted: Arc<tokio::sync::Notify>,
    notify_task: OnceLock<JoinHandle<()>>,
    inline: Vec<Arc<dyn InlineProjection>>,
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

/// Configures a [`PostgresEventStore`]; made by [`PostgresEventStore::builder`].
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use cqrs_postgres::PostgresEventStore;
/// use sqlx::postgres::PgPoolOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPoolOptions::new().max_connections(8).connect("postgres://localhost/app").await?;
/// let store = PostgresEventStore::builder(pool)
///     .schema("bank_events")
///     .notify(true)
///     .read_settle_timeout(Duration::from_millis(200))
///     .build()?;
/// store.migrate().await?;
/// # Ok(())
/// # }
/// ```
pub struct PostgresEventStoreBuilder {
    pool: PgPool,
    schema: String,
    notify: bool,
    notify_interval: Duration,
    settle: Duration,
    inline: Vec<Arc<dyn InlineProjection>>,
}

impl fmt::Debug for PostgresEventStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStoreBuilder")
            .field("schema", &self.schema)
            .field("notify", &self.notify)
            .field("read_settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl PostgresEventStoreBuilder {
    /// The schema holding the store's tables (default `cqrs`). It must match
    /// `^[a-z_][a-z0-9_]{0,62}$` and not start with `pg_`; [`build`](Self::build) checks.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Whether appends are announced with `NOTIFY` on the schema's channel (default
    /// `true`), so live readers in other processes wake soon after. Readers in this
    /// process are woken either way; without it, other processes' readers poll.
    ///
    /// The `NOTIFY` is not sent in the append's transaction (at commit it would take
    /// PostgreSQL's global notification lock and serialise concurrent appends): a
    /// background task of the store sends one after appends, at most one per
    /// [`notify_interval`](Self::notify_interval), on a connection of its own.
    /// [`append_in`](PostgresEventStore::append_in) is the exception: it notifies in the
    /// caller's transaction, so readers wake when that commits.
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// The shortest time between two `NOTIFY`s of this store (default 5 ms): appends in
    /// between share one.
    pub fn notify_interval(mut self, interval: Duration) -> Self {
        self.notify_interval = interval;
        self
    }

    /// How long [`read_all`](EventStore::read_all) and
    /// [`count_events`](EventStore::count_events) wait for older transactions still
    /// running when committed events sit behind them (default 500 ms). The read never
    /// passes such a transaction; waiting briefly lets it include events committed just
    /// before the read instead of leaving them for the next one. Zero never waits.
    pub fn read_settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle = timeout;
        self
    }

    /// Adds an inline projection: updated in each append's own transaction, so a read
    /// after the append sees it (read-your-writes). With inline projections, appends
    /// take a transaction of a few round trips instead of one statement.
    pub fn inline_projection(mut self, projection: impl InlineProjection) -> Self {
        self.inline.push(Arc::new(projection));
        self
    }

    /// Builds the store. It does not touch the database: call
    /// [`migrate`](PostgresEventStore::migrate) before first use.
    ///
    /// # Errors
    /// [`crate::Error::InvalidSchema`] for a schema name that is not a plain identifier.
    pub fn build(self) -> crate::Result<PostgresEventStore> {
        let schema = Schema::new(&self.schema)?;
        Ok(PostgresEventStore {
            inner: Arc::new(Inner {
                sql: Statements::new(&schema),
                channel: self.notify.then(|| schema.name().to_owned()),
                schema,
                pool: self.pool,
                notify_interval: self.notify_interval,
                settle: self.settle,
                notifier: Arc::new(LogNotifier::new()),
                listener: Mutex::new(None),
                notify_wanted: Arc::new(tokio::sync::Notify::new()),
                notify_task: OnceLock::new(),
                inline: self.inline,
            }),
        })
    }
}

/// The bound arguments of one append.
struct AppendArgs<'a> {
    stream: &'a StreamId,
    expected: ExpectedVersion,
    expected_kind: i16,
    expected_version: i64,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i64>,
    payloads: Vec<&'a [u8]>,
    metadata: Vec<String>,
}

impl<'a> AppendArgs<'a> {
    /// Binds `$1` to `$9`, which the fast statement and `append_events` share.
    fn bind<'q>(
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
    }

    fn new(
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [EventData],
    ) -> Result<Self> {
        let (expected_kind, expected_version) = match expected {
            ExpectedVersion::Any => (0, 0),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            // A version beyond BIGINT is never a stream's version: -1 never matches.
            ExpectedVersion::Exact(v) => (3, i64::try_from(v).unwrap_or(-1)),
        };
        let metadata = events
            .iter()
            .map(|e| {
                serde_json::to_string(&e.metadata).map_err(|source| Error::Encode {
                    what: format!("metadata of {}", e.event_type),
                    source: source.into(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(AppendArgs {
            stream,
            expected,
            expected_kind,
            expected_version,
            ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(|e| i64::from(e.schema_version)).collect(),
            payloads: events.iter().map(|e| e.payload.as_slice()).collect(),
            metadata,
        })
    }
}

/// What the append function reported.
enum Appended {
    Written(AppendResult),
    AlreadyThere(AppendResult),
}

impl Appended {
    fn result(&self) -> AppendResult {
        match self {
            Appended::Written(r) | Appended::AlreadyThere(r) => *r,
        }
    }
}

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
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|source| crate::Error::Connect { source })?;
        Self::builder(pool).build()
    }

    /// A builder over an existing pool.
    pub fn builder(pool: PgPool) -> PostgresEventStoreBuilder {
        PostgresEventStoreBuilder {
            pool,
            schema: "cqrs".to_owned(),
            notify: true,
            notify_interval: Duration::from_millis(5),
            settle: Duration::from_millis(500),
            inline: Vec::new(),
        }
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

    /// Appends within the caller's transaction (or connection): the events commit or roll
    /// back with it, for example together with an outbox row. Inline projections are not
    /// run here, and readers are not notified before the caller commits.
    ///
    /// The append runs in a savepoint, so a lost race on the stream's version is
    /// retried without aborting the caller's transaction.
    ///
    /// # Errors
    /// As for [`EventStore::append`].
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        let args = AppendArgs::new(stream, expected, &events)?;
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
                    return Ok(outcome.result());
                }
            }
        }
    }

    /// Runs the append function once: `Err` is the driver's error (maybe a unique
    /// violation to retry), `Ok(Err)` the typed refusal.
    async fn call_append(
        &self,
        conn: &mut PgConnection,
        args: &AppendArgs<'_>,
        notify_in_transaction: Option<&str>,
        check_ids: bool,
    ) -> std::result::Result<Result<Appended>, sqlx::Error> {
        if !check_ids && notify_in_transaction.is_none() {
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
    async fn append_error(&self, error: sqlx::Error, args: &AppendArgs<'_>) -> Error {
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

    /// The hot path: one statement on a pooled connection, autocommit.
    async fn append_direct(&self, args: &AppendArgs<'_>) -> Result<AppendResult> {
        let mut attempt = 0;
        let mut broken = 0;
        loop {
            attempt += 1;
            let mut conn = self.inner.pool.acquire().await.map_err(store_error)?;
            match self.call_append(&mut conn, args, None, attempt > 1).await {
                Err(e) if is_unique_violation(&e) && attempt < MAX_APPEND_ATTEMPTS => {}
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    // Whether it committed is unknown; running it again is safe because
                    // appends are idempotent by event id (the re-run finds them).
                    broken += 1;
                    conn.close_on_drop();
                }
                Err(e) => return Err(self.append_error(e, args).await),
                Ok(outcome) => return outcome.map(|o| o.result()),
            }
        }
    }

    /// With inline projections: the append, the read-back of its records and every inline
    /// projection in one transaction.
    async fn append_with_inline(&self, args: &AppendArgs<'_>) -> Result<AppendResult> {
        let mut attempt = 0;
        let mut broken = 0;
        loop {
            attempt += 1;
            let mut tx = self.inner.pool.begin().await.map_err(store_error)?;
            let outcome = match self.call_append(&mut tx, args, None, attempt > 1).await {
                Err(e) if is_unique_violation(&e) && attempt < MAX_APPEND_ATTEMPTS => continue,
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    broken += 1;
                    continue;
                }
                Err(e) => return Err(self.append_error(e, args).await),
                Ok(outcome) => outcome?,
            };
            let result = match outcome {
                Appended::AlreadyThere(result) => return Ok(result),
                Appended::Written(result) => result,
            };
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
            for projection in &self.inner.inline {
                projection
                    .apply(&mut tx, &records)
                    .await
                    .map_err(|source| {
                        Error::store(crate::Error::InlineProjection {
                            projection: projection.name().to_owned(),
                            source,
                        })
                    })?;
            }
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

    /// The highest transaction id below which every transaction has ended, waiting up to
    /// the settle timeout for older transactions when committed events sit above it.
    async fn horizon(&self) -> Result<i64> {
        let row = self
            .retrying(|| {
                sqlx::query(AssertSqlSafe(self.inner.sql.horizon.clone()))
                    .fetch_one(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        let mut horizon: i64 = row.try_get(0).map_err(store_error)?;
        let Some(top) = row.try_get::<Option<i64>, _>(1).map_err(store_error)? else {
            return Ok(horizon);
        };
        let deadline = tokio::time::Instant::now() + self.inner.settle;
        let mut pause = Duration::from_millis(1);
        while horizon <= top && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            horizon = self
                .retrying(|| {
                    sqlx::query_scalar(AssertSqlSafe(self.inner.sql.horizon_now.clone()))
                        .fetch_one(&self.inner.pool)
                })
                .await
                .map_err(store_error)?;
        }
        Ok(horizon)
    }

    /// How many broken connections a call runs into before giving up: one more than the
    /// pool holds, so a pool whose connections all died (a server restart) is refilled.
    fn broken_connection_budget(&self) -> u32 {
        self.inner
            .pool
            .options()
            .get_max_connections()
            .saturating_add(1)
    }

    /// Runs a read (or an idempotent upsert) again when its connection turns out to be
    /// broken; the pool drops a broken connection when it comes back.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> std::result::Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut broken = 0;
        loop {
            match op().await {
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    broken += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// A streamed query that starts again when its connection turns out to be broken
    /// before the first row (later, the error is the stream's: rows were handed out).
    fn restarting<'a, T: Send + 'a>(
        &'a self,
        make: impl Fn() -> BoxStream<'a, std::result::Result<T, sqlx::Error>> + Send + 'a,
    ) -> impl Stream<Item = std::result::Result<T, sqlx::Error>> + Send + 'a {
        let budget = self.broken_connection_budget();
        let first = make();
        stream::unfold(
            (first, make, false, 0u32),
            move |(mut rows, make, started, mut broken)| async move {
                loop {
                    match rows.next().await {
                        None => return None,
                        Some(Err(e)) if !started && broken < budget && is_broken_connection(&e) => {
                            broken += 1;
                            rows = make();
                        }
                        Some(item) => return Some((item, (rows, make, true, broken))),
                    }
                }
            },
        )
    }

    /// Wakes this process's watchers now, and other processes' through the coalesced
    /// `NOTIFY` task (started with the first append).
    fn notify_appended(&self) {
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

/// Whether the connection broke (so the statement may or may not have committed): an I/O
/// failure, or the server ending the session (SQLSTATE class 08 "connection exception",
/// 57P01-57P03 "admin/crash shutdown, cannot connect now"). sqlx has no error kind for
/// these, hence the codes.
fn is_broken_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

fn decode_append(row: &PgRow, args: &AppendArgs<'_>) -> Result<Appended> {
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
        0 => Ok(Appended::Written(result(row, false)?)),
        3 => Ok(Appended::AlreadyThere(result(row, true)?)),
        1 => Err(Error::Conflict {
            stream: args.stream.clone(),
            expected: args.expected,
            actual: version(row)?,
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

impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        validate_batch(stream, &events)?;
        let args = AppendArgs::new(stream, expected, &events)?;
        let result = if self.inner.inline.is_empty() {
            self.append_direct(&args).await?
        } else {
            self.append_with_inline(&args).await?
        };
        self.notify_appended();
        Ok(result)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.restarting(move || {
            sqlx::query(AssertSqlSafe(self.inner.sql.read_stream.clone()))
                .bind(stream.aggregate_type())
                .bind(stream.id())
                .bind(saturating_i64(from_version))
                .fetch(&self.inner.pool)
        })
        .map(|row| row.map_err(store_error).and_then(|row| decode_event(&row)))
    }

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

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        let limit = limit.map(saturating_i64);
        stream::once(self.horizon())
            .map_ok(move |horizon| {
                self.restarting(move || {
                    sqlx::query(AssertSqlSafe(self.inner.sql.read_all.clone()))
                        .bind(saturating_i64(after.commit))
                        .bind(saturating_i64(after.sequence))
                        .bind(horizon)
                        .bind(limit)
                        .fetch(&self.inner.pool)
                })
                .map(|row| row.map_err(store_error).and_then(|row| decode_event(&row)))
            })
            .try_flatten()
    }

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
        let horizon = self.horizon().await?;
        let count: i64 = self
            .retrying(|| {
                sqlx::query_scalar(AssertSqlSafe(self.inner.sql.count_events.clone()))
                    .bind(saturating_i64(after.commit))
                    .bind(saturating_i64(after.sequence))
                    .bind(horizon)
                    .fetch_one(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        stored_u64(count, || "the event count".into(), "count")
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
        // An upsert: safe to run again after a broken connection.
        self.retrying(|| {
            sqlx::query(AssertSqlSafe(self.inner.sql.save_snapshot.clone()))
                .bind(stream.aggregate_type())
                .bind(stream.id())
                .bind(version)
                .bind(i64::from(snapshot.schema_version))
                .bind(&snapshot.payload)
                .execute(&self.inner.pool)
        })
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_checkpoint_name(name)?;
        let row = self
            .retrying(|| {
                sqlx::query(AssertSqlSafe(self.inner.sql.load_checkpoint.clone()))
                    .bind(name)
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        row.as_ref()
            .map(|row| decode_checkpoint(row, name))
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_checkpoint_name(name)?;
        let commit = exact_i64(position.commit, "checkpoint commit")?;
        let sequence = exact_i64(position.sequence, "checkpoint sequence")?;
        // An upsert: safe to run again after a broken connection.
        self.retrying(|| {
            sqlx::query(AssertSqlSafe(self.inner.sql.save_checkpoint.clone()))
                .bind(name)
                .bind(commit)
                .bind(sequence)
                .execute(&self.inner.pool)
        })
        .await
        .map_err(store_error)?;
        Ok(())
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
            snapshots: count(2)?,
        })
    }

    /// A watcher woken by appends through this store at once, and by appends of other
    /// processes through `LISTEN` on the schema's channel (when
    /// [`notify`](PostgresEventStoreBuilder::notify) is on). The listener task starts
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

pub(crate) fn decode_checkpoint(row: &PgRow, name: &str) -> Result<Position> {
    let location = || format!("checkpoint {name:?}");
    let corrupt = |e: sqlx::Error| Error::corrupt(location(), e.to_string());
    let commit: i64 = row.try_get(0).map_err(corrupt)?;
    let sequence: i64 = row.try_get(1).map_err(corrupt)?;
    Ok(Position::new(
        stored_u64(commit, location, "commit")?,
        stored_u64(sequence, location, "sequence")?,
    ))
}
