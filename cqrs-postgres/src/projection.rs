//! Transactional projections: a read model in the store's database, updated in the
//! same transaction as its checkpoint (exactly once, run by a
//! [`ProjectionRunner`](cqrs_core::ProjectionRunner)).

use std::fmt;
use std::future::Future;

use cqrs_core::{BoxError, DomainEvent, Envelope, Position, Projection, RecordedEvent};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::PostgresEventStore;
use crate::row::{decode_checkpoint, exact_i64};

/// A read model kept in PostgreSQL tables, updated in the same transaction as its
/// checkpoint: each event is applied exactly once, even across crashes.
///
/// Wrap it in a [`Transactional`] and run that with a
/// [`ProjectionRunner`](cqrs_core::ProjectionRunner) (or
/// [`PostgresEventStore::run_exclusive`] on many nodes).
///
/// # Examples
/// ```
/// use cqrs_core::{BoxError, DomainEvent, Envelope};
/// use cqrs_postgres::TransactionalProjection;
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
/// #[derive(Debug)]
/// struct Balances;
///
/// impl TransactionalProjection for Balances {
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
///         sqlx::query("TRUNCATE app.balances").execute(conn).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait TransactionalProjection: Send + 'static {
    /// The events this projection decodes.
    type Event: DomainEvent;

    /// The projection's stable name: the key of its checkpoint and of its worker lock.
    fn name(&self) -> &str;

    /// Whether the projection wants this record; by default, the records whose type is
    /// one of `Self::Event::EVENT_TYPES`.
    fn wants(&self, record: &RecordedEvent) -> bool {
        Self::Event::EVENT_TYPES.contains(&record.event_type.as_str())
    }

    /// Applies a batch inside `conn`'s open transaction. Do not commit or roll back: the
    /// adapter stores the checkpoint in the same transaction and commits. The batch may be
    /// empty.
    ///
    /// # Errors
    /// Any error rolls the transaction back; the runner retries, then stops naming the
    /// failing event.
    fn apply(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Envelope<Self::Event>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Clears the read model before a rebuild, inside the transaction that also resets
    /// the checkpoint. The default does nothing.
    ///
    /// # Errors
    /// Any error stops the rebuild (and rolls the reset back).
    fn reset(
        &mut self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = conn;
        async { Ok(()) }
    }
}

/// Runs a [`TransactionalProjection`] as a [`Projection`] that
/// [owns its checkpoint](Projection::OWNS_CHECKPOINT): each batch and its checkpoint
/// commit in one transaction of the store's database.
///
/// The checkpoint row is locked and compared at the start of each batch's transaction:
/// if another worker moved it (a worker that lost its lock and did not notice yet), the
/// batch is rolled back with [`Error::CheckpointMoved`](crate::Error::CheckpointMoved)
/// instead of being applied twice.
pub struct Transactional<P> {
    store: PostgresEventStore,
    projection: P,
    /// Where this worker left the checkpoint (`None` before it read it).
    at: Option<Position>,
}

impl<P: TransactionalProjection + fmt::Debug> fmt::Debug for Transactional<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactional")
            .field("projection", &self.projection)
            .field("checkpoint", &self.at)
            .finish_non_exhaustive()
    }
}

impl<P: TransactionalProjection> Transactional<P> {
    /// Wraps `projection`, keeping its checkpoint in `store`'s checkpoints table.
    pub fn new(store: PostgresEventStore, projection: P) -> Self {
        Transactional {
            store,
            projection,
            at: None,
        }
    }

    /// The wrapped projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The wrapped projection, mutably.
    pub fn projection_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// The wrapped projection, giving up the adapter.
    pub fn into_inner(self) -> P {
        self.projection
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
        .await?;
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

impl<P: TransactionalProjection> Projection for Transactional<P> {
    type Event = P::Event;
    const OWNS_CHECKPOINT: bool = true;

    fn name(&self) -> &str {
        self.projection.name()
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        self.projection.wants(record)
    }

    async fn apply(
        &mut self,
        batch: &[Envelope<Self::Event>],
        checkpoint: Position,
    ) -> Result<(), BoxError> {
        let name = self.projection.name().to_owned();
        let mut tx = self.store.pool().begin().await?;
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
        self.projection.apply(&mut tx, batch).await?;
        write_checkpoint(&self.store, &name, &mut tx, checkpoint).await?;
        tx.commit().await?;
        self.at = Some(checkpoint);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        let name = self.projection.name().to_owned();
        let mut tx = self.store.pool().begin().await?;
        lock_checkpoint(&self.store, &name, &mut tx).await?;
        self.projection.reset(&mut tx).await?;
        write_checkpoint(&self.store, &name, &mut tx, Position::START).await?;
        tx.commit().await?;
        self.at = Some(Position::START);
        Ok(())
    }

    async fn load_checkpoint(&mut self) -> Result<Option<Position>, BoxError> {
        let name = self.projection.name().to_owned();
        let mut conn = self.store.pool().acquire().await?;
        let found = lock_checkpoint(&self.store, &name, &mut conn).await?;
        self.at = Some(found);
        Ok(Some(found))
    }
}
