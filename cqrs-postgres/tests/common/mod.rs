//! Shared test fixtures: a store in a fresh schema of the test server, or a skip.
#![allow(dead_code, unreachable_pub)]

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

/// Whether the server answers; decided once per test binary. Without it, prints one
/// `skipped` line (or fails, when `CQRS_REQUIRE_POSTGRES=1`).
pub async fn server_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    if let Some(&available) = AVAILABLE.get() {
        return available;
    }
    let url = database_url();
    let reached = match url.parse::<PgConnectOptions>() {
        Ok(options) => {
            match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let available = match reached {
        Ok(()) => true,
        Err(reason) if required() => {
            panic!("CQRS_REQUIRE_POSTGRES=1 but no PostgreSQL at {url}: {reason}")
        }
        Err(reason) => {
            let first = AVAILABLE.set(false).is_ok();
            if first {
                // Straight to the stream: the test harness captures `println!`.
                let line = format!("skipped: no PostgreSQL at {url} ({reason})\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            }
            false
        }
    };
    let _ = AVAILABLE.set(available);
    available
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

/// Drops test schemas left over by earlier runs (once per binary): those of test
/// processes of this machine that have ended, and any older than an hour. Cleanliness
/// only: every test makes its own schema anyway. (The conformance cases get their store
/// by value and cannot drop its schema themselves; the next test binary sweeps it.)
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
        let mut parts = name.split('_').skip(2);
        let stamp = parts
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        let pid = parts.next().and_then(|s| s.parse::<u32>().ok());
        let ended = pid.is_some_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        let valid = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid && (ended || now.saturating_sub(stamp) > 3600) {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(pool)
            .await;
        }
    }
}

/// A migrated store in a fresh schema, or `None` (after the skip line) without a server.
pub async fn store() -> Option<PostgresEventStore> {
    store_with(|b| b).await
}

/// As [`store`], with builder options.
pub async fn store_with(
    configure: impl FnOnce(
        cqrs_postgres::PostgresEventStoreBuilder,
    ) -> cqrs_postgres::PostgresEventStoreBuilder,
) -> Option<PostgresEventStore> {
    if !server_available().await {
        return None;
    }
    let pool = pool(4).await;
    sweep(&pool).await;
    let builder = PostgresEventStore::builder(pool)
        .schema(schema_name())
        .read_settle_timeout(Duration::from_secs(5));
    let store = configure(builder).build().expect("valid schema");
    store.migrate().await.expect("migrate");
    Some(store)
}

/// Another store on the same schema, with its own pool (another "node"), whose
/// connections carry a unique application name.
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

/// Drops the store's schema.
pub async fn drop_schema(store: &PostgresEventStore) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .expect("drop the test schema");
}

/// A plain connection to the test server.
pub async fn connection() -> PgConnection {
    PgConnection::connect(&database_url())
        .await
        .expect("connect to the test server")
}
