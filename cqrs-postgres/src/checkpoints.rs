//! Checkpoints in the store's `checkpoints` table: saved durably, or advanced without
//! waiting for the WAL flush (ADR 0033).

use std::sync::Arc;

use cqrs_core::{CheckpointStore, Position, Result, validate_checkpoint_name};
use sqlx::AssertSqlSafe;

use crate::PostgresEventStore;
use crate::row::{decode_checkpoint, exact_i64, store_error};

impl CheckpointStore for PostgresEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_checkpoint_name(name)?;
        let row = self
            .retrying(|| {
                sqlx::query(AssertSqlSafe(self.inner.sql.load_checkpoint.clone()))
                    .bind(name)
                    .fetch_optional(&self.inner.pool)
            })
            .await
            .map_err(store_error)?;
        row.as_ref()
            .map(|row| decode_checkpoint(row, name))
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.upsert_checkpoint(&self.inner.sql.save_checkpoint, name, position)
            .await
    }

    /// The same upsert, committed with `synchronous_commit = off` for its own
    /// transaction: it does not wait for the WAL flush (a few milliseconds on a disk
    /// that flushes for real), and a database crash can lose the last ~600 ms of them
    /// (three `wal_writer_delay`s), never one that a later synchronous commit followed.
    async fn advance_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.upsert_checkpoint(&self.inner.sql.advance_checkpoint, name, position)
            .await
    }
}

impl PostgresEventStore {
    /// Runs a checkpoint upsert (`sql` binds name, commit, sequence).
    async fn upsert_checkpoint(
        &self,
        sql: &Arc<str>,
        name: &str,
        position: Position,
    ) -> Result<()> {
        validate_checkpoint_name(name)?;
        let commit = exact_i64(position.commit, "checkpoint commit")?;
        let sequence = exact_i64(position.sequence, "checkpoint sequence")?;
        // An upsert: safe to run again after a broken connection.
        self.retrying(|| {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(name)
                .bind(commit)
                .bind(sequence)
                .execute(&self.inner.pool)
        })
        .await
        .map_err(store_error)?;
        Ok(())
    }
}
