//! Applying one batch and saving checkpoints: retries, isolating the failing event,
//! and the errors a runner reports.

use std::fmt;

use crate::retry::retry;
use crate::telemetry;
use crate::{
    BoxError, CheckpointStrategy, Envelope, Error, Position, Projection, ProjectionError,
    RecordedEvent, RetryPolicy, StreamId,
};

/// What names an event in an error, kept before the record is consumed.
pub(super) struct EventRef {
    event_id: uuid::Uuid,
    stream: StreamId,
    version: u64,
    position: Position,
}

impl EventRef {
    pub(super) fn of(record: &RecordedEvent) -> Self {
        EventRef {
            event_id: record.event_id,
            stream: record.stream.clone(),
            version: record.version,
            position: record.position,
        }
    }

    pub(super) fn stopped(&self, name: &str, attempts: u32, source: BoxError) -> ProjectionError {
        ProjectionError::Stopped {
            projection: name.to_owned(),
            event_id: self.event_id,
            stream: self.stream.clone(),
            version: self.version,
            position: self.position,
            attempts,
            source,
        }
    }
}

pub(super) enum PassError {
    Store(Error),
    Projection(ProjectionError),
}

impl From<ProjectionError> for PassError {
    fn from(e: ProjectionError) -> Self {
        PassError::Projection(e)
    }
}

/// Logs a failure that will be retried.
pub(super) fn warn<E: fmt::Display>(name: &str, what: &'static str) -> impl FnMut(u32, &E) {
    move |attempt, error| {
        telemetry::projection_error(name);
        tracing::warn!(projection = %name, attempt, %error, "{what}, retrying");
    }
}

pub(super) fn store_failed(name: &str, source: Error) -> ProjectionError {
    ProjectionError::Store {
        projection: name.to_owned(),
        source,
    }
}

/// A strategy's error: the store's ([`ProjectionError::Store`]) or its own.
pub(super) fn strategy_error(
    name: &str,
    operation: &'static str,
    source: BoxError,
) -> ProjectionError {
    match source.downcast::<Error>() {
        Ok(source) => store_failed(name, *source),
        Err(source) => ProjectionError::Projection {
            projection: name.to_owned(),
            operation,
            source,
        },
    }
}

/// A batch to apply: its events, the position it ends at, the checkpoint of the
/// batches before it that is applied but not saved yet, and whether to save its own
/// checkpoint once it is applied (the cadence says it is due).
pub(super) struct Batch<E> {
    pub(super) events: Vec<Envelope<E>>,
    pub(super) end: Position,
    pub(super) unsaved: Option<Position>,
    pub(super) save: bool,
}

/// Applies one batch, then saves its checkpoint if asked: retries, then isolates the
/// failing event. Returns whether the checkpoint was saved (isolating saves the earlier
/// checkpoint, then after each event).
pub(super) async fn apply_batch<K, P>(
    strategy: &mut K,
    projection: &mut P,
    name: &str,
    retry: RetryPolicy,
    batch: Batch<P::Event>,
) -> Result<bool, ProjectionError>
where
    K: CheckpointStrategy,
    P: Projection<K::Context>,
{
    let Batch {
        events: batch,
        end,
        unsaved,
        save: save_now,
    } = batch;
    let applied = retry!(
        retry,
        strategy.apply(projection, &batch, end).await,
        warn(name, "batch failed")
    );
    let (batch_error, attempts) = match applied {
        Ok(()) if save_now => return save(strategy, name, retry, end).await.map(|()| true),
        Ok(()) => return Ok(false),
        Err(failed) => failed,
    };
    if let Some(checkpoint) = unsaved {
        save(strategy, name, retry, checkpoint).await?;
    }
    // Narrow the failure down to one event: apply them one at a time, each with its own
    // checkpoint, so everything before the culprit is kept.
    if batch.len() <= 1 {
        return Err(match batch.first() {
            Some(e) => stopped_at(name, e, attempts, batch_error),
            None => ProjectionError::Projection {
                projection: name.to_owned(),
                operation: "apply (checkpoint only)",
                source: batch_error,
            },
        });
    }
    for (i, envelope) in batch.iter().enumerate() {
        let checkpoint = if i + 1 == batch.len() {
            end
        } else {
            envelope.position
        };
        let single = std::slice::from_ref(envelope);
        let applied: Result<(), _> = retry!(
            retry,
            strategy.apply(projection, single, checkpoint).await,
            |_, _: &BoxError| {}
        );
        applied.map_err(|(e, attempts)| stopped_at(name, envelope, attempts, e))?;
        save(strategy, name, retry, checkpoint).await?;
    }
    Ok(true)
}

/// Records a checkpoint after its batch was applied.
pub(super) async fn save<K: CheckpointStrategy>(
    strategy: &mut K,
    name: &str,
    retry: RetryPolicy,
    checkpoint: Position,
) -> Result<(), ProjectionError> {
    let saved: Result<(), _> = retry!(
        retry,
        strategy.save(name, checkpoint).await,
        warn(name, "cannot save the checkpoint")
    );
    saved.map_err(|(e, _)| strategy_error(name, "save_checkpoint", e))?;
    telemetry::checkpoint(name, checkpoint);
    Ok(())
}

fn stopped_at<E>(
    name: &str,
    envelope: &Envelope<E>,
    attempts: u32,
    source: BoxError,
) -> ProjectionError {
    ProjectionError::Stopped {
        projection: name.to_owned(),
        event_id: envelope.event_id,
        stream: envelope.stream.clone(),
        version: envelope.version,
        position: envelope.position,
        attempts,
        source,
    }
}
