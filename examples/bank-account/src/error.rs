//! The bank's errors: the domain's refusals kept typed, and predicates that the command
//! line (exit codes) and the HTTP API (statuses) branch on.

use std::error::Error as StdError;
use std::time::Duration;

use cqrs_core::{BoxError, CommandError};

use crate::domain::{AccountError, InvalidText, TransferError};

/// The result of a bank operation.
pub type Result<T, E = BankError> = std::result::Result<T, E>;

/// Why a bank operation failed. Branch on the predicates, not on the variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// An account refused the command: [`is_rejected`](Self::is_rejected), or
    /// [`is_not_found`](Self::is_not_found) for [`AccountError::Unknown`], or
    /// [`is_invalid_input`](Self::is_invalid_input) for [`AccountError::InvalidOwner`].
    #[error(transparent)]
    Account(#[from] AccountError),
    /// A transfer refused the command: as for [`Account`](Self::Account).
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Input that cannot be used (a bad account id, an unknown store URL); nothing was
    /// written: [`is_invalid_input`](Self::is_invalid_input).
    #[error("invalid input")]
    InvalidInput(#[source] BoxError),
    /// Concurrent writers kept winning: [`is_conflict`](Self::is_conflict); try again.
    #[error("too many concurrent changes, try again")]
    Conflict(#[source] BoxError),
    /// The store failed, or a projection stopped: [`is_unavailable`](Self::is_unavailable).
    #[error("the store failed")]
    Store(#[source] BoxError),
    /// The projections had not applied a write (which is done) within the deadline:
    /// [`is_unavailable`](Self::is_unavailable).
    #[error("the projections did not catch up within {0:?}")]
    NotCaughtUp(Duration),
}

impl BankError {
    /// The domain refused it (HTTP 422, exit 1).
    pub fn is_rejected(&self) -> bool {
        let domain = matches!(self, BankError::Account(_) | BankError::Transfer(_));
        domain && !self.is_invalid_input()
    }

    /// The account or transfer does not exist (HTTP 404, exit 1).
    pub fn is_not_found(&self) -> bool {
        use {AccountError as A, TransferError as T};
        matches!(
            self,
            BankError::Account(A::Unknown) | BankError::Transfer(T::Unknown)
        )
    }

    /// The input was refused before anything was written (HTTP 400, exit 2).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            BankError::InvalidInput(_) | BankError::Account(AccountError::InvalidOwner(_))
        )
    }

    /// Concurrent writers kept winning (HTTP 409, exit 3).
    pub fn is_conflict(&self) -> bool {
        matches!(self, BankError::Conflict(_))
    }

    /// The store or a projection is failing or behind (HTTP 503, exit 3).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BankError::Store(_) | BankError::NotCaughtUp(_))
    }

    /// A [`Store`](Self::Store) failure.
    pub fn store(e: impl Into<BoxError>) -> Self {
        BankError::Store(e.into())
    }
}

impl<E: Into<BankError> + StdError + Send + Sync + 'static> From<CommandError<E>> for BankError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(reason) => reason.into(),
            CommandError::Invalid(e) => BankError::InvalidInput(e.into()),
            e if e.is_conflict() => BankError::Conflict(e.into()),
            e => BankError::Store(e.into()),
        }
    }
}

impl From<InvalidText> for BankError {
    fn from(e: InvalidText) -> Self {
        BankError::InvalidInput(e.into())
    }
}

impl From<cqrs_core::Error> for BankError {
    fn from(e: cqrs_core::Error) -> Self {
        BankError::Store(e.into())
    }
}

impl From<cqrs_core::ProjectionError> for BankError {
    fn from(e: cqrs_core::ProjectionError) -> Self {
        BankError::Store(e.into())
    }
}

/// An error's message with all its sources, `: `-separated.
pub fn full_chain(e: &(dyn StdError + 'static)) -> String {
    let chain = std::iter::successors(Some(e), |&e| e.source());
    let mut messages: Vec<String> = chain.map(ToString::to_string).collect();
    // A source that its parent's message already quotes adds nothing.
    messages.dedup_by(|source, parent| parent.ends_with(source.as_str()));
    messages.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Field;

    #[test]
    fn a_bad_owner_is_invalid_input_not_a_rejection() {
        let bad = Field::Owner.normalize("").unwrap_err();
        let e = BankError::from(AccountError::InvalidOwner(bad.clone()));
        assert!(e.is_invalid_input() && !e.is_rejected(), "{e:?}");
        assert_eq!(full_chain(&e), "the owner name is empty");
        let e = BankError::from(bad);
        assert!(e.is_invalid_input() && !e.is_rejected(), "{e:?}");
        assert_eq!(full_chain(&e), "invalid input: the owner name is empty");
        assert!(BankError::from(AccountError::Closed).is_rejected());
    }
}
