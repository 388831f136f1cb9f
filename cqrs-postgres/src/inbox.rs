//! A consumer's inbox in PostgreSQL: what it applied per stream, and its dead letters,
//! in tables of the store's schema, written in the read model's transaction.

use std::time::{Duration, UNIX_EPOCH};

use cqrs_core::{BoxError, DeadLetter, Inbox, InboxStats, ReceivedMessage, StreamId, StreamState};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row, Transaction};

use crate::PostgresEventStore;
use crate::row::store_error;

/// A consumer's [`Inbox`] in the PostgreSQL schema of a [`PostgresEventStore`] (tables
/// `consumer_streams` and `dead_letters`, from migration 3): the read model's writes,
/// the version applied per stream and the dead letters commit in one transaction.
///
/// The consumer's projection implements [`Projection<PgConnection>`](cqrs_core::Projection)
/// exactly as one run by a [`TransactionalCheckpoint`](crate::TransactionalCheckpoint):
/// its `apply` gets the open transaction. Reading a stream's state locks its row until
/// the commit, so several processes may consume into one schema (a redrive from an
/// operations command while the consumer runs, or competing consumers): they take turns
/// per stream, and none applies an event twice.
///
/// # Examples
/// ```no_run
/// use cqrs_postgres::{PgInbox, PostgresEventStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresEventStore::connect("postgres://postgres@127.0.0.1/postgres").await?;
/// store.migrate().await?;
/// let inbox = PgInbox::new(store.clone(), "statements")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgInbox {
    store: PostgresEventStore,
    consumer: String,
    sql: Statements,
}

/// The inbox's statements, for its schema.
#[derive(Debug, Clone)]
struct Statements {
    state: String,
    set_state: String,
    add: String,
    remove: String,
    list: String,
    stats: String,
}

impl Statements {
    fn new(s: &str) -> Self {
        Statements {
            // An upsert that changes nothing, to lock the row (created if new) until the
            // commit, and read it, in one round trip.
            state: format!(
                "INSERT INTO {s}.consumer_streams AS c \
                 (consumer, stream_type, stream_id, version, parked) \
                 VALUES ($1, $2, $3, 0, false) \
                 ON CONFLICT (consumer, stream_type, stream_id) \
                 DO UPDATE SET version = c.version RETURNING version, parked"
            ),
            set_state: format!(
                "INSERT INTO {s}.consumer_streams \
                 (consumer, stream_type, stream_id, version, parked) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (consumer, stream_type, stream_id) \
                 DO UPDATE SET version = EXCLUDED.version, parked = EXCLUDED.parked"
            ),
            add: format!(
                "INSERT INTO {s}.dead_letters (consumer, subject, headers, payload, event_id, \
                 stream_type, stream_id, version, reason, attempts, dead_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::float8 / 1e6))"
            ),
            remove: format!("DELETE FROM {s}.dead_letters WHERE consumer = $1 AND id = $2"),
            list: format!(
                "SELECT id, subject, headers, payload, event_id, stream_type, stream_id, version, \
                 reason, attempts, (extract(epoch FROM dead_at) * 1e6)::bigint \
                 FROM {s}.dead_letters WHERE consumer = $1 AND id > $2 ORDER BY id LIMIT $3"
            ),
            stats: format!(
                "SELECT (SELECT count(*) FROM {s}.consumer_streams \
                         WHERE consumer = $1 AND (version > 0 OR parked)), \
                        (SELECT count(*) FROM {s}.consumer_streams WHERE consumer = $1 AND parked), \
                        (SELECT count(*) FROM {s}.dead_letters WHERE consumer = $1)"
            ),
        }
    }
}

impl PgInbox {
    /// The inbox of the consumer `consumer` (its projection's name) in `store`'s schema
    /// (migrated to version 3 or later).
    ///
    /// # Errors
    /// [`cqrs_core::Error::InvalidInput`] for a name that is not a valid projection name.
    pub fn new(store: PostgresEventStore, consumer: &str) -> cqrs_core::Result<Self> {
        cqrs_core::validate_checkpoint_name(consumer)?;
        let sql = Statements::new(&store.schema_ref().quoted());
        Ok(PgInbox {
            store,
            consumer: consumer.to_owned(),
            sql,
        })
    }
}

fn signed(value: u64) -> Result<i64, BoxError> {
    i64::try_from(value).map_err(|_| format!("{value} is out of PostgreSQL's bigint range").into())
}

fn letter(row: &PgRow) -> Result<DeadLetter, BoxError> {
    let id: i64 = row.try_get(0)?;
    let Json(headers): Json<Vec<(String, String)>> = row.try_get(2)?;
    let stream_type: Option<String> = row.try_get(5)?;
    let stream_id: Option<String> = row.try_get(6)?;
    let stream = match (stream_type, stream_id) {
        (Some(t), Some(i)) => StreamId::new(t, i).ok(),
        _ => None,
    };
    let version: Option<i64> = row.try_get(7)?;
    let attempts: i32 = row.try_get(9)?;
    let micros: i64 = row.try_get(10)?;
    Ok(DeadLetter {
        id: u64::try_from(id)?,
        message: ReceivedMessage {
            subject: row.try_get(1)?,
            headers,
            payload: row.try_get(3)?,
        },
        event_id: row.try_get(4)?,
        stream,
        version: version.and_then(|v| u64::try_from(v).ok()),
        reason: row.try_get(8)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        dead_at: UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    })
}

impl Inbox for PgInbox {
    type Context = PgConnection;
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&mut self) -> Result<Self::Tx, BoxError> {
        Ok(self.store.pool().begin().await.map_err(store_error)?)
    }

    fn context(tx: &mut Self::Tx) -> &mut PgConnection {
        tx
    }

    async fn stream_state(
        &mut self,
        tx: &mut Self::Tx,
        stream: &StreamId,
    ) -> Result<StreamState, BoxError> {
        let row = sqlx::query(AssertSqlSafe(self.sql.state.as_str()))
            .bind(&self.consumer)
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .fetch_one(&mut **tx)
            .await
            .map_err(store_error)?;
        let version: i64 = row.try_get(0)?;
        Ok(StreamState {
            version: u64::try_from(version)?,
            parked: row.try_get(1)?,
        })
    }

    async fn set_stream_state(
        &mut self,
        tx: &mut Self::Tx,
        stream: &StreamId,
        state: StreamState,
    ) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(self.sql.set_state.as_str()))
            .bind(&self.consumer)
            .bind(stream.aggregate_type())
            .bind(stream.id())
            .bind(signed(state.version)?)
            .bind(state.parked)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn add_dead_letter(
        &mut self,
        tx: &mut Self::Tx,
        letter: &DeadLetter,
    ) -> Result<(), BoxError> {
        let micros = letter
            .dead_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        sqlx::query(AssertSqlSafe(self.sql.add.as_str()))
            .bind(&self.consumer)
            .bind(&letter.message.subject)
            .bind(Json(&letter.message.headers))
            .bind(&letter.message.payload)
            .bind(letter.event_id)
            .bind(letter.stream.as_ref().map(StreamId::aggregate_type))
            .bind(letter.stream.as_ref().map(StreamId::id))
            .bind(letter.version.map(signed).transpose()?)
            .bind(&letter.reason)
            .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
            .bind(i64::try_from(micros).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn remove_dead_letter(&mut self, tx: &mut Self::Tx, id: u64) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(self.sql.remove.as_str()))
            .bind(&self.consumer)
            .bind(signed(id)?)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn commit(&mut self, tx: Self::Tx) -> Result<(), BoxError> {
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    async fn dead_letters(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BoxError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.list.as_str()))
            .bind(&self.consumer)
            .bind(signed(after)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await
            .map_err(store_error)?;
        rows.iter().map(letter).collect()
    }

    async fn stats(&mut self) -> Result<InboxStats, BoxError> {
        let row = sqlx::query(AssertSqlSafe(self.sql.stats.as_str()))
            .bind(&self.consumer)
            .fetch_one(self.store.pool())
            .await
            .map_err(store_error)?;
        let count =
            |i: usize| -> Result<u64, BoxError> { Ok(u64::try_from(row.try_get::<i64, _>(i)?)?) };
        Ok(InboxStats {
            streams: count(0)?,
            parked: count(1)?,
            dead_letters: count(2)?,
        })
    }
}
