//! Snapshots: the optional capability that keeps aggregate loads short.

use std::future::Future;

use futures::{Stream, StreamExt};

use crate::{EventLog, RecordedEvent, Result, StreamId};

/// A stored snapshot of an aggregate's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The stream version the snapshot covers: it is the state after applying events
    /// 1 to `version`.
    pub version: u64,
    /// The aggregate's snapshot schema version when the snapshot was taken; a snapshot
    /// with another schema version is ignored on load.
    pub schema_version: u32,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// An item of [`SnapshotStore::read_stream_from_snapshot`]: the stream's snapshot, then
/// its events.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The stream's latest snapshot; only ever the first item.
    Snapshot(SnapshotRecord),
    /// The stream has a stored snapshot that cannot be used; only ever the first item,
    /// and the events that follow start at version 1.
    SnapshotIgnored(SnapshotIgnored),
    /// An event of the stream.
    Event(RecordedEvent),
}

/// Why a stored snapshot was not used: by the store
/// ([`SnapshotStore::read_stream_from_snapshot`], the first two variants) or by the
/// repository ([`Loaded::snapshot_ignored`](crate::Loaded::snapshot_ignored), all four).
///
/// A snapshot is an optimisation only: an unusable one is skipped (and logged), and the
/// stream is read from its first event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotIgnored {
    /// The stored record is damaged: its fields do not decode as a snapshot record.
    Damaged {
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot covers a version that the stream does not have (a restored backup
    /// of the events, a hand edit): using it would start every load past the stream's
    /// head.
    AheadOfStream {
        /// The version the snapshot claims to cover.
        version: u64,
    },
    /// The snapshot was taken with another schema version of the aggregate's state
    /// ([`Aggregate::SNAPSHOT_VERSION`](crate::Aggregate::SNAPSHOT_VERSION)).
    OtherSchemaVersion {
        /// The stream version the snapshot covers.
        version: u64,
        /// The snapshot's schema version.
        found: u32,
        /// The aggregate's current snapshot schema version.
        current: u32,
    },
    /// The snapshot holds personal data of a data subject that was forgotten
    /// ([`Shredded::forget`](crate::Shredded::forget)): a load replays the stream, and a
    /// repository that takes snapshots replaces it with one holding the erased value.
    Erased {
        /// The stream version the snapshot covers.
        version: u64,
    },
    /// The snapshot's payload does not decode as the aggregate's state.
    Undecodable {
        /// The stream version the snapshot covers.
        version: u64,
        /// The codec's error.
        reason: String,
    },
}

impl std::fmt::Display for SnapshotIgnored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotIgnored::Damaged { reason } => write!(f, "damaged snapshot record: {reason}"),
            SnapshotIgnored::AheadOfStream { version } => write!(
                f,
                "snapshot at version {version} is ahead of the stream (it has no event {version})"
            ),
            SnapshotIgnored::OtherSchemaVersion {
                version,
                found,
                current,
            } => write!(
                f,
                "snapshot (version {version}) has schema version {found}, not the current {current}"
            ),
            SnapshotIgnored::Erased { version } => write!(
                f,
                "snapshot (version {version}) holds personal data of a forgotten subject"
            ),
            SnapshotIgnored::Undecodable { version, reason } => {
                write!(f, "snapshot (version {version}) does not decode: {reason}")
            }
        }
    }
}

/// The table of [`SnapshotStore`], read by the macros of `crate::forward`.
macro_rules! snapshot_store_table {
    ($callback:ident!($($args:tt)*)) => {
        $callback! {
            ($($args)*)
            /// Snapshots of aggregate state, kept beside the log: an optional capability.
            ///
            /// Snapshots are an optimisation only: a store that keeps none stays correct,
            /// loads just read whole streams. A [`Repository`](crate::Repository) takes
            /// snapshots only over a store with this trait
            /// ([`with_snapshots`](crate::Repository::with_snapshots)). Only the latest
            /// snapshot per stream is kept.
            pub trait SnapshotStore: [EventLog];
            /// The object-safe twin of [`SnapshotStore`].
            pub trait DynSnapshotStore: [crate::DynEventLog];
            required {
                /// Loads the latest snapshot of `stream`.
                ///
                /// # Errors
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn load_snapshot<'a>(
                    &'a self,
                    stream: &'a StreamId,
                ) -> future<'a> Result<Option<SnapshotRecord>>;

                /// Saves a snapshot of `stream`, unless the store already holds one of a
                /// higher version that the stream has reached (then this is a no-op: a
                /// slow save never replaces a later one). A stored snapshot ahead of the
                /// stream's head is always replaced.
                ///
                /// # Errors
                /// [`Error::Store`](crate::Error::Store) if the backend fails.
                fn save_snapshot<'a>(
                    &'a self,
                    stream: &'a StreamId,
                    snapshot: SnapshotRecord,
                ) -> future<'a> Result<()>;
            }
            provided {
                /// Reads `stream` for a load: its latest usable snapshot first, if it has
                /// one, then its events from the snapshot's version on (all of them
                /// without a snapshot), in version order.
                ///
                /// A snapshot is usable only if the stream has an event at the snapshot's
                /// version. A snapshot ahead of the stream, or a damaged snapshot record,
                /// is skipped with a warning: the first item is then
                /// [`StreamItem::SnapshotIgnored`] and the events start at version 1.
                ///
                /// This is what the command layer calls to load an aggregate that takes
                /// snapshots. The default asks
                /// [`load_snapshot`](SnapshotStore::load_snapshot), then
                /// [`read_stream`](EventLog::read_stream) from the snapshot's version: two
                /// reads. Backends where each read is a round trip override it with one
                /// (PostgreSQL: one query).
                ///
                /// # Errors
                /// As for [`load_snapshot`](SnapshotStore::load_snapshot) and
                /// [`read_stream`](EventLog::read_stream).
                fn read_stream_from_snapshot<'a>(
                    &'a self,
                    stream: &'a StreamId,
                ) -> stream<'a> Result<StreamItem> {
        crate::snapshot_store::snapshot_then_tail(self, stream, async move {
            self.load_snapshot(stream).await.map(Ok)
        })
    }
            }
        }
    };
}
pub(crate) use snapshot_store_table;

snapshot_store_table!(define_store_trait!());

/// What [`SnapshotStore::read_stream_from_snapshot`] yields, for a store whose snapshot
/// comes from `snapshot`: `Ok(Ok(None))` none, `Ok(Ok(Some))` one to check against the
/// stream, `Ok(Err(why))` one not to use (the stream is then read from its start).
pub(crate) fn snapshot_then_tail<'a, S: EventLog + ?Sized>(
    store: &'a S,
    stream: &'a StreamId,
    snapshot: impl Future<Output = Result<Result<Option<SnapshotRecord>, SnapshotIgnored>>> + Send + 'a,
) -> impl Stream<Item = Result<StreamItem>> + Send + 'a {
    let from_start = move || {
        store
            .read_stream(stream, 1)
            .map(|e| e.map(StreamItem::Event))
    };
    futures::stream::once(async move {
        let snapshot = match snapshot.await {
            Err(e) => return futures::stream::iter([Err(e)]).boxed(),
            Ok(Ok(None)) => return from_start().boxed(),
            Ok(Ok(Some(snapshot))) => snapshot,
            Ok(Err(ignored)) => {
                tracing::info!(%stream, reason = %ignored, "ignoring snapshot");
                return futures::stream::iter([Ok(StreamItem::SnapshotIgnored(ignored))])
                    .chain(from_start())
                    .boxed();
            }
        };
        let ignored = if snapshot.version == 0 {
            SnapshotIgnored::Damaged {
                reason: "it covers version 0".to_owned(),
            }
        } else {
            // The event at the snapshot's own version shows it is not ahead.
            let mut tail = Box::pin(store.read_stream(stream, snapshot.version));
            match tail.next().await {
                Some(Err(e)) => return futures::stream::iter([Err(e)]).boxed(),
                Some(Ok(event)) if event.version == snapshot.version => {
                    return futures::stream::iter([Ok(StreamItem::Snapshot(snapshot))])
                        .chain(tail.map(|e| e.map(StreamItem::Event)))
                        .boxed();
                }
                _ => SnapshotIgnored::AheadOfStream {
                    version: snapshot.version,
                },
            }
        };
        tracing::warn!(%stream, reason = %ignored, "ignoring snapshot");
        futures::stream::iter([Ok(StreamItem::SnapshotIgnored(ignored))])
            .chain(from_start())
            .boxed()
    })
    .flatten()
}
