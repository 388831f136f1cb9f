//! One pass of a runner over the log: read (by type where the store can), apply in
//! batches beside the next read, checkpoint as the cadence says, count beside.

use std::pin::pin;
use std::time::Instant;

use futures::{FutureExt, StreamExt};
use tracing::{Instrument, field};

use super::batch::{Batch, EventRef, PassError, apply_batch, save};
use super::tally::Tally;
use super::{Progress, ProjectionRunner};
use crate::telemetry;
use crate::{
    CheckpointStrategy, Codec, DomainEvent, Envelope, Error, Inspect, LogItem, Position, Projection,
};

impl<S, P, K, C> ProjectionRunner<S, P, K, C>
where
    S: Inspect,
    K: CheckpointStrategy,
    P: Projection<K::Context>,
    C: Codec,
{
    /// One read of the log from `position` to its end.
    pub(super) async fn pass(
        &mut self,
        name: &str,
        position: &mut Position,
        done: &mut u64,
        report: &mut Option<Report<'_>>,
        should_stop: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<(), PassError> {
        let Self {
            store,
            projection,
            strategy,
            codec,
            config,
            cadence,
            read_ahead,
            by_type,
        } = self;
        // The stored types to ask for, when the store can skip the others.
        let types = (*by_type && store.filters_types())
            .then(|| codec.stored_types(P::Event::EVENT_TYPES))
            .flatten();
        let items = match &types {
            Some(types) => store
                .read_all_of_types(*position, None, types)
                .left_stream(),
            None => store
                .read_all(*position, None)
                .map(|read| read.map(LogItem::Event))
                .right_stream(),
        };
        let mut chunks = pin!(items.chunks(config.batch_size.max(1)));
        // The log's length after `position` (the records of those types): for progress,
        // counted from the start of the pass; for the lag alone, from the first full
        // batch (a query, run beside the reads and applies, not before them).
        let count = |after: Position| match &types {
            Some(types) => store.count_events_of_types(after, types).left_future(),
            None => store.count_events(after).right_future(),
        };
        let mut tally = Tally::default();
        if report.as_ref().is_some_and(|(_, total, _)| total.is_none()) {
            tally.start(count(*position), *done);
        }
        // The checkpoint applied but not saved yet, and what was read since the last save.
        let mut unsaved: Option<Position> = None;
        let (mut read_since_save, mut saved_at) = (0u64, Instant::now());
        // On a failure, the checkpoint applied but not saved yet is saved first, so the
        // checkpoint is where the read model is (just before the failing batch).
        macro_rules! fail {
            ($error:expr) => {{
                let error = $error;
                if let Some(checkpoint) = unsaved {
                    save(strategy, name, config.retry, checkpoint).await?;
                }
                return Err(error);
            }};
        }
        let mut pending = tally.beside(chunks.next()).await;
        while let Some(chunk) = pending.take() {
            let full = chunk.len() >= config.batch_size.max(1);
            let mut read = 0u64;
            let mut newest = None;
            let mut batch: Vec<Envelope<P::Event>> = Vec::with_capacity(chunk.len());
            let mut end = *position;
            for item in chunk {
                let record = match item {
                    Ok(LogItem::Event(record)) => record,
                    Ok(LogItem::Passed(passed)) => {
                        end = passed;
                        continue;
                    }
                    Err(e) => fail!(PassError::Store(e)),
                };
                read += 1;
                end = record.position;
                newest = Some(record.recorded_at);
                let id = EventRef::of(&record);
                let undecodable = |e: Error| PassError::Projection(id.stopped(name, 1, e.into()));
                let record = match codec.upcast(record) {
                    Ok(record) => record,
                    Err(e) => fail!(undecodable(e)),
                };
                if !crate::projection_takes(projection, &record) {
                    continue;
                }
                match codec.decode_upcast_envelope(record) {
                    Ok(envelope) => batch.push(envelope),
                    Err(e) => fail!(undecodable(e)),
                }
            }
            let span = tracing::debug_span!(
                "cqrs.projection.batch",
                projection = name,
                from = %position,
                to = %end,
                events = batch.len(),
                outcome = field::Empty
            );
            let (events, started) = (batch.len(), Instant::now());
            read_since_save += read;
            let due = read_since_save >= cadence.events || saved_at.elapsed() >= cadence.interval;
            // The next batch is read while this one is applied and its checkpoint saved
            // (at most two batches in memory).
            let batch = Batch {
                events: batch,
                end,
                unsaved,
                save: due,
            };
            let applying = apply_batch(strategy, projection, name, config.retry, batch)
                .instrument(span.clone());
            let (applied, next) = tally
                .beside(async {
                    match (full, *read_ahead) {
                        (false, _) => (applying.await, None),
                        (true, true) => futures::join!(applying, chunks.next()),
                        (true, false) => {
                            let applied = applying.await;
                            (applied, chunks.next().await)
                        }
                    }
                })
                .await;
            span.record("outcome", if applied.is_ok() { "ok" } else { "stopped" });
            // A failed batch saved the earlier checkpoint itself, before isolating.
            let saved = applied?;
            telemetry::batch(name, events, started.elapsed(), newest);
            *position = end;
            *done += read;
            unsaved = if saved { None } else { Some(end) };
            let stopping = should_stop();
            let last = stopping || next.is_none();
            if let Some(checkpoint) = unsaved.filter(|_| last) {
                tally
                    .beside(save(strategy, name, config.retry, checkpoint))
                    .await?;
                unsaved = None;
            }
            if unsaved.is_none() {
                (read_since_save, saved_at) = (0, Instant::now());
            }
            // The count, once it is in: the progress total (awaited for the last report
            // if it is not in yet) and the lag.
            if last && report.is_some() {
                tally.finish().await;
            }
            let total = match (tally.total(), report.as_mut()) {
                (Some(Ok(counted)), Some((_, total, _))) => Some(*total.insert(counted)),
                (Some(Ok(counted)), None) => Some(counted),
                (Some(Err(e)), Some(_)) => fail!(PassError::Store(e)),
                (_, report) => report.and_then(|(_, total, _)| *total),
            };
            match (full, total) {
                (false, _) => telemetry::lag(name, 0),
                (true, Some(total)) => telemetry::lag(name, total.saturating_sub(*done)),
                (true, None) if report.is_none() && !tally.started() => {
                    tally.start(count(end), *done);
                }
                (true, None) => {}
            }
            if let Some((callback, Some(total), started)) = report {
                callback(Progress {
                    done: *done,
                    total: *total,
                    elapsed: started.elapsed(),
                    position: end,
                });
            }
            if stopping {
                return Ok(());
            }
            pending = next;
        }
        telemetry::lag(name, 0);
        Ok(())
    }
}

/// A progress callback, the total to report against (once counted), and when the work
/// began.
pub(super) type Report<'a> = (&'a mut (dyn FnMut(Progress) + Send), Option<u64>, Instant);
