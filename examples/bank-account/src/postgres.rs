//! The accounts read model in PostgreSQL tables of the store's schema, updated *inline*:
//! in each append's own transaction, so a read in any process sees every write that
//! returned.

use std::collections::HashMap;

use cqrs_core::{
    BoxError, BoxEventStore, Envelope, Position, Projection, ProjectionRunner, RecordedEvent,
};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection};
use cqrs_postgres::{PostgresEventStore, TransactionalCheckpoint};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::domain::AccountEvent;
use crate::error::BankError;
use crate::read_model::{ACCOUNTS, AccountRow, HistoryRow, ReadModel, fold, is_account_event};

/// Splits a `schema=NAME` query parameter off a PostgreSQL URL (sqlx would refuse it).
/// Returns the URL without it and the schema (default `bank`).
pub fn split_schema(url: &str) -> (String, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), "bank".to_owned());
    };
    let (schema, kept): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .partition(|pair| pair.starts_with("schema="));
    let schema = schema
        .last()
        .map_or("bank", |pair| &pair["schema=".len()..]);
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, schema.to_owned())
}

/// Connects, migrates the store, creates the read-model tables, and registers the read
/// model's projection with the store, inline.
///
/// # Errors
/// [`BankError::Store`] naming what failed; [`BankError::InvalidInput`] for a bad schema.
pub async fn open(url: &str) -> Result<PgAccounts, BankError> {
    let (url, schema) = split_schema(url);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .map_err(BankError::store)?;
    let store = PostgresEventStore::builder(pool)
        .schema(schema.clone())
        .inline_projection(Accounts { schema })
        .build()
        .map_err(|e| BankError::InvalidInput(e.into()))?;
    store.migrate().await.map_err(BankError::store)?;
    // The schema name was validated by the store (lowercase letters, digits and `_`),
    // so it can be quoted into the DDL.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS \"{0}\".bank_accounts (account text PRIMARY KEY, row jsonb NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{0}\".bank_history (
             account text NOT NULL, version bigint NOT NULL, line jsonb NOT NULL,
             PRIMARY KEY (account, version));",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .map_err(BankError::store)?;
    Ok(PgAccounts { store })
}

/// The accounts read model in the tables `bank_accounts` and `bank_history`.
#[derive(Debug, Clone)]
pub struct PgAccounts {
    store: PostgresEventStore,
}

impl PgAccounts {
    /// The event store, whose appends update the read model.
    pub fn store(&self) -> &PostgresEventStore {
        &self.store
    }

    async fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        id: Option<&str>,
    ) -> Result<Vec<T>, BankError> {
        let sql = sql.replace("{s}", self.store.schema());
        let mut query = sqlx::query_scalar::<_, serde_json::Value>(AssertSqlSafe(sql));
        if let Some(id) = id {
            query = query.bind(id.to_owned());
        }
        let values = query
            .fetch_all(self.store.pool())
            .await
            .map_err(BankError::store)?;
        values
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(BankError::store))
            .collect()
    }

    fn runner(&self) -> ProjectionRunner<BoxEventStore, Accounts, TransactionalCheckpoint> {
        let projection = Accounts {
            schema: self.store.schema().to_owned(),
        };
        let checkpoint = TransactionalCheckpoint::new(self.store.clone());
        ProjectionRunner::with_strategy(
            BoxEventStore::new(self.store.clone()),
            projection,
            checkpoint,
        )
    }
}

impl ReadModel for PgAccounts {
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<AccountRow>, BankError>> {
        let sql = "SELECT row FROM \"{s}\".bank_accounts WHERE account = $1";
        async move { Ok(self.query(sql, Some(id)).await?.pop()) }.boxed()
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>, BankError>> {
        let sql = "SELECT line FROM \"{s}\".bank_history WHERE account = $1 ORDER BY version";
        self.query(sql, Some(id)).boxed()
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountRow>, BankError>> {
        self.query(
            "SELECT row FROM \"{s}\".bank_accounts ORDER BY account",
            None,
        )
        .boxed()
    }

    /// Inline: every append that returned is in the tables already.
    fn wait_for(&self, _: Position) -> BoxFuture<'_, Result<(), BankError>> {
        std::future::ready(Ok(())).boxed()
    }

    /// Inline: nothing to run.
    fn run(&self, shutdown: BoxFuture<'static, ()>) -> BoxFuture<'static, Result<(), BankError>> {
        shutdown.map(Ok).boxed()
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<u64, BankError>> {
        async move {
            self.runner()
                .rebuild(|_| {})
                .await
                .map_err(BankError::store)
        }
        .boxed()
    }

    /// A replay rebuilds the tables with a runner of the same projection, while appends
    /// (of other `bank` commands) may update them too: replay while nothing writes.
    fn register(
        &self,
        ops: cqrs_cli::Operations<BoxEventStore>,
    ) -> cqrs_cli::Operations<BoxEventStore> {
        let this = self.clone();
        ops.projection(move || this.runner())
    }
}

/// The accounts projection on PostgreSQL: inline in every append, or run by a runner
/// to rebuild the tables.
#[derive(Debug, Clone)]
struct Accounts {
    schema: String,
}

impl Projection<PgConnection> for Accounts {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        is_account_event(record)
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let s = &self.schema;
        // Each touched row is read once and written once per batch.
        let mut rows: HashMap<&str, Option<AccountRow>> = HashMap::new();
        for e in batch {
            let id = e.stream.id();
            if !rows.contains_key(id) {
                let row: Option<serde_json::Value> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT row FROM \"{s}\".bank_accounts WHERE account = $1"
                )))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                rows.insert(id, row.map(serde_json::from_value).transpose()?);
            }
            let (row, line) = fold(rows.get_mut(id).and_then(Option::take), e);
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".bank_history (account, version, line) VALUES ($1, $2, $3)"
            )))
            .bind(id)
            .bind(i64::try_from(e.version)?)
            .bind(serde_json::to_value(&line)?)
            .execute(&mut *conn)
            .await?;
            rows.insert(id, Some(row));
        }
        for (id, row) in rows {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".bank_accounts (account, row) VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET row = EXCLUDED.row"
            )))
            .bind(id)
            .bind(serde_json::to_value(&row)?)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn reset(&mut self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let s = &self.schema;
        let sql = format!("TRUNCATE \"{s}\".bank_accounts, \"{s}\".bank_history");
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::split_schema;

    #[test]
    fn schema_parameter_is_split_off() {
        assert_eq!(
            split_schema("postgres://h/db"),
            ("postgres://h/db".into(), "bank".into())
        );
        assert_eq!(
            split_schema("postgres://h/db?schema=t1"),
            ("postgres://h/db".into(), "t1".into())
        );
        assert_eq!(
            split_schema("postgres://h/db?sslmode=disable&schema=t2"),
            ("postgres://h/db?sslmode=disable".into(), "t2".into())
        );
    }
}
