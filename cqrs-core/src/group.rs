//! Several projection runners in one process, stopped together.

use std::fmt;
use std::future::Future;
use std::pin::pin;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{CheckpointStrategy, Codec, Inspect, Projection, ProjectionError, ProjectionRunner};

type RunFn = Box<
    dyn FnOnce(watch::Receiver<bool>) -> BoxFuture<'static, Result<(), ProjectionError>> + Send,
>;

/// Several projections run in one process, each in its own task.
///
/// [`run_until`](Self::run_until) runs them all live until `shutdown` completes. If one
/// stops with an error (or panics), the others are asked to stop at their next batch
/// boundary and the first error is returned.
///
/// # Examples
/// ```
/// # use cqrs_core::{BoxError, DomainEvent, Envelope, Projection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// # #[derive(Debug, Default)]
/// # struct Total(&'static str);
/// # impl Projection for Total {
/// #     type Event = CounterEvent;
/// #     fn name(&self) -> &str { self.0 }
/// #     async fn apply(&mut self, _: &mut (), _: &[Envelope<CounterEvent>]) -> Result<(), BoxError> { Ok(()) }
/// # }
/// use cqrs_core::{InMemoryEventStore, ProjectionGroup, ProjectionRunner};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let group = ProjectionGroup::new()
///     .with(ProjectionRunner::new(store.clone(), Total("a")))
///     .with(ProjectionRunner::new(store.clone(), Total("b")));
/// group.run_until(tokio::time::sleep(std::time::Duration::from_millis(10))).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct ProjectionGroup {
    runners: Vec<(String, RunFn)>,
}

impl fmt::Debug for ProjectionGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.runners.iter().map(|(name, _)| name))
            .finish()
    }
}

impl ProjectionGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a runner.
    pub fn with<S, P, K, C>(mut self, mut runner: ProjectionRunner<S, P, K, C>) -> Self
    where
        S: Inspect + 'static,
        K: CheckpointStrategy,
        P: Projection<K::Context>,
        C: Codec,
    {
        let name = runner.projection().name().to_owned();
        let run: RunFn = Box::new(move |mut stop: watch::Receiver<bool>| {
            Box::pin(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                runner.run_until(shutdown).await
            })
        });
        self.runners.push((name, run));
        self
    }

    /// The names of the projections in the group.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.runners.iter().map(|(name, _)| name.as_str())
    }

    /// Runs every projection live until `shutdown` completes or one of them fails.
    ///
    /// # Errors
    /// The first [`ProjectionError`] of any runner; a panic becomes
    /// [`ProjectionError::Panicked`].
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ProjectionError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        for (name, run) in self.runners {
            let handle = tasks.spawn(run(stop_rx.clone()));
            names.insert(handle.id(), name);
        }
        let mut first_error = None;
        let mut shutdown = pin!(shutdown);
        let mut stopping = false;
        loop {
            tokio::select! {
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
                joined = tasks.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    let error = match joined {
                        Ok((_, Ok(()))) => None,
                        Ok((_, Err(e))) => Some(e),
                        Err(join_error) => {
                            let projection = names.get(&join_error.id()).cloned().unwrap_or_default();
                            let message = match join_error.try_into_panic() {
                                Ok(payload) => panic_message(payload.as_ref()),
                                Err(e) => e.to_string(),
                            };
                            Some(ProjectionError::Panicked { projection, message })
                        }
                    };
                    if let Some(e) = error {
                        tracing::error!(error = %e, "projection stopped; stopping the group");
                        first_error.get_or_insert(e);
                        stopping = true;
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
