//! The pages: overview, streams, one stream, the global log, actions.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use cqrs_cli::StreamFilter;
use cqrs_core::{EventStore, Position, StreamId};
use serde::Deserialize;

use crate::escape::{escape, href};
use crate::jobs::chain;
use crate::render::{self, LOG_HEAD, page};
use crate::routes::Shared;

/// Rows per page unless `limit` says otherwise, and the most a page may ask for.
const PAGE: u64 = 50;
const MAX_PAGE: u64 = 500;

fn limit(asked: Option<u64>) -> u64 {
    asked.unwrap_or(PAGE).clamp(1, MAX_PAGE)
}

/// A page, or the same frame with the error (400 for bad input, 500 for the store).
fn answer(
    base: &str,
    title: &str,
    active: &str,
    body: Result<String, (StatusCode, String)>,
) -> Response {
    match body {
        Ok(body) => Html(page(base, title, active, &body)).into_response(),
        Err((status, message)) => {
            let html = page(base, title, active, &render::error_box(&message));
            (status, Html(html)).into_response()
        }
    }
}

fn store_error(e: &cqrs_cli::Error) -> (StatusCode, String) {
    let status = match e {
        cqrs_cli::Error::Usage(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, chain(e))
}

/// The counts and projections table, with each projection's state.
pub(crate) async fn overview_fragment<S: EventStore + Clone + Send + Sync + 'static>(
    shared: &Shared<S>,
) -> Result<String, (StatusCode, String)> {
    let stats = shared.ops.stats_data().await.map_err(|e| store_error(&e))?;
    let supervised = shared.supervision.as_ref().map(|f| f()).unwrap_or_default();
    let states = stats
        .projections
        .iter()
        .map(|p| {
            let s = supervised.iter().find(|s| s.name == p.name);
            render::state(p.lag, s, shared.jobs.failed(&p.name))
        })
        .collect();
    Ok(render::overview(&shared.base, &stats, states, &supervised))
}

pub(crate) async fn overview<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
) -> Response {
    let fragment = overview_fragment(&shared).await;
    let refresh = escape(&format!("{}/fragments/overview", shared.base));
    let body = fragment.map(|f| format!(r#"<div id="overview" data-refresh="{refresh}">{f}</div><p class="muted small">Refreshed every 2 s.</p>"#));
    answer(&shared.base, "Overview", "Overview", body)
}

/// `GET <base>/fragments/overview`: the overview's live part, for the script.
pub(crate) async fn overview_live<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
) -> Response {
    match overview_fragment(&shared).await {
        Ok(html) => Html(html).into_response(),
        Err((status, message)) => (status, Html(render::error_box(&message))).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamsQuery {
    #[serde(rename = "type")]
    aggregate_type: Option<String>,
    #[serde(default)]
    prefix: String,
    after_type: Option<String>,
    after_id: Option<String>,
    limit: Option<u64>,
}

pub(crate) async fn streams<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    Query(q): Query<StreamsQuery>,
) -> Response {
    let base = &shared.base;
    let kind = q.aggregate_type.clone().filter(|t| !t.is_empty());
    let filter = StreamFilter {
        aggregate_type: kind.clone(),
        id_prefix: q.prefix.clone(),
    };
    let body = async {
        let after = match (&q.after_type, &q.after_id) {
            (Some(t), Some(id)) => Some(
                StreamId::new(t.clone(), id.clone())
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
            ),
            _ => None,
        };
        let limit = limit(q.limit);
        let size = usize::try_from(limit).unwrap_or(usize::MAX);
        let page = shared.ops.streams_page(&filter, after.as_ref(), size).await;
        let page = page.map_err(|e| store_error(&e))?;
        let mut options = String::new();
        for t in shared.ops.aggregate_types() {
            let _ = write!(options, r#"<option value="{0}">"#, escape(t));
        }
        let mut html = format!(
            r#"<form class="search" method="get" action="{}/streams">
<label>Aggregate type <input name="type" list="types" value="{}" placeholder="any" autocomplete="off"></label>
<datalist id="types">{options}</datalist>
<label>Id prefix <input name="prefix" value="{}" placeholder="e.g. acc-" autocomplete="off"></label>
<button type="submit">Search</button>
</form>
<div class="scroll"><table class="streams"><thead><tr><th>Type</th><th>Id</th><th class="num">Version</th></tr></thead><tbody>
"#,
            escape(base),
            escape(kind.as_deref().unwrap_or("")),
            escape(&q.prefix),
        );
        for info in &page {
            let _ = writeln!(
                html,
                r#"<tr><td class="mono">{}</td><td class="mono"><a href="{}">{}</a></td><td class="num">{}</td></tr>"#,
                escape(info.stream.aggregate_type()),
                render::stream_href(base, &info.stream, 1),
                escape(info.stream.id()),
                info.version
            );
        }
        if page.is_empty() {
            html.push_str(r#"<tr><td colspan="3" class="muted">no streams match</td></tr>"#);
        }
        html.push_str("</tbody></table></div>\n");
        let mut pager = String::new();
        let (limit_text, t) = (limit.to_string(), kind.clone().unwrap_or_default());
        if after.is_some() {
            let query = [
                ("type", t.as_str()),
                ("prefix", &q.prefix),
                ("limit", &limit_text),
            ];
            let first = href(&format!("{base}/streams"), &query);
            let _ = write!(pager, r#"<a href="{first}">← First page</a> "#);
        }
        if let Some(last) = page.last().filter(|_| page.len() as u64 == limit) {
            let next = href(
                &format!("{base}/streams"),
                &[
                    ("type", &t),
                    ("prefix", &q.prefix),
                    ("after_type", last.stream.aggregate_type()),
                    ("after_id", last.stream.id()),
                    ("limit", &limit_text),
                ],
            );
            let _ = write!(pager, r#"<a rel="next" href="{next}">Next page →</a>"#);
        }
        if !pager.is_empty() {
            let _ = write!(html, r#"<p class="pager">{pager}</p>"#);
        }
        Ok(html)
    };
    let body = body.await;
    answer(base, "Streams", "Streams", body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    #[serde(rename = "type")]
    aggregate_type: String,
    id: String,
    from: Option<u64>,
    limit: Option<u64>,
}

pub(crate) async fn stream<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let base = &shared.base;
    let title = format!("{}/{}", q.aggregate_type, q.id);
    let body = async {
        let stream = StreamId::new(q.aggregate_type.clone(), q.id.clone());
        let stream = stream.map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let (from, limit) = (q.from.unwrap_or(1).max(1), limit(q.limit));
        let events = shared.ops.stream_page(&stream, from, limit).await;
        let events = events.map_err(|e| store_error(&e))?;
        let snapshot = shared.ops.stream_snapshot(&stream).await;
        let snapshot = snapshot.map_err(|e| store_error(&e))?;
        let mut html = format!(
            r#"<p class="muted">Type <span class="mono">{}</span> · id <span class="mono">{}</span></p>
<h2>Snapshot</h2>{}
<h2>Events from version {from}</h2>
"#,
            escape(stream.aggregate_type()),
            escape(stream.id()),
            render::snapshot_block(snapshot.as_ref()),
        );
        for e in &events {
            html.push_str(&render::event_card(e));
            html.push('\n');
        }
        if events.is_empty() {
            html.push_str(r#"<p class="muted">No events.</p>"#);
        }
        let mut pager = String::new();
        if from > 1 {
            let back = from.saturating_sub(limit).max(1);
            let _ = write!(
                pager,
                r#"<a rel="prev" href="{}">← Earlier</a> "#,
                render::stream_href(base, &stream, back)
            );
        }
        if let Some(last) = events.last().filter(|_| events.len() as u64 == limit) {
            let _ = write!(
                pager,
                r#"<a rel="next" href="{}">Later →</a>"#,
                render::stream_href(base, &stream, last.version + 1)
            );
        }
        if !pager.is_empty() {
            let _ = write!(html, r#"<p class="pager">{pager}</p>"#);
        }
        Ok(html)
    };
    let body = body.await;
    answer(base, &title, "Streams", body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    after: Option<String>,
    limit: Option<u64>,
}

pub(crate) async fn log<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    Query(q): Query<LogQuery>,
) -> Response {
    let base = &shared.base;
    let body = async {
        let after_text = q.after.clone().filter(|a| !a.is_empty());
        let after = match &after_text {
            Some(a) => a
                .parse::<Position>()
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
            None => Position::START,
        };
        let limit = limit(q.limit);
        let events = shared
            .ops
            .log_page(after, limit)
            .await
            .map_err(|e| store_error(&e))?;
        let last = events.last().map_or(after, |e| e.position).to_string();
        let tail = format!("{base}/log/tail");
        let mut html = format!(
            r#"<form class="search" method="get" action="{}/log">
<label>After position <input name="after" value="{}" placeholder="0" autocomplete="off" inputmode="numeric"></label>
<button type="submit">Go</button>
<button type="button" id="tail" data-tail="{}" data-after="{}">Live tail</button>
<span id="tail-status" class="muted" role="status"></span>
</form>
<div class="scroll"><table class="log">{LOG_HEAD}<tbody id="log-rows">
"#,
            escape(base),
            escape(after_text.as_deref().unwrap_or("")),
            escape(&tail),
            escape(&last),
        );
        for e in &events {
            html.push_str(&render::log_row(base, e));
            html.push('\n');
        }
        html.push_str("</tbody></table></div>\n");
        if events.is_empty() {
            html.push_str(r#"<p class="muted" id="log-empty">No events after this position.</p>"#);
        }
        if events.len() as u64 == limit {
            let next = href(
                &format!("{base}/log"),
                &[("after", &last), ("limit", &limit.to_string())],
            );
            let _ = write!(
                html,
                r#"<p class="pager"><a rel="next" href="{next}">Next page →</a></p>"#
            );
        }
        Ok(html)
    };
    let body = body.await;
    answer(base, "Global log", "Log", body)
}

pub(crate) async fn actions<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
) -> Response {
    let base = escape(&shared.base);
    let mut options = String::new();
    for name in shared.ops.projection_names() {
        let _ = write!(options, r#"<option value="{0}">{0}</option>"#, escape(name));
    }
    let disabled = if shared.token.is_none() {
        r#"<p class="alert" role="alert">Actions are disabled: this console was started without a console token.</p>"#
    } else {
        ""
    };
    let mut recent = String::new();
    for job in shared.jobs.recent() {
        let _ = writeln!(
            recent,
            r#"<tr><td class="num">{}</td><td>{}</td><td class="mono">{}</td><td><span class="badge {}">{}</span></td><td class="num">{} %</td><td>{}</td></tr>"#,
            job.id,
            job.kind,
            escape(&job.target),
            match job.state {
                "done" => "running",
                "failed" => "stopped",
                _ => "catching-up",
            },
            job.state,
            job.percent,
            escape(&job.message)
        );
    }
    if recent.is_empty() {
        recent.push_str(r#"<tr><td colspan="6" class="muted">none yet</td></tr>"#);
    }
    let body = format!(
        r#"{disabled}<p class="muted">Actions change the store. They need the console token, sent with each request (never stored in a cookie).</p>
<label class="token">Console token <input type="password" id="token" name="token" autocomplete="off" spellcheck="false"></label>
<div class="actions">
<form class="action" method="post" action="{base}/actions/replay" data-action="replay">
<h2>Replay a projection</h2>
<p class="muted">Rebuilds its read model from the whole log.</p>
<label>Projection <select name="projection">{options}</select></label>
<button type="submit">Replay</button>
</form>
<form class="action" method="post" action="{base}/actions/snapshot" data-action="snapshot">
<h2>Take snapshots</h2>
<p class="muted">One stream (<span class="mono">type/id</span>), or every stream of a registered aggregate when empty.</p>
<label>Stream <input name="stream" placeholder="all" autocomplete="off"></label>
<button type="submit">Snapshot</button>
</form>
</div>
<section id="job" class="job" hidden>
<h2 id="job-title">Progress</h2>
<progress id="job-progress" max="100" value="0"></progress>
<p><span id="job-percent" data-testid="percent">0 %</span> · <span id="job-state">starting</span></p>
<p id="job-message" class="mono small"></p>
</section>
<p id="action-error" class="alert" role="alert" hidden></p>
<h2>Recent actions</h2>
<div class="scroll"><table><thead><tr><th class="num">#</th><th>Kind</th><th>Target</th><th>State</th><th class="num">Progress</th><th>Result</th></tr></thead><tbody>{recent}</tbody></table></div>
"#
    );
    Html(page(&shared.base, "Actions", "Actions", &body)).into_response()
}
