//! The subject keys of crypto-shredding, in a table of the store's schema.

use cqrs_core::{Error, ForgetOutcome, KeyState, KeyStore, Result, SubjectKey, validate_subject};
use sqlx::{AssertSqlSafe, PgPool};

use crate::PostgresEventStore;

/// The [`KeyStore`] of a [`PostgresEventStore`]: the keys of data subjects for
/// [`Shredded`](cqrs_core::Shredded), in the table `subject_keys` of the store's schema
/// (created by [`migrate`](PostgresEventStore::migrate)). Every process on the database
/// sees a forget at once: the [`Shredded`](cqrs_core::Shredded) store does not cache keys
/// across reads.
///
/// A forget sets the subject's key to NULL. The row's old version, with the key, stays in
/// the table's heap as a dead tuple until `VACUUM` reclaims it (and in the write-ahead
/// log and backups for as long as they are kept). Personal data in plaintext never
/// reaches the database; see `docs/10-data-lifecycle.md`.
///
/// # Examples
/// ```no_run
/// use cqrs_core::Shredded;
/// use cqrs_postgres::{PostgresEventStore, PostgresKeyStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let events = PostgresEventStore::connect("postgres://localhost/app").await?;
/// events.migrate().await?;
/// let store = Shredded::new(events.clone(), PostgresKeyStore::new(&events));
/// store.forget("customer-42").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresKeyStore {
    pool: PgPool,
    /// The quoted, schema-qualified table.
    table: String,
}

impl PostgresKeyStore {
    /// The key store in `store`'s schema, on its pool.
    pub fn new(store: &PostgresEventStore) -> Self {
        let table = format!("{}.subject_keys", store.schema_ref().quoted());
        PostgresKeyStore {
            pool: store.pool().clone(),
            table,
        }
    }
}

fn state(subject: &str, key: Option<Vec<u8>>) -> Result<KeyState> {
    let Some(bytes) = key else {
        return Ok(KeyState::Forgotten);
    };
    let key = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        let location = format!("key of data subject {subject:?}");
        Error::corrupt(location, format!("{} bytes, not 32", bytes.len()))
    })?;
    Ok(KeyState::Active(SubjectKey::from_bytes(key)))
}

impl KeyStore for PostgresKeyStore {
    async fn load_key<'a>(&'a self, subject: &'a str) -> Result<KeyState> {
        validate_subject(subject)?;
        let sql = format!("SELECT key_bytes FROM {} WHERE subject = $1", self.table);
        let row: Option<Option<Vec<u8>>> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::store)?;
        row.map_or(Ok(KeyState::Missing), |key| state(subject, key))
    }

    async fn create_key<'a>(&'a self, subject: &'a str, key: SubjectKey) -> Result<KeyState> {
        validate_subject(subject)?;
        let sql = format!(
            "INSERT INTO {} (subject, key_bytes) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING",
            self.table
        );
        let inserted = sqlx::query(AssertSqlSafe(sql))
            .bind(subject)
            .bind(&key.as_bytes()[..])
            .execute(&self.pool)
            .await
            .map_err(Error::store)?;
        if inserted.rows_affected() == 1 {
            return Ok(KeyState::Active(key));
        }
        // Another writer's key, or a forgotten subject (a new statement sees it).
        self.load_key(subject).await
    }

    async fn forget_key<'a>(&'a self, subject: &'a str) -> Result<ForgetOutcome> {
        validate_subject(subject)?;
        let sql = format!(
            "UPDATE {} SET key_bytes = NULL, forgotten_at = now() \
             WHERE subject = $1 AND key_bytes IS NOT NULL",
            self.table
        );
        loop {
            let forgotten = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(subject)
                .execute(&self.pool)
                .await
                .map_err(Error::store)?;
            if forgotten.rows_affected() == 1 {
                return Ok(ForgetOutcome::Forgotten);
            }
            match self.load_key(subject).await? {
                KeyState::Missing => return Ok(ForgetOutcome::UnknownSubject),
                KeyState::Forgotten => return Ok(ForgetOutcome::AlreadyForgotten),
                // A key created between the two statements: forget it too.
                KeyState::Active(_) => {}
            }
        }
    }
}
