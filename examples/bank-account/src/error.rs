//! The bank's errors: the domain's refusals kept typed, and predicates that the command
//! line (exit codes) and the HTTP API (statuses) branch on.

use std::any::Any;
use std::error::Error as StdError;
use std::panic::PanicHookInfo;
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
    /// The account's stream was deleted (`bank delete`, `bank archive`):
    /// [`is_gone`](Self::is_gone).
    #[error("the account was deleted")]
    Deleted(#[source] BoxError),
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

    /// The account was deleted or archived (HTTP 410, exit 1).
    pub fn is_gone(&self) -> bool {
        matches!(self, BankError::Deleted(_))
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
            CommandError::Invalid(e @ cqrs_core::Error::StreamDeleted { .. }) => {
                BankError::Deleted(e.into())
            }
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

/// The `bank` binary's panic hook: the panic, with its message and location, is logged
/// through `tracing` at error level, and nothing is printed, so that no panic text or
/// backtrace reaches the terminal. A panic that a library contains (cqrs-sled turns
/// sled's into errors) comes back as an error with a message; one that escapes is
/// reported by `main` in one line (see [`panic_message`]), exit 3.
pub fn log_panic(info: &PanicHookInfo<'_>) {
    let location = info.location().map(ToString::to_string);
    let message = panic_message(info.payload());
    tracing::error!(location, message, "panicked");
}

/// The message of a panic's payload: the text of `panic!`, or a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    let text = payload.downcast_ref::<String>().map(String::as_str);
    let text = text.or_else(|| payload.downcast_ref::<&str>().copied());
    text.unwrap_or("a panic without a message")
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

#[cfg(test)]
mod panic_tests {
    use std::io::Write;
    use std::panic::{catch_unwind, set_hook, take_hook};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log written into memory.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_panic_hook_logs_the_panic_through_tracing() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let previous = take_hook();
        set_hook(Box::new(log_panic));
        let caught = tracing::subscriber::with_default(subscriber, || {
            catch_unwind(|| panic!("boom {}", 7)).unwrap_err()
        });
        set_hook(previous);
        assert_eq!(panic_message(&*caught), "boom 7");
        let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("ERROR"), "{logged}");
        assert!(logged.contains("boom 7"), "{logged}");
        assert!(logged.contains("src/error.rs"), "the location: {logged}");
        assert!(!logged.contains("backtrace"), "{logged}");
    }

    #[test]
    fn a_panic_message_is_its_text() {
        let payload = catch_unwind(|| std::panic::panic_any(42)).unwrap_err();
        assert_eq!(panic_message(&*payload), "a panic without a message");
        let payload: Box<dyn Any + Send> = Box::new("static text");
        assert_eq!(panic_message(&*payload), "static text");
    }
}
