//! Transactional projections: a read model in the store's database, updated in the
//! same transaction as its checkpoint (exactly once, run by a
//! [`ProjectionRunner`](cqrs_core::ProjectionRunner)).

use std::fmt;

use cqrs_core::{BoxError, CheckpointStrategy, Envelope, Position, Projection};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Transaction};

use crate::PostgresEventStore;
use crate::row::{decode_checkpoint, exact_i64, store_error};

/// The [`CheckpointStrategy`] of a read model kept in PostgreSQL tables: each batch, the
/// read model's changes and the checkpoint commit in one transaction of the store's
/// database, so each event is applied exactly once, even across crashes.
///
/// The projection implements [`Projection<PgConnection>`](Projection): its `apply` and
/// `reset` get the open transaction (do not commit or roll it back). The same projection
/// can also run [inline](crate::PostgresEventStoreBuilder::inline_projection), in each
/// append's transaction.
///
/// The checkpoint row is locked and compared at the start of each batch's transaction:
/// if another worker moved it (a worker that lost its lock and did not notice yet), the
/// batch is rolled back with [`Error::CheckpointMoved`](crate::Error::CheckpointMoved)
/// instead of being applied twice. Across nodes, run it with
/// [`PostgresEventStore::run_exclusive`].
///
/// A [rebuild](cqrs_core::ProjectionRunner::rebuild) is one transaction, from
/// [`reset`](CheckpointStrategy::reset) to
/// [`finish_rebuild`](CheckpointStrategy::finish_rebuild) (each batch in a savepoint):
/// other sessions keep reading the old read model and checkpoint until it commits, and
/// a rebuild that fails or is interrupted rolls back, leaving them as they were. Clear
/// the model with `DELETE` in [`Projection::reset`] so that readers are not blocked
/// meanwhile (`TRUNCATE` locks the table until the commit). The checkpoint row stays
/// locked for the whole rebuild: stop live runners of the projection first.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{BoxError, DomainEvent, Envelope, Projection, ProjectionRunner};
/// use cqrs_postgres::{PostgresEventStore, TransactionalCheckpoint};
/// use sqlx::PgConnection;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum AccountEvent { Deposited { cents: i64 } }
/// # impl DomainEvent for AccountEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Deposited"];
/// #     fn event_type(&self) -> &'static str { "Deposited" }
/// # }
///
/// /// Balances per account, in `app.balances (account text primary key, cents bigint)`.
/// #[derive(Debug, Clone)]
/// struct Balances;
///
/// impl Projection<PgConnection> for Balances {
///     type Event = AccountEvent;
///
///     fn name(&self) -> &str {
///         "balances"
///     }
///
///     async fn apply(
///         &mut self,
///         conn: &mut PgConnection,
///         batch: &[Envelope<AccountEvent>],
///     ) -> Result<(), BoxError> {
///         for e in batch {
///             let AccountEvent::Deposited { cents } = e.event;
///             sqlx::query(
///                 "INSERT INTO app.balances (account, cents) VALUES ($1, $2) \
///                  ON CONFLICT (account) DO UPDATE SET cents = app.balances.cents + $2",
///             )
///             .bind(e.stream.id())
///             .bind(cents)
///             .execute(&mut *conn)
///             .await?;
///         }
///         Ok(())
///     }
///
///     async fn reset(&mut self, conn: &mut PgConnection) -> Result<(), BoxError> {
///         sqlx::query("DELETE FROM app.balances").execute(conn).await?;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresEventStore::connect("postgres://postgres@127.0.0.1/postgres").await?;
/// let checkpoint = TransactionalCheckpoint::new(store.clone());
/// let mut runner = ProjectionRunner::with_strategy(store.clone(), Balances, checkpoint);
/// runner.catch_up().await?;
/// # Ok(())
/// # }
/// ```
pub struct TransactionalCheckpoint {
    store: PostgresEventStore,
    /// Where this worker left the checkpoint (`None` before it read it).
    at: Option<Position>,
    /// A rebuild's transaction, from `reset` to `finish_rebuild`.
    rebuild: Option<Transaction<'static, Postgres>>,
    /// A rebuild was started and not finished (its transaction may be gone).
    rebuilding: bool,
}

impl fmt::Debug for TransactionalCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalCheckpoint")
            .field("schema", &self.store.schema())
            .field("checkpoint", &self.at)
            .field("rebuilding", &self.rebuild.is_some())
            .finish_non_exhaustive()
    }
}

impl TransactionalCheckpoint {
    /// Keeps the checkpoint in `store`'s checkpoints table, written in each batch's
    /// transaction of `store`'s pool.
    pub fn new(store: PostgresEventStore) -> Self {
        TransactionalCheckpoint {
            store,
            at: None,
            rebuild: None,
            rebuilding: false,
        }
    }
}

/// Makes sure the checkpoint row exists, locks it for the transaction and returns it.
async fn lock_checkpoint(
    store: &PostgresEventStore,
    name: &str,
    conn: &mut PgConnection,
) -> Result<Position, BoxError> {
    let row = sqlx::query(AssertSqlSafe(store.statements().lock_checkpoint.clone()))
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(store_error)?;
    Ok(decode_checkpoint(&row, name)?)
}

async fn write_checkpoint(
    store: &PostgresEventStore,
    name: &str,
    conn: &mut PgConnection,
    position: Position,
) -> Result<(), BoxError> {
    sqlx::query(AssertSqlSafe(store.statements().save_checkpoint.clone()))
        .bind(name)
        .bind(exact_i64(position.commit, "checkpoint commit")?)
        .bind(exact_i64(position.sequence, "checkpoint sequence")?)
        .execute(conn)
        .await?;
    Ok(())
}

impl CheckpointStrategy for TransactionalCheckpoint {
    type Context = PgConnection;

    async fn load(&mut self, name: &str) -> Result<Option<Position>, BoxError> {
        Ok(cqrs_core::CheckpointStore::load_checkpoint(&self.store, name).await?)
    }

    async fn start<P: Projection<PgConnection>>(
        &mut self,
        projection: &mut P,
    ) -> Result<Position, BoxError> {
        // A run follows the live model: an unfinished rebuild is rolled back.
        (self.rebuild, self.rebuilding) = (None, false);
        let mut conn = self.store.pool().acquire().await.map_err(store_error)?;
        let found = lock_checkpoint(&self.store, projection.name(), &mut conn).await?;
        self.at = Some(found);
        Ok(found)
    }

    async fn apply<P: Projection<PgConnection>>(
        &mut self,
        projection: &mut P,
        batch: &[Envelope<P::Event>],
        checkpoint: Position,
    ) -> Result<(), BoxError> {
        let name = projection.name().to_owned();
        if let Some(rebuild) = self.rebuild.as_mut() {
            // A savepoint: a failed batch is rolled back alone, and retried.
            let mut batch_tx = rebuild.begin().await.map_err(store_error)?;
            projection.apply(&mut batch_tx, batch).await?;
            write_checkpoint(&self.store, &name, &mut batch_tx, checkpoint).await?;
            batch_tx.commit().await.map_err(store_error)?;
            self.at = Some(checkpoint);
            return Ok(());
        }
        let mut tx = self.store.pool().begin().await.map_err(store_error)?;
        let found = lock_checkpoint(&self.store, &name, &mut tx).await?;
        if let Some(expected) = self.at
            && found != expected
        {
            if found == checkpoint {
                // This batch is already applied: by this worker, whose commit succeeded
                // but whose answer was lost, or by another. Either way, once.
                self.at = Some(checkpoint);
                return Ok(());
            }
            return Err(crate::Error::CheckpointMoved {
                projection: name,
                expected,
                found,
            }
            .into());
        }
        projection.apply(&mut tx, batch).await?;
        write_checkpoint(&self.store, &name, &mut tx, checkpoint).await?;
        tx.commit().await?;
        self.at = Some(checkpoint);
        Ok(())
    }

    /// Begins the rebuild's transaction: the projection's reset and the checkpoint at
    /// the start, seen by no one else until [`finish_rebuild`](Self::finish_rebuild).
    async fn reset<P: Projection<PgConnection>>(
        &mut self,
        projection: &mut P,
    ) -> Result<(), BoxError> {
        let name = projection.name().to_owned();
        (self.rebuild, self.rebuilding) = (None, true);
        let mut tx = self.store.pool().begin().await.map_err(store_error)?;
        lock_checkpoint(&self.store, &name, &mut tx).await?;
        projection.reset(&mut tx).await?;
        write_checkpoint(&self.store, &name, &mut tx, Position::START).await?;
        self.rebuild = Some(tx);
        self.at = Some(Position::START);
        Ok(())
    }

    /// Commits the rebuild: readers see the new read model and checkpoint at once.
    async fn finish_rebuild<P: Projection<PgConnection>>(
        &mut self,
        _projection: &mut P,
    ) -> Result<(), BoxError> {
        if !self.rebuilding {
            return Ok(());
        }
        let lost = "the rebuild's transaction failed to commit: rebuild again";
        let tx = self.rebuild.take().ok_or(lost)?;
        tx.commit().await.map_err(store_error)?;
        self.rebuilding = false;
        Ok(())
    }
}
