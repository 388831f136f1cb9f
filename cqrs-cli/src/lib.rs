#![doc = include_str!("../README.md")]

mod command;
mod error;
mod ops;
mod output;

pub use command::{
    DeadLettersCommand, DeadLettersListArgs, EventsArgs, OpsCommand, RedriveArgs, ReplayArgs,
    SnapshotArgs,
};
pub use error::{Error, Result};
pub use ops::{
    ConsumerOps, Operations, ProgressStyle, ProjectionStats, Replayed, Stats, StreamFilter,
};
pub use output::{payload_json, rfc3339};
