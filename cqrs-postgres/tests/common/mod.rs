//! Shared test fixtures: a store in a fresh schema of the test server, or a skip.
#![allow(dead_code, unreachable_pub)]

pub mod life;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_postgres::sqlx::{self, ConnectOptions, Connection, PgConnection, PgPool};

/// The server the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn required() -> bool {
    std::env::var("CQRS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Whether the server answers; decided once per test binary. Without it, each caller's
/// test says `skipped` (or fails, when `CQRS_REQUIRE_POSTGRES=1`).
pub async fn server_available() -> bool {
    static REACHED: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();
    let url = database_url();
    let reached = REACHED
        .get_or_init(|| async {
            let options = url.parse::<PgConnectOptions>().map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        })
        .await;
    match reached {
        Ok(()) => true,
        Err(reason) if required() => {
            panic!("CQRS_REQUIRE_POSTGRES=1 but no PostgreSQL at {url}: {reason}")
        }
        Err(reason) => {
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            say(&format!(
                "skipped: {test}: no PostgreSQL at {url} ({reason})"
            ));
            false
        }
    }
}

/// Writes a line straight to standard error, past the test harness's capture (which
/// hides `eprintln!` of a passing test).
pub fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// A unique schema name that records when it was made, so leftovers can be swept.
pub fn schema_name() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "cqrs_t_{secs}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A small pool on the test server.
pub async fn pool(max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&database_url())
        .await
        .expect("connect to the test server")
}

/// Drops test schemas left over by earlier runs (once per binary): those older than an
/// hour. A safety net only: every test drops its own schema, also when it fails (see
/// [`StoreGuard`]); this catches the schemas of test processes that were killed.
async fn sweep(pool: &PgPool) {
    static SWEPT: OnceLock<()> = OnceLock::new();
    if SWEPT.set(()).is_err() {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cqrs\\_t\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in names {
        let stamp = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(stamp) > 3600 {
            let _ = drop_schema_named(&name).await;
        }
    }
}

/// A migrated store in a fresh schema, or `None` (after the `skipped` line) without a
/// server. The caller drops the schema ([`drop_schema`]), as the conformance suite's
/// teardown does; a test of its own uses [`store_guarded`], which cannot forget.
pub async fn store() -> Option<PostgresEventStore> {
    store_with(|b| b).await
}

/// As [`store`], with builder options.
pub async fn store_with(
    configure: impl FnOnce(
        cqrs_postgres::PostgresEventStoreBuilder,
    ) -> cqrs_postgres::PostgresEventStoreBuilder,
) -> Option<PostgresEventStore> {
    Some(store_guarded_with(configure).await?.into_inner())
}

/// A migrated store in a fresh schema that is dropped with the guard, also when the test
/// panics; or `None` (after the `skipped` line) without a server.
pub async fn store_guarded() -> Option<StoreGuard> {
    store_guarded_with(|b| b).await
}

/// As [`store_guarded`], with builder options.
pub async fn store_guarded_with(
    configure: impl FnOnce(
        cqrs_postgres::PostgresEventStoreBuilder,
    ) -> cqrs_postgres::PostgresEventStoreBuilder,
) -> Option<StoreGuard> {
    if !server_available().await {
        return None;
    }
    let pool = pool(4).await;
    sweep(&pool).await;
    let builder = PostgresEventStore::builder(pool)
        .schema(schema_name())
        .read_settle_timeout(Duration::from_secs(5));
    // Guarded before the schema exists, so that a failing migration drops it too.
    let store = StoreGuard {
        store: configure(builder).build().expect("valid schema"),
        armed: true,
    };
    store.migrate().await.expect("migrate");
    Some(store)
}

/// A store whose schema is dropped when the guard is: at the end of the test, or while
/// a panic unwinds it. Derefs to the store; `clone()` gives a plain store on the same
/// schema (for tasks), which does not drop it.
#[derive(Debug)]
pub struct StoreGuard {
    store: PostgresEventStore,
    armed: bool,
}

impl StoreGuard {
    /// The store, without the guard: the caller drops the schema.
    pub fn into_inner(mut self) -> PostgresEventStore {
        self.armed = false;
        self.store.clone()
    }
}

impl std::ops::Deref for StoreGuard {
    type Target = PostgresEventStore;

    fn deref(&self) -> &PostgresEventStore {
        &self.store
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        if self.armed {
            drop_schema_blocking(self.store.schema());
        }
    }
}

/// Drops a schema from synchronous code (a `Drop`), on a fresh connection made on a
/// thread of its own with its own runtime: the test's runtime may be the one unwinding.
/// A failure fails the test, unless it is already failing (then it is only reported).
pub fn drop_schema_blocking(name: &str) {
    let owned = name.to_owned();
    let dropped = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("start a runtime: {e}"))?
            .block_on(drop_schema_named(&owned))
    })
    .join()
    .unwrap_or_else(|_| Err("the thread dropping it panicked".to_owned()));
    if let Err(reason) = dropped {
        if std::thread::panicking() {
            say(&format!("could not drop the test schema {name}: {reason}"));
        } else {
            panic!("could not drop the test schema {name}: {reason}");
        }
    }
}

/// Drops a schema on a fresh connection, each step within a deadline.
async fn drop_schema_named(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("{name:?} is not a test schema name"));
    }
    let options: PgConnectOptions = database_url().parse().map_err(|e| format!("{e}"))?;
    let mut conn = tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .map_err(|_| "connecting timed out after 10 s".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    // The server gives up waiting for locks before the client gives up on the answer.
    let sql = format!(
        "SET lock_timeout = '20s'; SET statement_timeout = '25s'; \
         DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
    );
    tokio::time::timeout(
        Duration::from_secs(30),
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn),
    )
    .await
    .map_err(|_| "DROP SCHEMA timed out after 30 s".to_owned())?
    .map_err(|e| format!("DROP SCHEMA: {e}"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Another store on the same schema, with its own pool (another "node"), whose
/// connections carry a unique application name. The schema stays the first store's to
/// drop.
pub async fn same_schema(store: &PostgresEventStore, max: u32) -> PostgresEventStore {
    let options: PgConnectOptions = database_url().parse().expect("a valid DATABASE_URL");
    let name = format!("cqrs-test-node-{}", uuid::Uuid::new_v4().simple());
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.application_name(&name))
        .await
        .expect("connect to the test server");
    PostgresEventStore::builder(pool)
        .schema(store.schema())
        .read_settle_timeout(Duration::from_secs(5))
        .build()
        .expect("valid schema")
}

/// Drops the store's schema (the conformance suite's teardown, which runs also when a
/// case fails).
pub async fn drop_schema(store: &PostgresEventStore) {
    if let Err(reason) = drop_schema_named(store.schema()).await {
        panic!(
            "could not drop the test schema {}: {reason}",
            store.schema()
        );
    }
}

/// Damages a stream's snapshot row below the API (a negative version cannot be a
/// snapshot's): the conformance suite's `damage_snapshot` hook.
pub async fn damage_snapshot(store: PostgresEventStore, stream: cqrs_core::StreamId) -> bool {
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".snapshots SET version = -7 WHERE aggregate_type = $1 AND aggregate_id = $2",
        store.schema()
    )))
    .bind(stream.aggregate_type())
    .bind(stream.id())
    .execute(store.pool())
    .await
    .expect("damage the snapshot row");
    assert_eq!(
        updated.rows_affected(),
        1,
        "the snapshot row to damage exists"
    );
    true
}

/// A plain connection to the test server.
pub async fn connection() -> PgConnection {
    PgConnection::connect(&database_url())
        .await
        .expect("connect to the test server")
}
