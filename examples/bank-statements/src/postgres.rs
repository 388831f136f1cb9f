//! The statements read model in PostgreSQL: tables `statement_accounts` (one row per
//! account) and `statement_months` (one per account and month) in the service's
//! schema, written in the inbox's transaction.

use cqrs_core::{BoxError, Envelope, Projection, RecordedEvent};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use crate::events::AccountEvent;
use crate::service::CONSUMER;
use crate::statement::{LastEvent, MonthTotals, Statement, micros, month};
use crate::{Error, Result};

/// The projection the consumer applies the bank's events to, on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStatements {
    upsert_account: String,
    upsert_month: String,
    drop_account: String,
}

impl PgStatements {
    /// Creates the tables in `store`'s schema if they do not exist, and the projection
    /// that writes them.
    ///
    /// # Errors
    /// [`Error::Store`] if PostgreSQL fails.
    pub async fn create(store: &PostgresEventStore) -> Result<PgStatements> {
        // The store validated its schema name (lowercase letters, digits and `_`), so it
        // can be quoted into the SQL.
        let s = format!("\"{}\"", store.schema());
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {s}.statement_accounts (
                 account text PRIMARY KEY, owner text, closed boolean NOT NULL,
                 balance_cents bigint NOT NULL, last_version bigint NOT NULL,
                 last_event_id uuid NOT NULL, last_recorded_at_micros bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}.statement_months (
                 account text NOT NULL, month text NOT NULL,
                 in_cents bigint NOT NULL, out_cents bigint NOT NULL,
                 PRIMARY KEY (account, month));"
        );
        // Under a transaction-scoped advisory lock: two processes starting at once
        // would otherwise race on `CREATE TABLE IF NOT EXISTS`.
        let created = async {
            let mut tx = store.pool().begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('example-bank-statements:ddl'))")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
            tx.commit().await
        };
        created
            .await
            .map_err(|e| Error::store("creating the statements tables", e))?;
        Ok(PgStatements {
            upsert_account: format!(
                "INSERT INTO {s}.statement_accounts AS a (account, owner, closed, balance_cents, \
                 last_version, last_event_id, last_recorded_at_micros) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (account) DO UPDATE SET owner = COALESCE(EXCLUDED.owner, a.owner), \
                 closed = a.closed OR EXCLUDED.closed, \
                 balance_cents = a.balance_cents + EXCLUDED.balance_cents, \
                 last_version = EXCLUDED.last_version, last_event_id = EXCLUDED.last_event_id, \
                 last_recorded_at_micros = EXCLUDED.last_recorded_at_micros"
            ),
            drop_account: format!(
                "WITH months AS (DELETE FROM {s}.statement_months WHERE account = $1) \
                 DELETE FROM {s}.statement_accounts WHERE account = $1"
            ),
            upsert_month: format!(
                "INSERT INTO {s}.statement_months AS m (account, month, in_cents, out_cents) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (account, month) DO UPDATE SET \
                 in_cents = m.in_cents + EXCLUDED.in_cents, out_cents = m.out_cents + EXCLUDED.out_cents"
            ),
        })
    }
}

impl Projection<PgConnection> for PgStatements {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        CONSUMER
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        crate::events::is_account_event(record)
    }

    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for event in batch {
            let account = event.stream.id();
            if let AccountEvent::Deleted(_) = event.event {
                sqlx::query(AssertSqlSafe(self.drop_account.as_str()))
                    .bind(account)
                    .execute(&mut *conn)
                    .await?;
                continue;
            }
            let owner = match &event.event {
                AccountEvent::Opened { owner } => owner.value().map(String::as_str),
                _ => None,
            };
            let (money_in, money_out) = event.event.money();
            let at = micros(event.recorded_at);
            sqlx::query(AssertSqlSafe(self.upsert_account.as_str()))
                .bind(account)
                .bind(owner)
                .bind(matches!(event.event, AccountEvent::Closed))
                .bind(money_in - money_out)
                .bind(i64::try_from(event.version)?)
                .bind(event.event_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            if (money_in, money_out) != (0, 0) {
                sqlx::query(AssertSqlSafe(self.upsert_month.as_str()))
                    .bind(account)
                    .bind(month(at))
                    .bind(money_in)
                    .bind(money_out)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The statement of `account` in `store`'s schema, if the service has seen the account
/// (read directly: works while a consumer writes in another process).
///
/// # Errors
/// [`Error::Store`] if PostgreSQL fails.
pub async fn statement(store: &PostgresEventStore, account: &str) -> Result<Option<Statement>> {
    let context = || format!("reading the statement of {account:?}");
    let s = format!("\"{}\"", store.schema());
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(|e| Error::store(context(), e))?;
    // One snapshot for both tables: the months agree with the balance.
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::store(context(), e))?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT owner, closed, balance_cents, last_version, last_event_id, \
         last_recorded_at_micros FROM {s}.statement_accounts WHERE account = $1"
    )))
    .bind(account)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| Error::store(context(), e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let months = sqlx::query(AssertSqlSafe(format!(
        "SELECT month, in_cents, out_cents FROM {s}.statement_months \
         WHERE account = $1 ORDER BY month"
    )))
    .bind(account)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| Error::store(context(), e))?;
    let decode = || -> Result<Statement, BoxError> {
        let version: i64 = row.try_get(3)?;
        let event_id: Uuid = row.try_get(4)?;
        let mut statement = Statement {
            account: account.to_owned(),
            owner: row.try_get(0)?,
            closed: row.try_get(1)?,
            balance_cents: row.try_get(2)?,
            months: Default::default(),
            last_event: LastEvent {
                version: u64::try_from(version)?,
                event_id,
                recorded_at_micros: row.try_get(5)?,
            },
        };
        for m in &months {
            let totals = MonthTotals {
                in_cents: m.try_get(1)?,
                out_cents: m.try_get(2)?,
            };
            statement.months.insert(m.try_get(0)?, totals);
        }
        Ok(statement)
    };
    decode().map(Some).map_err(|e| Error::store(context(), e))
}
