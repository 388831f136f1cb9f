//! HTML fragments: the page frame, event rows and cards, the projections table. Every
//! value that comes from the store goes through [`escape`]; the rest is literal markup.

use std::fmt::Write as _;

use cqrs_cli::{Stats, payload_json, rfc3339};
use cqrs_core::{RecordedEvent, SnapshotRecord, StreamId, SupervisorStatus};

use crate::escape::{escape, href};
use crate::jobs::StoppedAt;

/// How long a supervised projection that failed must have run again to count as up.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The page frame: head (viewport, stylesheet, script), navigation, and `body`.
pub(crate) fn page(base: &str, title: &str, active: &str, body: &str) -> String {
    let b = escape(base);
    let mut nav = String::new();
    for (path, label) in [
        ("/", "Overview"),
        ("/streams", "Streams"),
        ("/log", "Log"),
        ("/actions", "Actions"),
    ] {
        let current = if label == active {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<a href="{b}{path}"{current}>{label}</a>"#);
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · cqrs console</title>
<link rel="stylesheet" href="{b}/assets/console.css">
<script src="{b}/assets/console.js" defer></script>
</head>
<body data-base="{b}">
<header class="top"><a class="brand" href="{b}/">cqrs<span>console</span></a><nav>{nav}</nav></header>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"#,
        title = escape(title)
    )
}

/// A projection's state for the overview.
pub(crate) enum State {
    Running,
    CatchingUp,
    Stopped(StoppedAt),
}

/// Decides a projection's state: a failed console replay or a failing supervised run
/// is stopped, a lag is catching up, else running.
pub(crate) fn state(
    lag: u64,
    supervised: Option<&SupervisorStatus>,
    failed: Option<StoppedAt>,
) -> State {
    if let Some(stopped) = failed {
        return State::Stopped(stopped);
    }
    if let Some(s) = supervised.filter(|s| !s.is_healthy(SETTLE))
        && (s.last_error.is_some() || !s.running)
    {
        let error = s.last_error.clone().unwrap_or_else(|| "not running".into());
        return State::Stopped(StoppedAt { event: None, error });
    }
    if lag > 0 {
        State::CatchingUp
    } else {
        State::Running
    }
}

/// The overview's counts and projections table (also the live-refresh fragment).
pub(crate) fn overview(
    base: &str,
    stats: &Stats,
    states: Vec<State>,
    supervised: &[SupervisorStatus],
) -> String {
    let snapshots = stats
        .snapshots
        .map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    let mut html = format!(
        r#"<section class="cards">
<div class="card"><span class="label">Events</span><span class="value" data-testid="events">{}</span></div>
<div class="card"><span class="label">Streams</span><span class="value" data-testid="streams">{}</span></div>
<div class="card"><span class="label">Snapshots</span><span class="value">{}</span></div>
</section>
<h2>Projections</h2>
<div class="scroll"><table class="projections">
<thead><tr><th>Projection</th><th>State</th><th class="num">Checkpoint</th><th class="num">Lag</th><th>Detail</th></tr></thead>
<tbody>
"#,
        stats.events, stats.streams, snapshots
    );
    for (p, state) in stats.projections.iter().zip(states) {
        let (class, label, detail) = match state {
            State::Running => ("running", "running", String::new()),
            State::CatchingUp => ("catching-up", "catching up", String::new()),
            State::Stopped(s) => ("stopped", "stopped", stopped_detail(base, &s)),
        };
        let checkpoint = p
            .checkpoint
            .map_or_else(|| "inline".to_owned(), |c| c.to_string());
        let restarts = supervised
            .iter()
            .find(|s| s.name == p.name && s.restarts > 0)
            .map(|s| format!(r#"<span class="muted">{} restart(s)</span> "#, s.restarts))
            .unwrap_or_default();
        let _ = writeln!(
            html,
            r#"<tr data-projection="{name}"><td class="mono">{name}</td><td><span class="badge {class}">{label}</span></td><td class="num mono" data-label="checkpoint">{}</td><td class="num" data-label="lag">{}</td><td class="detail">{restarts}{detail}</td></tr>"#,
            escape(&checkpoint),
            p.lag,
            name = escape(&p.name),
        );
    }
    if stats.projections.is_empty() {
        html.push_str(r#"<tr><td colspan="5" class="muted">no projections registered</td></tr>"#);
    }
    html.push_str("</tbody></table></div>\n");
    html
}

fn stopped_detail(base: &str, s: &StoppedAt) -> String {
    let event = match &s.event {
        Some((stream, version, position, id)) => format!(
            r#"at event <a class="mono" href="{}">{}</a> ({} version {version}, position {}) "#,
            stream_href(base, stream, *version),
            escape(id),
            escape(&stream.to_string()),
            escape(&position.to_string()),
        ),
        None => String::new(),
    };
    format!(r#"{event}<code class="error">{}</code>"#, escape(&s.error))
}

/// The link to a stream's page, from `version` on.
pub(crate) fn stream_href(base: &str, stream: &StreamId, from: u64) -> String {
    let from = from.to_string();
    let query = [
        ("type", stream.aggregate_type()),
        ("id", stream.id()),
        ("from", from.as_str()),
    ];
    href(&format!("{base}/stream"), &query)
}

/// A payload pretty-printed when it is JSON, else as text.
pub(crate) fn pretty(payload: &[u8]) -> String {
    match payload_json(payload) {
        serde_json::Value::String(text) if serde_json::from_slice::<String>(payload).is_err() => {
            text
        }
        value => serde_json::to_string_pretty(&value).unwrap_or_default(),
    }
}

/// One event as a row of the log table (also what the live tail sends).
pub(crate) fn log_row(base: &str, e: &RecordedEvent) -> String {
    let payload = payload_json(&e.payload).to_string();
    let short: String = payload.chars().take(160).collect();
    let ellipsis = if short.len() < payload.len() {
        "…"
    } else {
        ""
    };
    format!(
        r#"<tr data-position="{pos}"><td class="num mono">{pos}</td><td class="mono"><a href="{link}">{stream}</a></td><td class="num">{}</td><td class="mono">{}</td><td class="time">{}</td><td><code class="payload">{}{ellipsis}</code></td></tr>"#,
        e.version,
        escape(&e.event_type),
        rfc3339(e.recorded_at),
        escape(&short),
        pos = escape(&e.position.to_string()),
        link = stream_href(base, &e.stream, 1),
        stream = escape(&e.stream.to_string()),
    )
}

/// The log table's head.
pub(crate) const LOG_HEAD: &str = r#"<thead><tr><th class="num">Position</th><th>Stream</th><th class="num">Ver.</th><th>Type</th><th>Recorded</th><th>Payload</th></tr></thead>"#;

/// One event with its full envelope and pretty payload, for a stream's page.
pub(crate) fn event_card(e: &RecordedEvent) -> String {
    let mut meta = String::new();
    let m = &e.metadata;
    let mut field = |k: &str, v: String| {
        let _ = write!(
            meta,
            "<dt>{}</dt><dd class=\"mono\">{}</dd>",
            escape(k),
            escape(&v)
        );
    };
    field("event id", e.event_id.to_string());
    field("position", e.position.to_string());
    field("recorded", rfc3339(e.recorded_at));
    field("schema", e.schema_version.to_string());
    if let Some(c) = m.correlation_id {
        field("correlation", c.to_string());
    }
    if let Some(c) = m.causation_id {
        field("causation", c.to_string());
    }
    for (k, v) in &m.values {
        field(k, v.clone());
    }
    format!(
        r#"<article class="event" data-version="{v}"><header><span class="version">v{v}</span> <span class="mono type">{}</span></header><dl class="envelope">{meta}</dl><pre class="json">{}</pre></article>"#,
        escape(&e.event_type),
        escape(&pretty(&e.payload)),
        v = e.version,
    )
}

/// A stream's snapshot, or that it has none.
pub(crate) fn snapshot_block(snapshot: Option<&SnapshotRecord>) -> String {
    match snapshot {
        None => r#"<p class="muted">No snapshot.</p>"#.to_owned(),
        Some(s) => format!(
            r#"<details class="snapshot"><summary>Snapshot at version {} (schema {})</summary><pre class="json">{}</pre></details>"#,
            s.version,
            s.schema_version,
            escape(&pretty(&s.payload)),
        ),
    }
}

/// An error box for a page that could not be read.
pub(crate) fn error_box(message: &str) -> String {
    format!(r#"<p class="alert" role="alert">{}</p>"#, escape(message))
}
