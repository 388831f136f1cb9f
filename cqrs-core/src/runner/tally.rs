//! Counting the log beside a pass: progress totals and lag without holding up the reads.

use std::future::Future;
use std::pin::pin;

use futures::FutureExt;
use futures::future::{BoxFuture, Either};

use crate::Result;

/// A count of the log ([`Inspect::count_events`](crate::Inspect::count_events)) that runs
/// beside a pass's reads, applies and saves, on the same task.
///
/// Counting a long log is a scan of its own (on PostgreSQL, a few hundred milliseconds per
/// million events): awaited before the first read, it held a rebuild up for as long.
/// Polled beside the pass's own work, it costs the pass nothing while it waits on the
/// store.
#[derive(Default)]
pub(super) struct Tally<'a> {
    /// The count in flight.
    counting: Option<BoxFuture<'a, Result<u64>>>,
    /// Records the pass had read when the count started (it counts what comes after).
    from_done: u64,
    /// The count, once it is in.
    counted: Option<Result<u64>>,
    /// Whether the count failed (its error was taken).
    failed: bool,
}

impl<'a> Tally<'a> {
    /// Starts counting the records after the `done` already read.
    pub(super) fn start(
        &mut self,
        count: impl Future<Output = Result<u64>> + Send + 'a,
        done: u64,
    ) {
        self.counting = Some(count.boxed());
        self.from_done = done;
        self.counted = None;
        self.failed = false;
    }

    /// Whether a count was started (in flight, in, or failed).
    pub(super) fn started(&self) -> bool {
        self.counting.is_some() || self.counted.is_some() || self.failed
    }

    /// Runs `work` to its end, polling the count beside it meanwhile.
    pub(super) async fn beside<T>(&mut self, work: impl Future<Output = T>) -> T {
        let Some(counting) = self.counting.as_mut() else {
            return work.await;
        };
        // The count is polled first: a count that is ready at once (an in-memory store)
        // is in before the work's first step.
        let work = pin!(work);
        let (counted, work) = match futures::future::select(counting.as_mut(), work).await {
            Either::Left(both) => both,
            Either::Right((out, _)) => return out,
        };
        self.counting = None;
        self.counted = Some(counted);
        work.await
    }

    /// Waits for the count, if one is in flight.
    pub(super) async fn finish(&mut self) {
        if let Some(counting) = self.counting.take() {
            self.counted = Some(counting.await);
        }
    }

    /// The records after the first `from_done` of the pass, once counted; the count's
    /// error if it failed (taken: a later call returns `None`).
    pub(super) fn total(&mut self) -> Option<Result<u64>> {
        match self.counted.take()? {
            Ok(n) => {
                self.counted = Some(Ok(n));
                Some(Ok(self.from_done.saturating_add(n)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
