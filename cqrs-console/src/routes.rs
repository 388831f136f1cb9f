//! The routes, the security headers, the assets, and the mutating actions.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use cqrs_cli::Operations;
use cqrs_core::{EventStore, Progress, StreamId};
use serde::Deserialize;
use serde_json::json;

use crate::auth::authorize;
use crate::jobs::{Jobs, StoppedAt, chain};
use crate::{BeforeReplay, Closing, Supervision, live, pages};

/// What every handler shares.
pub(crate) struct Shared<S> {
    pub(crate) ops: Arc<Operations<S>>,
    pub(crate) base: String,
    pub(crate) token: Option<String>,
    pub(crate) supervision: Option<Supervision>,
    pub(crate) before_replay: Option<BeforeReplay>,
    pub(crate) closing: Option<Closing>,
    pub(crate) jobs: Jobs,
}

/// No script or style but the console's own files, no frames, no plugins; forms and
/// fetches only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

pub(crate) fn router<S: EventStore + Clone + Send + Sync + 'static>(shared: Shared<S>) -> Router {
    let b = shared.base.clone();
    let routes = Router::new()
        .route(&b, get(pages::overview::<S>))
        .route(&format!("{b}/"), get(pages::overview::<S>))
        .route(
            &format!("{b}/fragments/overview"),
            get(pages::overview_live::<S>),
        )
        .route(&format!("{b}/streams"), get(pages::streams::<S>))
        .route(&format!("{b}/stream"), get(pages::stream::<S>))
        .route(&format!("{b}/log"), get(pages::log::<S>))
        .route(&format!("{b}/log/tail"), get(live::tail::<S>))
        .route(&format!("{b}/actions"), get(pages::actions::<S>))
        .route(&format!("{b}/actions/replay"), post(replay::<S>))
        .route(&format!("{b}/actions/snapshot"), post(snapshot::<S>))
        .route(&format!("{b}/jobs/{{id}}"), get(job::<S>))
        .route(
            &format!("{b}/assets/console.css"),
            get(|| asset(CSS, "text/css; charset=utf-8")),
        )
        .route(
            &format!("{b}/assets/console.js"),
            get(|| asset(JS, "text/javascript; charset=utf-8")),
        )
        .with_state(Arc::new(shared));
    routes.layer(middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set("content-security-policy", CSP);
    set("x-content-type-options", "nosniff");
    set("referrer-policy", "no-referrer");
    set("x-frame-options", "DENY");
    set("cache-control", "no-store");
    response
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An action's refusal or failure: `{"error": ...}` with its status.
fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReplayForm {
    token: Option<String>,
    #[serde(default)]
    projection: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotForm {
    token: Option<String>,
    #[serde(default)]
    stream: String,
}

async fn replay<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    form: Result<Form<ReplayForm>, FormRejection>,
) -> Response {
    let form = match check(&shared, &headers, form, |f: &ReplayForm| f.token.as_deref()) {
        Ok(form) => form,
        Err((status, message)) => return refuse(status, message),
    };
    let name = form.projection;
    if !shared.ops.projection_names().any(|n| n == name) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("no projection named {name:?}"),
        );
    }
    let Some(id) = shared.jobs.start("replay", name.clone()) else {
        return refuse(
            StatusCode::CONFLICT,
            "another action is running: wait for it to end".into(),
        );
    };
    let guard = match &shared.before_replay {
        Some(prepare) => match prepare().await {
            Ok(guard) => Some(guard),
            Err(message) => {
                shared.jobs.finish(id, Err(message.clone()));
                return refuse(StatusCode::CONFLICT, message);
            }
        },
        None => None,
    };
    let task = Arc::clone(&shared);
    spawn_job(&shared.jobs, id, async move {
        let jobs = task.jobs.clone();
        let mut on_progress = |p: Progress| jobs.progress(id, p.done, p.total);
        let replayed = task.ops.replay_projection(&name, &mut on_progress).await;
        drop(guard);
        match replayed {
            Ok(r) => {
                task.jobs.replayed(&name, None);
                let message = format!(
                    "replayed {name}: {} events in {:.2} s ({:.0} events/s)",
                    r.events,
                    r.elapsed.as_secs_f64(),
                    r.events_per_second()
                );
                tracing::info!(projection = %name, events = r.events, "console replay done");
                task.jobs.finish(id, Ok(message));
            }
            Err(e) => {
                tracing::warn!(projection = %name, error = %chain(&e), "console replay failed");
                task.jobs.replayed(&name, Some(StoppedAt::from_error(&e)));
                task.jobs.finish(id, Err(chain(&e)));
            }
        }
    });
    accepted(&shared.base, id)
}

async fn snapshot<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    form: Result<Form<SnapshotForm>, FormRejection>,
) -> Response {
    let form = match check(&shared, &headers, form, |f: &SnapshotForm| {
        f.token.as_deref()
    }) {
        Ok(form) => form,
        Err((status, message)) => return refuse(status, message),
    };
    let text = form.stream.trim().to_owned();
    let named = match text.as_str() {
        "" => None,
        text => match text.parse::<StreamId>() {
            Ok(stream) => Some(stream),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
        },
    };
    let target = named
        .as_ref()
        .map_or_else(|| "all".to_owned(), ToString::to_string);
    let Some(id) = shared.jobs.start("snapshot", target) else {
        return refuse(
            StatusCode::CONFLICT,
            "another action is running: wait for it to end".into(),
        );
    };
    let task = Arc::clone(&shared);
    spawn_job(&shared.jobs, id, async move {
        let run = async {
            let targets = task.ops.snapshot_targets(named.as_ref()).await?;
            let total = targets.len() as u64;
            task.jobs.progress(id, 0, total);
            for (i, stream) in targets.iter().enumerate() {
                task.ops.snapshot_stream(stream).await?;
                task.jobs.progress(id, i as u64 + 1, total);
            }
            Ok::<_, cqrs_cli::Error>(format!("{total} snapshot(s) taken"))
        };
        let outcome = run.await.map_err(|e| chain(&e));
        task.jobs.finish(id, outcome);
    });
    accepted(&shared.base, id)
}

/// Runs a job's task in the background; if it panics, the job fails with that (and
/// does not block the next action forever).
fn spawn_job(jobs: &Jobs, id: u64, task: impl Future<Output = ()> + Send + 'static) {
    let (jobs, task) = (jobs.clone(), tokio::spawn(task));
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(job = id, error = %e, "a console job's task failed");
            jobs.finish(id, Err(format!("the job's task failed: {e}")));
        }
    });
}

/// Authorizes a mutating request and returns its form.
fn check<S, T>(
    shared: &Shared<S>,
    headers: &HeaderMap,
    form: Result<Form<T>, FormRejection>,
    token: impl Fn(&T) -> Option<&str>,
) -> Result<T, (StatusCode, String)> {
    let given = form.as_ref().ok().and_then(|Form(f)| token(f));
    if let Err(refused) = authorize(shared.token.as_deref(), headers, given) {
        return Err((StatusCode::FORBIDDEN, refused.to_string()));
    }
    match form {
        Ok(Form(form)) => Ok(form),
        Err(rejection) => Err((StatusCode::BAD_REQUEST, rejection.body_text())),
    }
}

/// 202 with the job to poll.
fn accepted(base: &str, id: u64) -> Response {
    let body = json!({ "job": id, "progress": format!("{base}/jobs/{id}") });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `GET <base>/jobs/<id>`: a job's progress.
async fn job<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    Path(id): Path<u64>,
) -> Response {
    match shared.jobs.get(id) {
        Some(job) => Json(job).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no job {id}")),
    }
}
