//! The error type of the operations subcommand.

use cqrs_core::ProjectionError;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The arguments name something that does not exist or cannot be parsed (an unknown
    /// projection, a malformed stream id or position), or ask for what the store refuses
    /// (deleting a missing or deleted stream, a version conflict, restoring over a live
    /// stream, an operation the store does not support). Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The store failed or holds records that cannot be decoded. Exit code 3.
    #[error("event store failure")]
    Store(#[source] cqrs_core::Error),
    /// A projection stopped during a replay. Exit code 3.
    #[error("replay failed")]
    Projection(#[source] ProjectionError),
    /// `verify` found damage (its report was written first). Exit code 4.
    #[error("the store is damaged: {problems} problem(s) found")]
    Damaged {
        /// How many problems were found.
        problems: u64,
    },
    /// A consumer's inbox failed (listing or redriving dead letters). Exit code 3.
    #[error("consumer {consumer:?} failed")]
    Consumer {
        /// The consumer's name.
        consumer: String,
        /// The inbox's (or the running consumer's) error.
        #[source]
        source: cqrs_core::BoxError,
    },
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// `restore` found the archive damaged, truncated or not an archive; nothing was
    /// restored. Exit code 4.
    #[error("bad archive {path}: {reason}")]
    BadArchive {
        /// The archive file.
        path: std::path::PathBuf,
        /// What is wrong, naming the line.
        reason: String,
    },
    /// Reading or writing an archive file failed. Exit code 3.
    #[error("archive file {path}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code this error calls for: 2 for bad usage, 4 when `verify`
    /// found damage or `restore` a bad archive, 3 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Damaged { .. } | Error::BadArchive { .. } => 4,
            _ => 3,
        }
    }
}

impl From<cqrs_core::Error> for Error {
    fn from(e: cqrs_core::Error) -> Self {
        match e {
            cqrs_core::Error::InvalidStreamId { .. }
            | cqrs_core::Error::InvalidInput { .. }
            | cqrs_core::Error::Conflict { .. }
            | cqrs_core::Error::DuplicateEventId { .. }
            | cqrs_core::Error::StreamDeleted { .. }
            | cqrs_core::Error::StreamNotFound { .. }
            | cqrs_core::Error::Unsupported { .. } => Error::Usage(e.to_string()),
            other => Error::Store(other),
        }
    }
}

impl From<ProjectionError> for Error {
    fn from(e: ProjectionError) -> Self {
        Error::Projection(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Output(e)
    }
}
