//! The comparison against cqrs-es: `cqrs_core::Repository` over `PostgresEventStore`,
//! cqrs-es 0.5's `CqrsFramework` over postgres-es 0.5, and raw sqlx inserts, on the same
//! server, in the same run, reported as ratios.
//!
//! ```sh
//! cargo bench -p cqrs-compare --bench compare_cqrs_es            # 10,000 / 5,000 commands
//! cargo bench -p cqrs-compare --bench compare_cqrs_es -- --quick # 2,000 / 1,000
//! ```
//!
//! For diagnosis: `--only concurrent|sequential|round-trips` runs one group of rows, and
//! `--no-notify` builds our store without its coalesced `NOTIFY`, `--no-group-commit`
//! without group commit (ADR 0027; on by default, `--group-commit` is accepted and
//! changes nothing), `--pipeline N` with N group-commit writes in flight (default: the
//! builder's).
//!
//! It reads `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! works in fresh schemas (postgres-es's tables too, named through `with_tables`) that it
//! drops afterwards. Without a server it prints a skip line and exits 0.
//!
//! One `Account` type implements both frameworks' `Aggregate` traits over one `decide`,
//! so both sides run the same domain logic. Every pool has the same size and does not
//! ping before each use (`test_before_acquire(false)`), unless a row says otherwise.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cqrs_core::{DomainEvent, Repository, SnapshotPolicy};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, CqrsFramework};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, ConnectOptions, Connection, PgPool};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- the bank account, for both frameworks ---------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: i64,
}

#[derive(Debug, Clone, Copy)]
enum AccountCommand {
    Open,
    Deposit(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened,
    Deposited { cents: i64 },
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("the account is closed")]
    Closed,
    #[error("the account is already open")]
    AlreadyOpen,
}

impl Account {
    /// The domain decision both frameworks call.
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            AccountCommand::Deposit(_) if !self.open => Err(AccountError::Closed),
            AccountCommand::Deposit(cents) => Ok(vec![AccountEvent::Deposited { cents }]),
        }
    }

    fn evolve(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { cents } => self.balance += cents,
        }
    }
}

impl AccountEvent {
    fn name(&self) -> &'static str {
        match self {
            AccountEvent::Opened => "AccountOpened",
            AccountEvent::Deposited { .. } => "MoneyDeposited",
        }
    }
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["AccountOpened", "MoneyDeposited"];
    fn event_type(&self) -> &'static str {
        self.name()
    }
}

impl cqrs_core::Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        self.decide(*command)
    }

    fn apply(&mut self, event: AccountEvent) {
        self.evolve(event);
    }
}

impl cqrs_es::DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl cqrs_es::Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        self.evolve(event);
    }
}

type EsCqrs = CqrsFramework<Account, PersistedEventStore<PostgresEventRepository, Account>>;

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
    // No ping before each use (sqlx's default costs a round trip per call).
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .expect("connect")
}

/// The capacity of our state cache in the rows that use it.
const CACHE: usize = 10_000;

/// Whether our stores send `NOTIFY` after appends (`--no-notify` turns it off).
static NOTIFY: AtomicBool = AtomicBool::new(true);

/// Whether our stores use group commit (the default; `--no-group-commit` turns it off;
/// ADR 0027).
static GROUP_COMMIT: AtomicBool = AtomicBool::new(true);

/// The group-commit pipeline depth (`--pipeline N`; 0: the builder's default).
static PIPELINE: AtomicUsize = AtomicUsize::new(0);

async fn store(options: PgConnectOptions, max: u32, notify: bool) -> PostgresEventStore {
    let mut builder = PostgresEventStore::builder(pool(options, max).await)
        .schema(schema())
        .notify(notify)
        .group_commit(GROUP_COMMIT.load(Ordering::Relaxed));
    let pipeline = PIPELINE.load(Ordering::Relaxed);
    if pipeline > 0 {
        builder = builder.group_commit_pipeline(pipeline);
    }
    let store = builder.build().unwrap();
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

/// postgres-es's `events` and `snapshots` tables (its `db/init.sql`), in a fresh schema.
async fn es_tables(admin: &PgPool) -> String {
    let s = schema();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA \"{s}\";
         CREATE TABLE \"{s}\".events (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
             sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
             event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
             PRIMARY KEY (aggregate_type, aggregate_id, sequence));
         CREATE TABLE \"{s}\".snapshots (aggregate_type text NOT NULL,
             aggregate_id text NOT NULL, last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
             current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
             payload json NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));"
    )))
    .execute(admin)
    .await
    .unwrap();
    s
}

/// The pool postgres-es gets: sqlx 0.8, same size and settings as ours.
async fn es_pool(
    options: sqlx08::postgres::PgConnectOptions,
    max: u32,
    ping: bool,
) -> sqlx08::PgPool {
    sqlx08::postgres::PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(ping)
        .connect_with(options)
        .await
        .expect("connect (sqlx 0.8)")
}

/// A `CqrsFramework` over postgres-es in `schema`, without queries; `snapshots` is the
/// snapshot store's size (`None`: the default event store, which replays the stream).
fn es_cqrs(pool: sqlx08::PgPool, schema: &str, snapshots: Option<usize>) -> EsCqrs {
    let repo = PostgresEventRepository::new(pool).with_tables(
        &format!("\"{schema}\".events"),
        &format!("\"{schema}\".snapshots"),
    );
    let store = match snapshots {
        None => PersistedEventStore::new_event_store(repo),
        Some(n) => PersistedEventStore::new_snapshot_store(repo, n),
    };
    CqrsFramework::new(store, vec![], ())
}

fn es_options() -> sqlx08::postgres::PgConnectOptions {
    url().parse().expect("DATABASE_URL for sqlx 0.8")
}

/// Executes on cqrs-es, retrying optimistic-lock conflicts (our `Repository` retries
/// them itself).
async fn es_execute(cqrs: &EsCqrs, id: &str, command: AccountCommand) {
    loop {
        match cqrs.execute(id, command).await {
            Ok(()) => return,
            Err(AggregateError::AggregateConflict) => {}
            Err(e) => panic!("cqrs-es: {e}"),
        }
    }
}

fn deposit(cents: i64) -> Vec<u8> {
    serde_json::to_vec(&AccountEvent::Deposited { cents }).unwrap()
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

// ---- a counting proxy, for round trips (as in cqrs-postgres's compare bench) --------

/// What the proxy counted in the client's messages.
#[derive(Default)]
struct Trips {
    /// `Sync`s that ended a query (Bind/Execute before them), and simple `Query`s.
    queries: AtomicU64,
    /// `Sync`s alone: the pool's liveness pings.
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

// ---- 16 tasks over 1,000 accounts -------------------------------------------------

const ACCOUNTS: u64 = 1_000;

/// The account the `i`th command goes to: a spread-out walk (some collide: retried).
fn account(i: u64) -> String {
    format!("acc-{}", (i * 7919) % ACCOUNTS)
}

/// Runs `commands` commands over `tasks` tasks, each calling `run(i)`; returns cmd/s.
async fn spread<F, Fut>(tasks: usize, commands: u64, run: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (run, next) = (run.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= commands {
                        break;
                    }
                    run(i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    rate(commands, started.elapsed())
}

/// Our side; `cache`: the capacity of `Repository::with_cache` (0: no cache).
async fn concurrent_ours(
    options: &PgConnectOptions,
    tasks: usize,
    commands: u64,
    cache: usize,
) -> f64 {
    let notify = NOTIFY.load(Ordering::Relaxed);
    let store = store(options.clone(), u32::try_from(tasks).unwrap(), notify).await;
    let repo = Arc::new(Repository::<Account, _>::new(store.clone(), ()).with_cache(cache));
    for a in 0..ACCOUNTS {
        repo.execute(&format!("acc-{a}"), &AccountCommand::Open)
            .await
            .unwrap();
    }
    let ours = spread(tasks, commands, move |i| {
        let repo = Arc::clone(&repo);
        async move {
            repo.execute(&account(i), &AccountCommand::Deposit(1))
                .await
                .unwrap();
        }
    })
    .await;
    drop_schema(store.pool(), store.schema()).await;
    ours
}

async fn concurrent_es(admin: &PgPool, tasks: usize, commands: u64) -> f64 {
    let s = es_tables(admin).await;
    let pool = es_pool(es_options(), u32::try_from(tasks).unwrap(), false).await;
    let cqrs = Arc::new(es_cqrs(pool.clone(), &s, None));
    for a in 0..ACCOUNTS {
        es_execute(&cqrs, &format!("acc-{a}"), AccountCommand::Open).await;
    }
    let theirs = spread(tasks, commands, move |i| {
        let cqrs = Arc::clone(&cqrs);
        async move { es_execute(&cqrs, &account(i), AccountCommand::Deposit(1)).await }
    })
    .await;
    // Every command was committed (conflicts were retried, not lost).
    let (events,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{s}\".events"
    )))
    .fetch_one(admin)
    .await
    .unwrap();
    assert_eq!(u64::try_from(events).unwrap(), ACCOUNTS + commands);
    pool.close().await;
    drop_schema(admin, &s).await;
    theirs
}

async fn concurrent_raw(options: &PgConnectOptions, tasks: usize, commands: u64) -> f64 {
    let pool = pool(options.clone(), u32::try_from(tasks).unwrap()).await;
    let s = raw_table(&pool).await;
    let sql: Arc<str> =
        format!("INSERT INTO \"{s}\".raw (stream, version, payload) VALUES ($1, $2, $3)").into();
    let p = pool.clone();
    let raw = spread(tasks, commands, move |i| {
        let (pool, sql) = (p.clone(), Arc::clone(&sql));
        async move {
            sqlx::query(AssertSqlSafe(sql))
                .bind(account(i))
                .bind(i64::try_from(i).unwrap())
                .bind(deposit(1))
                .execute(&pool)
                .await
                .unwrap();
        }
    })
    .await;
    drop_schema(&pool, &s).await;
    raw
}

// ---- sequential commands on one aggregate -----------------------------------------

/// Rates of one sequential run: overall, over the first `window` and the last `window`
/// commands.
#[derive(Debug, Default, Clone, Copy)]
struct Sequential {
    all: f64,
    first: f64,
    last: f64,
}

impl Sequential {
    fn mean(a: Self, b: Self) -> Self {
        Self {
            all: (a.all + b.all) / 2.0,
            first: (a.first + b.first) / 2.0,
            last: (a.last + b.last) / 2.0,
        }
    }
}

/// Times `commands` sequential calls of `run(i)`.
async fn timed<F, Fut>(commands: u64, window: u64, mut run: F) -> Sequential
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    let mut first = Duration::ZERO;
    let mut last_from = started;
    for i in 0..commands {
        if i == window {
            first = started.elapsed();
        }
        if i == commands - window {
            last_from = Instant::now();
        }
        run(i).await;
    }
    Sequential {
        all: rate(commands, started.elapsed()),
        first: rate(window, first),
        last: rate(window, last_from.elapsed()),
    }
}

async fn sequential_ours(
    options: &PgConnectOptions,
    commands: u64,
    window: u64,
    cache: usize,
) -> Sequential {
    let store = store(options.clone(), 2, NOTIFY.load(Ordering::Relaxed)).await;
    let repo = Repository::<Account, _>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(100))
        .with_cache(cache);
    repo.execute("one", &AccountCommand::Open).await.unwrap();
    let ours = timed(commands, window, |_| async {
        repo.execute("one", &AccountCommand::Deposit(1))
            .await
            .unwrap();
    })
    .await;
    drop_schema(store.pool(), store.schema()).await;
    ours
}

async fn sequential_es(
    admin: &PgPool,
    commands: u64,
    window: u64,
    snapshots: Option<usize>,
) -> Sequential {
    let s = es_tables(admin).await;
    let pool = es_pool(es_options(), 2, false).await;
    let cqrs = es_cqrs(pool.clone(), &s, snapshots);
    es_execute(&cqrs, "one", AccountCommand::Open).await;
    let theirs = timed(commands, window, |_| {
        es_execute(&cqrs, "one", AccountCommand::Deposit(1))
    })
    .await;
    pool.close().await;
    drop_schema(admin, &s).await;
    theirs
}

async fn sequential_raw(options: &PgConnectOptions, commands: u64, window: u64) -> Sequential {
    let pool = pool(options.clone(), 2).await;
    let s = raw_table(&pool).await;
    let sql = format!("INSERT INTO \"{s}\".raw (stream, version, payload) VALUES ($1, $2, $3)");
    let raw = timed(commands, window, |i| {
        let (pool, sql) = (&pool, sql.as_str());
        async move {
            sqlx::query(AssertSqlSafe(sql))
                .bind("one")
                .bind(i64::try_from(i).unwrap())
                .bind(deposit(1))
                .execute(pool)
                .await
                .unwrap();
        }
    })
    .await;
    drop_schema(&pool, &s).await;
    raw
}

// ---- round trips ------------------------------------------------------------------

/// Round trips per deposit command: (queries, pings).
#[derive(Debug, Clone, Copy)]
struct PerCommand {
    queries: f64,
    pings: f64,
}

const TRIPS_N: u64 = 200;

async fn counted<F, Fut>(trips: &Trips, mut run: F) -> PerCommand
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // Warm up: statements prepared on the connection.
    for _ in 0..5 {
        run().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = (
        trips.queries.load(Ordering::Relaxed),
        trips.pings.load(Ordering::Relaxed),
    );
    for _ in 0..TRIPS_N {
        run().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    PerCommand {
        queries: (trips.queries.load(Ordering::Relaxed) - before.0) as f64 / TRIPS_N as f64,
        pings: (trips.pings.load(Ordering::Relaxed) - before.1) as f64 / TRIPS_N as f64,
    }
}

/// Round trips per command: ours without and with snapshots, cqrs-es without pings before
/// use, cqrs-es with sqlx's default pool (as `default_postgress_pool` builds it), cqrs-es's
/// snapshot store.
async fn round_trips(options: &PgConnectOptions, admin: &PgPool) -> [PerCommand; 6] {
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
    let es_proxied = es_options()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .ssl_mode(sqlx08::postgres::PgSslMode::Disable);

    let mut out = Vec::new();
    let store = store(proxied, 1, false).await;
    for (policy, cache) in [
        (SnapshotPolicy::Never, 0),
        (SnapshotPolicy::EveryEvents(100), 0),
        (SnapshotPolicy::EveryEvents(100), CACHE),
    ] {
        let repo = Repository::<Account, _>::new(store.clone(), ())
            .with_snapshots(policy)
            .with_cache(cache);
        let id = uuid::Uuid::new_v4().to_string();
        repo.execute(&id, &AccountCommand::Open).await.unwrap();
        out.push(
            counted(&trips, || async {
                repo.execute(&id, &AccountCommand::Deposit(1))
                    .await
                    .unwrap();
            })
            .await,
        );
    }
    drop_schema(store.pool(), store.schema()).await;

    for (ping, snapshots) in [(false, None), (true, None), (false, Some(100))] {
        let s = es_tables(admin).await;
        let pool = es_pool(es_proxied.clone(), 1, ping).await;
        let cqrs = es_cqrs(pool.clone(), &s, snapshots);
        es_execute(&cqrs, "one", AccountCommand::Open).await;
        out.push(
            counted(&trips, || {
                es_execute(&cqrs, "one", AccountCommand::Deposit(1))
            })
            .await,
        );
        pool.close().await;
        drop_schema(admin, &s).await;
    }
    out.try_into().unwrap()
}

// ---- main -------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `--list` probes
    }
    let options: PgConnectOptions = match url().parse() {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: bad DATABASE_URL: {e}");
            return;
        }
    };
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
    if args.iter().any(|a| a == "--no-notify") {
        NOTIFY.store(false, Ordering::Relaxed);
    }
    if args.iter().any(|a| a == "--no-group-commit") {
        GROUP_COMMIT.store(false, Ordering::Relaxed);
    }
    if let Some(n) = args
        .iter()
        .position(|a| a == "--pipeline")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
    {
        PIPELINE.store(n, Ordering::Relaxed);
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let want = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let admin = pool(options.clone(), 2).await;

    println!(
        "cqrs-es comparison ({}{}): ours = cqrs_core::Repository over PostgresEventStore, \
         cqrs-es = cqrs-es 0.5 + postgres-es 0.5",
        if quick { "quick" } else { "full" },
        match (
            GROUP_COMMIT.load(Ordering::Relaxed),
            PIPELINE.load(Ordering::Relaxed),
        ) {
            (false, _) => ", ours without group commit".to_owned(),
            (true, 0) => ", ours with group commit".to_owned(),
            (true, n) => format!(", ours with group commit, pipeline {n}"),
        }
    );
    println!("| measurement | ours | cqrs-es | raw sqlx | ours / cqrs-es | ours / raw |");
    println!("|---|---|---|---|---|---|");

    // Each measurement runs twice per side, in the order ours, cqrs-es, raw, raw,
    // cqrs-es, ours, so drift in the shared machine's load (disk flushes above all) does
    // not favour one side; the rates are averaged.
    if want("concurrent") {
        let n = if quick { 2_000 } else { 10_000 };
        let ours1 = concurrent_ours(&options, 16, n, 0).await;
        let cached1 = concurrent_ours(&options, 16, n, CACHE).await;
        let es1 = concurrent_es(&admin, 16, n).await;
        let raw1 = concurrent_raw(&options, 16, n).await;
        let raw2 = concurrent_raw(&options, 16, n).await;
        let es2 = concurrent_es(&admin, 16, n).await;
        let cached2 = concurrent_ours(&options, 16, n, CACHE).await;
        let ours2 = concurrent_ours(&options, 16, n, 0).await;
        let (ours, cached, es, raw) = (
            (ours1 + ours2) / 2.0,
            (cached1 + cached2) / 2.0,
            (es1 + es2) / 2.0,
            (raw1 + raw2) / 2.0,
        );
        println!(
            "| 16 tasks, 1,000 accounts, {n} deposit commands, cmd/s | {ours:.0} | {es:.0} | {raw:.0} (single-row INSERT, 16 conns) | {:.2} | {:.2} |",
            ours / es,
            ours / raw
        );
        println!(
            "| the same, ours with the state cache (`with_cache({CACHE})`) | {cached:.0} | {es:.0} | {raw:.0} | {:.2} | {:.2} |",
            cached / es,
            cached / raw
        );
    }
    if want("sequential") {
        let (n, window) = if quick { (1_000, 200) } else { (5_000, 500) };
        let ours1 = sequential_ours(&options, n, window, 0).await;
        let cached1 = sequential_ours(&options, n, window, CACHE).await;
        let es1 = sequential_es(&admin, n, window, None).await;
        let raw1 = sequential_raw(&options, n, window).await;
        let raw2 = sequential_raw(&options, n, window).await;
        let es2 = sequential_es(&admin, n, window, None).await;
        let cached2 = sequential_ours(&options, n, window, CACHE).await;
        let ours2 = sequential_ours(&options, n, window, 0).await;
        let (ours, cached, es, raw) = (
            Sequential::mean(ours1, ours2),
            Sequential::mean(cached1, cached2),
            Sequential::mean(es1, es2),
            Sequential::mean(raw1, raw2),
        );
        println!(
            "| {n} sequential commands on one aggregate, cmd/s (ours: snapshot every 100; cqrs-es: default event store) | {:.0} | {:.0} | {:.0} (autocommit INSERT) | {:.2} | {:.2} |",
            ours.all,
            es.all,
            raw.all,
            ours.all / es.all,
            ours.all / raw.all
        );
        println!(
            "| the same, first {window} commands | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            ours.first,
            es.first,
            raw.first,
            ours.first / es.first,
            ours.first / raw.first
        );
        println!(
            "| the same, last {window} commands | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            ours.last,
            es.last,
            raw.last,
            ours.last / es.last,
            ours.last / raw.last
        );
        println!(
            "| the same, ours with the state cache (`with_cache({CACHE})`) | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            cached.all,
            es.all,
            raw.all,
            cached.all / es.all,
            cached.all / raw.all
        );
        // cqrs-es's snapshot store (`postgres_snapshot_cqrs`, size 100), against the ours
        // and raw figures above.
        let es_snap1 = sequential_es(&admin, n, window, Some(100)).await;
        let es_snap2 = sequential_es(&admin, n, window, Some(100)).await;
        let es_snap = Sequential::mean(es_snap1, es_snap2);
        println!(
            "| the same, cqrs-es with its snapshot store (size 100) | {:.0} | {:.0} (first {window}: {:.0}, last: {:.0}) | {:.0} | {:.2} | |",
            ours.all,
            es_snap.all,
            es_snap.first,
            es_snap.last,
            raw.all,
            ours.all / es_snap.all
        );
    }
    if want("round-trips") {
        let [plain, snap, cached, es, es_ping, es_snap] = round_trips(&options, &admin).await;
        let show = |p: PerCommand| format!("{:.2} + {:.2}", p.queries, p.pings);
        println!(
            "| round trips per command (queries + pool pings) | {} (no snapshots), {} (snapshot every 100), {} (with the state cache) | {} (no ping before use), {} (sqlx default pool), {} (snapshot store) | | | |",
            show(plain),
            show(snap),
            show(cached),
            show(es),
            show(es_ping),
            show(es_snap)
        );
    }
    admin.close().await;
}
