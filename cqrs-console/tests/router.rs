//! The console's router without a browser (`tower::ServiceExt::oneshot`), against the
//! sled store and PostgreSQL (a fresh schema per test, dropped by a guard; skipped when
//! no server is reachable unless CQRS_REQUIRE_POSTGRES=1).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cqrs_cli::Operations;
use cqrs_console::Console;
use cqrs_core::{
    Aggregate, BoxError, BoxEventStore, DomainEvent, Envelope, Projection, ProjectionRunner,
    Repository, RetryPolicy, RunnerConfig, StoreCheckpoint,
};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

mod pg;

const TOKEN: &str = "test-token-7";
const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = r#""><img src=x onerror=alert(1)>"#;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Note {
    text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum NoteEvent {
    Written { text: String },
}

impl DomainEvent for NoteEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Written"];
    fn event_type(&self) -> &'static str {
        "Written"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Note {
    const TYPE: &'static str = "note";
    type Command = String;
    type Event = NoteEvent;
    type Error = Never;
    type Services = ();
    fn handle(&self, text: &String, _: &()) -> Result<Vec<NoteEvent>, Never> {
        Ok(vec![NoteEvent::Written { text: text.clone() }])
    }
    fn apply(&mut self, event: NoteEvent) {
        let NoteEvent::Written { text } = event;
        self.text = text;
    }
}

/// Counts notes; refuses the text `poison`.
#[derive(Debug, Clone, Default)]
struct Notes;

impl Projection for Notes {
    type Event = NoteEvent;
    fn name(&self) -> &str {
        "notes"
    }
    async fn apply(&mut self, _: &mut (), batch: &[Envelope<NoteEvent>]) -> Result<(), BoxError> {
        match batch
            .iter()
            .find(|e| matches!(&e.event, NoteEvent::Written { text } if text == "poison"))
        {
            Some(_) => Err("this note is poison".into()),
            None => Ok(()),
        }
    }
}

/// The console over `store`, with notes written to `ids` (each id's text is the id).
async fn console(store: BoxEventStore, ids: &[&str], token: Option<&str>) -> Router {
    let notes = Repository::<Note, _>::new(store.clone(), ());
    for id in ids {
        notes.execute(id, &(*id).to_owned()).await.unwrap();
    }
    let runner_store = store.clone();
    let ops = Operations::new(store.clone())
        .aggregate(notes)
        .projection(move || {
            let checkpoint = StoreCheckpoint::new(runner_store.clone());
            let config = RunnerConfig {
                retry: RetryPolicy::none(),
                ..RunnerConfig::default()
            };
            ProjectionRunner::with_strategy(runner_store.clone(), Notes, checkpoint)
                .with_config(config)
        });
    Console::new(ops).token(token.map(str::to_owned)).router()
}

struct Answer {
    status: StatusCode,
    csp: Option<String>,
    body: String,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let csp = response.headers().get("content-security-policy");
    let csp = csp.map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        csp,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn get(app: &Router, uri: &str) -> Answer {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn post(uri: &str, token: Option<&str>, form: &str) -> Request<Body> {
    let mut request = Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "127.0.0.1:8080");
    if let Some(token) = token {
        request = request.header("x-console-token", token);
    }
    request.body(Body::from(form.to_owned())).unwrap()
}

/// Polls a job until it ends (30 s deadline) and returns its JSON.
async fn finished(app: &Router, accepted: &Answer) -> serde_json::Value {
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let answer: serde_json::Value = serde_json::from_str(&accepted.body).unwrap();
    let url = answer["progress"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job: serde_json::Value = serde_json::from_str(&get(app, &url).await.body).unwrap();
        if job["state"] != "running" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not end: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sled_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = cqrs_sled::SledEventStore::temporary().unwrap();
                    super::$case(cqrs_core::BoxEventStore::new(store)).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(schema) = super::pg::Schema::fresh().await else { return };
                    super::$case(schema.store().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    every_page_renders,
    store_values_are_escaped,
    streams_are_paged_by_key,
    actions_need_the_token,
    replay_and_snapshot_complete,
    a_failed_replay_shows_the_projection_stopped,
    the_live_tail_streams_new_events,
);

async fn every_page_renders(store: BoxEventStore) {
    let app = console(store, &["n-1", "n-2"], Some(TOKEN)).await;
    let overview = get(&app, "/console").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.body.contains(r#"<tr data-projection="notes">"#),
        "{}",
        overview.body
    );
    assert!(overview.body.contains(r#"name="viewport""#));
    let csp = overview.csp.expect("a Content-Security-Policy");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    for (uri, expected) in [
        ("/console/", "Projections"),
        ("/console/fragments/overview", "badge catching-up"),
        ("/console/streams?type=note", "n-2"),
        ("/console/stream?type=note&id=n-1", "Written"),
        ("/console/log?after=0&limit=10", "note/n-2"),
        ("/console/actions", "Replay a projection"),
        ("/console/assets/console.js", "EventSource"),
        ("/console/assets/console.css", ".badge.running"),
    ] {
        let page = get(&app, uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.body);
        assert!(
            page.body.contains(expected),
            "{uri} lacks {expected:?}: {}",
            page.body
        );
        assert!(page.csp.is_some(), "{uri} has no CSP");
    }
    // The envelope and the pretty payload.
    let stream = get(&app, "/console/stream?type=note&id=n-1").await.body;
    assert!(
        stream.contains("event id") && stream.contains("No snapshot."),
        "{stream}"
    );
    assert!(
        stream.contains("{\n  &quot;Written&quot;: {\n    &quot;text&quot;: &quot;n-1&quot;"),
        "{stream}"
    );
    // Bad input is a 400 page, not a panic.
    assert_eq!(
        get(&app, "/console/log?after=x").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&app, "/console/stream?type=note&id=").await.status,
        StatusCode::BAD_REQUEST
    );
}

async fn store_values_are_escaped(store: BoxEventStore) {
    let ids = [SCRIPT, IMG];
    let app = console(store, &ids, Some(TOKEN)).await;
    let stream_uri = "/console/stream?type=note&id=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for uri in ["/console/streams", "/console/log", stream_uri] {
        let page = get(&app, uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert!(
            !page.body.contains(SCRIPT),
            "{uri} holds a raw script: {}",
            page.body
        );
        assert!(
            !page.body.contains("<img"),
            "{uri} holds a raw img: {}",
            page.body
        );
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{uri}: {}",
            page.body
        );
    }
    let log = get(&app, "/console/log").await.body;
    assert!(
        log.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "{log}"
    );
}

async fn streams_are_paged_by_key(store: BoxEventStore) {
    let ids = ["a-3", "a-1", "b-1", "a-2", "a-5", "a-4"];
    let app = console(store, &ids, Some(TOKEN)).await;
    let mut uri = "/console/streams?type=note&prefix=a-&limit=2".to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = get(&app, &uri).await.body;
        for id in ["a-1", "a-2", "a-3", "a-4", "a-5", "b-1"] {
            if page.contains(&format!(">{id}</a>")) {
                seen.push(id);
            }
        }
        let Some(next) = page.split(r#"<a rel="next" href=""#).nth(1) else {
            break;
        };
        uri = next.split('"').next().unwrap().replace("&amp;", "&");
        assert!(uri.contains("after_id="), "{uri}");
        assert!(!uri.contains("offset"), "{uri}");
    }
    assert_eq!(seen, ["a-1", "a-2", "a-3", "a-4", "a-5"]);
}

async fn actions_need_the_token(store: BoxEventStore) {
    let app = console(store.clone(), &["n-1"], Some(TOKEN)).await;
    let replay = "/console/actions/replay";
    let refused = send(&app, post(replay, None, "projection=notes")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("a console token is required"),
        "{}",
        refused.body
    );
    let wrong = send(&app, post(replay, Some("nope"), "projection=notes")).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(wrong.body.contains("wrong"), "{}", wrong.body);
    let mut cross = post(replay, Some(TOKEN), "projection=notes");
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(send(&app, cross).await.status, StatusCode::FORBIDDEN);
    let mut other = post(replay, Some(TOKEN), "projection=notes");
    other
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    assert_eq!(send(&app, other).await.status, StatusCode::FORBIDDEN);
    for uri in [replay, "/console/actions/snapshot"] {
        assert_eq!(
            get(&app, uri).await.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{uri}"
        );
    }
    // The form field works as the header does.
    let form = send(
        &app,
        post(replay, None, &format!("projection=notes&token={TOKEN}")),
    )
    .await;
    assert_eq!(finished(&app, &form).await["state"], "done");
    // Without a token configured, actions are disabled.
    let disabled = console(store, &[], None).await;
    let answer = send(&disabled, post(replay, Some(TOKEN), "projection=notes")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.contains("disabled"), "{}", answer.body);
}

async fn replay_and_snapshot_complete(store: BoxEventStore) {
    let app = console(store, &["n-1", "n-2", "n-3"], Some(TOKEN)).await;
    let replay = send(
        &app,
        post("/console/actions/replay", Some(TOKEN), "projection=notes"),
    )
    .await;
    let job = finished(&app, &replay).await;
    assert_eq!(
        (job["state"].as_str(), job["percent"].as_u64()),
        (Some("done"), Some(100)),
        "{job}"
    );
    assert_eq!(job["done"], 3);
    let unknown = send(
        &app,
        post("/console/actions/replay", Some(TOKEN), "projection=x"),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let snapshot = send(
        &app,
        post(
            "/console/actions/snapshot",
            Some(TOKEN),
            "stream=note%2Fn-2",
        ),
    )
    .await;
    let job = finished(&app, &snapshot).await;
    assert_eq!(
        (job["state"].as_str(), job["percent"].as_u64()),
        (Some("done"), Some(100)),
        "{job}"
    );
    let page = get(&app, "/console/stream?type=note&id=n-2").await.body;
    assert!(page.contains("Snapshot at version 1"), "{page}");
    let all = send(
        &app,
        post("/console/actions/snapshot", Some(TOKEN), "stream="),
    )
    .await;
    assert_eq!(finished(&app, &all).await["message"], "3 snapshot(s) taken");
    let actions = get(&app, "/console/actions").await.body;
    assert!(actions.contains("replayed notes: 3 events"), "{actions}");
}

async fn a_failed_replay_shows_the_projection_stopped(store: BoxEventStore) {
    let app = console(store, &["n-1", "poison", "n-3"], Some(TOKEN)).await;
    let before = get(&app, "/console/fragments/overview").await.body;
    assert!(before.contains("badge catching-up"), "{before}");
    let replay = send(
        &app,
        post("/console/actions/replay", Some(TOKEN), "projection=notes"),
    )
    .await;
    let job = finished(&app, &replay).await;
    assert_eq!(job["state"], "failed", "{job}");
    let overview = get(&app, "/console/fragments/overview").await.body;
    assert!(overview.contains("badge stopped"), "{overview}");
    assert!(overview.contains("note/poison version 1"), "{overview}");
    assert!(overview.contains("this note is poison"), "{overview}");
}

async fn the_live_tail_streams_new_events(store: BoxEventStore) {
    let app = console(store.clone(), &["n-1"], Some(TOKEN)).await;
    let response = app
        .clone()
        .oneshot(
            Request::get("/console/log/tail?after=0")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let notes = Repository::<Note, _>::new(store, ());
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut appended = false;
    while !text.contains("note/n-late") {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        let frame = frame
            .expect("no tail event before the deadline")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        if text.contains("note/n-1") && !appended {
            notes.execute("n-late", &"late".to_owned()).await.unwrap();
            appended = true;
        }
    }
    assert!(text.contains("event: row"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tails_end_when_the_server_shuts_down() {
    let store = BoxEventStore::new(cqrs_sled::SledEventStore::temporary().unwrap());
    let (shut, closing) = tokio::sync::oneshot::channel::<()>();
    let ops = Operations::new(store);
    let app = Console::new(ops)
        .closing_on(async {
            let _ = closing.await;
        })
        .router();
    let request = Request::get("/console/log/tail")
        .body(Body::empty())
        .unwrap();
    let mut body = app.oneshot(request).await.unwrap().into_body();
    shut.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        match frame.expect("the tail did not end before the deadline") {
            None => break,
            Some(frame) => drop(frame.unwrap()),
        }
    }
}
