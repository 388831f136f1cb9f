//! The accounts read model: its rows, the one fold that builds them, the [`ReadModel`]
//! trait, and its implementations on sled ([`SledAccounts`]) and PostgreSQL
//! ([`PgAccounts`]).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cqrs_cli::Operations;
use cqrs_core::{BoxError, BoxEventStore, CheckpointStore, Envelope, EventLog, Inspect};
use cqrs_core::{Personal, Position, Projection, ProjectionRunner, RecordedEvent, TenantId};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, PgConnection};
use cqrs_postgres::{PostgresEventStore, TransactionalCheckpoint};
use cqrs_sled::{ReadModelTx, SledEventStore};
use futures::future::{BoxFuture, FutureExt, ready};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::domain::{Account, AccountEvent, AccountStatus, format_cents};
use crate::error::{BankError, Result};

/// The name of the accounts read model's projection.
pub const ACCOUNTS: &str = "accounts";

/// How long a command waits for the projections to apply its effects (the read model,
/// or a transfer's end) before it answers that they are behind.
pub const WAIT: Duration = Duration::from_secs(30);

/// One account: as the read model stores it ([`StoredRow`], the owner's name sealed),
/// and as the bank answers it (the name as text, `(erased)` once forgotten).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow<O = String> {
    /// The account id.
    pub account: String,
    /// The owner's name.
    pub owner: O,
    /// Open or closed.
    pub status: AccountStatus,
    /// The balance in cents.
    pub balance_cents: i64,
    /// The balance with two decimals, for people.
    pub balance: String,
    /// The account stream's version this row reflects.
    pub version: u64,
}

/// An account row as the read models store it: the owner's name as the events carry it
/// in the store, sealed with the account's key (or a bare legacy string), so a read
/// model holds no plaintext of it and needs no rewrite when the account is forgotten.
/// [`Bank`](crate::Bank) opens it for its answers.
pub type StoredRow = AccountRow<Personal<String>>;

/// The text of an owner's name in answers: the name, or `(erased)` once the account is
/// forgotten.
pub fn owner_text(owner: &Personal<String>) -> String {
    match owner {
        Personal::Value { value, .. } | Personal::Unmarked(value) => value.clone(),
        Personal::Erased { .. } => ERASED.to_owned(),
        Personal::Sealed { .. } => "(sealed)".to_owned(),
    }
}

/// What answers show for the owner of a forgotten account.
pub const ERASED: &str = "(erased)";

impl StoredRow {
    /// The row with the owner's name as text.
    pub fn with_owner_text(self) -> AccountRow {
        let AccountRow {
            account,
            owner,
            status,
            balance_cents,
            balance,
            version,
        } = self;
        AccountRow {
            account,
            owner: owner_text(&owner),
            status,
            balance_cents,
            balance,
            version,
        }
    }
}

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The event's version in the account's stream.
    pub version: u64,
    /// `opened`, `deposit`, `withdrawal`, `closed`, `transfer_out`, `transfer_in`, `refund`.
    pub kind: String,
    /// The balance change in cents (negative for money out).
    pub amount_cents: i64,
    /// The balance after it, in cents.
    pub balance_cents: i64,
    /// The other account of a transfer.
    pub counterparty: Option<String>,
    /// When it was recorded (milliseconds since the Unix epoch).
    pub recorded_at_ms: u128,
}

/// Folds one account event into its row (`None` before the first) and history line: the
/// one piece of read-model logic, shared by every store. The projections read the log
/// as stored, so the owner's name arrives sealed and stays so in the row.
pub fn fold(row: Option<StoredRow>, e: &Envelope<AccountEvent>) -> (StoredRow, HistoryRow) {
    let mut row = row.unwrap_or_default();
    let change = e.event.balance_change();
    (row.account, row.version) = (e.stream.id().to_owned(), e.version);
    row.balance_cents += change;
    row.balance = format_cents(row.balance_cents);
    let (kind, counterparty) = match &e.event {
        AccountEvent::Opened { owner } => {
            (row.owner, row.status) = (owner.clone(), AccountStatus::Open);
            ("opened", None)
        }
        AccountEvent::Deposited { .. } => ("deposit", None),
        AccountEvent::Withdrawn { .. } => ("withdrawal", None),
        AccountEvent::Closed => {
            row.status = AccountStatus::Closed;
            ("closed", None)
        }
        AccountEvent::TransferDebited { to, .. } => ("transfer_out", Some(to.clone())),
        AccountEvent::TransferCredited { from, .. } => ("transfer_in", Some(from.clone())),
        AccountEvent::TransferRefunded { .. } => ("refund", None),
        // The projections drop the account instead (see `apply`).
        AccountEvent::Deleted(_) => ("deleted", None),
    };
    let recorded_at = e.recorded_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let history = HistoryRow {
        version: e.version,
        kind: kind.to_owned(),
        amount_cents: change,
        balance_cents: row.balance_cents,
        counterparty,
        recorded_at_ms: recorded_at.as_millis(),
    };
    (row, history)
}

/// Whether a record belongs to the accounts read model (the projections' `wants`).
pub fn is_account_event(record: &RecordedEvent) -> bool {
    record.stream.aggregate_type() == <Account as cqrs_core::Aggregate>::TYPE
}

/// The accounts read model, whatever store keeps it: reads, the wait that gives
/// read-your-writes, and its projection's runs. The store is picked from a URL at
/// start-up, so the bank holds an `Arc<dyn ReadModel>` and the futures are boxed. The
/// methods fail with [`BankError::Store`] when the store does.
pub trait ReadModel: Send + Sync + std::fmt::Debug {
    /// One account's row, `None` if there is none.
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredRow>>>;

    /// One account's history, oldest first.
    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>>>;

    /// Every account, by id.
    fn accounts(&self) -> BoxFuture<'_, Result<Vec<StoredRow>>>;

    /// Waits until the read model has applied the log up to `position` (a write's), so a
    /// read shows that write; after [`WAIT`], fails with
    /// [`NotCaughtUp`](crate::BankError::NotCaughtUp), and at once with
    /// [`BankError::Store`] if the read model is stopped (an event it cannot apply).
    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<()>>;

    /// How many events of the log the read model has not applied yet (0: it is current).
    fn lag(&self) -> BoxFuture<'_, Result<u64>>;

    /// Registers the projection with the operations subcommand (`replay`, `stats`).
    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore>;
}

/// The tree of account rows (key: account id; value: JSON [`AccountRow`]).
const ROWS: &str = "accounts";
/// The tree of history lines (key: account id, NUL, big-endian version; value: JSON
/// [`HistoryRow`]). Account ids hold no NUL, so keys never collide.
const HISTORY: &str = "history";

/// The runner of the accounts projection on sled.
type Runner = ProjectionRunner<BoxEventStore, SledProjection, cqrs_sled::TransactionalCheckpoint>;

/// The accounts read model on sled: rows and checkpoint written in one sled transaction
/// (exactly-once) by a runner in this process, which a command waiting for its write
/// catches up.
#[derive(Debug, Clone)]
pub struct SledAccounts {
    store: SledEventStore,
    /// Applies the log to the read model; a command waiting for its write catches it up.
    runner: Arc<Mutex<Runner>>,
}

impl SledAccounts {
    /// The read model in `store`'s database.
    pub fn new(store: SledEventStore) -> Self {
        let runner = Arc::new(Mutex::new(Self::runner(&store)));
        SledAccounts { store, runner }
    }

    /// Applies what the log holds beyond the read model: after a crash between an
    /// append and its apply, reads are then current without waiting for a write.
    pub async fn catch_up(&self) -> Result<()> {
        self.runner.lock().await.catch_up().await?;
        Ok(())
    }

    /// Over the store as it is (not through the bank's [`Shredded`](cqrs_core::Shredded)
    /// wrapper): the rows keep the owner's name sealed.
    fn runner(store: &SledEventStore) -> Runner {
        let checkpoint = cqrs_sled::TransactionalCheckpoint::new(store.clone());
        ProjectionRunner::with_strategy(
            BoxEventStore::new(store.clone()),
            SledProjection,
            checkpoint,
        )
    }

    fn scan<T: DeserializeOwned>(&self, tree: &str, prefix: &[u8]) -> Result<Vec<T>> {
        let decode = |(_, value): (Vec<u8>, Vec<u8>)| serde_json::from_slice(&value);
        let rows = self.store.read_model(ACCOUNTS, tree)?.scan_prefix(prefix);
        let rows: Result<_, BoxError> = rows.map(|entry| Ok(decode(entry?)?)).collect();
        rows.map_err(BankError::Store)
    }
}

impl ReadModel for SledAccounts {
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        let row = || {
            let row = self.store.read_model(ACCOUNTS, ROWS)?.get(id.as_bytes())?;
            row.map(|row| serde_json::from_slice(&row).map_err(BankError::store))
                .transpose()
        };
        ready(row()).boxed()
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>>> {
        ready(self.scan(HISTORY, &[id.as_bytes(), b"\0"].concat())).boxed()
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<StoredRow>>> {
        ready(self.scan(ROWS, b"")).boxed()
    }

    /// Catches the runner up (one caller at a time: the first applies what the others
    /// wait for too) until it is past `position`, woken by the store's notifications
    /// while `position` is not readable yet (durable) in the log. A catch-up that fails
    /// (the runner stops at an event it cannot apply) fails the wait at once; the next
    /// wait tries again.
    fn wait_for(&self, position: Position) -> BoxFuture<'_, Result<()>> {
        let caught_up = async move {
            let mut appended = self.store.watch();
            loop {
                appended.mark_seen();
                let mut runner = self.runner.lock().await;
                if runner.checkpoint().await? < position {
                    runner.catch_up().await?;
                }
                if runner.checkpoint().await? >= position {
                    return Ok(());
                }
                drop(runner);
                appended.changed().await;
            }
        };
        let timed = tokio::time::timeout(WAIT, caught_up);
        timed
            .map(|done| done.unwrap_or(Err(BankError::NotCaughtUp(WAIT))))
            .boxed()
    }

    /// The log's events after the checkpoint that the runner commits with each batch.
    fn lag(&self) -> BoxFuture<'_, Result<u64>> {
        async move {
            let checkpoint = self.store.load_checkpoint(ACCOUNTS).await?;
            let behind = self
                .store
                .count_events(checkpoint.unwrap_or(Position::START));
            Ok(behind.await?)
        }
        .boxed()
    }

    /// Also registers the check of every snapshot, checkpoint and read-model row with
    /// `verify`.
    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore> {
        let (store, checked) = (self.store.clone(), self.store.clone());
        let ops = ops.check(move || ready(checked.check_records().map(|c| c.problems())));
        ops.projection(move || Self::runner(&store))
    }
}

/// The accounts projection on sled.
#[derive(Debug, Clone, Copy)]
struct SledProjection;

impl Projection<ReadModelTx> for SledProjection {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        ACCOUNTS
    }

    fn wants(&self, record: &cqrs_core::RecordedEvent) -> bool {
        is_account_event(record)
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for e in batch {
            let id = e.stream.id().as_bytes();
            if let AccountEvent::Deleted(deleted) = e.event {
                tx.remove(ROWS, id);
                for version in 1..=deleted.last_version {
                    tx.remove(HISTORY, &[id, b"\0", &version.to_be_bytes()].concat());
                }
                continue;
            }
            let row = tx.get(ROWS, id)?.map(|row| serde_json::from_slice(&row));
            let (row, line) = fold(row.transpose()?, e);
            tx.insert(ROWS, id, &serde_json::to_vec(&row)?);
            let key = [id, b"\0", &e.version.to_be_bytes()].concat();
            tx.insert(HISTORY, &key, &serde_json::to_vec(&line)?);
        }
        Ok(())
    }
}

/// Splits a `schema=NAME` query parameter off a PostgreSQL URL (sqlx would refuse it):
/// the URL without it, and the schema (default `bank`).
pub(crate) fn split_schema(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query.split('&').filter(|p| !p.is_empty());
    let (schema, kept): (Vec<&str>, Vec<&str>) = pairs.partition(|p| p.starts_with("schema="));
    let schema = schema.last().map_or("bank", |p| &p["schema=".len()..]);
    let schema = schema.to_owned();
    if kept.is_empty() {
        return (base.to_owned(), schema);
    }
    (format!("{base}?{}", kept.join("&")), schema)
}

/// Connects, migrates the store, creates the read-model tables, and registers the read
/// model's projection with the store, inline. Fails with [`BankError::Store`], or
/// [`BankError::InvalidInput`] for a bad schema name.
pub(crate) async fn open_postgres(url: &str, tenant: Option<&TenantId>) -> Result<PgAccounts> {
    let (url, schema) = split_schema(url);
    let pool = PostgresEventStore::connect_pool(&url, 16).await;
    let pool = pool.map_err(BankError::store)?;
    let schema = match tenant {
        Some(tenant) => crate::tenants::postgres_schema(&pool, &schema, tenant).await?,
        None => schema,
    };
    let store = PostgresEventStore::builder(pool).schema(schema.clone());
    let projection = PgProjection(schema.clone());
    let store = store.inline_projection(projection).build();
    let store = store.map_err(|e| BankError::InvalidInput(e.into()))?;
    store.migrate().await.map_err(BankError::store)?;
    // The store validated the schema name (lowercase letters, digits and `_`), so it
    // can be quoted into the DDL. One simple query is one transaction: the advisory
    // lock makes processes starting at once on a fresh schema take turns (two
    // concurrent `CREATE TABLE IF NOT EXISTS` can both try to create the type).
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock(hashtextextended('{schema}.bank_read_model', 0));
         CREATE TABLE IF NOT EXISTS \"{schema}\".bank_accounts (account text PRIMARY KEY, row jsonb NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{schema}\".bank_history (
             account text NOT NULL, version bigint NOT NULL, line jsonb NOT NULL,
             PRIMARY KEY (account, version));"
    )))
    .execute(store.pool())
    .await
    .map_err(BankError::store)?;
    Ok(PgAccounts { store })
}

/// The accounts read model on PostgreSQL, in the tables `bank_accounts` and
/// `bank_history`, written *inline* in each append's transaction: a read in any process
/// sees every write that returned. A runner of the same projection rebuilds them.
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
        let values = query.fetch_all(self.store.pool()).await;
        let values = values.map_err(BankError::store)?;
        let decode = |value| serde_json::from_value(value).map_err(BankError::store);
        values.into_iter().map(decode).collect()
    }

    /// Over the store as it is, like the inline projection: the owner's name stays sealed.
    fn runner(&self) -> ProjectionRunner<BoxEventStore, PgProjection, TransactionalCheckpoint> {
        let projection = PgProjection(self.store.schema().to_owned());
        let checkpoint = TransactionalCheckpoint::new(self.store.clone());
        let store = BoxEventStore::new(self.store.clone());
        ProjectionRunner::with_strategy(store, projection, checkpoint)
    }
}

impl ReadModel for PgAccounts {
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        let sql = "SELECT row FROM \"{s}\".bank_accounts WHERE account = $1";
        let rows = self.query(sql, Some(id));
        rows.map(|rows| Ok(rows?.pop())).boxed()
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<HistoryRow>>> {
        let sql = "SELECT line FROM \"{s}\".bank_history WHERE account = $1 ORDER BY version";
        self.query(sql, Some(id)).boxed()
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<StoredRow>>> {
        let sql = "SELECT row FROM \"{s}\".bank_accounts ORDER BY account";
        self.query(sql, None).boxed()
    }

    /// Inline: every append that returned is in the tables already.
    fn wait_for(&self, _: Position) -> BoxFuture<'_, Result<()>> {
        ready(Ok(())).boxed()
    }

    /// Inline: never behind an append of this store (one that cannot be applied is
    /// rolled back).
    fn lag(&self) -> BoxFuture<'_, Result<u64>> {
        ready(Ok(0)).boxed()
    }

    /// A replay rebuilds the tables with a runner, which appends must not update
    /// meanwhile: `bank replay` runs only while no other `bank` process runs.
    fn register(&self, ops: Operations<BoxEventStore>) -> Operations<BoxEventStore> {
        let this = self.clone();
        ops.inline_projection(move || this.runner())
    }
}

/// The accounts projection on PostgreSQL (in the tables of a schema): inline in each
/// append, or run to rebuild.
#[derive(Debug, Clone)]
struct PgProjection(String);

impl Projection<PgConnection> for PgProjection {
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
        let s = &self.0;
        let select = format!("SELECT row FROM \"{s}\".bank_accounts WHERE account = $1");
        let write = format!(
            "WITH line AS (INSERT INTO \"{s}\".bank_history VALUES ($1, $2, $3))
             INSERT INTO \"{s}\".bank_accounts VALUES ($1, $4)
             ON CONFLICT (account) DO UPDATE SET row = EXCLUDED.row"
        );
        let drop = format!(
            "WITH rows AS (DELETE FROM \"{s}\".bank_accounts WHERE account = $1)
             DELETE FROM \"{s}\".bank_history WHERE account = $1"
        );
        for e in batch {
            let id = e.stream.id();
            if let AccountEvent::Deleted(_) = e.event {
                let query = sqlx::query(AssertSqlSafe(drop.as_str())).bind(id);
                query.execute(&mut *conn).await?;
                continue;
            }
            let query = sqlx::query_scalar(AssertSqlSafe(select.as_str())).bind(id);
            let row: Option<serde_json::Value> = query.fetch_optional(&mut *conn).await?;
            let (row, line) = fold(row.map(serde_json::from_value).transpose()?, e);
            let (line, row) = (serde_json::to_value(&line)?, serde_json::to_value(&row)?);
            let (version, write) = (i64::try_from(e.version)?, AssertSqlSafe(write.as_str()));
            let query = sqlx::query(write).bind(id).bind(version);
            query.bind(line).bind(row).execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn reset(&mut self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let s = &self.0;
        let sql = format!("DELETE FROM \"{s}\".bank_accounts; DELETE FROM \"{s}\".bank_history");
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
