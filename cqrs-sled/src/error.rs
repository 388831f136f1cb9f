//! Errors of opening a sled event store.

use std::path::PathBuf;

use cqrs_core::BoxError;

/// `Result` with [`OpenError`] as its default error type.
pub type Result<T, E = OpenError> = std::result::Result<T, E>;

/// Why a [`SledEventStore`](crate::SledEventStore) could not be opened.
///
/// Every variant names the database path. Once a store is open, its operations report
/// [`cqrs_core::Error`] like every other backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory does not exist and
    /// [`create_if_missing`](crate::SledConfig::create_if_missing) is off.
    ///
    /// Handling: create it, or fix the path.
    #[error("sled event store {path:?} does not exist")]
    Missing {
        /// The database directory.
        path: PathBuf,
    },

    /// The path exists but is not a directory (a sled database is a directory).
    ///
    /// Handling: fix the path.
    #[error("sled event store {path:?} is not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },

    /// Another process (or another store in this process) has the database open.
    ///
    /// Handling: sled is single-process; stop the other user or open another path.
    #[error("sled event store {path:?} is locked by another process or another open store")]
    Locked {
        /// The database directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: BoxError,
    },

    /// The directory holds something that is not a sled database (other files, or sled
    /// files that do not parse).
    ///
    /// Handling: fix the path; the store never takes over a directory that holds other
    /// data.
    #[error("{path:?} is not a sled event store: {reason}")]
    NotADatabase {
        /// The database directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The store's own data in the database is not what this version writes, or the mark
    /// of its durable end is damaged or names another record than the log holds.
    ///
    /// Handling: restore from a backup or open with the matching version of this crate;
    /// for a damaged mark, as for [`LostEvents`](Self::LostEvents).
    #[error("sled event store {path:?} is damaged: {reason}")]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The log ends before the position the store had recorded as durable: sled's
    /// recovery stopped at a damaged entry of its log and dropped everything after it.
    /// Opening it as it is would serve a shorter history without saying so.
    ///
    /// Handling: restore the store from a backup or a replica (`docs/06-operations.md`,
    /// "Restoring a damaged store"); to read what is left, open it with
    /// [`DamagedLog::Inspect`](crate::DamagedLog::Inspect); to go on with the shorter
    /// log, [`DamagedLog::Accept`](crate::DamagedLog::Accept).
    #[error(
        "sled event store {path:?} lost events: its log ends at position {found}, but \
         positions up to {durable} were durable (sled's recovery dropped the end of a \
         damaged log); restore it from a backup"
    )]
    LostEvents {
        /// The database directory.
        path: PathBuf,
        /// The last position recorded as durable.
        durable: u64,
        /// The last position in the log as opened.
        found: u64,
    },

    /// An I/O or sled failure while opening.
    ///
    /// Handling: check permissions and disk space, then retry.
    #[error("cannot open sled event store {path:?}")]
    Io {
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

/// A sled error as this crate reports it: sled's own message, except for a corruption,
/// whose message in sled 0.34 ends with the debug text of a backtrace field that release
/// builds leave empty (`backtrace ()`); this one says where the damage is instead.
#[derive(Debug)]
pub(crate) struct SledError(pub(crate) sled::Error);

impl std::fmt::Display for SledError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            sled::Error::Corruption { at: Some(at), .. } => {
                write!(f, "sled read corrupted data at log offset {}", at.lid())
            }
            sled::Error::Corruption { at: None, .. } => f.write_str("sled read corrupted data"),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for SledError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corruption_says_where_without_a_backtrace() {
        let at = sled::DiskPtr::Inline(776);
        let e = SledError(sled::Error::Corruption {
            at: Some(at),
            bt: (),
        });
        assert_eq!(e.to_string(), "sled read corrupted data at log offset 776");
        let e = SledError(sled::Error::Corruption { at: None, bt: () });
        assert_eq!(e.to_string(), "sled read corrupted data");
        let e = SledError(sled::Error::Unsupported("x".into()));
        assert_eq!(e.to_string(), "Unsupported: x");
    }
}
