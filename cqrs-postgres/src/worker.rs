//! One worker per projection across processes: a session-level advisory lock held on a
//! dedicated connection.
//!
//! The lock lives exactly as long as the holder's session: when the holder's process
//! dies or its connection breaks, PostgreSQL ends the session and releases the lock, and
//! a waiting node takes it. The lock is not a fence by itself (a holder that lost its
//! connection may not have noticed yet), so a
//! [`TransactionalCheckpoint`](crate::TransactionalCheckpoint) also checks the checkpoint
//! row in each batch's transaction.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use cqrs_core::{
    CheckpointStrategy, Codec, EventStore, Projection, ProjectionError, ProjectionRunner,
};
use futures::FutureExt;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::PostgresEventStore;
use crate::error::{Error, Result};
use crate::migrate::named_lock_key;

/// How [`PostgresEventStore::run_exclusive`] waits for and watches its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// How often a node that does not hold the lock tries to take it.
    pub retry_interval: Duration,
    /// How often the holder checks that its lock connection is alive.
    pub heartbeat: Duration,
}

impl Default for WorkerConfig {
    /// Try every second, check every second.
    fn default() -> Self {
        WorkerConfig {
            retry_interval: Duration::from_secs(1),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// The exclusive right to run one projection, across every process sharing the database.
///
/// Held by a dedicated connection (not one of the pool's); released by
/// [`release`](WorkerLock::release), by dropping it, or when the holder dies.
pub struct WorkerLock {
    conn: PgConnection,
    name: String,
    key: i64,
}

impl fmt::Debug for WorkerLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerLock")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WorkerLock {
    /// The projection name the lock is for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lock's connection is alive (and so the lock still held).
    pub async fn is_held(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }

    /// Completes when the lock's connection fails (the lock is then gone), checking every
    /// `heartbeat`.
    pub async fn lost(&mut self, heartbeat: Duration) {
        loop {
            tokio::time::sleep(heartbeat).await;
            if !self.is_held().await {
                return;
            }
        }
    }

    /// Releases the lock and closes its connection.
    ///
    /// # Errors
    /// [`Error::Database`] if the connection failed (the lock is then released by the
    /// server anyway).
    pub async fn release(mut self) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn)
            .await
            .map_err(|source| Error::Database {
                operation: "releasing a worker lock",
                source,
            })?;
        self.conn.close().await.map_err(|source| Error::Database {
            operation: "closing a worker lock's connection",
            source,
        })
    }
}

impl PostgresEventStore {
    fn worker_key(&self, name: &str) -> i64 {
        named_lock_key(self.schema_ref(), "worker", name)
    }

    async fn lock_connection(&self) -> Result<PgConnection> {
        self.connect_options()
            .connect()
            .await
            .map_err(|source| Error::Connect { source })
    }

    /// Takes the worker lock of projection `name` if no one holds it.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Database`] if the database fails.
    pub async fn try_lock_worker(&self, name: &str) -> Result<Option<WorkerLock>> {
        let conn = self.lock_connection().await?;
        self.try_lock_on(conn, name).await.map(|got| got.ok())
    }

    /// `Ok(Err(conn))`: someone else holds it; the connection can be used to try again.
    async fn try_lock_on(
        &self,
        mut conn: PgConnection,
        name: &str,
    ) -> Result<std::result::Result<WorkerLock, PgConnection>> {
        let key = self.worker_key(name);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| Error::Database {
                operation: "taking a worker lock",
                source,
            })?;
        Ok(if got {
            Ok(WorkerLock {
                conn,
                name: name.to_owned(),
                key,
            })
        } else {
            Err(conn)
        })
    }

    /// Waits until the worker lock of projection `name` is free and takes it, trying every
    /// `retry_interval`.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Database`] if the database fails.
    ///
    /// # Cancel safety
    /// Cancel safe: a lock taken by a cancelled call is released with its connection.
    pub async fn lock_worker(&self, name: &str, retry_interval: Duration) -> Result<WorkerLock> {
        let mut conn = self.lock_connection().await?;
        loop {
            match self.try_lock_on(conn, name).await? {
                Ok(lock) => return Ok(lock),
                Err(back) => conn = back,
            }
            tokio::time::sleep(retry_interval).await;
        }
    }

    /// Runs `runner` live until `shutdown`, on at most one node at a time: waits for the
    /// projection's [worker lock](WorkerLock), runs while holding it, and if the lock's
    /// connection is lost, stops and waits for the lock again. When the node holding it
    /// dies, another node running this takes over from the stored checkpoint.
    ///
    /// Database failures while taking the lock are logged and retried.
    ///
    /// # Errors
    /// The runner's [`ProjectionError`] when it stops while holding the lock.
    pub async fn run_exclusive<S, P, K, C>(
        &self,
        runner: &mut ProjectionRunner<S, P, K, C>,
        shutdown: impl Future<Output = ()> + Send,
        config: WorkerConfig,
    ) -> std::result::Result<(), ProjectionError>
    where
        S: EventStore,
        K: CheckpointStrategy,
        P: Projection<K::Context>,
        C: Codec,
    {
        let name = runner.projection().name().to_owned();
        let mut shutdown = pin!(shutdown.fuse());
        loop {
            let lock = tokio::select! {
                () = &mut shutdown => return Ok(()),
                lock = self.lock_worker(&name, config.retry_interval) => lock,
            };
            let mut lock = match lock {
                Ok(lock) => lock,
                Err(error) => {
                    tracing::warn!(projection = %name, %error, "cannot take the worker lock; retrying");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(config.retry_interval) => continue,
                    }
                }
            };
            tracing::info!(projection = %name, "worker lock taken; running");
            let mut stopping = false;
            let outcome = runner
                .run_until(async {
                    tokio::select! {
                        () = &mut shutdown => stopping = true,
                        () = lock.lost(config.heartbeat) => {}
                    }
                })
                .await;
            match outcome {
                Ok(()) if stopping => {
                    if let Err(error) = lock.release().await {
                        tracing::warn!(projection = %name, %error, "releasing the worker lock failed");
                    }
                    return Ok(());
                }
                Ok(()) => {
                    tracing::warn!(projection = %name, "worker lock lost; waiting to take it again");
                }
                Err(error) => {
                    if lock.is_held().await {
                        // Best effort: the lock also goes with the connection.
                        let _ = lock.release().await;
                        return Err(error);
                    }
                    tracing::warn!(projection = %name, %error, "worker lock lost while failing; waiting to take it again");
                }
            }
        }
    }
}
