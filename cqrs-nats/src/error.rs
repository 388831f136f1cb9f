//! The error type of `cqrs-nats`.

use cqrs_core::BoxError;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when connecting to NATS or setting up the JetStream stream.
/// (Publishing reports [`cqrs_core::PublishError`] per message instead.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached.
    ///
    /// Handling: check the URL and that the server runs; retry later.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The URL that was tried.
        url: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A JetStream management request failed (creating, reading or deleting a stream).
    ///
    /// Handling: check that JetStream is enabled on the server and that the stream's
    /// settings are allowed (its subjects may overlap another stream's).
    #[error("JetStream failed while {operation}")]
    JetStream {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The JetStream stream exists but does not capture the scheme's subjects.
    ///
    /// Handling: add the subjects to the stream, or use another stream name; the relay
    /// would otherwise have every message refused.
    #[error("JetStream stream {stream} does not capture subjects {subjects}")]
    StreamSubjects {
        /// The stream's name.
        stream: String,
        /// The subjects it must capture.
        subjects: String,
    },
}
