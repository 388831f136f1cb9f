//! [`Shredded`]: the store wrapper that seals personal values on the way in and opens
//! them on the way out.

use futures::{Stream, StreamExt};
use uuid::Uuid;

use super::{Forgotten, Looked, Shredder};
use crate::{
    AppendResult, CheckpointStore, EventData, EventLog, ExpectedVersion, Inspect, KeyStore,
    LogItem, LogWatcher, Position, RecordedEvent, Result, SnapshotRecord, SnapshotStore,
    StoreStats, StreamId, StreamInfo, StreamLifecycle,
};

/// A store that crypto-shreds: it seals every [`Personal`](crate::Personal) value of a payload (events and
/// snapshots) with its subject's key before the inner store keeps it, and opens it on
/// every read, so loads, `read_all`, projections, the operations subcommand and the relay
/// all see plaintext, and no plaintext of a personal value reaches the inner store.
///
/// After [`forget`](Shredded::forget), every read still works: the subject's values read
/// as [`Personal::Erased`](crate::Personal::Erased); a snapshot that holds one is not used (a load replays the
/// stream instead, so the state is what a replay of the erased events gives).
///
/// It implements every store trait over an inner store that has it; checksums and the
/// other record checks of the inner store are on the stored (sealed) bytes. Only JSON
/// payloads are looked into; other bytes pass through untouched. Key lookups are not
/// cached across calls: each read call asks the key store once per subject it meets, so a
/// forget made by any process holds from the next read on (a read already under way may
/// still open values it met before the forget).
///
/// # Examples
/// ```
/// use cqrs_core::{EventData, EventLog, ExpectedVersion, InMemoryEventStore, InMemoryKeyStore};
/// use cqrs_core::{Personal, Shredded, StreamId};
/// use futures::TryStreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cqrs_core::Result<()> {
/// let (inner, keys) = (InMemoryEventStore::new(), InMemoryKeyStore::new());
/// let store = Shredded::new(inner.clone(), keys);
/// let stream = StreamId::new("account", "42")?;
/// let owner = Personal::new("42", "Ada Lovelace".to_owned());
/// let payload = serde_json::to_vec(&owner).unwrap();
/// store.append(&stream, ExpectedVersion::NoStream, vec![EventData::new("Opened", payload)]).await?;
///
/// // The inner store holds only ciphertext; the wrapper reads plaintext.
/// let stored: Vec<_> = inner.read_stream(&stream, 1).try_collect().await?;
/// assert!(!String::from_utf8_lossy(&stored[0].payload).contains("Ada"));
/// let read: Vec<_> = store.read_stream(&stream, 1).try_collect().await?;
/// let back: Personal<String> = serde_json::from_slice(&read[0].payload).unwrap();
/// assert_eq!(back, owner);
///
/// store.forget("42").await?;
/// let read: Vec<_> = store.read_stream(&stream, 1).try_collect().await?;
/// let back: Personal<String> = serde_json::from_slice(&read[0].payload).unwrap();
/// assert!(back.is_erased());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Shredded<S, K> {
    inner: S,
    shredder: Shredder<K>,
}

impl<S, K: KeyStore> Shredded<S, K> {
    /// `inner`, with the personal values of its payloads sealed under keys from `keys`.
    pub fn new(inner: S, keys: K) -> Self {
        Shredded {
            inner,
            shredder: Shredder::new(keys),
        }
    }

    /// The inner store (it holds sealed payloads).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The shredder (to open values a read model kept sealed).
    pub fn shredder(&self) -> &Shredder<K> {
        &self.shredder
    }

    /// Forgets `subject`: see [`Shredder::forget`].
    ///
    /// # Errors
    /// As for [`Shredder::forget`].
    pub async fn forget(&self, subject: &str) -> Result<Forgotten> {
        self.shredder.forget(subject).await
    }
}

impl<S: Send + Sync, K: KeyStore> Shredded<S, K> {
    fn reveal_stream<'a>(
        &'a self,
        records: impl Stream<Item = Result<RecordedEvent>> + Send + 'a,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        let state = (Box::pin(records), Looked::new());
        futures::stream::unfold(state, move |(mut records, mut looked)| async move {
            let revealed = match records.next().await? {
                Ok(record) => self.shredder.reveal_record(record, &mut looked).await,
                Err(e) => Err(e),
            };
            Some((revealed, (records, looked)))
        })
    }
}

impl<S: EventLog, K: KeyStore> EventLog for Shredded<S, K> {
    async fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        mut events: Vec<EventData>,
    ) -> Result<AppendResult> {
        // A batch the store would refuse creates no key.
        crate::validate_batch(stream, &events)?;
        let mut looked = Looked::new();
        for event in &mut events {
            let payload = std::mem::take(&mut event.payload);
            event.payload = self.shredder.seal(payload, &mut looked).await?;
        }
        self.inner.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.reveal_stream(self.inner.read_stream(stream, from_version))
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.reveal_stream(self.inner.read_all(after, limit))
    }

    /// The inner store's read by type (its filter runs where its records are), the
    /// records revealed as [`read_all`](EventLog::read_all) reveals them.
    fn read_all_of_types<'a>(
        &'a self,
        after: Position,
        limit: Option<u64>,
        types: &'a [String],
    ) -> impl Stream<Item = Result<LogItem>> + Send + 'a {
        let items = self.inner.read_all_of_types(after, limit, types);
        let state = (Box::pin(items), Looked::new());
        futures::stream::unfold(state, move |(mut items, mut looked)| async move {
            let revealed = match items.next().await? {
                Ok(LogItem::Event(record)) => (self.shredder.reveal_record(record, &mut looked))
                    .await
                    .map(LogItem::Event),
                other => other,
            };
            Some((revealed, (items, looked)))
        })
    }

    fn filters_types(&self) -> bool {
        self.inner.filters_types()
    }

    fn watch(&self) -> LogWatcher {
        self.inner.watch()
    }
}

/// Snapshots are sealed like events. A snapshot that holds an erased value is not used:
/// [`load_snapshot`](SnapshotStore::load_snapshot) answers `None`, and
/// [`read_stream_from_snapshot`](SnapshotStore::read_stream_from_snapshot) says
/// [`SnapshotIgnored::Erased`](crate::SnapshotIgnored::Erased), so a load replays the
/// stream and a repository that takes snapshots replaces the snapshot at once with one
/// holding the erased value: the forgotten subject's sealed data leaves the snapshot.
impl<S: SnapshotStore, K: KeyStore> SnapshotStore for Shredded<S, K> {
    async fn load_snapshot<'a>(&'a self, stream: &'a StreamId) -> Result<Option<SnapshotRecord>> {
        Ok(self.open_snapshot(stream).await?.ok())
    }

    fn read_stream_from_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> impl Stream<Item = Result<crate::StreamItem>> + Send + 'a {
        let snapshot = async move {
            match self.open_snapshot(stream).await? {
                Ok(snapshot) => Ok(Ok(Some(snapshot))),
                Err(Some(ignored)) => Ok(Err(ignored)),
                Err(None) => Ok(Ok(None)),
            }
        };
        crate::snapshot_store::snapshot_then_tail(self, stream, snapshot)
    }

    async fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        mut snapshot: SnapshotRecord,
    ) -> Result<()> {
        let payload = std::mem::take(&mut snapshot.payload);
        snapshot.payload = self.shredder.seal(payload, &mut Looked::new()).await?;
        self.inner.save_snapshot(stream, snapshot).await
    }
}

impl<S: SnapshotStore, K: KeyStore> Shredded<S, K> {
    /// The stream's snapshot, opened; `Err(None)` if there is none, `Err(Some(why))` if
    /// it holds an erased value.
    async fn open_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Result<SnapshotRecord, Option<crate::SnapshotIgnored>>> {
        let Some(mut snapshot) = self.inner.load_snapshot(stream).await? else {
            return Ok(Err(None));
        };
        let location = || format!("snapshot of {stream}");
        let payload = std::mem::take(&mut snapshot.payload);
        let looked = &mut Looked::new();
        let (payload, erased) = self.shredder.reveal(payload, &location, looked).await?;
        if erased {
            let version = snapshot.version;
            return Ok(Err(Some(crate::SnapshotIgnored::Erased { version })));
        }
        snapshot.payload = payload;
        Ok(Ok(snapshot))
    }
}

impl<S: CheckpointStore, K: KeyStore> CheckpointStore for Shredded<S, K> {
    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send + 'a {
        self.inner.load_checkpoint(name)
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.inner.save_checkpoint(name, position)
    }

    fn advance_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.inner.advance_checkpoint(name, position)
    }
}

/// Archives keep the sealed values: [`read_stored`](StreamLifecycle::read_stored) reads
/// the inner store, and [`restore_stream`](StreamLifecycle::restore_stream) puts the
/// sealed records back as they were. A subject forgotten since the archive was made
/// stays forgotten: its values come back erased.
impl<S: StreamLifecycle, K: KeyStore> StreamLifecycle for Shredded<S, K> {
    fn delete_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
    ) -> impl Future<Output = Result<AppendResult>> + Send + 'a {
        self.inner.delete_stream(stream, expected)
    }

    fn truncate_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        before: u64,
    ) -> impl Future<Output = Result<u64>> + Send + 'a {
        self.inner.truncate_stream(stream, before)
    }

    fn restore_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        records: Vec<RecordedEvent>,
    ) -> impl Future<Output = Result<u64>> + Send + 'a {
        self.inner.restore_stream(stream, records)
    }

    fn read_stored<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.inner.read_stored(stream, from_version)
    }
}

impl<S: Inspect, K: KeyStore> Inspect for Shredded<S, K> {
    async fn find_event<'a>(
        &'a self,
        stream: &'a StreamId,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>> {
        match self.inner.find_event(stream, event_id).await? {
            Some(record) => {
                let mut looked = Looked::new();
                let revealed = self.shredder.reveal_record(record, &mut looked);
                Ok(Some(revealed.await?))
            }
            None => Ok(None),
        }
    }

    fn count_events(&self, after: Position) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.inner.count_events(after)
    }

    fn count_events_of_types<'a>(
        &'a self,
        after: Position,
        types: &'a [String],
    ) -> impl Future<Output = Result<u64>> + Send + 'a {
        self.inner.count_events_of_types(after, types)
    }

    fn list_streams(&self) -> impl Stream<Item = Result<StreamInfo>> + Send + '_ {
        self.inner.list_streams()
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send + '_ {
        self.inner.stats()
    }
}
