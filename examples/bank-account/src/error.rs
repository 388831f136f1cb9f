//! The bank's errors: the domain's refusals kept typed, and predicates that the command
//! line (exit codes) and the HTTP API (statuses) branch on.

use std::time::Duration;

use cqrs_core::{BoxError, CommandError};

use crate::domain::{AccountError, TransferError};

/// Why a bank operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// An account refused the command (insufficient funds, unknown account, ...).
    ///
    /// Handling: [`is_rejected`](Self::is_rejected) (exit 1, HTTP 422), or
    /// [`is_not_found`](Self::is_not_found) for [`AccountError::Unknown`] (HTTP 404).
    #[error(transparent)]
    Account(#[from] AccountError),
    /// A transfer refused the command (to the same account, unknown transfer, ...).
    ///
    /// Handling: as for [`Account`](Self::Account).
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Input that cannot be used: an account id that is not a valid stream id, an
    /// unknown store URL. Nothing was written.
    ///
    /// Handling: [`is_invalid_input`](Self::is_invalid_input) (exit 2, HTTP 400).
    #[error("invalid input: {0}")]
    InvalidInput(#[source] BoxError),
    /// Concurrent writers kept winning for longer than the retry policy.
    ///
    /// Handling: [`is_conflict`](Self::is_conflict) (exit 3, HTTP 409); try again.
    #[error("too many concurrent changes, try again")]
    Conflict(#[source] BoxError),
    /// The store failed, or a projection stopped.
    ///
    /// Handling: [`is_unavailable`](Self::is_unavailable) (exit 3, HTTP 503).
    #[error("the store failed")]
    Store(#[source] BoxError),
    /// The projections had not applied a write within the deadline (the read model or
    /// the process manager is stopped, or far behind).
    ///
    /// Handling: [`is_unavailable`](Self::is_unavailable); the write itself is done.
    #[error("the projections did not catch up within {waited:?}")]
    NotCaughtUp {
        /// How long it waited.
        waited: Duration,
    },
}

impl BankError {
    /// The domain refused it (HTTP 422 unless [`is_not_found`](Self::is_not_found)).
    pub fn is_rejected(&self) -> bool {
        matches!(self, BankError::Account(_) | BankError::Transfer(_))
    }

    /// The account or transfer does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            BankError::Account(AccountError::Unknown) | BankError::Transfer(TransferError::Unknown)
        )
    }

    /// The input was refused before anything was written.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, BankError::InvalidInput(_))
    }

    /// Concurrent writers kept winning.
    pub fn is_conflict(&self) -> bool {
        matches!(self, BankError::Conflict(_))
    }

    /// The store or a projection is failing or behind: try later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BankError::Store(_) | BankError::NotCaughtUp { .. })
    }

    pub(crate) fn store(e: impl Into<BoxError>) -> Self {
        BankError::Store(e.into())
    }
}

impl<E: Into<BankError> + std::error::Error + Send + Sync + 'static> From<CommandError<E>>
    for BankError
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(reason) => reason.into(),
            e if e.is_conflict() => BankError::Conflict(e.into()),
            CommandError::Invalid(e) => BankError::InvalidInput(e.into()),
            e => BankError::Store(e.into()),
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
