//! A fresh PostgreSQL schema per store of a test, dropped with its guard (also while a
//! failing test unwinds).

use std::time::Duration;

use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};

use super::block_on;

/// The server the tests use: `DATABASE_URL`, or the local one.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh schema name, dropped (with everything in it) when this is dropped.
pub struct Schema(pub String);

impl Schema {
    /// `None` (after saying `skipped`) when no server answers, unless
    /// `CQRS_REQUIRE_POSTGRES=1`, which makes that a failure.
    pub fn fresh(label: &str) -> Option<Schema> {
        let connected = block_on(PgConnection::connect(&database_url()));
        match connected {
            Ok(conn) => {
                let _ = block_on(conn.close());
                let id = uuid::Uuid::new_v4().simple();
                Some(Schema(format!("statements_test_{label}_{id}")))
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

    /// The store URL of this schema.
    pub fn url(&self) -> String {
        let url = database_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}schema={}", self.0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let dropped = std::thread::spawn(move || {
            block_on(async {
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
