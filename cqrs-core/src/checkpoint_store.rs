//! Checkpoints: where projections remember how far they read.

use crate::{Position, Result};

/// The table of [`CheckpointStore`], read by the macros of `crate::forward`.
macro_rules! checkpoint_store_table {
    ($callback:ident!($($args:tt)*)) => {
        $callback! {
            ($($args)*)
            /// Projection checkpoints stored per name, beside the log: an optional
            /// capability.
            ///
            /// A [`ProjectionRunner`](crate::ProjectionRunner) that keeps its checkpoint
            /// in the event store needs it; a read model that keeps its checkpoint
            /// itself (in memory, or in its own transaction) does not.
            pub trait CheckpointStore: [Send + Sync];
            /// The object-safe twin of [`CheckpointStore`].
            pub trait DynCheckpointStore: [Send + Sync + 'static];
            required {
                /// Loads the checkpoint stored under a projection's `name`.
                ///
                /// # Errors
                /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a name that
                /// [`validate_checkpoint_name`] refuses;
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn load_checkpoint<'a>(&'a self, name: &'a str) -> future<'a> Result<Option<Position>>;

                /// Stores `position` as the checkpoint of the projection `name`,
                /// replacing any other.
                ///
                /// # Errors
                /// As for [`load_checkpoint`](CheckpointStore::load_checkpoint).
                fn save_checkpoint<'a>(
                    &'a self,
                    name: &'a str,
                    position: Position,
                ) -> future<'a> Result<()>;
            }
            provided {
                /// Moves the checkpoint of the projection `name` forward to `position`,
                /// as its progress: like [`save_checkpoint`](CheckpointStore::save_checkpoint),
                /// and visible to loads at once, but the backend may make it durable
                /// lazily. After a crash of the backend's database (not of the caller),
                /// the checkpoint may be back at a position it held in the last moments
                /// before it; an at-least-once projection then gets those events again,
                /// which it already has to accept after its own crashes. A later write
                /// of the backend that is durable makes the earlier ones durable too.
                ///
                /// [`StoreCheckpoint`](crate::StoreCheckpoint) saves a projection's
                /// progress with it, and the relay its position after the broker's
                /// acknowledgements; a checkpoint that must not come back (a reset to
                /// the start) is saved with `save_checkpoint`. The default calls
                /// `save_checkpoint`; PostgreSQL commits it without waiting for the WAL
                /// flush (`synchronous_commit = off` for that transaction alone).
                ///
                /// # Errors
                /// As for [`save_checkpoint`](CheckpointStore::save_checkpoint).
                fn advance_checkpoint<'a>(
                    &'a self,
                    name: &'a str,
                    position: Position,
                ) -> future<'a> Result<()> {
                    self.save_checkpoint(name, position)
                }
            }
        }
    };
}
pub(crate) use checkpoint_store_table;

checkpoint_store_table!(define_store_trait!());

/// Checks a checkpoint (projection) name: 1 to 256 bytes, no NUL.
///
/// Backends call this so they all accept the same names.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the problem.
pub fn validate_checkpoint_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.contains('\0') {
        return Err(crate::Error::invalid_input(format!(
            "a projection name must be 1 to 256 bytes without NUL, got {name:?}"
        )));
    }
    Ok(())
}
