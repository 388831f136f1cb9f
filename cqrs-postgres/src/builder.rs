//! The builder of a [`PostgresEventStore`].

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cqrs_core::{Codec, JsonCodec, LogNotifier, Projection};
use sqlx::{PgConnection, PgPool};

use crate::batch::{Batcher, DEFAULT_PIPELINE};
use crate::inline::{Inline, InlineProjection};
use crate::schema::{Schema, Statements};
use crate::store::{Inner, PostgresEventStore};

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
    read_on_task: bool,
    inline: Vec<Arc<dyn InlineProjection>>,
    allow_public: bool,
    group_commit: bool,
    pipeline: usize,
}

impl fmt::Debug for PostgresEventStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStoreBuilder")
            .field("schema", &self.schema)
            .field("notify", &self.notify)
            .field("read_settle", &self.settle)
            .field("read_on_task", &self.read_on_task)
            .field("group_commit", &self.group_commit)
            .field("group_commit_pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl PostgresEventStoreBuilder {
    /// The schema holding the store's tables (default `cqrs`). It must match
    /// `^[a-z_][a-z0-9_]{0,62}$` and be none of PostgreSQL's own schemas (`pg_*`,
    /// `information_schema`); `public` needs [`allow_public_schema`](Self::allow_public_schema).
    /// [`build`](Self::build) checks.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Allows the schema `public`, which every role can see and create objects in by
    /// default; without this, `build` refuses it (a typo'd or missing schema setting
    /// would otherwise scatter the store's tables among an application's own).
    pub fn allow_public_schema(mut self) -> Self {
        self.allow_public = true;
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

    /// How long [`read_all`](cqrs_core::EventLog::read_all) and
    /// [`count_events`](cqrs_core::Inspect::count_events) wait for older transactions still
    /// running when committed events sit behind them (default 500 ms). The read never
    /// passes such a transaction; waiting briefly lets it include events committed just
    /// before the read instead of leaving them for the next one. Zero never waits.
    pub fn read_settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle = timeout;
        self
    }

    /// Whether [`read_all`](cqrs_core::EventLog::read_all) receives and decodes its rows
    /// on a task of its own (default `false`; ADR 0034).
    ///
    /// On a multi-threaded Tokio runtime, the task reads a few hundred records ahead of
    /// the caller (at most four chunks of 256 in memory), so decoding rows runs beside
    /// the caller's work on the records: a projection rebuild can use two client cores
    /// instead of one. Dropping the stream stops the task. On a current-thread runtime
    /// the rows are always decoded in the caller's polls.
    ///
    /// It is off by default because it did not win in the project's measurements, on a
    /// 2-core machine that also runs the database server: rebuilds ran at 0.83 to 0.92
    /// of the same without it (`docs/performance-postgres.md`). It is meant for clients
    /// with cores to spare beside a database on another machine; measure it there.
    pub fn read_on_task(mut self, on: bool) -> Self {
        self.read_on_task = on;
        self
    }

    /// Whether concurrent appends share a statement and a commit (group commit, default
    /// `true`; ADR 0027).
    ///
    /// With it, appends made while the store's writes are in flight (up to
    /// [`group_commit_pipeline`](Self::group_commit_pipeline) of them) wait for a slot
    /// and then go out together: one statement and one transaction for all of them,
    /// each with its own expected-version check and its own result. An append made
    /// while a slot is free and nothing is queued is written at once, in the same
    /// single statement as without group commit: batching never adds a wait.
    /// Conflicts, idempotent re-appends and every error stay per append: an append the
    /// batch cannot settle (its expected version did not match, or the batch's
    /// statement failed) is written alone, as without group commit. Durability is the
    /// same: an append returns after its batch committed.
    ///
    /// Appends to stores with [inline projections](Self::inline_projection), and
    /// [`append_in`](PostgresEventStore::append_in), always go alone.
    ///
    /// It is on by default because it won or tied in every row of the project's
    /// measurements (`docs/performance-postgres.md`): whole commands from 16 tasks ran at
    /// 1.02 to 1.38 of the same without it, 1.16 to 1.89 with the repository's state
    /// cache, 16 tasks appending alone at 1.10 to 1.66, and a lone command takes the same
    /// path. Turn it off when an application holds long transactions that write to
    /// streams this store also appends to: a batch that waits for such a transaction's
    /// row locks holds up the appends queued behind it, where alone only that stream's
    /// appends would wait.
    pub fn group_commit(mut self, on: bool) -> Self {
        self.group_commit = on;
        self
    }

    /// With [group commit](Self::group_commit) on, how many writes of this store may be
    /// in flight at once (default 2; 0 counts as 1). In the project's measurements 1, 2
    /// and 4 were within the noise of each other (ADR 0027). Each lone append and each batch
    /// takes one: while one batch waits for its commit (the WAL flush), the next one's
    /// statement already runs. An append is written alone, at once, while fewer writes
    /// than this are in flight and nothing is queued; otherwise it queues for the next
    /// batch. Two writes of one stream are never in flight together: an append to a
    /// stream being written waits for that write to end. Without group commit it does
    /// nothing.
    ///
    /// # Examples
    /// ```no_run
    /// use cqrs_postgres::PostgresEventStore;
    /// use sqlx::postgres::PgPoolOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = PgPoolOptions::new().max_connections(16).connect("postgres://localhost/app").await?;
    /// let store = PostgresEventStore::builder(pool)
    ///     .group_commit(true)
    ///     .group_commit_pipeline(4)
    ///     .build()?;
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn group_commit_pipeline(mut self, writes_in_flight: usize) -> Self {
        self.pipeline = writes_in_flight.max(1);
        self
    }

    /// Adds an inline projection: updated in each append's own transaction, so a read
    /// after the append sees it (read-your-writes). With inline projections, appends
    /// take a transaction of a few round trips instead of one statement.
    ///
    /// It is a [`Projection<PgConnection>`](Projection), the same trait as a read model
    /// run by a [`ProjectionRunner`](cqrs_core::ProjectionRunner) with a
    /// [`TransactionalCheckpoint`](crate::TransactionalCheckpoint): its `apply` gets the
    /// append's transaction and the appended events it [wants](Projection::wants), upcast
    /// and decoded with a [`JsonCodec`] (see
    /// [`inline_projection_with_codec`](Self::inline_projection_with_codec)). An error,
    /// or an event that does not decode, rolls the append back: `append` returns
    /// [`cqrs_core::Error::Store`] with [`Error::InlineProjection`](crate::Error::InlineProjection)
    /// as its source. It is not called for an append that wrote nothing (an idempotent
    /// re-append), nor when none of the events is wanted, nor by
    /// [`append_in`](PostgresEventStore::append_in).
    ///
    /// Appends run concurrently, so each applies its own clone of `projection`: keep it
    /// cheap to clone (a table name, an `Arc`), and keep `apply` short: it runs on the
    /// write path.
    ///
    /// # Examples
    /// ```no_run
    /// use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
    /// use cqrs_postgres::PostgresEventStore;
    /// use sqlx::PgConnection;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// # enum AccountEvent { Deposited { cents: i64 } }
    /// # impl DomainEvent for AccountEvent {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["Deposited"];
    /// #     fn event_type(&self) -> &'static str { "Deposited" }
    /// # }
    ///
    /// /// The last version of each account, in `app.versions (account text primary key, version bigint)`.
    /// #[derive(Debug, Clone)]
    /// struct Versions;
    ///
    /// impl Projection<PgConnection> for Versions {
    ///     type Event = AccountEvent;
    ///
    ///     fn name(&self) -> &str {
    ///         "versions"
    ///     }
    ///
    ///     async fn apply(&mut self, conn: &mut PgConnection, batch: &[Envelope<AccountEvent>]) -> Result<(), BoxError> {
    ///         let Some(last) = batch.last() else { return Ok(()) };
    ///         sqlx::query(
    ///             "INSERT INTO app.versions (account, version) VALUES ($1, $2) \
    ///              ON CONFLICT (account) DO UPDATE SET version = EXCLUDED.version",
    ///         )
    ///         .bind(last.stream.id())
    ///         .bind(i64::try_from(last.version)?)
    ///         .execute(conn)
    ///         .await?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
    /// let store = PostgresEventStore::builder(pool).inline_projection(Versions).build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn inline_projection<P>(self, projection: P) -> Self
    where
        P: Projection<PgConnection> + Clone + Sync,
    {
        self.inline_projection_with_codec(projection, JsonCodec::new())
    }

    /// Adds an inline projection whose events are upcast and decoded with `codec` (for
    /// example a [`JsonCodec`] with the application's upcasters); see
    /// [`inline_projection`](Self::inline_projection).
    pub fn inline_projection_with_codec<P, C>(mut self, projection: P, codec: C) -> Self
    where
        P: Projection<PgConnection> + Clone + Sync,
        C: Codec,
    {
        self.inline.push(Arc::new(Inline::new(projection, codec)));
        self
    }

    /// Builds the store. It does not touch the database: call
    /// [`migrate`](PostgresEventStore::migrate) before first use.
    ///
    /// # Errors
    /// [`crate::Error::InvalidSchema`] for a schema name that is not a plain identifier,
    /// names one of PostgreSQL's own schemas, or is `public` without
    /// [`allow_public_schema`](Self::allow_public_schema).
    pub fn build(self) -> crate::Result<PostgresEventStore> {
        let schema = Schema::new(&self.schema, self.allow_public)?;
        let sql = Statements::new(&schema);
        // The group-commit task starts with the first append that queues, on that
        // append's runtime.
        let batcher = self.group_commit.then(|| {
            Batcher::new(
                self.pool.clone(),
                Arc::clone(&sql.append_fast),
                Arc::clone(&sql.append_many),
                self.pipeline,
            )
        });
        Ok(PostgresEventStore {
            inner: Arc::new(Inner {
                sql,
                channel: self.notify.then(|| schema.name().to_owned()),
                schema,
                pool: self.pool,
                notify_interval: self.notify_interval,
                settle: self.settle,
                read_on_task: self.read_on_task,
                notifier: Arc::new(LogNotifier::new()),
                listener: Mutex::new(None),
                notify_wanted: Arc::new(tokio::sync::Notify::new()),
                notify_task: OnceLock::new(),
                inline: self.inline,
                group_commit: self.group_commit,
                batcher,
            }),
        })
    }
}

impl PostgresEventStore {
    /// A builder over an existing pool.
    pub fn builder(pool: PgPool) -> PostgresEventStoreBuilder {
        PostgresEventStoreBuilder {
            pool,
            schema: "cqrs".to_owned(),
            allow_public: false,
            notify: true,
            notify_interval: Duration::from_millis(5),
            settle: Duration::from_millis(500),
            read_on_task: false,
            inline: Vec::new(),
            group_commit: true,
            pipeline: DEFAULT_PIPELINE,
        }
    }
}
