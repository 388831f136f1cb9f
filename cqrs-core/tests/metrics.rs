//! Metrics: commands (ok, rejected, invalid, a conflict retried and one beyond the
//! policy), appends, loads with and without a snapshot, projection batches, a stopped
//! projection and a supervisor's restarts, read back from the Prometheus text that
//! `metrics-exporter-prometheus` renders. Also: the docs' table and the Grafana dashboard
//! name exactly the metrics the framework records.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use common::interfering::InterferingStore;
use common::{Account, AccountCommand, AccountEvent};
use cqrs_core::{
    BoxError, Codec, CommandError, Envelope, JsonCodec, METRICS, MetricKind, Projection,
    ProjectionError, ProjectionRunner, Repository, RetryPolicy, RunnerConfig, SECONDS_BUCKETS,
    SnapshotPolicy, Supervisor,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Runs `work` on a current-thread runtime with a Prometheus recorder installed for
/// this thread only (tests in this binary run in parallel), and renders it.
fn render_after<F: Future<Output = ()>>(work: impl FnOnce() -> F) -> String {
    let seconds = Matcher::Suffix("_seconds".into());
    let builder = PrometheusBuilder::new().set_buckets_for_metric(seconds, SECONDS_BUCKETS);
    let recorder = builder.unwrap().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let deadline = Duration::from_secs(60);
            let within = tokio::time::timeout(deadline, work()).await;
            within.expect("the work finishes within 60 s (a guard against a hang)");
        });
    });
    handle.render()
}

/// The value of the series `name{labels}` in a Prometheus text, whatever the labels'
/// order.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, number) = line.rsplit_once(' ')?;
            let (series_name, found) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    rest.trim_end_matches('}')
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                ),
                None => (series, BTreeSet::new()),
            };
            (series_name == name && found == wanted).then(|| number.parse().ok())?
        })
}

#[track_caller]
fn assert_series(text: &str, name: &str, labels: &[(&str, &str)], expected: f64) {
    let found = value(text, name, labels);
    assert_eq!(found, Some(expected), "{name}{labels:?} in:\n{text}");
}

fn open(owner: &str) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.into(),
    }
}

const ACCOUNT: (&str, &str) = ("aggregate", "account");

#[test]
fn commands_conflicts_appends_and_loads_are_counted() {
    let (store_a, store_b) = (InterferingStore::new(1), InterferingStore::new(10));
    let text = render_after(|| async move {
        // One conflict (a writer slips in before the first append), retried: ok.
        let repo = Repository::<Account, _>::new(store_a, ())
            .with_snapshots(SnapshotPolicy::EveryEvents(2))
            .with_background_snapshots(false)
            .with_retry(RetryPolicy::attempts(3));
        repo.execute("a1", &open("ada")).await.unwrap();
        repo.execute("a1", &AccountCommand::Deposit(5))
            .await
            .unwrap();
        let refused = repo.execute("a1", &AccountCommand::Withdraw(100)).await;
        assert!(
            matches!(refused, Err(CommandError::Rejected(_))),
            "{refused:?}"
        );
        let invalid = repo.execute("", &AccountCommand::Deposit(1)).await;
        assert!(
            matches!(invalid, Err(CommandError::Invalid(_))),
            "{invalid:?}"
        );
        // Conflicts on every attempt: a conflict after two attempts (one retry).
        let repo = Repository::<Account, _>::new(store_b, ()).with_retry(RetryPolicy::attempts(2));
        let conflict = repo.execute("b1", &open("bob")).await;
        assert!(
            matches!(conflict, Err(CommandError::Conflict { .. })),
            "{conflict:?}"
        );
    });

    let outcome = |o| [ACCOUNT, ("outcome", o)];
    assert_series(&text, "cqrs_commands_total", &outcome("ok"), 2.0);
    assert_series(&text, "cqrs_commands_total", &outcome("rejected"), 1.0);
    assert_series(&text, "cqrs_commands_total", &outcome("invalid"), 1.0);
    assert_series(&text, "cqrs_commands_total", &outcome("conflict"), 1.0);
    let durations = "cqrs_command_duration_seconds_count";
    assert_series(&text, durations, &outcome("ok"), 2.0);
    assert_series(&text, durations, &outcome("conflict"), 1.0);
    // 1 (store A) + 2 (store B) refused appends; 1 + 1 decided again.
    assert_series(&text, "cqrs_command_conflicts_total", &[ACCOUNT], 3.0);
    assert_series(&text, "cqrs_command_retries_total", &[ACCOUNT], 2.0);
    assert_series(&text, "cqrs_appends_total", &[ACCOUNT], 2.0);
    assert_series(&text, "cqrs_appended_events_total", &[ACCOUNT], 2.0);
    let codec = JsonCodec::new();
    let opened = codec
        .encode(&AccountEvent::Opened {
            owner: "ada".into(),
        })
        .unwrap();
    let deposited = codec
        .encode(&AccountEvent::Deposited { amount: 5 })
        .unwrap();
    let bytes = (opened.len() + deposited.len()) as f64;
    assert_series(&text, "cqrs_appended_bytes_total", &[ACCOUNT], bytes);
    // Store A: two loads before the snapshot at version 2, two from it; store B: two.
    let loads = |s| [ACCOUNT, ("snapshot", s)];
    assert_series(&text, "cqrs_loads_total", &loads("none"), 4.0);
    assert_series(&text, "cqrs_loads_total", &loads("used"), 2.0);
    assert_series(
        &text,
        "cqrs_load_replayed_events_count",
        &loads("used"),
        2.0,
    );
    // After the snapshot (v2): the deposit replays nothing, the withdrawal one event.
    assert_series(&text, "cqrs_load_replayed_events_sum", &loads("used"), 1.0);
    assert_series(
        &text,
        "cqrs_snapshots_total",
        &[ACCOUNT, ("outcome", "ok")],
        1.0,
    );
}

/// Counts the events it applies; refuses a deposit of `poison` (if set).
#[derive(Debug, Default)]
struct Counted {
    events: u64,
    poison: Option<i64>,
}

impl Projection for Counted {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        if self.poison.is_some() {
            "picky"
        } else {
            "counted"
        }
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for envelope in batch {
            if let AccountEvent::Deposited { amount } = envelope.event
                && Some(amount) == self.poison
            {
                return Err(format!("will not apply a deposit of {amount}").into());
            }
            self.events += 1;
        }
        Ok(())
    }
}

#[test]
fn projection_batches_lag_and_a_stop_are_recorded() {
    let store = InterferingStore::new(0);
    let text = render_after(|| async move {
        let repo = Repository::<Account, _>::new(store.clone(), ());
        repo.execute("a1", &open("ada")).await.unwrap();
        for amount in [1, 2, 3, 4] {
            let deposit = AccountCommand::Deposit(amount);
            repo.execute("a1", &deposit).await.unwrap();
        }
        let config = RunnerConfig {
            batch_size: 2,
            retry: RetryPolicy::attempts(1),
            ..RunnerConfig::default()
        };
        let mut runner =
            ProjectionRunner::new(store.clone(), Counted::default()).with_config(config);
        assert_eq!(runner.catch_up().await.unwrap(), 5);
        assert_eq!(runner.projection().events, 5);

        let picky = Counted {
            poison: Some(3),
            ..Counted::default()
        };
        let mut runner = ProjectionRunner::new(store.clone(), picky).with_config(config);
        let stopped = runner.catch_up().await;
        assert!(
            matches!(stopped, Err(ProjectionError::Stopped { .. })),
            "{stopped:?}"
        );
    });

    let counted = [("projection", "counted")];
    // Five events in batches of two: three batches.
    assert_series(
        &text,
        "cqrs_projection_batch_duration_seconds_count",
        &counted,
        3.0,
    );
    assert_series(&text, "cqrs_projection_events_total", &counted, 5.0);
    assert_series(&text, "cqrs_projection_checkpoint_position", &counted, 5.0);
    assert_series(&text, "cqrs_projection_lag_events", &counted, 0.0);
    assert_series(&text, "cqrs_projection_stopped", &counted, 0.0);
    let age = value(&text, "cqrs_projection_lag_seconds", &counted).expect("an event age");
    assert!(age >= 0.0, "{age}");
    assert_eq!(value(&text, "cqrs_projection_errors_total", &counted), None);

    let picky = [("projection", "picky")];
    assert_series(&text, "cqrs_projection_stopped", &picky, 1.0);
    // The batch (open, deposit 1) applies; the next (deposit 2, deposit 3) fails once,
    // and deposit 3 alone fails: the stop. Position 3 is the last applied.
    assert_series(&text, "cqrs_projection_checkpoint_position", &picky, 3.0);
    let errors = value(&text, "cqrs_projection_errors_total", &picky).unwrap_or(0.0);
    assert!(errors >= 1.0, "{errors} in:\n{text}");
}

#[test]
fn a_supervisors_restarts_and_state_are_recorded() {
    let text = render_after(|| async {
        let supervisor = Supervisor::new("flaky")
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2));
        let mut failures = 2;
        let factory = |_| {
            failures -= 1;
            let fail = failures >= 0;
            async move { if fail { Err("not yet") } else { Ok(()) } }
        };
        supervisor.run(factory, std::future::pending()).await;
        assert_eq!(supervisor.status().restarts, 2);
    });
    assert_series(
        &text,
        "cqrs_supervisor_restarts_total",
        &[("job", "flaky")],
        2.0,
    );
    assert_series(&text, "cqrs_supervisor_running", &[("job", "flaky")], 0.0);
}

/// The words of `text` that look like metric names (`cqrs_` and lowercase, digits, `_`;
/// not a crate name such as `cqrs_core`).
fn metric_names(text: &str) -> BTreeSet<&str> {
    const CRATES: &[&str] = &["cqrs_cli", "cqrs_core", "cqrs_derive", "cqrs_http"];
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    text.split(|c: char| !is_name(c))
        .filter(|word| word.starts_with("cqrs_") && !CRATES.contains(word))
        .collect()
}

#[test]
fn the_docs_table_and_the_dashboard_name_exactly_the_recorded_metrics() {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");
    let page = std::fs::read_to_string(format!("{docs}/07-observability.md")).unwrap();
    let dashboard = std::fs::read_to_string(format!("{docs}/grafana-dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let recorded: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
    for metric in METRICS {
        let kind = match metric.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let row = format!(
            "| `{}` | {kind} | {} |",
            metric.name,
            metric.labels.join(", ")
        );
        assert!(
            page.contains(&row),
            "docs/07-observability.md lacks the row {row}"
        );
    }
    // A histogram is exported as `_bucket`, `_sum` and `_count` series.
    let base = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|n| recorded.contains(n)))
            .map_or(name.to_owned(), str::to_owned)
    };
    for (file, text) in [
        ("07-observability.md", &page),
        ("grafana-dashboard.json", &dashboard),
    ] {
        for name in metric_names(text) {
            assert!(
                recorded.contains(base(name).as_str()),
                "{file} names {name}, not recorded"
            );
        }
    }
    let used: BTreeSet<String> = metric_names(&dashboard).into_iter().map(base).collect();
    for wanted in [
        "cqrs_commands_total",
        "cqrs_command_duration_seconds",
        "cqrs_projection_lag_events",
        "cqrs_command_conflicts_total",
        "cqrs_supervisor_restarts_total",
    ] {
        assert!(used.contains(wanted), "the dashboard shows {wanted}");
    }
}
