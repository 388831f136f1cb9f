//! Loading an aggregate: its snapshot (when the policy reads them) and the events after
//! it, or the whole stream.

use std::pin::pin;

use futures::{Stream, StreamExt};

use crate::snapshot::SnapshotIo;
use crate::{
    Aggregate, Codec, Error, Inspect, Loaded, RecordedEvent, Repository, Result, SnapshotIgnored,
    SnapshotPolicy, SnapshotRecord, StreamId, StreamItem,
};

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: Inspect + Clone + 'static,
    C: Codec,
{
    /// The aggregate's state just after version `version` of its stream: what a command
    /// that [`Executed`](crate::Executed) at that version left, also when the stream has
    /// moved on since (a retried command answers with the result it produced). The
    /// repository's cache serves it when it holds exactly that version; otherwise the
    /// stream's first `version` events are replayed (no snapshot: one may be later).
    /// `None` if the stream is shorter than `version`.
    ///
    /// # Errors
    /// As for [`load`](Self::load).
    pub async fn state_at(&self, id: &str, version: u64) -> Result<Option<A>>
    where
        A: Clone,
    {
        let stream = A::stream_id(id)?;
        let cached = self.cache.as_ref().and_then(|cache| cache.peek(&stream));
        if let Some((state, _)) = cached.filter(|(_, at)| *at == version) {
            return Ok(Some(state));
        }
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            snapshot_version: None,
            snapshot_ignored: None,
            events_replayed: 0,
        };
        let events = self.store.read_stream(&stream, 1);
        let events = events.take(usize::try_from(version).unwrap_or(usize::MAX));
        self.replay(&stream, &mut loaded, events).await?;
        Ok((loaded.version == version).then_some(loaded.state))
    }

    pub(crate) async fn load_stream(&self, stream: &StreamId) -> Result<Loaded<A>> {
        let loaded = self.load_stream_inner(stream).await?;
        let snapshot = match (&loaded.snapshot_version, &loaded.snapshot_ignored) {
            (_, Some(_)) => "ignored",
            (Some(_), None) => "used",
            (None, None) => "none",
        };
        crate::telemetry::loaded(A::TYPE, snapshot, loaded.events_replayed);
        Ok(loaded)
    }

    async fn load_stream_inner(&self, stream: &StreamId) -> Result<Loaded<A>> {
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            snapshot_version: None,
            snapshot_ignored: None,
            events_replayed: 0,
        };
        let io = match self.snapshot_io {
            Some(io) if self.snapshots != SnapshotPolicy::Never => io,
            _ => {
                self.replay(stream, &mut loaded, self.store.read_stream(stream, 1))
                    .await?;
                return Ok(loaded);
            }
        };
        if let Err(reason) = self.load_from_snapshot(io, stream, &mut loaded).await? {
            // The read (and, on a server, its connection) has ended: start over.
            tracing::warn!(%stream, %reason, "ignoring snapshot, replaying the stream");
            loaded.snapshot_ignored = Some(reason);
            self.replay(stream, &mut loaded, self.store.read_stream(stream, 1))
                .await?;
        }
        Ok(loaded)
    }

    /// Loads from the snapshot and the events after it, in one read where the store can.
    /// `Ok(Err(why))`: the snapshot is unusable, nothing was applied.
    async fn load_from_snapshot(
        &self,
        io: SnapshotIo<S>,
        stream: &StreamId,
        loaded: &mut Loaded<A>,
    ) -> Result<Result<(), SnapshotIgnored>> {
        let mut items = (io.read)(&self.store, stream);
        let mut repair = false;
        let first_event = match items.next().await.transpose()? {
            None => return Ok(Ok(())),
            Some(StreamItem::Event(event)) => Some(event),
            Some(StreamItem::Snapshot(snapshot)) => {
                if let Err(reason) = self.restore(loaded, snapshot) {
                    return Ok(Err(reason));
                }
                None
            }
            Some(StreamItem::SnapshotIgnored(ignored)) => {
                // The store skipped it (damaged, or ahead of the stream) and reads the
                // stream from its start: replay that, then put a true snapshot in its
                // place, since a snapshot ahead of the stream would look valid once the
                // stream reached its version.
                loaded.snapshot_ignored = Some(ignored);
                repair = matches!(self.snapshots, SnapshotPolicy::EveryEvents(n) if n > 0);
                None
            }
        };
        let events = futures::stream::iter(first_event.map(Ok)).chain(items.map(|item| {
            item.and_then(|item| match item {
                StreamItem::Event(event) => Ok(event),
                StreamItem::Snapshot(_) | StreamItem::SnapshotIgnored(_) => Err(Error::corrupt(
                    format!("stream {stream}"),
                    "the store returned a snapshot item after events",
                )),
            })
        }));
        self.replay(stream, loaded, events).await?;
        if repair && loaded.version > 0 {
            self.save_snapshot(stream.clone(), &loaded.state, loaded.version)
                .await;
        }
        Ok(Ok(()))
    }

    /// Restores the state from a snapshot, or says why the snapshot cannot be used.
    fn restore(
        &self,
        loaded: &mut Loaded<A>,
        snapshot: SnapshotRecord,
    ) -> Result<(), SnapshotIgnored> {
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            return Err(SnapshotIgnored::OtherSchemaVersion {
                version: snapshot.version,
                found: snapshot.schema_version,
                current: A::SNAPSHOT_VERSION,
            });
        }
        let state = self
            .codec
            .decode_snapshot::<A>(&snapshot.payload)
            .map_err(|e| SnapshotIgnored::Undecodable {
                version: snapshot.version,
                reason: e.to_string(),
            })?;
        loaded.state = state;
        loaded.version = snapshot.version;
        loaded.snapshot_version = Some(snapshot.version);
        Ok(())
    }

    /// Applies `events` (the stream's, from `loaded.version + 1` on) to the loaded state.
    async fn replay(
        &self,
        stream: &StreamId,
        loaded: &mut Loaded<A>,
        events: impl Stream<Item = Result<RecordedEvent>>,
    ) -> Result<()> {
        let mut events = pin!(events);
        while let Some(record) = events.next().await {
            let record = record?;
            if crate::StreamDeleted::is_tombstone(&record) {
                return Err(Error::StreamDeleted {
                    stream: stream.clone(),
                    version: record.version,
                });
            }
            let record = self.codec.upcast(record)?;
            if record.version != loaded.version + 1 {
                // A stream truncated before this version, read without the snapshot that
                // covers what was cut (none, or one this code cannot use).
                let hint = if loaded.version == 0 {
                    " (the stream was truncated and no usable snapshot covers the events removed)"
                } else {
                    ""
                };
                return Err(Error::corrupt(
                    format!("stream {stream}"),
                    format!(
                        "expected version {}, found {}{hint}",
                        loaded.version + 1,
                        record.version
                    ),
                ));
            }
            let event = self.codec.decode::<A::Event>(&record)?;
            loaded.state.apply(event);
            loaded.version = record.version;
            loaded.events_replayed += 1;
        }
        Ok(())
    }
}
