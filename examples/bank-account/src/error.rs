//! The bank's errors: what a command line exit code and an HTTP status are chosen from.

use cqrs_core::CommandError;

/// Why a bank operation failed, with the exit code and HTTP status it calls for.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The domain refused it (insufficient funds, unknown account, ...): exit 1, HTTP 422
    /// (404 for an unknown account).
    #[error("{0}")]
    Rejected(String),
    /// The account does not exist: exit 1, HTTP 404.
    #[error("unknown account {0}")]
    UnknownAccount(String),
    /// Bad input (an amount or id that cannot be used): exit 2, HTTP 400.
    #[error("{0}")]
    BadInput(String),
    /// Concurrent writers kept winning: exit 3, HTTP 409.
    #[error("too many concurrent changes, try again: {0}")]
    Conflict(String),
    /// The store failed: exit 3, HTTP 503.
    #[error("store failure: {0}")]
    Store(String),
}

impl BankError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            BankError::Rejected(_) | BankError::UnknownAccount(_) => 1,
            BankError::BadInput(_) => 2,
            BankError::Conflict(_) | BankError::Store(_) => 3,
        }
    }

    pub(crate) fn store(e: impl std::error::Error + 'static) -> Self {
        BankError::Store(full_chain(&e))
    }
}

impl<E: std::error::Error + 'static> From<CommandError<E>> for BankError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(reason) => BankError::Rejected(reason.to_string()),
            CommandError::Conflict {
                stream, attempts, ..
            } => BankError::Conflict(format!("{stream} after {attempts} attempts")),
            CommandError::Invalid(e) => BankError::BadInput(e.to_string()),
            other => BankError::store(other),
        }
    }
}

/// An error's message with all its sources, `: `-separated.
pub fn full_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
