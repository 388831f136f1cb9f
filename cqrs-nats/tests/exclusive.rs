//! One relay per PostgreSQL store: the relay runs under the store's worker lock
//! `relay:<name>`; a second node cannot take it while the first holds it, and takes
//! over from the shared checkpoint once it is released. (The publisher is in memory:
//! the lock is the subject here, not the broker.)

use std::time::Duration;

use cqrs_core::{
    EventData, EventLog, ExpectedVersion, InMemoryPublisher, Relay, StreamId, SubjectScheme,
};
use cqrs_postgres::PostgresEventStore;

async fn body(store: PostgresEventStore) {
    let stream = StreamId::new("account", "1").expect("id");
    let append = |n: usize| {
        let (store, stream) = (store.clone(), stream.clone());
        async move {
            let events: Vec<_> = (0..n)
                .map(|i| EventData::new("Ev", format!("{i}")))
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
    };
    let broker = InMemoryPublisher::new();
    let scheme = SubjectScheme::new("bank").expect("prefix");
    append(3).await;

    let first = store
        .lock_worker("relay:bank", Duration::from_millis(50))
        .await
        .expect("the first node takes the lock");
    assert!(
        store
            .try_lock_worker("relay:bank")
            .await
            .expect("try")
            .is_none(),
        "a second node cannot take the relay's lock while the first holds it"
    );
    let stats = Relay::new("bank", &store, broker.clone(), scheme.clone())
        .catch_up()
        .await
        .expect("the first relay");
    assert_eq!(stats.published, 3);
    first.release().await.expect("release");

    append(2).await;
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        store.lock_worker("relay:bank", Duration::from_millis(50)),
    )
    .await
    .expect("the lock is free within 10 s")
    .expect("the second node takes the lock");
    let stats = Relay::new("bank", &store, broker.clone(), scheme)
        .catch_up()
        .await
        .expect("the second relay");
    assert_eq!(
        (stats.published, stats.duplicates),
        (2, 0),
        "the second node resumes from the shared checkpoint"
    );
    second.release().await.expect("release");
    let versions: Vec<u64> = broker.messages().iter().map(|m| m.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_per_postgres_store_under_the_worker_lock() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        if std::env::var("CQRS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("CQRS_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
        }
        eprintln!("skipped: DATABASE_URL is not set");
        return;
    };
    let pool = PostgresEventStore::connect_pool(&url, 4)
        .await
        .expect("connect to the test server");
    let schema = format!("relay_test_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresEventStore::builder(pool.clone())
        .schema(schema.clone())
        .build()
        .expect("a valid schema");
    // The body runs in a task, so the schema is dropped below even when it fails.
    let outcome = tokio::spawn(async move {
        store.migrate().await.expect("migrate");
        body(store).await;
    })
    .await;
    // The name is ours: letters, digits and `_` only.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop the test schema");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
