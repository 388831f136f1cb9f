//! Criterion benchmarks of the hot paths against a live server: a one-event append, a
//! ten-event batch, and reading a 100-event stream.
//!
//! ```sh
//! cargo bench -p cqrs-postgres --bench append
//! ```
//!
//! Without a server (see `DATABASE_URL`) it prints a skip line and measures nothing.
#![allow(missing_docs)]

use std::time::Duration;

use cqrs_core::{EventData, EventLog, ExpectedVersion, StreamId};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::postgres::PgPoolOptions;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::TryStreamExt;

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The benchmark's schema, dropped with this value: after the last benchmark, or while a
/// failed one's panic unwinds.
struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        // Drop cannot await, and the benchmark's runtime may be the one unwinding: a thread
        // of its own, with its own runtime and connection, each step within a deadline.
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("start a runtime: {e}"))?;
            runtime.block_on(async {
                let limit = Duration::from_secs(30);
                let mut conn = tokio::time::timeout(limit, PgConnection::connect(&url()))
                    .await
                    .map_err(|_| "connecting timed out".to_owned())?
                    .map_err(|e| format!("connect: {e}"))?;
                tokio::time::timeout(limit, sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn))
                    .await
                    .map_err(|_| "DROP SCHEMA timed out".to_owned())?
                    .map_err(|e| format!("DROP SCHEMA: {e}"))?;
                let _ = conn.close().await;
                Ok(())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the dropping thread panicked".to_owned()));
        if let Err(reason) = dropped {
            eprintln!("could not drop the benchmark schema {}: {reason}", self.0);
        }
    }
}

fn event() -> EventData {
    EventData::new("MoneyDeposited", br#"{"Deposited":{"cents":1}}"#.to_vec())
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = format!(
        "cqrs_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let store = runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url())
            .await
            .ok()?;
        Some(
            PostgresEventStore::builder(pool)
                .schema(&schema)
                .build()
                .expect("a valid schema name"),
        )
    });
    let Some(store) = store else {
        println!("skipped: no PostgreSQL at {}", url());
        return;
    };
    let _schema = SchemaGuard(schema);
    runtime
        .block_on(store.migrate())
        .expect("migrate the benchmark schema");

    let one = StreamId::new("account", "one").unwrap();
    c.bench_function("append 1 event", |b| {
        b.to_async(&runtime).iter(|| async {
            store
                .append(&one, ExpectedVersion::Any, vec![event()])
                .await
                .unwrap();
        });
    });
    let batch = StreamId::new("account", "batch").unwrap();
    c.bench_function("append a batch of 10", |b| {
        b.to_async(&runtime).iter(|| async {
            let events = (0..10).map(|_| event()).collect();
            store
                .append(&batch, ExpectedVersion::Any, events)
                .await
                .unwrap();
        });
    });
    let hundred = StreamId::new("account", "hundred").unwrap();
    runtime.block_on(async {
        let events = (0..100).map(|_| event()).collect();
        store
            .append(&hundred, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    });
    c.bench_function("read a 100-event stream", |b| {
        b.to_async(&runtime).iter(|| async {
            let read: Vec<_> = store.read_stream(&hundred, 1).try_collect().await.unwrap();
            assert_eq!(read.len(), 100);
        });
    });
}

criterion_group! {
    name = append;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(append);
