//! The bank on PostgreSQL: the accounts read model in tables of the store's schema,
//! updated with its checkpoint in one transaction.

use std::collections::HashMap;

use cqrs_core::Projection;
use cqrs_core::{BoxError, Envelope, RecordedEvent};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection, Row};

use crate::BankError;
use crate::domain::AccountEvent;
use crate::error::full_chain;
use crate::projections::{ACCOUNTS, AccountRow, HistoryRow, fold, is_account_event};

/// Splits a `schema=NAME` query parameter off a PostgreSQL URL (sqlx would refuse it).
/// Returns the URL without it and the schema (default `bank`).
pub fn split_schema(url: &str) -> (String, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), "bank".to_owned());
    };
    let mut schema = "bank".to_owned();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(name) => {
                name.clone_into(&mut schema);
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, schema)
}

/// Connects, migrates the store and creates the read-model tables.
///
/// # Errors
/// [`BankError::Store`] naming what failed.
pub async fn open(url: &str) -> Result<PostgresEventStore, BankError> {
    let (url, schema) = split_schema(url);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .map_err(|e| {
            BankError::Store(format!("cannot connect to PostgreSQL: {}", full_chain(&e)))
        })?;
    let store = PostgresEventStore::builder(pool)
        .schema(schema)
        .build()
        .map_err(|e| BankError::BadInput(full_chain(&e)))?;
    store
        .migrate()
        .await
        .map_err(|e| BankError::Store(full_chain(&e)))?;
    // The schema name was validated by the store (lowercase letters, digits and `_`),
    // so it can be quoted into the DDL.
    let s = store.schema();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS \"{s}\".bank_accounts (account text PRIMARY KEY, row jsonb NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{s}\".bank_history (
             account text NOT NULL, version bigint NOT NULL, line jsonb NOT NULL,
             PRIMARY KEY (account, version));"
    )))
    .execute(store.pool())
    .await
    .map_err(|e| BankError::Store(format!("cannot create the read-model tables: {}", full_chain(&e))))?;
    Ok(store)
}

/// The accounts read model in `bank_accounts` and `bank_history`.
#[derive(Debug, Clone)]
pub struct PgAccounts {
    schema: String,
}

impl PgAccounts {
    /// The read model in the tables of `store`'s schema.
    pub fn new(store: &PostgresEventStore) -> Self {
        PgAccounts {
            schema: store.schema().to_owned(),
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, BoxError> {
    Ok(serde_json::to_value(value)?)
}

impl Projection<PgConnection> for PgAccounts {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        is_account_event(record.stream.aggregate_type())
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let s = &self.schema;
        // Each touched row is read once and written once per batch.
        let mut rows: HashMap<String, Option<AccountRow>> = HashMap::new();
        for e in batch {
            let id = e.stream.id();
            if !rows.contains_key(id) {
                let row: Option<serde_json::Value> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT row FROM \"{s}\".bank_accounts WHERE account = $1"
                )))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                rows.insert(id.to_owned(), row.map(serde_json::from_value).transpose()?);
            }
            let current = rows.get_mut(id).map(Option::take).unwrap_or_default();
            let (row, line) = fold(current, e);
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".bank_history (account, version, line) VALUES ($1, $2, $3)"
            )))
            .bind(id)
            .bind(i64::try_from(e.version)?)
            .bind(json(&line)?)
            .execute(&mut *conn)
            .await?;
            rows.insert(id.to_owned(), Some(row));
        }
        for (id, row) in rows {
            let Some(row) = row else { continue };
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{s}\".bank_accounts (account, row) VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET row = EXCLUDED.row"
            )))
            .bind(id)
            .bind(json(&row)?)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn reset(&mut self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let s = &self.schema;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "TRUNCATE \"{s}\".bank_accounts, \"{s}\".bank_history"
        )))
        .execute(conn)
        .await?;
        Ok(())
    }
}

fn store_error(e: impl std::error::Error + 'static) -> BankError {
    BankError::Store(full_chain(&e))
}

fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, BankError> {
    serde_json::from_value(value)
        .map_err(|e| BankError::Store(format!("a read-model row does not decode: {e}")))
}

/// One account's row.
///
/// # Errors
/// [`BankError::Store`] if the query fails.
pub async fn account(
    store: &PostgresEventStore,
    id: &str,
) -> Result<Option<AccountRow>, BankError> {
    let s = store.schema();
    let row: Option<serde_json::Value> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT row FROM \"{s}\".bank_accounts WHERE account = $1"
    )))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(store_error)?;
    row.map(decode).transpose()
}

/// One account's history, oldest first.
///
/// # Errors
/// [`BankError::Store`] if the query fails.
pub async fn history(store: &PostgresEventStore, id: &str) -> Result<Vec<HistoryRow>, BankError> {
    let s = store.schema();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT line FROM \"{s}\".bank_history WHERE account = $1 ORDER BY version"
    )))
    .bind(id)
    .fetch_all(store.pool())
    .await
    .map_err(store_error)?;
    rows.into_iter()
        .map(|row| {
            decode(
                row.try_get::<serde_json::Value, _>("line")
                    .map_err(store_error)?,
            )
        })
        .collect()
}

/// Every account, by id.
///
/// # Errors
/// [`BankError::Store`] if the query fails.
pub async fn accounts(store: &PostgresEventStore) -> Result<Vec<AccountRow>, BankError> {
    let s = store.schema();
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT row FROM \"{s}\".bank_accounts ORDER BY account"
    )))
    .fetch_all(store.pool())
    .await
    .map_err(store_error)?;
    rows.into_iter().map(decode).collect()
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
