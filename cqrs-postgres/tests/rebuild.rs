//! A rebuild of a transactional projection on PostgreSQL is one transaction: readers see
//! the old read model until it commits, and a rebuild that fails leaves it as it was.

mod common;

use std::sync::{Arc, Mutex};

use cqrs_core::{
    BoxError, CheckpointStore, DomainEvent, Envelope, EventData, EventLog, ExpectedVersion,
    Projection, ProjectionError, ProjectionRunner, StreamId,
};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection, PgPool};
use cqrs_postgres::{PostgresEventStore, TransactionalCheckpoint};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Incremented { by: i64 },
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
    fn event_type(&self) -> &'static str {
        "Incremented"
    }
}

/// Sums per counter in `sums`; refuses the events of one counter (as a projection with a
/// bug would), and records what another session reads while it applies.
#[derive(Debug)]
struct Sums {
    schema: String,
    refuse: Option<&'static str>,
    /// Another session's view of the total, taken at each batch.
    seen: Option<(PgPool, Arc<Mutex<Vec<i64>>>)>,
}

impl Sums {
    fn new(store: &PostgresEventStore) -> Self {
        Sums {
            schema: store.schema().to_owned(),
            refuse: None,
            seen: None,
        }
    }
}

async fn total(pool: &PgPool, schema: &str) -> i64 {
    let sql = format!("SELECT coalesce(sum(total), 0)::bigint FROM \"{schema}\".sums");
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

impl Projection<PgConnection> for Sums {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        "sums"
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<CounterEvent>],
    ) -> Result<(), BoxError> {
        if let Some((pool, seen)) = &self.seen {
            let now = total(pool, &self.schema).await;
            seen.lock().unwrap().push(now);
        }
        let s = &self.schema;
        for e in batch {
            if self.refuse == Some(e.stream.id()) {
                return Err(format!("refusing {}", e.stream).into());
            }
            let CounterEvent::Incremented { by } = e.event;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".sums VALUES ($1, $2) \
                 ON CONFLICT (counter) DO UPDATE SET total = sums.total + $2"
            )))
            .bind(e.stream.id())
            .bind(by)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn reset(&mut self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let sql = format!("DELETE FROM \"{}\".sums", self.schema);
        sqlx::query(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }
}

fn runner(
    store: &PostgresEventStore,
    sums: Sums,
) -> ProjectionRunner<PostgresEventStore, Sums, TransactionalCheckpoint> {
    let checkpoint = TransactionalCheckpoint::new(store.clone());
    let runner = ProjectionRunner::with_strategy(store.clone(), sums, checkpoint);
    runner.with_config(cqrs_core::RunnerConfig {
        batch_size: 4,
        ..Default::default()
    })
}

async fn fill(store: &PostgresEventStore) {
    let s = store.schema();
    let sql = format!("CREATE TABLE \"{s}\".sums (counter text PRIMARY KEY, total bigint)");
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();
    for n in 0..20 {
        let stream = StreamId::new("counter", format!("c{}", n % 4)).unwrap();
        let payload = serde_json::to_vec(&CounterEvent::Incremented { by: 1 }).unwrap();
        let data = EventData::new("Incremented", payload);
        store
            .append(&stream, ExpectedVersion::Any, vec![data])
            .await
            .unwrap();
    }
    runner(store, Sums::new(store)).catch_up().await.unwrap();
    assert_eq!(total(store.pool(), s).await, 20);
}

#[tokio::test]
async fn a_failed_rebuild_leaves_the_old_read_model_and_checkpoint() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    fill(&store).await;
    let live = store.load_checkpoint("sums").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let refusing = Sums {
        refuse: Some("c3"),
        seen: Some((store.pool().clone(), seen.clone())),
        ..Sums::new(&store)
    };
    let failed = runner(&store, refusing).rebuild(|_| {}).await;
    assert!(
        matches!(failed, Err(ProjectionError::Stopped { .. })),
        "{failed:?}"
    );
    assert_eq!(total(store.pool(), store.schema()).await, 20);
    assert_eq!(store.load_checkpoint("sums").await.unwrap(), live);
    // Meanwhile, other sessions read the old model (not blocked: the rebuild's reset
    // is a DELETE, not a TRUNCATE).
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|&t| t == 20),
        "{seen:?}"
    );
    // The live model goes on from where it was.
    assert_eq!(
        runner(&store, Sums::new(&store)).catch_up().await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_rebuild_commits_the_new_model_and_its_checkpoint_at_once() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    fill(&store).await;
    let live = store.load_checkpoint("sums").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watched = Sums {
        seen: Some((store.pool().clone(), seen.clone())),
        ..Sums::new(&store)
    };
    assert_eq!(runner(&store, watched).rebuild(|_| {}).await.unwrap(), 20);
    assert_eq!(total(store.pool(), store.schema()).await, 20);
    assert_eq!(store.load_checkpoint("sums").await.unwrap(), live);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [20; 5], "readers saw the old model until the commit");
}
