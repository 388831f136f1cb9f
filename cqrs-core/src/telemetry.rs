//! Metrics through the [`metrics`] facade: what the framework records, and where.
//!
//! The library only records; an application installs a recorder (an exporter) of its
//! choice, or none (then every call is a no-op). Labels are bounded: an aggregate type,
//! an outcome, a projection or job name, never a stream id or an event id.

use std::time::{Duration, SystemTime};

use metrics::{counter, gauge, histogram};

use crate::Position;

/// The kind of a metric, as Prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations (`_seconds` for durations).
    Histogram,
}

/// One metric the framework records: the table in `docs/07-observability.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricInfo {
    /// The metric's name (Prometheus conventions: `_total`, `_seconds`).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its labels; each has a bounded set of values.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

const COMMANDS: &str = "cqrs_commands_total";
const COMMAND_DURATION: &str = "cqrs_command_duration_seconds";
const CONFLICTS: &str = "cqrs_command_conflicts_total";
const RETRIES: &str = "cqrs_command_retries_total";
const APPENDS: &str = "cqrs_appends_total";
const APPENDED_EVENTS: &str = "cqrs_appended_events_total";
const APPENDED_BYTES: &str = "cqrs_appended_bytes_total";
const LOADS: &str = "cqrs_loads_total";
const LOAD_EVENTS: &str = "cqrs_load_replayed_events";
const SNAPSHOTS: &str = "cqrs_snapshots_total";
const CHECKPOINT: &str = "cqrs_projection_checkpoint_position";
const LAG_EVENTS: &str = "cqrs_projection_lag_events";
const LAG_SECONDS: &str = "cqrs_projection_lag_seconds";
const BATCH_DURATION: &str = "cqrs_projection_batch_duration_seconds";
const PROJECTED: &str = "cqrs_projection_events_total";
const PROJECTION_ERRORS: &str = "cqrs_projection_errors_total";
const STOPPED: &str = "cqrs_projection_stopped";
const RESTARTS: &str = "cqrs_supervisor_restarts_total";
const RUNNING: &str = "cqrs_supervisor_running";
const RELAYED: &str = "cqrs_relay_messages_total";
const RELAY_CHECKPOINT: &str = "cqrs_relay_checkpoint_position";
const CONSUMED: &str = "cqrs_consumer_messages_total";
const CONSUMER_LAG: &str = "cqrs_consumer_lag_seconds";

const fn info(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricInfo {
    MetricInfo {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter, Gauge, Histogram};

/// Every metric the framework records.
pub const METRICS: &[MetricInfo] = &[
    info(
        COMMANDS,
        Counter,
        &["aggregate", "outcome"],
        "Commands executed, by outcome: ok, already_applied, rejected, conflict (after the retries), invalid, store_error.",
    ),
    info(
        COMMAND_DURATION,
        Histogram,
        &["aggregate", "outcome"],
        "Time to execute a command (loads, decisions, appends and retries), by outcome.",
    ),
    info(
        CONFLICTS,
        Counter,
        &["aggregate"],
        "Appends refused by the expected-version check (each attempt, retried or not).",
    ),
    info(
        RETRIES,
        Counter,
        &["aggregate"],
        "Commands decided again after a conflict, as the retry policy allows.",
    ),
    info(
        APPENDS,
        Counter,
        &["aggregate"],
        "Appends that wrote events (not counting idempotent duplicates).",
    ),
    info(
        APPENDED_EVENTS,
        Counter,
        &["aggregate"],
        "Events appended by commands.",
    ),
    info(
        APPENDED_BYTES,
        Counter,
        &["aggregate"],
        "Encoded payload bytes of the events appended by commands.",
    ),
    info(
        LOADS,
        Counter,
        &["aggregate", "snapshot"],
        "Aggregate loads from the store, by snapshot use: used, none, ignored.",
    ),
    info(
        LOAD_EVENTS,
        Histogram,
        &["aggregate", "snapshot"],
        "Events replayed per load (after the snapshot, if one was used).",
    ),
    info(
        SNAPSHOTS,
        Counter,
        &["aggregate", "outcome"],
        "Snapshots taken, by outcome: ok, failed.",
    ),
    info(
        CHECKPOINT,
        Gauge,
        &["projection"],
        "The log position (its sequence) a projection has applied up to.",
    ),
    info(
        LAG_EVENTS,
        Gauge,
        &["projection"],
        "Events in the log after the projection's checkpoint, sampled after each batch (0 once it has read to the end).",
    ),
    info(
        LAG_SECONDS,
        Gauge,
        &["projection"],
        "Age of the last event of the last batch when it was applied.",
    ),
    info(
        BATCH_DURATION,
        Histogram,
        &["projection"],
        "Time to apply a batch and save its checkpoint.",
    ),
    info(
        PROJECTED,
        Counter,
        &["projection"],
        "Events applied by a projection (those it wants).",
    ),
    info(
        PROJECTION_ERRORS,
        Counter,
        &["projection"],
        "Failed attempts (a batch, a checkpoint, a read of the log) and stops.",
    ),
    info(
        STOPPED,
        Gauge,
        &["projection"],
        "1 while the projection's runner is stopped with an error, 0 once a batch applies.",
    ),
    info(
        RESTARTS,
        Counter,
        &["job"],
        "Restarts of a supervised job after an error.",
    ),
    info(
        RUNNING,
        Gauge,
        &["job"],
        "1 while a supervised job runs, 0 while it waits to restart or has ended.",
    ),
    info(
        RELAYED,
        Counter,
        &["relay", "outcome"],
        "Messages a relay sent to its broker, by the broker's answer: published, \
         duplicate (the broker already had it), failed (retried).",
    ),
    info(
        RELAY_CHECKPOINT,
        Gauge,
        &["relay"],
        "The log position (its sequence) up to which a relay's broker acknowledged every \
         event: compare with cqrs_projection_checkpoint_position for its lag.",
    ),
    info(
        CONSUMED,
        Counter,
        &["consumer", "outcome"],
        "Messages a consumer handled, by outcome: applied, skipped (not wanted), \
         duplicate, dead_lettered, held (ahead of a missing event).",
    ),
    info(
        CONSUMER_LAG,
        Histogram,
        &["consumer"],
        "Age of an event when a consumer applied it: from its append in the publishing \
         service to its commit in the consumer's read model.",
    ),
];

/// Upper bounds for the `_seconds` histograms, from 0.5 ms to 10 s, for an exporter
/// that renders histograms with buckets.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds for [`cqrs_load_replayed_events`](METRICS).
pub const EVENT_COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 10000.0,
];

/// Gives the installed recorder each metric's description (the `# HELP` lines of a
/// Prometheus exporter). Call it once, after installing the recorder.
pub fn describe_metrics() {
    for metric in METRICS {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// Positions and counts as gauge values (exact up to 2^53).
#[allow(clippy::cast_precision_loss)]
fn float(value: u64) -> f64 {
    value as f64
}

pub(crate) fn command(aggregate: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!(COMMANDS, "aggregate" => aggregate, "outcome" => outcome).increment(1);
    histogram!(COMMAND_DURATION, "aggregate" => aggregate, "outcome" => outcome).record(elapsed);
}

pub(crate) fn conflict(aggregate: &'static str) {
    counter!(CONFLICTS, "aggregate" => aggregate).increment(1);
}

pub(crate) fn retry(aggregate: &'static str) {
    counter!(RETRIES, "aggregate" => aggregate).increment(1);
}

pub(crate) fn appended(aggregate: &'static str, events: usize, bytes: usize) {
    counter!(APPENDS, "aggregate" => aggregate).increment(1);
    counter!(APPENDED_EVENTS, "aggregate" => aggregate).increment(events as u64);
    counter!(APPENDED_BYTES, "aggregate" => aggregate).increment(bytes as u64);
}

pub(crate) fn loaded(aggregate: &'static str, snapshot: &'static str, replayed: u64) {
    counter!(LOADS, "aggregate" => aggregate, "snapshot" => snapshot).increment(1);
    histogram!(LOAD_EVENTS, "aggregate" => aggregate, "snapshot" => snapshot)
        .record(float(replayed));
}

pub(crate) fn snapshot(aggregate: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!(SNAPSHOTS, "aggregate" => aggregate, "outcome" => outcome).increment(1);
}

/// A batch applied and checkpointed; `newest` is when its last record was written.
pub(crate) fn batch(
    projection: &str,
    events: usize,
    elapsed: Duration,
    newest: Option<SystemTime>,
) {
    let name = projection.to_owned();
    histogram!(BATCH_DURATION, "projection" => name.clone()).record(elapsed);
    counter!(PROJECTED, "projection" => name.clone()).increment(events as u64);
    gauge!(STOPPED, "projection" => name.clone()).set(0.0);
    if let Some(age) = newest.and_then(|at| SystemTime::now().duration_since(at).ok()) {
        gauge!(LAG_SECONDS, "projection" => name).set(age.as_secs_f64());
    }
}

pub(crate) fn checkpoint(projection: &str, at: Position) {
    gauge!(CHECKPOINT, "projection" => projection.to_owned()).set(float(at.sequence));
}

pub(crate) fn lag(projection: &str, events: u64) {
    gauge!(LAG_EVENTS, "projection" => projection.to_owned()).set(float(events));
}

pub(crate) fn projection_error(projection: &str) {
    counter!(PROJECTION_ERRORS, "projection" => projection.to_owned()).increment(1);
}

/// The runner stopped with an error (one more error, and the stopped flag).
pub(crate) fn stopped(projection: &str) {
    projection_error(projection);
    gauge!(STOPPED, "projection" => projection.to_owned()).set(1.0);
}

pub(crate) fn running(job: &str, running: bool) {
    gauge!(RUNNING, "job" => job.to_owned()).set(flag(running));
}

pub(crate) fn restarted(job: &str) {
    counter!(RESTARTS, "job" => job.to_owned()).increment(1);
}

/// A consumer handled a message; `recorded_at`: when its event was appended, if known.
pub(crate) fn consumed(consumer: &str, outcome: &'static str, recorded_at: Option<SystemTime>) {
    let name = consumer.to_owned();
    counter!(CONSUMED, "consumer" => name.clone(), "outcome" => outcome).increment(1);
    if outcome == "applied"
        && let Some(age) = recorded_at.and_then(|at| SystemTime::now().duration_since(at).ok())
    {
        histogram!(CONSUMER_LAG, "consumer" => name).record(age);
    }
}

/// A relay's broker answered one message: `published`, `duplicate` or `failed`.
pub(crate) fn relayed(relay: &str, outcome: &'static str) {
    counter!(RELAYED, "relay" => relay.to_owned(), "outcome" => outcome).increment(1);
}

/// A relay saved its checkpoint.
pub(crate) fn relay_checkpoint(relay: &str, at: Position) {
    gauge!(RELAY_CHECKPOINT, "relay" => relay.to_owned()).set(float(at.sequence));
}
