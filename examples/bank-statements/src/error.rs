//! The statements service's errors, each with the exit code the command line gives it.

/// A failure of the statements service.
///
/// Handling: [`exit_code`](Error::exit_code) says what a caller does with it: 1 there
/// is no such thing, 2 fix the input, 3 retry later or look at the store or broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing is known of what was asked for (an account without a statement).
    #[error("{0}")]
    NotFound(String),
    /// Bad input: a store or broker URL, a name, an address.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong.
        message: String,
    },
    /// The service's own database failed.
    #[error("the statements store failed: {context}")]
    Store {
        /// What was being done.
        context: String,
        /// The database's error.
        #[source]
        source: cqrs_core::BoxError,
    },
    /// The broker failed (unreachable, or no such stream).
    #[error("the broker failed: {context}")]
    Broker {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: cqrs_core::BoxError,
    },
    /// A running `statements serve` could not be asked (`--server`).
    #[error("the server at {server} failed")]
    Server {
        /// The server's address.
        server: String,
        /// Why.
        #[source]
        source: cqrs_core::BoxError,
    },
}

/// The statements service's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Bad input, with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    /// A store failure while doing `context`.
    pub fn store(context: impl Into<String>, source: impl Into<cqrs_core::BoxError>) -> Self {
        Error::Store {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A broker failure while doing `context`.
    pub fn broker(context: impl Into<String>, source: impl Into<cqrs_core::BoxError>) -> Self {
        Error::Broker {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The command line's exit code: 1 not found, 2 bad input, 3 a store, broker or
    /// server failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotFound(_) => 1,
            Error::InvalidInput { .. } => 2,
            Error::Store { .. } | Error::Broker { .. } | Error::Server { .. } => 3,
        }
    }
}

/// An error and its sources, joined with `": "` (a source that its parent's message
/// already ends with is left out).
pub fn full_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
