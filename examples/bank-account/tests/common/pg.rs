//! A fresh PostgreSQL schema per test, for the bank's tests on PostgreSQL.

use std::time::Duration;

use cqrs_core::BoxEventStore;
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};

/// A fresh PostgreSQL schema, dropped with this value (also while a failing test
/// unwinds); `None` after printing `skipped` when no server is reachable and none is
/// required.
pub struct Schema(pub String);

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl Schema {
    pub async fn fresh() -> Option<Schema> {
        let connected = PgConnection::connect(&database_url()).await;
        match connected {
            Ok(conn) => {
                let _ = conn.close().await;
                Some(Schema(format!("bank_cw_{}", uuid::Uuid::new_v4().simple())))
            }
            Err(e) if std::env::var("CQRS_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("CQRS_REQUIRE_POSTGRES=1 but no PostgreSQL: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no PostgreSQL at {} ({e})", database_url());
                None
            }
        }
    }

    pub fn url(&self) -> String {
        let url = database_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}schema={}", self.0)
    }

    /// The store of this schema without the bank's inline read model, which would
    /// refuse to append the poisoned event.
    pub async fn plain_store(&self) -> BoxEventStore {
        let pool = PostgresEventStore::connect_pool(&database_url(), 2).await;
        let store = PostgresEventStore::builder(pool.unwrap()).schema(self.0.clone());
        BoxEventStore::new(store.build().unwrap())
    }
}

impl Drop for Schema {
    /// Drops the schema and its tenants' schemas (`NAME_tenant`).
    fn drop(&mut self) {
        let name = self.0.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            runtime.map_err(|e| e.to_string())?.block_on(async {
                let drop_it = async {
                    let mut conn = PgConnection::connect(&database_url()).await?;
                    let tenants: Vec<String> = sqlx::query_scalar(
                        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
                    )
                    .bind(format!("{name}_"))
                    .fetch_all(&mut conn)
                    .await?;
                    for schema in tenants.iter().chain([&name]) {
                        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
                    }
                    conn.close().await
                };
                let dropped = tokio::time::timeout(Duration::from_secs(30), drop_it).await;
                dropped
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|e| e.to_string())
            })
        });
        let dropped = dropped.join().unwrap_or_else(|_| Err("panicked".into()));
        if let Err(e) = dropped {
            eprintln!("could not drop the test schema {}: {e}", self.0);
        }
    }
}
