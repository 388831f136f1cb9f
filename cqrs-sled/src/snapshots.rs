//! Snapshots and checkpoints: the records a [`SledEventStore`] keeps beside its log,
//! each in a tree of its own.

use cqrs_core::{
    CheckpointStore, Position, Result, SnapshotRecord, SnapshotStore, StreamId,
    validate_checkpoint_name,
};

use crate::contain::guard;
use crate::record;
use crate::store::{SledEventStore, lock, store_error};

impl SnapshotStore for SledEventStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotRecord>> {
        let key = record::bare_stream_key(stream);
        let Some(bytes) = guard(|| self.inner.snapshots.get(key).map_err(store_error))? else {
            return Ok(None);
        };
        match record::decode_snapshot(&bytes) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(reason) => {
                // A snapshot is only an optimisation: a damaged one is ignored, not fatal.
                tracing::warn!(%stream, %reason, "ignoring a damaged snapshot record");
                Ok(None)
            }
        }
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: SnapshotRecord) -> Result<()> {
        self.writable()?;
        guard(|| self.save_snapshot_now(stream, &snapshot))
    }
}

impl SledEventStore {
    fn save_snapshot_now(&self, stream: &StreamId, snapshot: &SnapshotRecord) -> Result<()> {
        let key = record::bare_stream_key(stream);
        let _writer = lock(&self.inner.snapshot_writer);
        // A deleted stream has no snapshot (a delete holds this lock while it removes it):
        // a late save of one, from a load before the delete, is dropped.
        if self.head_entry(stream)?.deleted {
            return Ok(());
        }
        // A later snapshot stays, unless it is ahead of the stream (then it is junk).
        if let Some(existing) = self.inner.snapshots.get(&key).map_err(store_error)?
            && let Ok(existing) = record::decode_snapshot(&existing).map(|s| s.version)
            && existing > snapshot.version
            && existing <= self.head(stream)?
        {
            return Ok(());
        }
        self.inner
            .snapshots
            .insert(key, record::encode_snapshot(snapshot))
            .map_err(store_error)?;
        Ok(())
    }
}

impl CheckpointStore for SledEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_checkpoint_name(name)?;
        guard(|| {
            self.inner
                .checkpoints
                .get(name.as_bytes())
                .map_err(store_error)?
                .map(|bytes| record::decode_position(&bytes, name))
                .transpose()
        })
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_checkpoint_name(name)?;
        self.writable()?;
        guard(|| {
            self.inner
                .checkpoints
                .insert(name.as_bytes(), record::encode_position(position))
                .map_err(store_error)
        })?;
        Ok(())
    }
}
