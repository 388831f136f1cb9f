//! A fresh PostgreSQL schema per test, dropped with its guard (also while a failing
//! test unwinds).

use std::time::Duration;

use cqrs_core::BoxEventStore;
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};

#[derive(Debug)]
pub(crate) struct Schema(String);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl Schema {
    /// A fresh schema; `None` after printing `skipped` when no server is reachable and
    /// CQRS_REQUIRE_POSTGRES is not 1.
    pub(crate) async fn fresh() -> Option<Schema> {
        match PgConnection::connect(&database_url()).await {
            Ok(conn) => {
                let _ = conn.close().await;
                Some(Schema(format!("console_{}", uuid::Uuid::new_v4().simple())))
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

    /// The migrated store in this schema.
    pub(crate) async fn store(&self) -> BoxEventStore {
        let pool = PostgresEventStore::connect_pool(&database_url(), 4)
            .await
            .unwrap();
        let store = PostgresEventStore::builder(pool)
            .schema(self.0.clone())
            .build()
            .unwrap();
        store.migrate().await.unwrap();
        BoxEventStore::new(store)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            runtime.map_err(|e| e.to_string())?.block_on(async {
                let drop_it = async {
                    let mut conn = PgConnection::connect(&database_url()).await?;
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
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
