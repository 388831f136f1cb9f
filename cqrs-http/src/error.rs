//! The errors of this crate.

use std::time::Duration;

/// What can go wrong around serving: installing the shutdown signal handlers, and
/// reading a request body (the error a handler sees when its body read fails).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`shutdown_signal`](crate::shutdown_signal) was called outside a Tokio runtime.
    ///
    /// Handling: a programming error; call it from inside the runtime that serves.
    #[error("cannot listen for shutdown signals outside a Tokio runtime")]
    NoRuntime,
    /// The operating system refused a signal handler.
    ///
    /// Handling: fatal at start-up; report it and exit.
    #[error("cannot listen for {signal}")]
    Signal {
        /// The signal, e.g. `SIGTERM`.
        signal: &'static str,
        /// Why it was refused.
        #[source]
        source: std::io::Error,
    },
    /// The client did not send the whole request body within the
    /// [`request_body_timeout`](crate::ServeConfig::request_body_timeout).
    ///
    /// Handling: answer `400` or `408` (axum's extractors answer `400`); the connection
    /// is closed after the response.
    #[error("the request body was not received within {limit:?}")]
    BodyTimedOut {
        /// The timeout that ran out.
        limit: Duration,
    },
    /// The request body could not be read (the client went away, or sent a malformed
    /// chunked body).
    ///
    /// Handling: answer `400`, or nothing: the client is usually gone.
    #[error("cannot read the request body")]
    BodyRead(#[source] hyper::Error),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
