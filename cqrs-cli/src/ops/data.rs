//! The operations as data: what `stats`, `events`, `replay` and `snapshot` print, as
//! structs, for other front ends (the web console) that must never disagree with the
//! command line.

use std::collections::BinaryHeap;
use std::pin::pin;
use std::time::{Duration, Instant};

use cqrs_core::{
    EventStore, Position, Progress, RecordedEvent, SnapshotRecord, StreamId, StreamInfo,
};
use futures::StreamExt;

use super::Operations;
use crate::{Error, Result};

/// Store-wide counts and each registered projection's position, as `stats` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Streams with at least one event.
    pub streams: u64,
    /// Events in the global log.
    pub events: u64,
    /// Streams with a snapshot, where the store reports it.
    pub snapshots: Option<u64>,
    /// The registered projections, in registration order.
    pub projections: Vec<ProjectionStats>,
}

/// One projection's checkpoint and lag, as `stats` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStats {
    /// The projection's name.
    pub name: String,
    /// Updated inside each append's transaction: no checkpoint, never behind.
    pub inline: bool,
    /// The position the projection has applied the log up to (`None` when inline).
    pub checkpoint: Option<Position>,
    /// Events in the log after the checkpoint (0 when inline).
    pub lag: u64,
}

/// What one replay did, as `replay` prints it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Replayed {
    /// Records read from the log.
    pub events: u64,
    /// How long the replay took.
    pub elapsed: Duration,
}

impl Replayed {
    /// Records per second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Which streams [`Operations::streams_page`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// Only streams of this aggregate type (all types when `None`).
    pub aggregate_type: Option<String>,
    /// Only streams whose id starts with this text (case-sensitive).
    pub id_prefix: String,
}

impl StreamFilter {
    fn matches(&self, stream: &StreamId) -> bool {
        self.aggregate_type
            .as_deref()
            .is_none_or(|t| stream.aggregate_type() == t)
            && stream.id().starts_with(&self.id_prefix)
    }
}

impl<S: EventStore + Clone + 'static> Operations<S> {
    /// The event store these operations run on.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The aggregate types whose streams may be snapshotted.
    pub fn aggregate_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.aggregates.iter().map(|a| a.aggregate_type())
    }

    /// Streams, events and snapshots, and each projection's checkpoint and lag: what
    /// `stats` prints.
    ///
    /// # Errors
    /// [`Error::Store`] and [`Error::Projection`] (a checkpoint that cannot be loaded).
    pub async fn stats_data(&self) -> Result<Stats> {
        let stats = self.store.stats().await?;
        let mut projections = Vec::new();
        for projection in &self.projections {
            let (checkpoint, lag) = if projection.inline() {
                (None, 0)
            } else {
                let checkpoint = projection.checkpoint().await?;
                (Some(checkpoint), self.store.count_events(checkpoint).await?)
            };
            projections.push(ProjectionStats {
                name: projection.name().to_owned(),
                inline: projection.inline(),
                checkpoint,
                lag,
            });
        }
        Ok(Stats {
            streams: stats.streams,
            events: stats.events,
            snapshots: stats.snapshots,
            projections,
        })
    }

    /// At most `limit` events of the global log after `after`, in log order: what
    /// `events --after` prints. Continue from the last one's position.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn log_page(&self, after: Position, limit: u64) -> Result<Vec<RecordedEvent>> {
        let mut records = Vec::new();
        let mut events = pin!(self.store.read_all(after, Some(limit)));
        while let Some(record) = events.next().await {
            records.push(record?);
        }
        Ok(records)
    }

    /// At most `limit` events of `stream` from version `from` on, in version order: what
    /// `events --stream` prints (from version 1). Continue from the last version + 1.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut records = Vec::new();
        let mut events = pin!(self.store.read_stream(stream, from.max(1)).take(limit));
        while let Some(record) = events.next().await {
            records.push(record?);
        }
        Ok(records)
    }

    /// The latest stored snapshot of `stream`, if any.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn stream_snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotRecord>> {
        Ok(self.store.load_snapshot(stream).await?)
    }

    /// At most `limit` streams that `filter` selects, ordered by aggregate type then id,
    /// starting after the stream `after` (keyset pagination: pass the last stream of a
    /// page to get the next; no offset is ever skipped over). Memory is bounded by
    /// `limit`; the store's stream listing is read once.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn streams_page(
        &self,
        filter: &StreamFilter,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        // A max-heap of the `limit` smallest keys past `after`.
        let key = |s: &StreamId| (s.aggregate_type().to_owned(), s.id().to_owned());
        let after = after.map(key);
        let mut page: BinaryHeap<((String, String), u64)> = BinaryHeap::new();
        let mut streams = pin!(self.store.list_streams());
        while let Some(info) = streams.next().await {
            let info = info?;
            if limit == 0 || !filter.matches(&info.stream) {
                continue;
            }
            let k = key(&info.stream);
            if after.as_ref().is_some_and(|a| &k <= a) {
                continue;
            }
            if page.len() < limit {
                page.push((k, info.version));
            } else if page.peek().is_some_and(|(top, _)| &k < top) {
                page.pop();
                page.push((k, info.version));
            }
        }
        page.into_sorted_vec()
            .into_iter()
            .map(|((t, id), version)| {
                let stream = StreamId::new(t, id).map_err(cqrs_core::Error::from)?;
                Ok(StreamInfo { stream, version })
            })
            .collect()
    }

    /// Rebuilds the projection `name` by replay, calling `progress` after each batch:
    /// what `replay --projection` does.
    ///
    /// # Errors
    /// [`Error::Usage`] if no projection has that name; [`Error::Projection`] if it
    /// stopped.
    pub async fn replay_projection(
        &self,
        name: &str,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Replayed> {
        let Some(projection) = self.projections.iter().find(|p| p.name() == name) else {
            return Err(Error::Usage(format!(
                "no projection named {name:?} (known: {})",
                self.projection_names().collect::<Vec<_>>().join(", ")
            )));
        };
        let started = Instant::now();
        let events = projection.rebuild(progress).await?;
        Ok(Replayed {
            events,
            elapsed: started.elapsed(),
        })
    }

    /// The streams `snapshot` covers: `stream` alone, or with `None` every stream of a
    /// registered aggregate type, sorted.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn snapshot_targets(&self, stream: Option<&StreamId>) -> Result<Vec<StreamId>> {
        if let Some(stream) = stream {
            return Ok(vec![stream.clone()]);
        }
        let mut all = Vec::new();
        let mut streams = pin!(self.store.list_streams());
        while let Some(info) = streams.next().await {
            let info = info?;
            if self
                .aggregates
                .iter()
                .any(|a| a.aggregate_type() == info.stream.aggregate_type())
            {
                all.push(info.stream);
            }
        }
        all.sort();
        Ok(all)
    }

    /// Takes a snapshot of `stream` now and returns the version it covers.
    ///
    /// # Errors
    /// [`Error::Usage`] if its aggregate type is not registered or the stream has no
    /// events; [`Error::Store`].
    pub async fn snapshot_stream(&self, stream: &StreamId) -> Result<u64> {
        let Some(aggregate) = self
            .aggregates
            .iter()
            .find(|a| a.aggregate_type() == stream.aggregate_type())
        else {
            return Err(Error::Usage(format!(
                "no aggregate of type {:?} is registered (known: {})",
                stream.aggregate_type(),
                self.aggregate_types().collect::<Vec<_>>().join(", ")
            )));
        };
        match aggregate.snapshot(stream.id()).await? {
            Some(version) => Ok(version),
            // Most likely a typo in a named stream: say so instead of "0 taken".
            None => Err(Error::Usage(format!(
                "stream {stream} has no events: nothing to snapshot"
            ))),
        }
    }
}
