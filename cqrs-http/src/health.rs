//! Health endpoints (`/health/live`, `/health/ready`) and a `/metrics` route.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

/// The future of one check: `Ok` when healthy, otherwise what is wrong.
type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Readiness checks of an application, served as `/health/live` and `/health/ready`.
///
/// - `GET /health/live` answers `200 {"status":"live"}` while the process serves
///   requests at all (a liveness probe: restart the process when it fails).
/// - `GET /health/ready` runs every check at once, each within the
///   [`timeout`](Self::timeout), and answers `200` if all pass, otherwise `503`; the
///   JSON body names each check with `ok` and, for a failed one, its `error`:
///   `{"status":"unavailable","checks":{"store":{"ok":false,"error":"..."}}}` (a
///   readiness probe: send no traffic while it fails).
///
/// # Examples
/// ```
/// use cqrs_http::HealthChecks;
///
/// let health = HealthChecks::new()
///     .check("store", || async { Ok(()) })
///     .check("projections", || async { Err("accounts is stopped".to_owned()) });
/// let app: axum::Router = health.router();
/// # drop(app);
/// ```
#[derive(Clone)]
pub struct HealthChecks {
    checks: Vec<(String, CheckFn)>,
    timeout: Duration,
}

impl fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HealthChecks")
            .field("checks", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// Whether the check passed.
    pub ok: bool,
    /// What is wrong, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of every readiness check, as `/health/ready` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// Each check by name.
    pub checks: BTreeMap<String, CheckOutcome>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.checks.values().all(|check| check.ok)
    }
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let status = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, axum::Json(self)).into_response()
    }
}

impl HealthChecks {
    /// No checks (ready at once), each check given 5 seconds.
    pub fn new() -> Self {
        HealthChecks {
            checks: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Adds a check called `name`: `Ok(())` when healthy, `Err(what is wrong)`
    /// otherwise. A check that does not finish within the timeout fails.
    pub fn check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.push((name.into(), check));
        self
    }

    /// How long each check may take before it counts as failed (default 5 s): a store
    /// that does not answer is as unready as one that refuses.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs every check at once and collects the outcomes.
    pub async fn run(&self) -> Readiness {
        let timeout = self.timeout;
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(timeout, check()).await {
                Ok(Ok(())) => CheckOutcome {
                    ok: true,
                    error: None,
                },
                Ok(Err(error)) => CheckOutcome {
                    ok: false,
                    error: Some(error),
                },
                Err(_) => CheckOutcome {
                    ok: false,
                    error: Some(format!("no answer within {timeout:?}")),
                },
            };
            (name.clone(), outcome)
        });
        let checks: BTreeMap<_, _> = futures::future::join_all(runs).await.into_iter().collect();
        let status = if checks.values().all(|check| check.ok) {
            "ready"
        } else {
            "unavailable"
        };
        Readiness { status, checks }
    }

    /// The routes `/health/live` and `/health/ready`, to merge into an application's
    /// router.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let checks = Arc::new(self);
        Router::new()
            .route(
                "/health/live",
                get(|| async { axum::Json(serde_json::json!({ "status": "live" })) }),
            )
            .route(
                "/health/ready",
                get(move || {
                    let checks = Arc::clone(&checks);
                    async move { checks.run().await }
                }),
            )
    }
}

/// The route `/metrics`, answering what `render` returns as the Prometheus text format
/// (`text/plain; version=0.0.4`): give it the render function of the exporter the
/// application installed (e.g. `metrics-exporter-prometheus`'s `PrometheusHandle`).
///
/// # Examples
/// ```
/// let app: axum::Router = cqrs_http::metrics_router(|| "up 1\n".to_owned());
/// # drop(app);
/// ```
pub fn metrics_router<S, F>(render: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    Router::new().route(
        "/metrics",
        get(move || {
            let render = Arc::clone(&render);
            async move {
                let content_type = "text/plain; version=0.0.4; charset=utf-8";
                ([(header::CONTENT_TYPE, content_type)], render())
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_check_passes_and_a_slow_check_fails() {
        let health = HealthChecks::new()
            .timeout(Duration::from_millis(50))
            .check("store", || async { Ok(()) });
        let ready = health.run().await;
        assert!(ready.is_ready());
        assert_eq!(ready.status, "ready");

        let health = health
            .check("projections", || async {
                Err("accounts is stopped".to_owned())
            })
            .check("slow", std::future::pending);
        let ready = health.run().await;
        assert!(!ready.is_ready());
        assert_eq!(ready.status, "unavailable");
        assert!(ready.checks["store"].ok);
        let failed = &ready.checks["projections"];
        assert_eq!(failed.error.as_deref(), Some("accounts is stopped"));
        let slow = ready.checks["slow"].error.as_deref().unwrap_or_default();
        assert!(slow.contains("no answer"), "{slow}");
        let response = ready.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
