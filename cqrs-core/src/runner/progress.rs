//! Progress of a rebuild.

use std::time::Duration;

use crate::Position;

/// Progress of a rebuild, reported after each batch once the log is counted, and after
/// the last one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Records read so far (wanted or not; where the runner
    /// [reads by type](crate::ProjectionRunner::with_type_filter), the records of the
    /// types it asks for).
    pub done: u64,
    /// Records in the log after the starting point when the work began (counted as
    /// `done` is).
    pub total: u64,
    /// Time since the work began.
    pub elapsed: Duration,
    /// The position reached.
    pub position: Position,
}

impl Progress {
    /// Records per second so far.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// Estimated time left at the current rate (`None` before any progress).
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }
}
