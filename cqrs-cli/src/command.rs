//! The clap definition of the subcommands.

use clap::{Args, Subcommand};

/// The operations subcommands. Mount them in an application's own clap `Subcommand`
/// enum with `#[command(flatten)]`, then hand the parsed value to
/// [`Operations::run`](crate::Operations::run).
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum OpsCommand {
    /// Take snapshots now (one stream, or every stream of the registered aggregates).
    Snapshot(SnapshotArgs),
    /// Rebuild read models by replaying the log (one projection, or all).
    Replay(ReplayArgs),
    /// Inspect the log or one stream.
    Events(EventsArgs),
    /// Show streams, events, snapshots, and each projection's checkpoint and lag.
    Stats,
    /// Read the whole store and report what is damaged: unreadable records (checksum
    /// mismatches, records that do not decode), gaps in streams, a log out of order,
    /// counts that disagree, checkpoints past the end of the log. Exit code 4 when
    /// anything is damaged.
    Verify,
    /// List or redrive the dead letters of this service's consumers: the messages from
    /// other services they could not apply.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

/// What `dead-letters` does.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, oldest first, with the reason each is there.
    List(DeadLettersListArgs),
    /// Apply dead letters again, in each stream's order; a stream whose letters all
    /// apply is no longer parked.
    Redrive(RedriveArgs),
}

/// Arguments of `dead-letters list`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DeadLettersListArgs {
    /// Only this consumer's (all registered consumers when absent).
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// Start after this dead letter id.
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub after: u64,
    /// Show at most this many per consumer.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
}

/// Arguments of `dead-letters redrive`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RedriveArgs {
    /// Only this consumer's (all registered consumers when absent).
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// Only this stream's letters, written `<type>/<id>`.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: Option<String>,
}

/// Arguments of `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[group(required = true, multiple = false)]
pub struct SnapshotArgs {
    /// Snapshot every stream of every registered aggregate.
    #[arg(long)]
    pub all: bool,
    /// Snapshot one stream, written `<type>/<id>`.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: Option<String>,
}

/// Arguments of `replay`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[group(required = true, multiple = false)]
pub struct ReplayArgs {
    /// Rebuild every registered projection.
    #[arg(long)]
    pub all: bool,
    /// Rebuild this projection.
    #[arg(long, value_name = "NAME")]
    pub projection: Option<String>,
}

/// Arguments of `events`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct EventsArgs {
    /// Show one stream, written `<type>/<id>`, instead of the global log.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: Option<String>,
    /// Start after this log position (`N` or `N:M`, as printed in the listing).
    #[arg(long, value_name = "POSITION", conflicts_with = "stream")]
    pub after: Option<String>,
    /// Show at most this many events.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u64,
}
