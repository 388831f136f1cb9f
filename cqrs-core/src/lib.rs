#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod forward;

mod aggregate;
mod aggregate_ext;
mod boxed;
mod cache;
mod checkpoint;
mod checkpoint_store;
mod codec;
mod command;
mod consume;
mod consumer;
mod error;
mod event;
mod group;
mod inbox_memory;
mod inspect;
mod keys;
mod lifecycle;
mod load;
mod log;
mod memory;
mod notify;
mod personal;
mod projection;
mod publish;
mod publish_memory;
mod relay;
mod repository;
mod retry;
mod runner;
mod shred;
mod snapshot;
mod snapshot_store;
mod store;
mod stream;
mod supervise;
pub mod testkit;
pub mod text;
mod upcast;
mod verify;

#[cfg(any(test, feature = "conformance"))]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use aggregate::Aggregate;
pub use aggregate_ext::AggregateExt;
pub use boxed::{BoxEventStore, DynEventStore};
pub use checkpoint::{CheckpointStrategy, InMemoryCheckpoint, StoreCheckpoint};
pub use checkpoint_store::{CheckpointStore, DynCheckpointStore, validate_checkpoint_name};
pub use codec::{Codec, JsonCodec};
pub use command::{CommandError, CommandOptions, Executed, Loaded};
#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use cqrs_derive::DomainEvent;
pub use error::{BoxError, Error, Result};
pub use event::{DomainEvent, Envelope, EventData, Metadata, RecordedEvent};
pub use group::ProjectionGroup;
pub use inspect::{DynInspect, Inspect, StoreStats, StreamInfo};
pub use keys::{
    BoxKeyStore, DynKeyStore, ForgetOutcome, InMemoryKeyStore, KeyState, KeyStore, SubjectKey,
    validate_subject,
};
pub use lifecycle::{
    DynStreamLifecycle, STREAM_DELETED, StreamDeleted, StreamLifecycle, validate_restore,
};
pub use log::{AppendResult, DynEventLog, EventLog, LogItem, validate_batch};
pub use memory::{InMemoryEventStore, check_truncation};
pub use notify::{LogNotifier, LogWatcher};
pub use personal::{Personal, SealedValue};
pub use projection::{Projection, ProjectionError, projection_takes};
pub use repository::Repository;
pub use retry::RetryPolicy;
pub use runner::{CheckpointCadence, Progress, ProjectionRunner, RunnerConfig};
pub use shred::{Forgotten, Shredded, Shredder};
pub use snapshot::SnapshotPolicy;
pub use snapshot_store::{
    DynSnapshotStore, SnapshotIgnored, SnapshotRecord, SnapshotStore, StreamItem,
};
pub use store::EventStore;
pub use stream::{ExpectedVersion, InvalidPosition, InvalidStreamId, Position, StreamId};
pub use supervise::{StopSignal, Supervisor, SupervisorStatus};
pub use upcast::{JsonEvent, Upcasters};
pub use verify::{MAX_REPORTED_PROBLEMS, Problem, Verification, verify};
// Events leave the service: the publishing contract and the relay.
pub use consume::{
    DeadLetter, Delivery, Inbox, InboxStats, ReceivedMessage, StreamState, SubscribeError,
    Subscription,
};
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerControl, ConsumerError, ConsumerStats, NotRunning,
    RedriveReport,
};
pub use inbox_memory::{InMemoryInbox, InMemoryInboxTx};
pub use publish::{
    Ack, MessageError, OutboundMessage, PublishError, Publisher, SubjectScheme, decode_message,
    escape_token, headers, unescape_token,
};
pub use publish_memory::{InMemoryDelivery, InMemoryPublisher, InMemorySubscription};
pub use relay::{Relay, RelayConfig, RelayError, RelayStats};

// Data lifecycle: tenants, each with a store of its own.
mod tenant;
pub use tenant::{InMemoryTenantStores, InvalidTenantId, TenantError, TenantId, TenantStores};

// Observability: metrics through the `metrics` facade (docs/07-observability.md).
mod telemetry;
pub use telemetry::{
    EVENT_COUNT_BUCKETS, METRICS, MetricInfo, MetricKind, SECONDS_BUCKETS, describe_metrics,
};

/// The workspace README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadmeDoctests;
