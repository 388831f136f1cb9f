//! Supervision: a long-running job (a projection's runner) restarted with backoff when it
//! stops with an error, and its state kept where a caller can see it.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

/// What a [`Supervisor`] reports about its job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SupervisorStatus {
    /// The job's name (a projection's name).
    pub name: String,
    /// Whether the job is running now (false while it waits to restart, and once the
    /// supervisor has ended).
    pub running: bool,
    /// How many times it was restarted after an error.
    pub restarts: u64,
    /// The last error it stopped with (its whole `source` chain), if it ever failed.
    pub last_error: Option<String>,
    /// Since when it has not been running, if it is not.
    pub stopped_since: Option<SystemTime>,
    /// Since when its current run has been going, if it is running.
    pub running_since: Option<SystemTime>,
}

impl SupervisorStatus {
    /// Whether the job can be taken as working: it is running, and either it never
    /// failed or its current run has lasted `settle` (a job that fails at once on a
    /// poisoned event is running only briefly between its restarts: never healthy).
    /// For a readiness check.
    pub fn is_healthy(&self, settle: Duration) -> bool {
        let settled = |since: SystemTime| since.elapsed().is_ok_and(|ran| ran >= settle);
        self.running && (self.last_error.is_none() || self.running_since.is_some_and(settled))
    }
}

/// Restarts a failing job with capped exponential backoff until shutdown, and records
/// each stop in a [`SupervisorStatus`].
///
/// The job is made by a factory, called once per run with a [`StopSignal`] that
/// completes on shutdown: a projection runner is built afresh (from its stored
/// checkpoint) and given the signal as its shutdown, e.g.
/// `|stop| async move { runner().run_until(stop.stopped()).await }`. A run that fails is
/// logged (`tracing` at `warn`), recorded, and started again after a delay that doubles
/// from [`initial_backoff`](Self::with_backoff) up to its cap, and goes back to the
/// initial delay after a run that lasted longer than the cap. A run that returns `Ok`
/// has finished its work: the supervisor ends.
///
/// Cloning a supervisor clones a handle to the same status.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use cqrs_core::Supervisor;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let supervisor = Supervisor::new("totals")
///     .with_backoff(Duration::from_millis(1), Duration::from_millis(10));
/// let mut failures = 2;
/// supervisor
///     .run(
///         |stop| {
///             failures -= 1;
///             let fail = failures >= 0;
///             async move {
///                 if fail {
///                     return Err("not yet");
///                 }
///                 drop(stop); // a real job runs until `stop.stopped()` completes
///                 Ok(())
///             }
///         },
///         std::future::pending(),
///     )
///     .await;
/// assert_eq!(supervisor.status().restarts, 2);
/// assert_eq!(supervisor.status().last_error.as_deref(), Some("not yet"));
/// # }
/// ```
#[derive(Clone)]
pub struct Supervisor {
    status: Arc<Mutex<SupervisorStatus>>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("status", &self.status())
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// Completes when the [`Supervisor`] is shut down: hand [`stopped`](Self::stopped) to
/// the job as its shutdown future.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Completes once shutdown was requested (at once if it already was).
    pub async fn stopped(mut self) {
        // An error means the supervisor is gone: stop as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl Supervisor {
    /// A supervisor of the job called `name`, with backoff from 100 ms up to 30 s.
    pub fn new(name: impl Into<String>) -> Self {
        Supervisor {
            status: Arc::new(Mutex::new(SupervisorStatus {
                name: name.into(),
                running: false,
                restarts: 0,
                last_error: None,
                stopped_since: Some(SystemTime::now()),
                running_since: None,
            })),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Sets the first delay before a restart and the cap of the doubling delays.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The job's status now.
    pub fn status(&self) -> SupervisorStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SupervisorStatus> {
        // The status is plain data, valid whatever a panicking holder left: go on.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_running(&self, running: bool) {
        let mut status = self.lock();
        crate::telemetry::running(&status.name, running);
        status.running = running;
        status.running_since = match (running, status.running_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(SystemTime::now()),
            (false, _) => None,
        };
        status.stopped_since = match (running, status.stopped_since) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(SystemTime::now()),
        };
    }

    /// Runs jobs made by `factory` until one returns `Ok` or `shutdown` completes,
    /// restarting each that fails. On shutdown the running job gets its [`StopSignal`]
    /// and is awaited (a projection runner stops at its next batch boundary); a wait
    /// between runs ends at once.
    ///
    /// Cancel-safe in the sense that dropping the future drops the running job.
    pub async fn run<F, Fut, E>(&self, mut factory: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut(StopSignal) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (stop, signal) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        let mut backoff = self.initial_backoff;
        loop {
            self.set_running(true);
            let started = Instant::now();
            let mut job = pin!(factory(StopSignal(signal.clone())));
            let ended = tokio::select! {
                ended = job.as_mut() => ended,
                () = shutdown.as_mut() => {
                    let _ = stop.send(true);
                    let ended = job.await;
                    self.record(ended.err().map(Into::into));
                    self.set_running(false);
                    return;
                }
            };
            self.set_running(false);
            let Err(error) = ended else {
                return;
            };
            let error = self.record(Some(error.into()));
            if started.elapsed() > self.max_backoff {
                backoff = self.initial_backoff;
            }
            let name = self.lock().name.clone();
            tracing::warn!(job = %name, retry_in = ?backoff, %error, "stopped with an error, restarting");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.as_mut() => return,
            }
            backoff = next_backoff(backoff, self.max_backoff);
            let mut status = self.lock();
            status.restarts += 1;
            crate::telemetry::restarted(&status.name);
        }
    }

    /// Records the error a run ended with, if any, and returns its text.
    fn record(&self, error: Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
        let Some(error) = error else {
            return String::new();
        };
        let chain = std::iter::successors(Some(&*error as &dyn std::error::Error), |e| e.source());
        let text = chain
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        self.lock().last_error = Some(text.clone());
        text
    }
}

/// The delay after `current`: doubled, at most `max`.
fn next_backoff(current: Duration, max: Duration) -> Duration {
    current.saturating_mul(2).min(max)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A guard against a hang, never a timing check.
    const DEADLINE: Duration = Duration::from_secs(60);

    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(DEADLINE, future)
            .await
            .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
    }

    #[tokio::test]
    async fn a_job_that_fails_three_times_is_restarted_then_stopped_on_shutdown() {
        let supervisor = Supervisor::new("flaky")
            .with_backoff(Duration::from_millis(1), Duration::from_millis(4));
        let runs = Arc::new(AtomicU32::new(0));
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (running, mut running_rx) = watch::channel(false);
        let task = {
            let (supervisor, runs) = (supervisor.clone(), runs.clone());
            tokio::spawn(async move {
                let factory = |stop: StopSignal| {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    let running = running.clone();
                    async move {
                        if run <= 3 {
                            return Err(format!("failure {run}"));
                        }
                        let _ = running.send(true);
                        stop.stopped().await;
                        Ok(())
                    }
                };
                let shutdown = async {
                    let _ = shutdown_rx.await;
                };
                supervisor.run(factory, shutdown).await;
            })
        };
        within("the fourth run", running_rx.wait_for(|up| *up))
            .await
            .expect("the job reports running");
        let status = supervisor.status();
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(status.restarts, 3);
        assert!(status.running, "{status:?}");
        assert_eq!(status.stopped_since, None);
        assert_eq!(status.last_error.as_deref(), Some("failure 3"));

        shutdown.send(()).expect("the supervisor listens");
        within("the supervisor's end", task)
            .await
            .expect("no panic");
        let status = supervisor.status();
        assert!(!status.running);
        assert!(status.stopped_since.is_some());
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "not restarted after shutdown"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_before_a_restart() {
        // A backoff far longer than the test's deadline: only shutdown can end it.
        let supervisor = Supervisor::new("broken")
            .with_backoff(Duration::from_secs(3600), Duration::from_secs(3600));
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (failed, failed_rx) = tokio::sync::oneshot::channel::<()>();
        let mut failed = Some(failed);
        let task = {
            let supervisor = supervisor.clone();
            tokio::spawn(async move {
                let factory = |_: StopSignal| {
                    if let Some(failed) = failed.take() {
                        let _ = failed.send(());
                    }
                    async { Err::<(), _>(std::io::Error::other("disk on fire")) }
                };
                let shutdown = async {
                    let _ = shutdown_rx.await;
                };
                supervisor.run(factory, shutdown).await;
            })
        };
        within("the first run", failed_rx).await.expect("it ran");
        shutdown.send(()).expect("the supervisor listens");
        within("the supervisor's end", task)
            .await
            .expect("no panic");
        let status = supervisor.status();
        assert!(!status.running);
        assert_eq!(status.restarts, 0);
        assert_eq!(status.last_error.as_deref(), Some("disk on fire"));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let max = Duration::from_millis(400);
        let mut delays = vec![Duration::from_millis(100)];
        for _ in 0..4 {
            delays.push(next_backoff(delays[delays.len() - 1], max));
        }
        let millis: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [100, 200, 400, 400, 400]);
    }
}
