//! The accounts read model in PostgreSQL tables of the store's schema, updated *inline*:
//! in each append's own transaction, so a read in any process sees every write that
//! returned. A runner of the same projection rebuilds the tables (`bank replay`).

use cqrs_cli::Operations;
use cqrs_core::{BoxError, BoxEventStore, Envelope, Position, Projection, ProjectionRunner};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection};
use cqrs_postgres::{PostgresEventStore, TransactionalCheckpoint};
use futures::future::{BoxFuture, FutureExt, ready};
use serde::de::DeserializeOwned;

use crate::domain::AccountEvent;
use crate::error::{BankError, Result};
use crate::read_model::{ACCOUNTS, AccountRow, HistoryRow, ReadModel, fold, is_account_event};

/// Splits a `schema=NAME` query parameter off a PostgreSQL URL (sqlx would refuse it):
/// the URL without it, and the schema (default `bank`).
fn split_schema(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (schema, kept): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .filter(|p| !p.is_empty())
        .partition(|p| p.starts_with("schema="));
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
/// model's projection with the store, inline. Fails with [`BankError::Store`], or
/// [`BankError::InvalidInput`] for a bad schema name.
pub(crate) async fn open(url: &str) -> Result<PgAccounts> {
    let (url, schema) = split_schema(url);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false);
    let pool = pool.connect(&url).await.map_err(BankError::store)?;
    let store = PostgresEventStore::builder(pool).schema(schema.clone());
    let store = store
        .inline_projection(Accounts {
            schema: schema.clone(),
        })
        .build();
    let store = store.map_err(|e| BankError::InvalidInput(e.into()))?;
    store.migrate().await.map_err(BankError::store)?;
    // The store validated the schema name (lowercase letters, digits and `_`), so it
    // can be quoted into the DDL.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".bank_accounts (account text PRIMARY KEY, row jsonb NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{schema}\".bank_history (
             account text NOT NULL, version bigint NOT NULL, line jsonb NOT NULL,
             PRIMARY KEY (account, version));"
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
    /// The event store whose appends update the read model.
    pub fn store(&self) -> &PostgresEventStore {
        &self.store
    }

    async fn query<T: DeserializeOwned>(&self, sql: &str, id: Option<&str>) -> Result<Vec<T>> {
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
        let (store, schema) = (self.store.clone(), self.store.schema().to_owned());
        let checkpoint = TransactionalCheckpoint::new(store.clone());
        ProjectionRunner::with_strategy(BoxEventStore::new(store), Accounts { schema }, checkpoint)
    }
}

impl ReadModel for PgAccounts {
    fn store(&self) -> BoxEventStore {
        BoxEventStore::new(self.store.clone())
    }

    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<AccountRow>>> {
        let rows = self.query(
            "SELECT row FROM \"{s}\".bank_accounts WHERE account = $1",
            Some(id),
        );
        rows.map(|rows| Ok(rows?.pop())).boxed()
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>>> {
        let sql = "SELECT line FROM \"{s}\".bank_history WHERE account = $1 ORDER BY version";
        self.query(sql, Some(id)).boxed()
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountRow>>> {
        self.query(
            "SELECT row FROM \"{s}\".bank_accounts ORDER BY account",
            None,
        )
        .boxed()
    }

    /// Inline: every append that returned is in the tables already.
    fn wait_for(&self, _: Position) -> BoxFuture<'_, Result<()>> {
        ready(Ok(())).boxed()
    }

    /// A replay rebuilds the tables with a runner, which appends must not update
    /// meanwhile: `bank replay` runs only while no other `bank` process runs.
    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore> {
        let this = self.clone();
        ops.projection(move || this.runner())
    }
}

/// The accounts projection on PostgreSQL: inline in each append, or run to rebuild.
#[derive(Debug, Clone)]
struct Accounts {
    schema: String,
}

impl Projection<PgConnection> for Accounts {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &cqrs_core::RecordedEvent) -> bool {
        is_account_event(record)
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let s = &self.schema;
        let select = format!("SELECT row FROM \"{s}\".bank_accounts WHERE account = $1");
        let write = format!(
            "WITH line AS (INSERT INTO \"{s}\".bank_history VALUES ($1, $2, $3))
             INSERT INTO \"{s}\".bank_accounts VALUES ($1, $4)
             ON CONFLICT (account) DO UPDATE SET row = EXCLUDED.row"
        );
        for e in batch {
            let id = e.stream.id();
            let query = sqlx::query_scalar(AssertSqlSafe(select.as_str())).bind(id);
            let row: Option<serde_json::Value> = query.fetch_optional(&mut *conn).await?;
            let (row, line) = fold(row.map(serde_json::from_value).transpose()?, e);
            let (line, row) = (serde_json::to_value(&line)?, serde_json::to_value(&row)?);
            let query = sqlx::query(AssertSqlSafe(write.as_str()))
                .bind(id)
                .bind(i64::try_from(e.version)?);
            query.bind(line).bind(row).execute(&mut *conn).await?;
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
