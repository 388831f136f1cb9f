#![doc = include_str!("../README.md")]

mod archive;
mod command;
mod error;
mod ops;
mod output;

pub use command::{
    ArchiveArgs, DeadLettersCommand, DeadLettersListArgs, DeleteArgs, EventsArgs, OpsCommand,
    RedriveArgs, ReplayArgs, RestoreArgs, SnapshotArgs, TruncateArgs,
};
pub use error::{Error, Result};
pub use ops::{
    ConsumerOps, Operations, ProgressStyle, ProjectionStats, Replayed, Stats, StreamFilter,
};
pub use output::{payload_json, rfc3339};
