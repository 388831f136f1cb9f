//! Containing sled's panics. sled 0.34 panics on some damaged files (`cannot find pid …
//! in view_for_key`, an index out of bounds) instead of returning an error. Every sled
//! call the store makes runs under [`guard`], which turns such a panic into
//! [`Error::Store`] with a [`SledPanicked`] source: the caller gets a typed error, and
//! the process goes on.
//!
//! The panic hook still runs before the panic is caught (Rust prints the message on
//! standard error by default); an application that wants a quiet terminal installs its
//! own hook.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cqrs_core::{Error, RecordedEvent, Result};

/// sled panicked while the store used it, which happens on damaged database files.
/// The source of an [`Error::Store`]; restore the database from a backup or a replica.
#[derive(Debug, thiserror::Error)]
#[error("sled panicked (are the database files damaged?): {message}")]
pub struct SledPanicked {
    message: String,
}

impl SledPanicked {
    fn new(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        SledPanicked { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Runs `f`, turning a panic into [`Error::Store`] with a [`SledPanicked`] source.
pub(crate) fn guard<T, E: From<Error>>(
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panicked(&*payload).into()))
}

/// Runs a read of one chunk; a panic ends the read with one error.
pub(crate) fn guard_chunk<N>(
    f: impl FnOnce() -> (Vec<Result<RecordedEvent>>, Option<N>),
) -> (Vec<Result<RecordedEvent>>, Option<N>) {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| (vec![Err(panicked(&*payload))], None))
}

/// The next item of a sled iterator; a panic becomes one error (the caller then stops).
pub(crate) fn guard_next<I: Iterator<Item = sled::Result<T>>, T>(
    iter: &mut I,
) -> Option<Result<T>> {
    match catch_unwind(AssertUnwindSafe(|| iter.next())) {
        Ok(item) => item.map(|r| r.map_err(|e| Error::store(crate::error::SledError(e)))),
        Err(payload) => Some(Err(panicked(&*payload))),
    }
}

fn panicked(payload: &(dyn Any + Send)) -> Error {
    Error::store(SledPanicked::new(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_store_error_with_its_message() {
        let err = guard::<(), Error>(|| panic!("cannot find pid 7 in view_for_key")).unwrap_err();
        let Error::Store { source } = &err else {
            panic!("{err:?}");
        };
        let panicked = source.downcast_ref::<SledPanicked>().unwrap();
        assert_eq!(panicked.message(), "cannot find pid 7 in view_for_key");
        let err = guard::<(), Error>(|| panic!("index {} out of bounds", 9)).unwrap_err();
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("index 9 out of bounds")
        );
        assert_eq!(guard(|| Ok::<_, Error>(5)).unwrap(), 5);
        let (items, next) = guard_chunk::<u64>(|| panic!("boom"));
        assert!(matches!(items.as_slice(), [Err(Error::Store { .. })]) && next.is_none());
    }
}
