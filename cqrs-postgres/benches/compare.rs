//! The comparison harness: `PostgresEventStore` against raw sqlx on the same server, in
//! the same run, reported as ratios.
//!
//! ```sh
//! cargo bench -p cqrs-postgres --bench compare            # 1,000,000-event rebuild
//! cargo bench -p cqrs-postgres --bench compare -- --quick # 100,000
//! cargo bench -p cqrs-postgres --bench compare -- --rebuild-only [--quick]
//! cargo bench -p cqrs-postgres --bench compare -- --by-type-only [--quick]
//! cargo bench -p cqrs-postgres --bench compare -- --metadata-only [--quick]
//! cargo bench -p cqrs-postgres --bench compare -- --quick --commands-only [--pipeline N]
//! ```
//!
//! `--by-type-only` runs only the rebuild of a projection that wants one record in ten,
//! reading by type against reading every record (ADR 0035). `--metadata-only` runs only
//! `read_all` of events carrying a correlation and a causation id against events
//! without metadata. `--lone-only` runs only
//! the lone-latency row, five times. `--commands-only` stops
//! after the command-path rows (concurrent, group commit, lone
//! latency, 1,000-event append, sequential). `--pipeline N` sets the group-commit
//! pipeline depth of the stores with group commit on (default: the builder's). The
//! concurrent and sequential rows come with a WAL account per command: the deltas of
//! `pg_stat_wal` and of the database's commits over the measurement. `pg_stat_wal` is
//! cluster-wide: anything else writing meanwhile is counted too.
//!
//! It reads `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), works
//! in fresh schemas and drops them. Without a server it prints a skip line and exits 0.
//! Peak RSS is measured in child processes of this binary (`--rss-load N`,
//! `--rss-replay N`), so each figure is that workload's own.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cqrs_core::{
    Aggregate, BoxError, DomainEvent, Envelope, EventData, EventLog, ExpectedVersion, Position,
    Projection, ProjectionRunner, Repository, RunnerConfig, SnapshotPolicy, StoreCheckpoint,
    StreamId,
};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, ConnectOptions, Connection, PgPool, Row};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- the bank account ------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: i64,
}

#[derive(Debug)]
enum AccountCommand {
    Open,
    Deposit(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened,
    Deposited { cents: i64 },
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["AccountOpened", "MoneyDeposited"];
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened => "AccountOpened",
            AccountEvent::Deposited { .. } => "MoneyDeposited",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("the account is closed")]
    Closed,
    #[error("the account is already open")]
    AlreadyOpen,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            AccountCommand::Deposit(_) if !self.open => Err(AccountError::Closed),
            AccountCommand::Deposit(cents) => Ok(vec![AccountEvent::Deposited { cents: *cents }]),
        }
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { cents } => self.balance += cents,
        }
    }
}

/// Sums deposits: the projection of the rebuild benchmark.
#[derive(Debug, Default)]
struct Totals {
    events: u64,
    cents: i64,
}

impl Projection for Totals {
    type Event = AccountEvent;
    fn name(&self) -> &str {
        "totals"
    }
    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            self.events += 1;
            if let AccountEvent::Deposited { cents } = e.event {
                self.cents += cents;
            }
        }
        Ok(())
    }
}

// ---- fixtures ---------------------------------------------------------------------

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh schema name, with this process's id in it (see [`DropSchemasOnExit`]).
fn schema() -> String {
    format!(
        "cqrs_bench_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Drops, when dropped, every schema this process made ([`schema`] names carry the
/// process id): at the end of `main`, and while a failed measurement's panic unwinds it,
/// so that a run leaves nothing behind. (Each measurement also drops its own schemas as
/// soon as it is done, to keep the database small during a long run.)
struct DropSchemasOnExit;

impl Drop for DropSchemasOnExit {
    fn drop(&mut self) {
        // Drop cannot await, and the runtime may be the one unwinding: a thread of its
        // own, with its own runtime and connection, each step within a deadline.
        let pattern = format!("cqrs\\_bench\\_{}\\_%", std::process::id());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("start a runtime: {e}"))?;
            runtime.block_on(async {
                let limit = Duration::from_secs(30);
                let options: PgConnectOptions = url().parse().map_err(|e| format!("{e}"))?;
                let mut conn = tokio::time::timeout(limit, options.connect())
                    .await
                    .map_err(|_| "connecting timed out".to_owned())?
                    .map_err(|e| format!("connect: {e}"))?;
                let names: Vec<String> = tokio::time::timeout(
                    limit,
                    sqlx::query_scalar(
                        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1",
                    )
                    .bind(pattern)
                    .fetch_all(&mut conn),
                )
                .await
                .map_err(|_| "listing the schemas timed out".to_owned())?
                .map_err(|e| format!("list the schemas: {e}"))?;
                for name in names {
                    tokio::time::timeout(
                        limit,
                        sqlx::raw_sql(AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                        )))
                        .execute(&mut conn),
                    )
                    .await
                    .map_err(|_| format!("dropping {name} timed out"))?
                    .map_err(|e| format!("drop {name}: {e}"))?;
                }
                let _ = conn.close().await;
                Ok(())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the dropping thread panicked".to_owned()));
        if let Err(reason) = dropped {
            eprintln!("could not drop this run's schemas: {reason}");
        }
    }
}

async fn pool(options: PgConnectOptions, max: u32) -> PgPool {
    // No ping before each use (sqlx's default costs a round trip per call), for ours and
    // the raw baselines alike.
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .expect("connect")
}

async fn store(options: PgConnectOptions, max: u32, notify: bool) -> PostgresEventStore {
    store_with(options, max, notify, true).await
}

async fn store_with(
    options: PgConnectOptions,
    max: u32,
    notify: bool,
    group_commit: bool,
) -> PostgresEventStore {
    let builder = PostgresEventStore::builder(pool(options, max).await)
        .schema(schema())
        .notify(notify);
    let store = configure(builder, group_commit, 0).build().unwrap();
    store.migrate().await.unwrap();
    store
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// A raw table for the baselines: one row per event, as an event store would keep it.
async fn raw_table(pool: &PgPool) -> String {
    let s = schema();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA \"{s}\"; CREATE TABLE \"{s}\".raw (id bigint GENERATED ALWAYS AS \
         IDENTITY PRIMARY KEY, stream text NOT NULL, version bigint NOT NULL, \
         payload bytea NOT NULL, UNIQUE (stream, version))"
    )))
    .execute(pool)
    .await
    .unwrap();
    s
}

fn deposit(cents: i64) -> Vec<u8> {
    serde_json::to_vec(&AccountEvent::Deposited { cents }).unwrap()
}

/// The mean of the rates of alternating runs.
fn mean(rates: &[f64]) -> f64 {
    rates.iter().sum::<f64>() / rates.len() as f64
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

// ---- a counting proxy, for round trips --------------------------------------------

/// What the proxy counted in the client's messages.
#[derive(Default)]
struct Trips {
    /// `Sync`s that ended a query (Bind/Execute before them): a query's round trip.
    queries: AtomicU64,
    /// `Sync`s alone: the pool's liveness pings (sqlx pings on release, after the caller
    /// has its answer).
    pings: AtomicU64,
}

/// Reads the client's messages, counting round trips (each `Sync` or simple `Query` is
/// answered by one `ReadyForQuery` the client waits for).
struct Counter {
    buf: Vec<u8>,
    started: bool,
    executed: bool,
}

impl Counter {
    fn feed(&mut self, bytes: &[u8], trips: &Trips) {
        self.buf.extend_from_slice(bytes);
        loop {
            if !self.started {
                // Untyped start-up messages (SSLRequest, StartupMessage): length first.
                let Some(len) = self
                    .buf
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
                else {
                    return;
                };
                if self.buf.len() < len {
                    return;
                }
                let code = self
                    .buf
                    .get(4..8)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
                self.buf.drain(..len);
                if code == Some(196_608) {
                    self.started = true; // protocol 3.0 StartupMessage: typed from now on
                }
                continue;
            }
            let Some(len) = self
                .buf
                .get(1..5)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
            else {
                return;
            };
            if self.buf.len() < len + 1 {
                return;
            }
            match self.buf[0] {
                b'E' => self.executed = true,
                b'Q' => {
                    trips.queries.fetch_add(1, Ordering::Relaxed);
                }
                b'S' => {
                    let counter = if self.executed {
                        &trips.queries
                    } else {
                        &trips.pings
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.executed = false;
                }
                _ => {}
            }
            self.buf.drain(..len + 1);
        }
    }
}

/// Forwards TCP to the server, counting the client's round trips.
async fn proxy(server: SocketAddr, trips: Arc<Trips>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let trips = Arc::clone(&trips);
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(server).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let up = async {
                    let mut counter = Counter {
                        buf: Vec::new(),
                        started: false,
                        executed: false,
                    };
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.feed(&buf[..n], &trips);
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut ur, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

// ---- the WAL account --------------------------------------------------------------

/// The cluster's WAL counters (`pg_stat_wal`, PostgreSQL 15), the database's commits
/// (`pg_stat_database.xact_commit`, read-only transactions included) and the transaction
/// ids handed out (write transactions). `pg_stat_wal` is cluster-wide: whatever else
/// writes while a measurement runs (other processes' tests, autovacuum, checkpoints)
/// counts too.
#[derive(Clone, Copy, Default)]
struct Wal {
    commits: f64,
    xids: f64,
    records: f64,
    fpi: f64,
    bytes: f64,
    writes: f64,
    syncs: f64,
}

impl Wal {
    async fn now(stats: &PgPool) -> Wal {
        let row = sqlx::query(
            "SELECT (SELECT xact_commit FROM pg_stat_database \
             WHERE datname = current_database()), \
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             w.wal_records, w.wal_fpi, w.wal_bytes::bigint, w.wal_write, w.wal_sync \
             FROM pg_stat_wal w",
        )
        .fetch_one(stats)
        .await
        .expect("read pg_stat_wal");
        let f = |i: usize| row.get::<i64, _>(i) as f64;
        Wal {
            commits: f(0),
            xids: f(1),
            records: f(2),
            fpi: f(3),
            bytes: f(4),
            writes: f(5),
            syncs: f(6),
        }
    }

    fn zip(self, other: Wal, op: impl Fn(f64, f64) -> f64) -> Wal {
        Wal {
            commits: op(self.commits, other.commits),
            xids: op(self.xids, other.xids),
            records: op(self.records, other.records),
            fpi: op(self.fpi, other.fpi),
            bytes: op(self.bytes, other.bytes),
            writes: op(self.writes, other.writes),
            syncs: op(self.syncs, other.syncs),
        }
    }

    /// Per unit of work, from `before` to `self`.
    fn per(self, before: Wal, n: u64) -> Wal {
        self.zip(before, |a, b| (a - b) / n as f64)
    }

    fn mean(self, other: Wal) -> Wal {
        self.zip(other, |a, b| (a + b) / 2.0)
    }

    fn row(&self, what: &str) -> String {
        format!(
            "| WAL per command: {what} | {:.2} commits, {:.2} write xacts, {:.1} records ({:.2} FPI), {:.0} bytes | {:.3} WAL writes, {:.3} WAL syncs (flushes) | {:.1} commands per flush |",
            self.commits,
            self.xids,
            self.records,
            self.fpi,
            self.bytes,
            self.writes,
            self.syncs,
            if self.syncs > 0.0 {
                1.0 / self.syncs
            } else {
                f64::NAN
            }
        )
    }
}

/// Makes every connection of `pool` flush its pending statistics now (PostgreSQL 15
/// holds a backend's counters for up to 10 s): each runs `pg_stat_force_next_flush()`
/// and flushes as it goes idle after it.
async fn flush_stats(pool: &PgPool) {
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        match tokio::time::timeout(Duration::from_secs(10), pool.acquire()).await {
            Ok(Ok(conn)) => held.push(conn),
            _ => break,
        }
    }
    for conn in &mut held {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut **conn)
            .await
            .expect("pg_stat_force_next_flush");
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Runs `work` (`n` commands) between two readings of the counters: (commands/s, WAL
/// per command).
async fn accounted<F: std::future::Future<Output = ()>>(
    stats: &PgPool,
    pool: &PgPool,
    n: u64,
    work: F,
) -> (f64, Wal) {
    flush_stats(pool).await;
    let before = Wal::now(stats).await;
    let started = Instant::now();
    work.await;
    let rate = rate(n, started.elapsed());
    flush_stats(pool).await;
    (rate, Wal::now(stats).await.per(before, n))
}

// ---- the measurements -------------------------------------------------------------

/// The group-commit pipeline depth of the benchmark's stores with group commit on
/// (`--pipeline N`; 0: the builder's default).
static PIPELINE: AtomicU64 = AtomicU64::new(0);

/// One configuration of our side of the command-path rows.
#[derive(Clone, Copy)]
struct Ours {
    group_commit: bool,
    /// Pipeline depth with group commit (0: the default, or `--pipeline`).
    pipeline: usize,
    /// `Repository::with_cache` capacity (0: no cache).
    cache: usize,
}

impl Ours {
    fn label(&self) -> String {
        let mut label = if self.group_commit {
            match self.pipeline {
                0 => "group commit on".to_owned(),
                n => format!("group commit on, pipeline {n}"),
            }
        } else {
            "group commit off".to_owned()
        };
        if self.cache > 0 {
            label.push_str(", state cache");
        }
        label
    }
}

fn configure(
    builder: cqrs_postgres::PostgresEventStoreBuilder,
    group_commit: bool,
    pipeline: usize,
) -> cqrs_postgres::PostgresEventStoreBuilder {
    let builder = builder.group_commit(group_commit);
    let pipeline = match pipeline {
        0 => usize::try_from(PIPELINE.load(Ordering::Relaxed)).unwrap(),
        n => n,
    };
    if pipeline > 0 {
        builder.group_commit_pipeline(pipeline)
    } else {
        builder
    }
}

/// The command-path variants measured: ours without group commit, with it at pipeline
/// depths 1, 2 and 4, and with the state cache (`--pipeline` does not change these).
fn command_variants() -> Vec<Ours> {
    let ours = |group_commit, pipeline, cache| Ours {
        group_commit,
        pipeline,
        cache,
    };
    vec![
        ours(false, 0, 0),
        ours(true, 1, 0),
        ours(true, 2, 0),
        ours(true, 4, 0),
        ours(false, 0, CACHE),
        ours(true, 2, CACHE),
        ours(true, 4, CACHE),
    ]
}

/// The state cache capacity of the rows that use it (all accounts fit).
const CACHE: usize = 2_000;

/// One round of the concurrent rows: (ours per variant, raw, raw wide), each (cmd/s,
/// WAL per command); `reversed` runs them in the opposite order.
async fn concurrent_commands(
    options: &PgConnectOptions,
    stats: &PgPool,
    tasks: usize,
    commands: u64,
    reversed: bool,
) -> (Vec<(f64, Wal)>, (f64, Wal), (f64, Wal)) {
    let variants = command_variants();
    let mut ours = vec![(0.0, Wal::default()); variants.len()];
    let (mut raw, mut wide) = Default::default();
    let mut order: Vec<usize> = (0..variants.len() + 2).collect();
    if reversed {
        order.reverse();
    }
    for i in order {
        if i < variants.len() {
            ours[i] = concurrent_ours(options, stats, tasks, commands, variants[i]).await;
        } else if i == variants.len() {
            raw = concurrent_raw(options, stats, tasks, commands, false).await;
        } else {
            wide = concurrent_raw(options, stats, tasks, commands, true).await;
        }
    }
    (ours, raw, wide)
}

const ACCOUNTS: u64 = 1_000;

async fn concurrent_ours(
    options: &PgConnectOptions,
    stats: &PgPool,
    tasks: usize,
    commands: u64,
    config: Ours,
) -> (f64, Wal) {
    let builder =
        PostgresEventStore::builder(pool(options.clone(), u32::try_from(tasks).unwrap()).await)
            .schema(schema())
            .notify(true);
    let store = configure(builder, config.group_commit, config.pipeline)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let repo = Arc::new(Repository::<Account, _>::new(store.clone(), ()).with_cache(config.cache));
    for a in 0..ACCOUNTS {
        repo.execute(&format!("acc-{a}"), &AccountCommand::Open)
            .await
            .unwrap();
    }
    let next = Arc::new(AtomicU64::new(0));
    let work = async {
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (repo, next) = (Arc::clone(&repo), Arc::clone(&next));
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= commands {
                            break;
                        }
                        // A spread-out walk over the accounts (some collide: retried).
                        let account = (i * 7919) % ACCOUNTS;
                        repo.execute(&format!("acc-{account}"), &AccountCommand::Deposit(1))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    };
    let measured = accounted(stats, store.pool(), commands, work).await;
    drop_schema(store.pool(), store.schema()).await;
    measured
}

/// A raw table for the baselines with our events table's columns and indexes (the
/// primary key, the unique event id, the unique stream version, the log order).
async fn raw_wide_table(pool: &PgPool) -> String {
    let s = schema();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA \"{s}\"; CREATE TABLE \"{s}\".raw (id bigint GENERATED ALWAYS AS \
         IDENTITY PRIMARY KEY, transaction_id bigint NOT NULL, event_id uuid NOT NULL, \
         aggregate_type text NOT NULL, aggregate_id text NOT NULL, version bigint NOT NULL, \
         event_type text NOT NULL, schema_version bigint NOT NULL, \
         recorded_at timestamptz NOT NULL DEFAULT now(), payload bytea NOT NULL, \
         metadata json NOT NULL, checksum integer, UNIQUE (event_id), \
         UNIQUE (aggregate_type, aggregate_id, version)); \
         CREATE INDEX ON \"{s}\".raw (transaction_id, id)"
    )))
    .execute(pool)
    .await
    .unwrap();
    s
}

/// The single-row INSERT of the raw baseline into `s`: narrow (stream, version,
/// payload) or wide (our columns); binds `stream`, `version`, `payload` either way.
fn raw_insert(s: &str, wide: bool) -> String {
    if wide {
        format!(
            "INSERT INTO \"{s}\".raw (transaction_id, event_id, aggregate_type, aggregate_id, \
             version, event_type, schema_version, payload, metadata, checksum) \
             VALUES (pg_current_xact_id()::text::bigint, gen_random_uuid(), 'account', $1, $2, \
             'MoneyDeposited', 1, $3, '{{}}', 12345)"
        )
    } else {
        format!("INSERT INTO \"{s}\".raw (stream, version, payload) VALUES ($1, $2, $3)")
    }
}

async fn concurrent_raw(
    options: &PgConnectOptions,
    stats: &PgPool,
    tasks: usize,
    commands: u64,
    wide: bool,
) -> (f64, Wal) {
    let pool = pool(options.clone(), u32::try_from(tasks).unwrap()).await;
    let s = if wide {
        raw_wide_table(&pool).await
    } else {
        raw_table(&pool).await
    };
    let sql: Arc<str> = raw_insert(&s, wide).into();
    let next = Arc::new(AtomicU64::new(0));
    let work = async {
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (pool, next, sql) = (pool.clone(), Arc::clone(&next), Arc::clone(&sql));
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= commands {
                            break;
                        }
                        sqlx::query(AssertSqlSafe(Arc::clone(&sql)))
                            .bind(format!("acc-{}", (i * 7919) % ACCOUNTS))
                            .bind(i64::try_from(i).unwrap())
                            .bind(deposit(1))
                            .execute(&pool)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    };
    let measured = accounted(stats, &pool, commands, work).await;
    drop_schema(&pool, &s).await;
    measured
}

/// The sequential rows, ours first then raw, raw wide, and the other way round:
/// ((appends, commands) of ours, raw, raw wide), each (per second, WAL per command).
async fn sequential_commands(
    options: &PgConnectOptions,
    stats: &PgPool,
    commands: u64,
) -> (((f64, Wal), (f64, Wal)), (f64, Wal), (f64, Wal)) {
    let ours1 = sequential_ours(options, stats, commands).await;
    let raw1 = sequential_raw(options, stats, commands, false).await;
    let wide1 = sequential_raw(options, stats, commands, true).await;
    let wide2 = sequential_raw(options, stats, commands, true).await;
    let raw2 = sequential_raw(options, stats, commands, false).await;
    let ours2 = sequential_ours(options, stats, commands).await;
    let mean = |a: (f64, Wal), b: (f64, Wal)| ((a.0 + b.0) / 2.0, a.1.mean(b.1));
    (
        (mean(ours1.0, ours2.0), mean(ours1.1, ours2.1)),
        mean(raw1, raw2),
        mean(wide1, wide2),
    )
}

async fn sequential_ours(
    options: &PgConnectOptions,
    stats: &PgPool,
    commands: u64,
) -> ((f64, Wal), (f64, Wal)) {
    let store = store(options.clone(), 2, true).await;
    // The store alone: sequential one-event appends to one stream.
    let s = StreamId::new("account", "appends").unwrap();
    let appends = accounted(stats, store.pool(), commands, async {
        for i in 0..commands {
            store
                .append(
                    &s,
                    ExpectedVersion::Exact(i),
                    vec![EventData::new("MoneyDeposited", deposit(1))],
                )
                .await
                .unwrap();
        }
    })
    .await;
    let repo = Repository::<Account, _>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(100));
    repo.execute("one", &AccountCommand::Open).await.unwrap();
    let ours = accounted(stats, store.pool(), commands, async {
        for _ in 0..commands {
            repo.execute("one", &AccountCommand::Deposit(1))
                .await
                .unwrap();
        }
    })
    .await;
    drop_schema(store.pool(), store.schema()).await;
    (appends, ours)
}

async fn sequential_raw(
    options: &PgConnectOptions,
    stats: &PgPool,
    commands: u64,
    wide: bool,
) -> (f64, Wal) {
    let pool = pool(options.clone(), 1).await;
    let s = if wide {
        raw_wide_table(&pool).await
    } else {
        raw_table(&pool).await
    };
    let sql = raw_insert(&s, wide);
    let measured = accounted(stats, &pool, commands, async {
        for i in 0..commands {
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind("one")
                .bind(i64::try_from(i).unwrap())
                .bind(deposit(1))
                .execute(&pool)
                .await
                .unwrap();
        }
    })
    .await;
    drop_schema(&pool, &s).await;
    measured
}

/// Round trips per command and per append: (queries, pings) each.
async fn round_trips(options: &PgConnectOptions) -> [(f64, f64); 3] {
    let server = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let trips = Arc::new(Trips::default());
    let addr = proxy(server, Arc::clone(&trips)).await;
    let proxied = options
        .clone()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let store = store(proxied, 1, false).await;
    let n = 200u64;
    let snapshot = |trips: &Trips| {
        (
            trips.queries.load(Ordering::Relaxed),
            trips.pings.load(Ordering::Relaxed),
        )
    };
    let per = |before: (u64, u64), after: (u64, u64)| {
        (
            (after.0 - before.0) as f64 / n as f64,
            (after.1 - before.1) as f64 / n as f64,
        )
    };
    let mut out = [(0.0, 0.0); 3];
    for (slot, policy) in [
        SnapshotPolicy::Never,
        SnapshotPolicy::EveryEvents(1_000_000),
    ]
    .into_iter()
    .enumerate()
    {
        let repo = Repository::<Account, _>::new(store.clone(), ()).with_snapshots(policy);
        let id = uuid::Uuid::new_v4().to_string();
        repo.execute(&id, &AccountCommand::Open).await.unwrap();
        // Warm up: statements prepared on the connection.
        for _ in 0..5 {
            repo.execute(&id, &AccountCommand::Deposit(1))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = snapshot(&trips);
        for _ in 0..n {
            repo.execute(&id, &AccountCommand::Deposit(1))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        out[slot] = per(before, snapshot(&trips));
    }
    let s = StreamId::new("raw", "append").unwrap();
    let one = || vec![EventData::new("X", b"{}".to_vec())];
    store.append(&s, ExpectedVersion::Any, one()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = snapshot(&trips);
    for _ in 0..n {
        store.append(&s, ExpectedVersion::Any, one()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    out[2] = per(before, snapshot(&trips));
    drop_schema(store.pool(), store.schema()).await;
    out
}

/// Appends `events` deposits over 1,000 accounts, in batches of 1,000 per append.
async fn fill(store: &PostgresEventStore, events: u64) {
    fill_with(store, events, |i| {
        EventData::new("MoneyDeposited", deposit(i64::try_from(i).unwrap()))
    })
    .await;
}

/// Appends `events` records over 1,000 accounts, in batches of 1,000 per append, the
/// `i`-th of each batch made by `event(i)`.
async fn fill_with(store: &PostgresEventStore, events: u64, event: impl Fn(u64) -> EventData) {
    let batch = 1_000u64;
    let mut versions: HashMap<u64, u64> = HashMap::new();
    let mut done = 0;
    let mut b = 0u64;
    while done < events {
        let account = b % 1_000;
        let n = batch.min(events - done);
        let stream = StreamId::new("account", format!("acc-{account}")).unwrap();
        let version = versions.entry(account).or_default();
        let data = (0..n).map(&event).collect();
        store
            .append(&stream, ExpectedVersion::Exact(*version), data)
            .await
            .unwrap();
        *version += n;
        done += n;
        b += 1;
    }
}

/// The runner's rebuild rates in one run: as shipped (read-ahead on, rows decoded in
/// the runner's polls, a checkpoint save per batch), with rows decoded on a task of
/// their own, without the read-ahead, and with a checkpoint saved every 10,000 events.
struct Rebuilds {
    ours: f64,
    sequential: f64,
    cadence: f64,
    /// As shipped, but decoding on a task of its own (`read_on_task(true)`).
    on_task: f64,
    /// `read_all` alone, decoding on a task of its own.
    read_all_on_task: f64,
}

async fn rebuild(options: &PgConnectOptions, events: u64) -> (Rebuilds, f64, f64, f64) {
    let store = store(options.clone(), 4, false).await;
    // The same schema and pool, decoding rows on a task of their own (ADR 0034).
    let on_task = PostgresEventStore::builder(store.pool().clone())
        .schema(store.schema())
        .notify(false)
        .read_on_task(true)
        .build()
        .unwrap();
    fill(&store, events).await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE \"{}\".events",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    // The checkpoint in the store, as an external read model's: one save per batch.
    let runner = |task: bool, read_ahead: bool, cadence: Option<u64>| {
        let store = if task { &on_task } else { &store };
        let checkpoint = StoreCheckpoint::new(store.clone());
        let runner = ProjectionRunner::with_strategy(store.clone(), Totals::default(), checkpoint)
            .with_config(RunnerConfig {
                batch_size: 1_000,
                ..RunnerConfig::default()
            })
            .with_read_ahead(read_ahead);
        match cadence {
            Some(events) => runner.with_checkpoint_cadence(cqrs_core::CheckpointCadence {
                events,
                interval: Duration::from_secs(1),
            }),
            None => runner,
        }
    };
    // Shipped, decoding on a task, sequential, cadence, then the first two again: those
    // two rates are the means of their two runs, around the others, so drift favours
    // neither.
    let (mut rates, mut ours_cents) = (Vec::new(), 0);
    for (task, read_ahead, cadence) in [
        (false, true, None),
        (true, true, None),
        (false, false, None),
        (false, true, Some(10_000)),
        (false, true, None),
        (true, true, None),
    ] {
        let mut runner = runner(task, read_ahead, cadence);
        let started = Instant::now();
        let read = runner.rebuild(|_| {}).await.unwrap();
        rates.push(rate(read, started.elapsed()));
        assert_eq!(runner.projection().events, events);
        ours_cents = runner.projection().cents;
    }
    // The store's read_all alone, with the same decode (no runner): in the caller's
    // polls, on a task, in the caller's polls again.
    let mut read_alls = Vec::new();
    for store in [&store, &on_task, &store] {
        let started = Instant::now();
        let mut records = std::pin::pin!(store.read_all(Position::START, None));
        let mut k = 0u64;
        while let Some(record) = records.next().await {
            let record = record.unwrap();
            let _: AccountEvent = serde_json::from_slice(&record.payload).unwrap();
            k += 1;
        }
        assert_eq!(k, events);
        read_alls.push(rate(k, started.elapsed()));
    }
    let read_all = (read_alls[0] + read_alls[2]) / 2.0;
    let rebuilds = Rebuilds {
        ours: (rates[0] + rates[4]) / 2.0,
        on_task: (rates[1] + rates[5]) / 2.0,
        sequential: rates[2],
        cadence: rates[3],
        read_all_on_task: read_alls[1],
    };

    // Raw: the same rows in the same order, streamed, with the same JSON decode.
    let started = Instant::now();
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(format!(
        "SELECT id, payload FROM \"{}\".events ORDER BY transaction_id, id",
        store.schema()
    )))
    .fetch(store.pool());
    let (mut n, mut cents) = (0u64, 0i64);
    while let Some(row) = rows.next().await {
        let (_, payload) = row.unwrap();
        if let AccountEvent::Deposited { cents: c } = serde_json::from_slice(&payload).unwrap() {
            cents += c;
        }
        n += 1;
    }
    drop(rows);
    let raw = rate(n, started.elapsed());
    assert_eq!(cents, ours_cents);

    // Raw, fetching the whole envelope as the store does (same columns, same decode).
    let started = Instant::now();
    let mut rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, transaction_id, event_id, aggregate_type, aggregate_id, version, \
         event_type, schema_version, recorded_at, payload, metadata::text FROM \"{}\".events \
         ORDER BY transaction_id, id",
        store.schema()
    )))
    .fetch(store.pool());
    let mut m = 0u64;
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        let payload: Vec<u8> = sqlx::Row::get(&row, 9);
        let _: String = sqlx::Row::get(&row, 3);
        let _: String = sqlx::Row::get(&row, 4);
        let _: String = sqlx::Row::get(&row, 6);
        let metadata: String = sqlx::Row::get(&row, 10);
        let _: serde_json::Value = serde_json::from_str(&metadata).unwrap();
        let _: AccountEvent = serde_json::from_slice(&payload).unwrap();
        m += 1;
    }
    drop(rows);
    let raw_envelope = rate(m, started.elapsed());
    drop_schema(store.pool(), store.schema()).await;
    (rebuilds, read_all, raw, raw_envelope)
}

/// A rebuild of a projection that wants one record in `one_in`: `events` records over
/// 1,000 accounts, each batch of 1,000 holding `1,000 / one_in` deposits and records of a
/// type the projection does not know for the rest. The runner reading by type (the default, ADR 0035) against
/// the same runner reading every record (`with_type_filter(false)`), alternately (on,
/// off, off, on); the rates are records of the log per second. Returns (by type, every
/// record, the raw `SELECT id, payload … WHERE event_type = …` of the same deposits in
/// log records per second).
async fn rebuild_by_type(options: &PgConnectOptions, events: u64, one_in: u64) -> (f64, f64, f64) {
    let store = store(options.clone(), 4, false).await;
    fill_with(&store, events, |i| match i % one_in {
        0 => EventData::new("MoneyDeposited", deposit(i64::try_from(i).unwrap())),
        _ => EventData::new(
            "AuditNoted",
            br#"{"note":"looked at the account"}"#.to_vec(),
        ),
    })
    .await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE \"{}\".events",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let deposits = events / one_in;
    let mut rates = [Vec::new(), Vec::new()];
    for by_type in [true, false, false, true] {
        let checkpoint = StoreCheckpoint::new(store.clone());
        let mut runner =
            ProjectionRunner::with_strategy(store.clone(), Totals::default(), checkpoint)
                .with_config(RunnerConfig {
                    batch_size: 1_000,
                    ..RunnerConfig::default()
                })
                .with_type_filter(by_type);
        let started = Instant::now();
        runner.rebuild(|_| {}).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(runner.projection().events, deposits);
        rates[usize::from(!by_type)].push(rate(events, elapsed));
    }
    let started = Instant::now();
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(format!(
        "SELECT id, payload FROM \"{}\".events WHERE event_type = 'MoneyDeposited' \
         ORDER BY transaction_id, id",
        store.schema()
    )))
    .fetch(store.pool());
    while let Some(row) = rows.next().await {
        let (_, payload) = row.unwrap();
        let _: AccountEvent = serde_json::from_slice(&payload).unwrap();
    }
    drop(rows);
    let raw = rate(events, started.elapsed());
    drop_schema(store.pool(), store.schema()).await;
    (mean(&rates[0]), mean(&rates[1]), raw)
}

/// `read_all` of `events` deposits that carry a correlation and a causation id (as the
/// command layer writes them) against the same read of deposits without metadata, in
/// one run (without, with, with, without), and a rebuild of each after its read.
/// Returns ((with ids, without) for `read_all`, the same for the rebuild), in records/s.
async fn read_with_metadata(options: &PgConnectOptions, events: u64) -> ((f64, f64), (f64, f64)) {
    let plain = store(options.clone(), 4, false).await;
    fill(&plain, events).await;
    let tagged = store(options.clone(), 4, false).await;
    fill_with(&tagged, events, |i| {
        let metadata = cqrs_core::Metadata::new()
            .with_correlation_id(uuid::Uuid::now_v7())
            .with_causation_id(uuid::Uuid::now_v7());
        EventData::new("MoneyDeposited", deposit(i64::try_from(i).unwrap())).with_metadata(metadata)
    })
    .await;
    for store in [&plain, &tagged] {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "VACUUM ANALYZE \"{}\".events",
            store.schema()
        )))
        .execute(store.pool())
        .await
        .unwrap();
    }
    let (mut rates, mut rebuilds) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for with_ids in [false, true, true, false] {
        let store = if with_ids { &tagged } else { &plain };
        let started = Instant::now();
        let mut records = std::pin::pin!(store.read_all(Position::START, None));
        let mut n = 0u64;
        while let Some(record) = records.next().await {
            let record = record.unwrap();
            assert_eq!(record.metadata.causation_id.is_some(), with_ids);
            n += 1;
        }
        assert_eq!(n, events);
        rates[usize::from(!with_ids)].push(rate(n, started.elapsed()));
        // The rebuild: the client does more per record, so its decoding shows.
        let checkpoint = StoreCheckpoint::new(store.clone());
        let mut runner =
            ProjectionRunner::with_strategy(store.clone(), Totals::default(), checkpoint)
                .with_config(RunnerConfig {
                    batch_size: 1_000,
                    ..RunnerConfig::default()
                });
        let started = Instant::now();
        let read = runner.rebuild(|_| {}).await.unwrap();
        assert_eq!(read, events);
        rebuilds[usize::from(!with_ids)].push(rate(read, started.elapsed()));
    }
    drop_schema(plain.pool(), plain.schema()).await;
    drop_schema(tagged.pool(), tagged.schema()).await;
    (
        (mean(&rates[0]), mean(&rates[1])),
        (mean(&rebuilds[0]), mean(&rebuilds[1])),
    )
}

async fn notify_overhead(options: &PgConnectOptions, tasks: usize, appends: u64) -> (f64, f64) {
    let mut rates = [0.0; 2];
    // Alternate, twice each, so drift in the machine's load does not favour one side.
    for round in 0..4 {
        let notify = round % 2 == 0;
        let store = store(options.clone(), u32::try_from(tasks).unwrap(), notify).await;
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|t| {
                let (store, next) = (store.clone(), Arc::clone(&next));
                tokio::spawn(async move {
                    let stream = StreamId::new("account", format!("t{t}")).unwrap();
                    while next.fetch_add(1, Ordering::Relaxed) < appends {
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Any,
                                vec![EventData::new("MoneyDeposited", deposit(1))],
                            )
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        rates[usize::from(!notify)] += rate(appends, started.elapsed()) / 2.0;
        drop_schema(store.pool(), store.schema()).await;
    }
    (rates[0], rates[1])
}

/// The median time of a lone command (load + decide + append, one at a time, nothing
/// else in flight), group commit on and off: (on, off). Two stores, the commands
/// alternating between them, so drift in the machine's load hits both alike.
async fn lone_latency(options: &PgConnectOptions, commands: usize) -> (Duration, Duration) {
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let on = store_with(options.clone(), 2, true, true).await;
    let off = store_with(options.clone(), 2, true, false).await;
    let repos = [
        Repository::<Account, _>::new(on.clone(), ()),
        Repository::<Account, _>::new(off.clone(), ()),
    ];
    for repo in &repos {
        repo.execute("lone", &AccountCommand::Open).await.unwrap();
    }
    for i in 0..commands * 2 {
        let side = i % 2;
        let started = Instant::now();
        repos[side]
            .execute("lone", &AccountCommand::Deposit(1))
            .await
            .unwrap();
        samples[side].push(started.elapsed());
    }
    drop_schema(on.pool(), on.schema()).await;
    drop_schema(off.pool(), off.schema()).await;
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let [mut on, mut off] = samples;
    (p50(&mut on), p50(&mut off))
}

/// One append of 1,000 events against one raw multi-row INSERT of the same rows
/// (`INSERT … SELECT FROM unnest(…)`), `rounds` each, alternating: events/s (ours, raw).
async fn big_append(options: &PgConnectOptions, rounds: u64) -> (f64, f64) {
    let store = store(options.clone(), 2, true).await;
    let pool = pool(options.clone(), 2).await;
    let s = raw_table(&pool).await;
    let sql = format!(
        "INSERT INTO \"{s}\".raw (stream, version, payload) \
         SELECT $1, v, p FROM unnest($2::bigint[], $3::bytea[]) AS t(v, p)"
    );
    let payloads: Vec<Vec<u8>> = (0..1_000).map(deposit).collect();
    let versions: Vec<i64> = (1..=1_000).collect();
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    for r in 0..rounds {
        for side in [r % 2 == 0, r % 2 != 0] {
            if side {
                let events: Vec<EventData> = payloads
                    .iter()
                    .map(|p| EventData::new("MoneyDeposited", p.clone()))
                    .collect();
                let stream = StreamId::new("account", format!("big-{r}")).unwrap();
                let started = Instant::now();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await
                    .unwrap();
                ours += started.elapsed();
            } else {
                let started = Instant::now();
                sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(format!("big-{r}"))
                    .bind(&versions)
                    .bind(&payloads)
                    .execute(&pool)
                    .await
                    .unwrap();
                raw += started.elapsed();
            }
        }
    }
    drop_schema(&pool, &s).await;
    drop_schema(store.pool(), store.schema()).await;
    let events = rounds * 1_000;
    (rate(events, ours), rate(events, raw))
}

/// 16 tasks appending one event at a time, each to its own stream (the store alone),
/// group commit on and off, alternating twice: appends/s (on, off).
async fn group_commit_appends(
    options: &PgConnectOptions,
    tasks: usize,
    appends: u64,
) -> (f64, f64) {
    let mut rates = [0.0; 2];
    for on in [true, false, false, true] {
        let store = store_with(options.clone(), u32::try_from(tasks).unwrap(), true, on).await;
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|t| {
                let (store, next) = (store.clone(), Arc::clone(&next));
                tokio::spawn(async move {
                    let stream = StreamId::new("account", format!("t{t}")).unwrap();
                    while next.fetch_add(1, Ordering::Relaxed) < appends {
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Any,
                                vec![EventData::new("MoneyDeposited", deposit(1))],
                            )
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        rates[usize::from(!on)] += rate(appends, started.elapsed()) / 2.0;
        drop_schema(store.pool(), store.schema()).await;
    }
    (rates[0], rates[1])
}

// ---- peak RSS in child processes --------------------------------------------------

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn child(options: PgConnectOptions, mode: &str, events: u64) {
    // Fill in this process too: its peak is measured before and after the workload.
    let store = store(options, 2, false).await;
    if mode == "--rss-load" {
        let stream = StreamId::new("account", "big").unwrap();
        let repo = Repository::<Account, _>::new(store.clone(), ());
        repo.execute("big", &AccountCommand::Open).await.unwrap();
        let mut version = 1;
        while version < events {
            let n = 1_000.min(events - version);
            let data = (0..n)
                .map(|_| EventData::new("MoneyDeposited", deposit(1)))
                .collect();
            store
                .append(&stream, ExpectedVersion::Exact(version), data)
                .await
                .unwrap();
            version += n;
        }
        let before = peak_rss_kib();
        let loaded = repo.load("big").await.unwrap();
        assert_eq!(loaded.version, events);
        println!("{before} {}", peak_rss_kib());
    } else if mode == "--rss-read-all" {
        // For profiling the store's read path: read the log five times.
        fill(&store, events).await;
        let before = peak_rss_kib();
        for _ in 0..5 {
            let mut records = std::pin::pin!(store.read_all(Position::START, None));
            while let Some(record) = records.next().await {
                let record = record.unwrap();
                let _: AccountEvent = serde_json::from_slice(&record.payload).unwrap();
            }
        }
        println!("{before} {}", peak_rss_kib());
    } else {
        fill(&store, events).await;
        let before = peak_rss_kib();
        let mut runner = ProjectionRunner::new(store.clone(), Totals::default());
        runner.rebuild(|_| {}).await.unwrap();
        println!("{before} {}", peak_rss_kib());
    }
    drop_schema(store.pool(), store.schema()).await;
}

fn rss_of(mode: &str, events: u64) -> (u64, u64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([mode, &events.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options: PgConnectOptions = match url().parse() {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: bad DATABASE_URL: {e}");
            return;
        }
    };
    if let Some(mode) = args.iter().find(|a| a.starts_with("--rss-")) {
        let events = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200_000);
        let _schemas = DropSchemasOnExit;
        child(options, mode, events).await;
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `--list` probes
    }
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
        }
        Err(e) => {
            println!("skipped: no PostgreSQL at {}: {e}", url());
            return;
        }
    }
    let _schemas = DropSchemasOnExit;
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(n) = args
        .iter()
        .position(|a| a == "--pipeline")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
    {
        PIPELINE.store(n, Ordering::Relaxed);
    }
    let replay_events = if quick { 100_000 } else { 1_000_000 };
    let load_events = if quick { 50_000 } else { 200_000 };

    println!(
        "PostgreSQL comparison ({}), ratios are ours / raw sqlx",
        if quick { "quick" } else { "full" }
    );
    if args.iter().any(|a| a == "--metadata-only") {
        let ((with_ids, without), (rebuilt_with, rebuilt_without)) =
            read_with_metadata(&options, replay_events).await;
        println!(
            "| read_all, {replay_events} events with correlation and causation ids / without metadata | {with_ids:.0} events/s | without: {without:.0}/s | {:.2} |",
            with_ids / without
        );
        println!(
            "| rebuild, {replay_events} events with correlation and causation ids / without metadata | {rebuilt_with:.0} events/s | without: {rebuilt_without:.0}/s | {:.2} |",
            rebuilt_with / rebuilt_without
        );
        return;
    }
    if args.iter().any(|a| a == "--by-type-only") {
        for one_in in [10, 1] {
            let (by_type, every, raw) = rebuild_by_type(&options, replay_events, one_in).await;
            println!(
                "| rebuild of a projection wanting 1 record in {one_in}, {replay_events} records, by type / every record | {by_type:.0} records/s | every record: {every:.0}/s | {:.2} |",
                by_type / every
            );
            println!(
                "| the same, by type | {by_type:.0} records/s | raw streamed SELECT id, payload WHERE event_type = … + same decode: {raw:.0}/s | {:.2} |",
                by_type / raw
            );
        }
        return;
    }
    if args.iter().any(|a| a == "--rebuild-only") {
        report_rebuild(&options, replay_events).await;
        return;
    }
    // Each measurement runs twice, the second time with the sides swapped (ours, raw,
    // raw, ours), so drift in the shared machine's load (disk flushes above all) does
    // not favour one side; the rates are averaged.
    if args.iter().any(|a| a == "--lone-only") {
        // The lone-latency row alone, five times.
        for _ in 0..5 {
            let (on, off) = lone_latency(&options, if quick { 200 } else { 1_000 }).await;
            println!(
                "| lone command latency (p50, one at a time), group commit on vs off | {:.3} ms | off: {:.3} ms | {:.2} |",
                on.as_secs_f64() * 1e3,
                off.as_secs_f64() * 1e3,
                on.as_secs_f64() / off.as_secs_f64()
            );
        }
        return;
    }
    let stats = pool(options.clone(), 1).await;
    let n = if quick { 2_000 } else { 10_000 };
    let (ours1, raw1, wide1) = concurrent_commands(&options, &stats, 16, n, false).await;
    let (ours2, raw2, wide2) = concurrent_commands(&options, &stats, 16, n, true).await;
    let mean = |a: (f64, Wal), b: (f64, Wal)| ((a.0 + b.0) / 2.0, a.1.mean(b.1));
    let (raw, raw_wal) = mean(raw1, raw2);
    let (wide, wide_wal) = mean(wide1, wide2);
    let variants = command_variants();
    let ours: Vec<(f64, Wal)> = ours1
        .into_iter()
        .zip(ours2)
        .map(|(a, b)| mean(a, b))
        .collect();
    for (config, (rate, _)) in variants.iter().zip(&ours) {
        // The same configuration without group commit, in this run.
        let off = variants
            .iter()
            .zip(&ours)
            .find(|(c, _)| !c.group_commit && c.cache == config.cache)
            .map_or(f64::NAN, |(_, (off, _))| *off);
        println!(
            "| 16 tasks, 1,000 accounts, full command path, {} | {rate:.0} cmd/s | raw single-row INSERT, 16 conns: {raw:.0}/s | {:.2} (vs raw with our columns and indexes, {wide:.0}/s: {:.2}; vs the same with group commit off: {:.2}) |",
            config.label(),
            rate / raw,
            rate / wide,
            rate / off
        );
    }
    println!(
        "| raw single-row INSERT with our columns and four indexes, 16 conns | {wide:.0}/s | raw: {raw:.0}/s | {:.2} |",
        wide / raw
    );
    for (config, (_, wal)) in variants.iter().zip(&ours) {
        println!(
            "{}",
            wal.row(&format!("ours, 16 tasks, {}", config.label()))
        );
    }
    println!("{}", raw_wal.row("raw single-row INSERT, 16 conns"));
    println!(
        "{}",
        wide_wal.row("raw INSERT with our columns and indexes, 16 conns")
    );
    let commands_only = args.iter().any(|a| a == "--commands-only");
    let (on, off) = group_commit_appends(&options, 16, if quick { 4_000 } else { 20_000 }).await;
    println!(
        "| 16 concurrent appenders (store only), group commit on vs off | {on:.0} appends/s | off: {off:.0}/s | {:.2} |",
        on / off
    );
    let (on, off) = lone_latency(&options, if quick { 200 } else { 1_000 }).await;
    println!(
        "| lone command latency (p50, one at a time), group commit on vs off | {:.3} ms | off: {:.3} ms | {:.2} |",
        on.as_secs_f64() * 1e3,
        off.as_secs_f64() * 1e3,
        on.as_secs_f64() / off.as_secs_f64()
    );
    let (ours, raw) = big_append(&options, if quick { 20 } else { 100 }).await;
    println!(
        "| one 1,000-event append | {ours:.0} events/s | raw multi-row INSERT (unnest) of the same rows: {raw:.0}/s | {:.2} |",
        ours / raw
    );
    let ((appends, ours), (raw, raw_wal), (wide, wide_wal)) =
        sequential_commands(&options, &stats, if quick { 1_000 } else { 5_000 }).await;
    let ((appends, appends_wal), (ours, ours_wal)) = (appends, ours);
    println!(
        "| sequential one-event appends to one stream (store only) | {appends:.0} appends/s | raw sequential autocommit INSERT: {raw:.0}/s | {:.2} (vs raw with our columns and indexes, {wide:.0}/s: {:.2}) |",
        appends / raw,
        appends / wide
    );
    println!(
        "| sequential commands on one aggregate (snapshot every 100) | {ours:.0} cmd/s | raw sequential autocommit INSERT: {raw:.0}/s | {:.2} (vs raw wide: {:.2}) |",
        ours / raw,
        ours / wide
    );
    println!("{}", appends_wal.row("ours, sequential appends"));
    println!("{}", ours_wal.row("ours, sequential commands"));
    println!("{}", raw_wal.row("raw sequential autocommit INSERT"));
    println!(
        "{}",
        wide_wal.row("raw sequential INSERT with our columns and indexes")
    );
    if commands_only {
        return;
    }
    let [plain, snapshots, append] = round_trips(&options).await;
    println!(
        "| round trips per command (queries + pool pings after release) | {:.2} + {:.2} without snapshots, {:.2} + {:.2} with | one append: {:.2} + {:.2} | |",
        plain.0, plain.1, snapshots.0, snapshots.1, append.0, append.1
    );
    report_rebuild(&options, replay_events).await;
    let (on, off) = notify_overhead(&options, 16, if quick { 4_000 } else { 20_000 }).await;
    println!(
        "| 16 concurrent appenders, NOTIFY on vs off | {on:.0} appends/s | off: {off:.0}/s | {:.2} |",
        on / off
    );
    let (before, peak) = rss_of("--rss-load", load_events);
    println!(
        "| peak RSS loading a {load_events}-event aggregate | {} MiB (process peak; {} MiB before the load) | | |",
        peak / 1024,
        before / 1024
    );
    let (before, peak) = rss_of("--rss-replay", replay_events);
    println!(
        "| peak RSS replaying {replay_events} events | {} MiB (process peak; {} MiB before the replay) | | |",
        peak / 1024,
        before / 1024
    );
}

/// Prints the rebuild rows.
async fn report_rebuild(options: &PgConnectOptions, replay_events: u64) {
    let (rebuilds, read_all, raw, raw_envelope) = rebuild(options, replay_events).await;
    let ours = rebuilds.ours;
    println!(
        "| projection rebuild, {replay_events} events, read-ahead on / off | {ours:.0} events/s | off: {:.0}/s | {:.2} |",
        rebuilds.sequential,
        ours / rebuilds.sequential
    );
    println!(
        "| the same, checkpoint every 10,000 events / every batch | {:.0} events/s | every batch: {ours:.0}/s | {:.2} |",
        rebuilds.cadence,
        rebuilds.cadence / ours
    );
    println!(
        "| the same, rows decoded on a task of their own / in the runner's polls | {:.0} events/s | in its polls: {ours:.0}/s | {:.2} |",
        rebuilds.on_task,
        rebuilds.on_task / ours
    );
    println!(
        "| read_all alone, rows decoded on a task of their own / in the caller's polls | {:.0} events/s | in its polls: {read_all:.0}/s | {:.2} |",
        rebuilds.read_all_on_task,
        rebuilds.read_all_on_task / read_all
    );
    println!(
        "| read_all alone (no runner), {replay_events} events | {read_all:.0} events/s | raw streamed SELECT id, payload + same decode: {raw:.0}/s | {:.2} |",
        read_all / raw
    );
    println!(
        "| projection rebuild, {replay_events} events | {ours:.0} events/s | raw streamed SELECT id, payload + same decode: {raw:.0}/s | {:.2} |",
        ours / raw
    );
    println!(
        "| projection rebuild, {replay_events} events | {ours:.0} events/s | raw streamed SELECT of the whole envelope + same decode: {raw_envelope:.0}/s | {:.2} |",
        ours / raw_envelope
    );
}
