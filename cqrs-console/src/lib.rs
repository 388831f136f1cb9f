#![doc = include_str!("../README.md")]

mod auth;
mod escape;
mod jobs;
mod live;
mod pages;
mod render;
mod routes;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use cqrs_cli::Operations;
use cqrs_core::{EventStore, SupervisorStatus};
use futures::future::BoxFuture;

pub use escape::escape;

/// What [`Console::before_replay`] returns: held while the replay runs, dropped after
/// it (to restart what was stopped, release a lock).
pub type ReplayGuard = Box<dyn std::any::Any + Send>;

/// Completes when the server begins its graceful shutdown ([`Console::closing_on`]).
type Closing = futures::future::Shared<BoxFuture<'static, ()>>;
type Supervision = Arc<dyn Fn() -> Vec<SupervisorStatus> + Send + Sync>;
type BeforeReplay = Arc<dyn Fn() -> BoxFuture<'static, Result<ReplayGuard, String>> + Send + Sync>;

/// The operations console: an axum [`Router`] of server-rendered pages over an
/// application's [`Operations`] (the same registry its operations subcommand runs), to
/// merge next to its API.
///
/// Pages (under the base path, `/console` by default): the overview (`/`), streams
/// (`/streams`, `/stream`), the global log (`/log`, live tail at `/log/tail`) and
/// actions (`/actions`). Mutating actions (`POST /actions/replay`, `POST
/// /actions/snapshot`) need the [`token`](Self::token); without one configured they are
/// refused.
///
/// # Examples
/// ```
/// use cqrs_cli::Operations;
/// use cqrs_console::Console;
/// use cqrs_core::InMemoryEventStore;
///
/// let ops = Operations::new(InMemoryEventStore::new());
/// let app: axum::Router = axum::Router::new()
///     // .route("/accounts", ...) : the application's own API
///     .merge(Console::new(ops).token(Some("s3cret".into())).router());
/// # drop(app);
/// ```
pub struct Console<S> {
    ops: Arc<Operations<S>>,
    base: String,
    token: Option<String>,
    supervision: Option<Supervision>,
    before_replay: Option<BeforeReplay>,
    closing: Option<Closing>,
}

impl<S> fmt::Debug for Console<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("ops", &self.ops)
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + Clone + Send + Sync + 'static> Console<S> {
    /// A console over `ops`, at `/console`, with actions disabled (no token).
    pub fn new(ops: Operations<S>) -> Self {
        Console {
            ops: Arc::new(ops),
            base: "/console".to_owned(),
            token: None,
            supervision: None,
            before_replay: None,
            closing: None,
        }
    }

    /// Serves the console under `path` (e.g. `/ops`; no trailing slash).
    pub fn base_path(mut self, path: &str) -> Self {
        self.base = format!("/{}", path.trim_matches('/'));
        self
    }

    /// The token that mutating actions need (header `X-Console-Token` or form field
    /// `token`); `None` or an empty token disables them.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// How the projections that run in this process are doing (a
    /// [`Supervisor`](cqrs_core::Supervisor)'s status each), matched by name: one that
    /// is not running, or keeps failing, shows as stopped with its last error.
    pub fn supervision<F>(mut self, status: F) -> Self
    where
        F: Fn() -> Vec<SupervisorStatus> + Send + Sync + 'static,
    {
        self.supervision = Some(Arc::new(status));
        self
    }

    /// Called before a replay the console runs, to stop what must not run beside it (the
    /// projection's live runner, other processes); the guard it returns is dropped when
    /// the replay ends. An error refuses the replay with that message.
    pub fn before_replay<F, Fut>(mut self, prepare: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ReplayGuard, String>> + Send + 'static,
    {
        self.before_replay = Some(Arc::new(move || Box::pin(prepare())));
        self
    }

    /// Ends the live tails (server-sent events) when `signal` completes: give it the
    /// server's shutdown signal, so that a graceful shutdown does not wait for a browser
    /// that keeps a tail open.
    pub fn closing_on<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        let signal: BoxFuture<'static, ()> = Box::pin(signal);
        self.closing = Some(signal.shared());
        self
    }

    /// The console's routes, under its base path, with its security headers (a strict
    /// Content-Security-Policy: scripts and styles only from the console itself).
    pub fn router(self) -> Router {
        routes::router(routes::Shared {
            ops: self.ops,
            base: self.base,
            token: self.token,
            supervision: self.supervision,
            before_replay: self.before_replay,
            closing: self.closing,
            jobs: jobs::Jobs::default(),
        })
    }
}
