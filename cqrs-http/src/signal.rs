//! The shutdown signal: SIGINT or SIGTERM.

use std::future::Future;

use crate::{Error, Result};

/// A future that completes when the process receives SIGINT (Ctrl-C) or SIGTERM (what
/// `kill`, systemd and Kubernetes send to stop a service), for [`serve`](crate::serve)'s
/// `shutdown`. On other platforms than Unix it completes on Ctrl-C.
///
/// The handlers are installed when this is called, not when the future is first polled,
/// so a signal that arrives in between is not missed. While they are installed, the
/// signals no longer end the process by themselves.
///
/// # Errors
///
/// [`Error::NoRuntime`] outside a Tokio runtime; [`Error::Signal`] if the operating
/// system refuses a handler.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cqrs_http::Error> {
/// let stop = cqrs_http::shutdown_signal()?;
/// # drop(stop);
/// # Ok(())
/// # }
/// ```
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::NoRuntime);
    }
    imp::install()
}

#[cfg(unix)]
mod imp {
    use tokio::signal::unix::{SignalKind, signal};

    use super::*;

    pub(super) fn install() -> Result<impl Future<Output = ()> + Send + 'static> {
        let handler = |kind, name| {
            signal(kind).map_err(|source| Error::Signal {
                signal: name,
                source,
            })
        };
        let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
        let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;

    pub(super) fn install() -> Result<impl Future<Output = ()> + Send + 'static> {
        Ok(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C; stopping");
            }
        })
    }
}
