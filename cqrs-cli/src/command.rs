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
    /// Export streams to an archive file (JSON lines with every event's full envelope,
    /// checksummed), then delete them from the store (a tombstone stays in each).
    Archive(ArchiveArgs),
    /// Put the streams of an archive file back, exactly as they were (same ids,
    /// versions and log positions). The whole file is checked first: a damaged or
    /// truncated archive restores nothing (exit code 4).
    Restore(RestoreArgs),
    /// Delete a stream for good: its events and snapshot go, a tombstone stays, and
    /// appends to it fail from then on. Projections get the tombstone.
    Delete(DeleteArgs),
    /// Remove a stream's old events, keeping the snapshot loads start from.
    Truncate(TruncateArgs),
}

/// Arguments of `archive`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(false).args(["stream", "before"])))]
pub struct ArchiveArgs {
    /// Archive this stream, written `<type>/<id>` (repeat it for several).
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: Vec<String>,
    /// Archive every stream whose last event was recorded before this instant
    /// (`YYYY-MM-DD`, midnight UTC, or `YYYY-MM-DDTHH:MM:SSZ`).
    #[arg(long, value_name = "DATE")]
    pub before: Option<String>,
    /// With `--before`: only streams of this aggregate type.
    #[arg(long = "type", value_name = "TYPE", requires = "before")]
    pub aggregate_type: Option<String>,
    /// The archive file to write; it must not exist.
    #[arg(long, value_name = "FILE")]
    pub to: std::path::PathBuf,
    /// Write the archive but delete nothing.
    #[arg(long)]
    pub keep: bool,
    /// Say what would be archived; write and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `restore`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RestoreArgs {
    /// The archive file to read.
    #[arg(long, value_name = "FILE")]
    pub from: std::path::PathBuf,
    /// Restore only this stream of the archive, written `<type>/<id>`.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: Option<String>,
    /// Check the archive and say what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `delete`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DeleteArgs {
    /// The stream, written `<type>/<id>`.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: String,
    /// Delete only if the stream is at this version (its last event's).
    #[arg(long, value_name = "N")]
    pub expected_version: Option<u64>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `truncate`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(group(clap::ArgGroup::new("cut").required(true).multiple(false).args(["before", "at_snapshot"])))]
pub struct TruncateArgs {
    /// The stream, written `<type>/<id>`.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: String,
    /// Remove the events before this version (a snapshot at this version or later
    /// must exist).
    #[arg(long, value_name = "N")]
    pub before: Option<u64>,
    /// Take a snapshot now (the stream's aggregate must be registered) and remove the
    /// events before it.
    #[arg(long)]
    pub at_snapshot: bool,
    /// Say what would be removed; remove nothing (with `--at-snapshot`, take no
    /// snapshot).
    #[arg(long)]
    pub dry_run: bool,
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
