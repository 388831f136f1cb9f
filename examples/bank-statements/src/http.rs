//! `statements serve`'s HTTP API (JSON): the statements, the dead letters and the
//! counts, answered by the process that holds the database and runs the consumer.
//!
//! | route | answer |
//! |---|---|
//! | `GET /accounts/{id}/statement` | the statement, or 404 |
//! | `GET /dead-letters` | `{"dead_letters": [...]}` |
//! | `POST /dead-letters/redrive` | what the redrive did |
//! | `GET /stats` | the inbox's counts and the consumer's |
//! | `GET /metrics` | Prometheus metrics |

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cqrs_core::{ConsumerControl, DeadLetter, InboxStats, RedriveReport};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::statement::{micros, rfc3339};
use crate::{Error, StatementsStore};

/// What the handlers share.
#[derive(Debug, Clone)]
struct App {
    store: StatementsStore,
    control: ConsumerControl,
    metrics: Option<PrometheusHandle>,
}

/// The API's router, over the service's store and its running consumer's control;
/// with `metrics`, also `/metrics` and the consumer's counts in `/stats`.
pub fn router(
    store: StatementsStore,
    control: ConsumerControl,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let app = App {
        store,
        control,
        metrics: metrics.clone(),
    };
    let router = Router::new()
        .route("/accounts/{id}/statement", get(statement))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/redrive", post(redrive))
        .route("/stats", get(stats))
        .with_state(app);
    match metrics {
        Some(handle) => router.merge(cqrs_http::metrics_router(move || handle.render())),
        None => router,
    }
}

/// An error as an answer: 404 not found, 400 bad input, 503 otherwise.
fn failure(error: &Error) -> Response {
    let status = match error.exit_code() {
        1 => StatusCode::NOT_FOUND,
        2 => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = crate::error::full_chain(error);
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn unavailable(error: &(dyn std::error::Error + 'static)) -> Response {
    let message = crate::error::full_chain(error);
    let body = axum::Json(json!({ "error": message }));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn statement(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.store.statement(&id).await {
        Ok(statement) => axum::Json(statement.to_json()).into_response(),
        Err(e) => failure(&e),
    }
}

async fn dead_letters(State(app): State<App>) -> Response {
    let mut letters: Vec<DeadLetter> = Vec::new();
    loop {
        let after = letters.last().map_or(0, |l| l.id);
        match app.control.dead_letters(after, 500).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => letters.extend(page),
            Err(e) => return unavailable(&*e),
        }
    }
    axum::Json(letters_json(&letters)).into_response()
}

async fn redrive(State(app): State<App>) -> Response {
    match app.control.redrive(None).await {
        Ok(report) => axum::Json(redrive_json(&report)).into_response(),
        Err(e) => unavailable(&*e),
    }
}

async fn stats(State(app): State<App>) -> Response {
    let inbox = match app.control.stats().await {
        Ok(stats) => stats,
        Err(e) => return unavailable(&*e),
    };
    let consumer = app.metrics.map(|m| consumer_counts(&m.render()));
    axum::Json(stats_json(inbox, consumer)).into_response()
}

/// The consumer's message counts by outcome (`applied`, `duplicate`, …), from its
/// metric `cqrs_consumer_messages_total` in the Prometheus text `metrics`.
fn consumer_counts(metrics: &str) -> Value {
    let mut counts = serde_json::Map::new();
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("cqrs_consumer_messages_total{") else {
            continue;
        };
        let Some((labels, value)) = labels.split_once("} ") else {
            continue;
        };
        let ours = labels.contains(&format!("consumer=\"{}\"", crate::service::CONSUMER));
        let outcome = labels
            .split(',')
            .find_map(|l| l.strip_prefix("outcome=\""))
            .and_then(|o| o.strip_suffix('"'));
        if let (true, Some(outcome), Ok(value)) = (ours, outcome, value.trim().parse::<u64>()) {
            counts.insert(outcome.to_owned(), json!(value));
        }
    }
    Value::Object(counts)
}

/// Dead letters as JSON: `{"dead_letters": [...]}`.
pub fn letters_json(letters: &[DeadLetter]) -> Value {
    let letters: Vec<_> = letters
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "reason": l.reason,
                "subject": l.message.subject,
                "event_id": l.event_id,
                "stream": l.stream.as_ref().map(ToString::to_string),
                "version": l.version,
                "attempts": l.attempts,
                "dead_at": rfc3339(micros(l.dead_at)),
                "payload": String::from_utf8_lossy(&l.message.payload),
            })
        })
        .collect();
    json!({ "dead_letters": letters })
}

/// A redrive's report as JSON.
pub fn redrive_json(report: &RedriveReport) -> Value {
    let unparked: Vec<_> = report.unparked.iter().map(ToString::to_string).collect();
    json!({
        "applied": report.applied,
        "duplicates": report.duplicates,
        "remaining": report.remaining,
        "unparked": unparked,
        "failures": report.failures,
    })
}

/// The inbox's counts (and the consumer's, when known) as JSON.
pub fn stats_json(inbox: InboxStats, consumer: Option<Value>) -> Value {
    let mut stats = json!({
        "streams": inbox.streams,
        "parked": inbox.parked,
        "dead_letters": inbox.dead_letters,
    });
    if let Some(consumer) = consumer {
        stats["consumer"] = consumer;
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_prometheus_text() {
        let text = "# TYPE cqrs_consumer_messages_total counter\n\
            cqrs_consumer_messages_total{consumer=\"statements\",outcome=\"applied\"} 7\n\
            cqrs_consumer_messages_total{consumer=\"other\",outcome=\"applied\"} 9\n\
            cqrs_consumer_messages_total{consumer=\"statements\",outcome=\"dead_lettered\"} 1\n";
        assert_eq!(
            consumer_counts(text),
            json!({ "applied": 7, "dead_lettered": 1 })
        );
    }
}
