//! The consumer's inbox in PostgreSQL: the inbox conformance suite, and a read model
//! whose rows commit with the inbox (or not at all).

mod common;

use std::time::Duration;

use cqrs_core::conformance::inbox::{CONSUMER, Tick, tick_message as tick};
use cqrs_core::{
    BoxError, Consumer, ConsumerConfig, DeadLetter, Envelope, InMemoryPublisher, Inbox, InboxStats,
    Projection, Publisher, RetryPolicy, StreamId, StreamState,
};
use cqrs_postgres::PgInbox;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection, Postgres, Transaction};

/// A [`PgInbox`] that drops its schema when the case is over (also when it fails).
struct Guarded {
    inbox: PgInbox,
    _schema: common::StoreGuard,
}

impl Inbox for Guarded {
    type Context = PgConnection;
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&mut self) -> Result<Self::Tx, BoxError> {
        self.inbox.begin().await
    }
    fn context(tx: &mut Self::Tx) -> &mut PgConnection {
        PgInbox::context(tx)
    }
    async fn stream_state(
        &mut self,
        tx: &mut Self::Tx,
        s: &StreamId,
    ) -> Result<StreamState, BoxError> {
        self.inbox.stream_state(tx, s).await
    }
    async fn set_stream_state(
        &mut self,
        tx: &mut Self::Tx,
        s: &StreamId,
        state: StreamState,
    ) -> Result<(), BoxError> {
        self.inbox.set_stream_state(tx, s, state).await
    }
    async fn add_dead_letter(
        &mut self,
        tx: &mut Self::Tx,
        letter: &DeadLetter,
    ) -> Result<(), BoxError> {
        self.inbox.add_dead_letter(tx, letter).await
    }
    async fn remove_dead_letter(&mut self, tx: &mut Self::Tx, id: u64) -> Result<(), BoxError> {
        self.inbox.remove_dead_letter(tx, id).await
    }
    async fn commit(&mut self, tx: Self::Tx) -> Result<(), BoxError> {
        self.inbox.commit(tx).await
    }
    async fn dead_letters(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BoxError> {
        self.inbox.dead_letters(after, limit).await
    }
    async fn stats(&mut self) -> Result<InboxStats, BoxError> {
        self.inbox.stats().await
    }
}

async fn fresh_inbox() -> Option<Guarded> {
    let guard = common::store_guarded().await?;
    let inbox = PgInbox::new((*guard).clone(), CONSUMER).expect("an inbox");
    Some(Guarded {
        inbox,
        _schema: guard,
    })
}

cqrs_core::inbox_conformance_tests!(fresh_inbox);

/// Sums ticks per stream in `<schema>.sums`; fails, after writing, on tick 13.
#[derive(Debug)]
struct Sums {
    schema: String,
}

impl Projection<PgConnection> for Sums {
    type Event = Tick;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<Tick>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let Tick::Tick { n } = e.event;
            let sql = format!(
                "INSERT INTO {}.sums (id, total) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET total = sums.total + $2",
                self.schema
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(e.stream.id())
                .bind(i64::try_from(n)?)
                .execute(&mut *conn)
                .await?;
            if n == 13 {
                return Err("thirteen is unlucky".into());
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_rows_and_inbox_commit_together() {
    let Some(store) = common::store_guarded().await else {
        return;
    };
    let schema = store.schema().to_owned();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.sums (id text PRIMARY KEY, total bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let broker = InMemoryPublisher::new();
    let (a, b) = (
        StreamId::new("ticker", "a").unwrap(),
        StreamId::new("ticker", "b").unwrap(),
    );
    let inbox = PgInbox::new((*store).clone(), CONSUMER).unwrap();
    let mut config = ConsumerConfig::default().with_attempts(2);
    config.backoff = RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };
    let mut consumer = Consumer::new(
        inbox,
        Sums {
            schema: schema.clone(),
        },
    )
    .with_config(config);
    let mut subscription = broker.subscribe();
    let batch = [
        tick(&a, 1, 1),
        tick(&b, 1, 10),
        tick(&a, 2, 2),
        tick(&a, 3, 13),
        tick(&a, 4, 4),
        tick(&b, 2, 20),
    ];
    for result in broker.publish(&batch).await {
        result.unwrap();
    }
    broker.redeliver_all();
    let stats = tokio::time::timeout(Duration::from_secs(30), consumer.drain(&mut subscription))
        .await
        .expect("drained within 30 s")
        .unwrap();
    assert_eq!(stats.applied, 4, "{stats:?}");
    let sum = |id: &'static str| {
        let sql = format!("SELECT total FROM {schema}.sums WHERE id = $1");
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        sum("a").await,
        3,
        "the failed event's row change was rolled back"
    );
    assert_eq!(
        sum("b").await,
        30,
        "each event once, despite the redelivery"
    );
    let mut inbox = PgInbox::new((*store).clone(), CONSUMER).unwrap();
    let inbox_stats = inbox.stats().await.unwrap();
    assert_eq!(
        (inbox_stats.streams, inbox_stats.parked),
        (2, 1),
        "{inbox_stats:?}"
    );
    let letters = inbox.dead_letters(0, 10).await.unwrap();
    assert!(
        letters[0].reason.contains("thirteen is unlucky"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        letters[0].message.payload, batch[3].payload,
        "the message is kept as received"
    );
}
