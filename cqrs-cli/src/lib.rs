#![doc = include_str!("../README.md")]

mod command;
mod error;
mod ops;
mod output;

pub use command::{EventsArgs, OpsCommand, ReplayArgs, SnapshotArgs};
pub use error::{Error, Result};
pub use ops::{Operations, ProgressStyle, ProjectionStats, Replayed, Stats, StreamFilter};
pub use output::{payload_json, rfc3339};
