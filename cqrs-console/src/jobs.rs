//! The actions that run in the background (replay, snapshot) and their progress, which
//! the actions page polls until it reaches 100 %.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_core::{Position, ProjectionError, StreamId};
use serde::Serialize;

/// How many finished jobs are kept for their pages to read.
const KEPT: usize = 32;

/// One action's progress, as `GET <base>/jobs/<id>` answers it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Job {
    pub(crate) id: u64,
    /// `replay` or `snapshot`.
    pub(crate) kind: &'static str,
    /// The projection replayed, or the stream(s) snapshotted.
    pub(crate) target: String,
    pub(crate) done: u64,
    pub(crate) total: u64,
    /// `running`, `done` or `failed`.
    pub(crate) state: &'static str,
    /// What it did, or why it failed.
    pub(crate) message: String,
    pub(crate) percent: u64,
}

/// Where a projection stopped, from a replay the console ran.
#[derive(Debug, Clone)]
pub(crate) struct StoppedAt {
    pub(crate) event: Option<(StreamId, u64, Position, String)>,
    pub(crate) error: String,
}

impl StoppedAt {
    pub(crate) fn from_error(e: &cqrs_cli::Error) -> Self {
        let event =
            match std::error::Error::source(e).and_then(|s| s.downcast_ref::<ProjectionError>()) {
                Some(ProjectionError::Stopped {
                    stream,
                    version,
                    position,
                    event_id,
                    ..
                }) => Some((stream.clone(), *version, *position, event_id.to_string())),
                _ => None,
            };
        StoppedAt {
            event,
            error: chain(e),
        }
    }
}

/// An error and its causes, `: `-separated.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    jobs: VecDeque<Job>,
    /// Projections whose last console replay failed, and where.
    failed: Vec<(String, StoppedAt)>,
}

/// The jobs of one console, shared by its handlers and the tasks that run them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jobs(Arc<Mutex<Inner>>);

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a job unless one is running (one action at a time: a replay must run
    /// alone); `None` if one is.
    pub(crate) fn start(&self, kind: &'static str, target: String) -> Option<u64> {
        let mut inner = self.lock();
        if inner.jobs.iter().any(|j| j.state == "running") {
            return None;
        }
        inner.next += 1;
        let id = inner.next;
        if inner.jobs.len() >= KEPT {
            inner.jobs.pop_front();
        }
        inner.jobs.push_back(Job {
            id,
            kind,
            target,
            done: 0,
            total: 0,
            state: "running",
            message: String::new(),
            percent: 0,
        });
        Some(id)
    }

    pub(crate) fn progress(&self, id: u64, done: u64, total: u64) {
        if let Some(job) = self.lock().jobs.iter_mut().find(|j| j.id == id) {
            job.done = done;
            job.total = total.max(done);
            // 100 % only once it has finished.
            job.percent = (done.saturating_mul(100) / job.total.max(1)).min(99);
        }
    }

    pub(crate) fn finish(&self, id: u64, outcome: Result<String, String>) {
        if let Some(job) = self.lock().jobs.iter_mut().find(|j| j.id == id) {
            match outcome {
                Ok(message) => {
                    (job.state, job.message, job.percent) = ("done", message, 100);
                    job.done = job.total.max(job.done);
                }
                Err(message) => (job.state, job.message) = ("failed", message),
            }
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<Job> {
        self.lock().jobs.iter().find(|j| j.id == id).cloned()
    }

    /// The latest jobs, newest first.
    pub(crate) fn recent(&self) -> Vec<Job> {
        self.lock().jobs.iter().rev().cloned().collect()
    }

    /// Records how a replay of `projection` ended: a failure is shown as the
    /// projection's state until a replay succeeds.
    pub(crate) fn replayed(&self, projection: &str, stopped: Option<StoppedAt>) {
        let mut inner = self.lock();
        inner.failed.retain(|(name, _)| name != projection);
        if let Some(stopped) = stopped {
            inner.failed.push((projection.to_owned(), stopped));
        }
    }

    pub(crate) fn failed(&self, projection: &str) -> Option<StoppedAt> {
        let inner = self.lock();
        let found = inner.failed.iter().find(|(name, _)| name == projection);
        found.map(|(_, s)| s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_at_a_time_and_100_only_when_done() {
        let jobs = Jobs::default();
        let id = jobs.start("replay", "accounts".into()).unwrap();
        assert!(jobs.start("snapshot", "all".into()).is_none());
        jobs.progress(id, 10, 10);
        assert_eq!(jobs.get(id).unwrap().percent, 99);
        jobs.finish(id, Ok("replayed".into()));
        let job = jobs.get(id).unwrap();
        assert_eq!((job.state, job.percent, job.done), ("done", 100, 10));
        assert!(jobs.start("snapshot", "all".into()).is_some());
    }
}
