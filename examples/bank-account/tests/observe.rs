//! Observability of the bank: the real `bank serve` exports the framework's metrics at
//! `/metrics` and logs JSON with `--log-format json`; `/health/ready` answers 200, and
//! 503 naming the failed check when the process manager is stopped by a poisoned event
//! (sled) or when the store is gone (PostgreSQL: the bank's own schema dropped
//! mid-test, nothing shared is touched).

use std::process::{Command, Stdio};
use std::time::Duration;

use cqrs_core::{BoxEventStore, EventData, EventLog, ExpectedVersion, StreamId};
use example_bank_account::Bank;
use example_bank_account::domain::{AccountServices, Cents};
use example_bank_account::http::{DEFAULT_READY_MAX_LAG, app};
use serde_json::{Value, json};

mod common;
mod wire;

use common::Killed;
use common::pg::{Schema, database_url};
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use wire::{Server, request, within};

/// An account event that no projection can decode (as in `committed.rs`).
async fn poison(store: &BoxEventStore) {
    let stream = StreamId::new("account", "mallory").unwrap();
    let event = EventData::new("TransferDebited", b"{not json".to_vec());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
}

async fn open_bank(url: &str) -> Bank {
    let services = AccountServices::new(Cents::new(1_000_000).unwrap());
    Bank::open(url, services).await.unwrap()
}

/// Polls `/health/ready` until its answer satisfies `done`; returns the status and body.
async fn ready_until(server: &Server, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    within("the readiness wanted", async {
        loop {
            let (status, body, _) = server.get("/health/ready").await;
            if done(status, &body) {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[track_caller]
fn assert_ready(status: u16, body: &Value) {
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    for check in ["store", "projections", "read_model"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_a_poisoned_event_stops_the_process_manager_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_bank(&format!("sled:{}", dir.path().display())).await;
    // A bound of 0 events: the read model must be current.
    let server = Server::start_app(bank.clone(), app(bank.clone(), 0)).await;
    let (status, live, _) = server.get("/health/live").await;
    assert_eq!((status, &live["status"]), (200, &json!("live")), "{live}");
    let (status, body) = ready_until(&server, |status, _| status == 200).await;
    assert_ready(status, &body);

    poison(bank.store()).await;
    let stopped = |_: u16, body: &Value| body["checks"]["projections"]["ok"] == false;
    let (status, body) = ready_until(&server, stopped).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    let error = body["checks"]["projections"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("transfers") && error.contains("mallory"),
        "{body}"
    );
    assert_eq!(body["checks"]["store"]["ok"], true, "{body}");
    // The read model stopped before the poisoned event: one event behind, over 0.
    let lag = body["checks"]["read_model"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(lag.contains("1 events behind"), "{body}");
    let (status, live, _) = server.get("/health/live").await;
    assert_eq!(status, 200, "still live: {live}");
    server.stop().await;
}

/// Drops the schema, waiting (within the deadline) for locks the bank's connections
/// may hold for a moment.
async fn drop_schema(schema: &Schema) {
    let mut conn = PgConnection::connect(&database_url()).await.unwrap();
    let sql = format!(
        "SET lock_timeout = '2s'; DROP SCHEMA \"{}\" CASCADE",
        schema.0
    );
    within("dropping the bank's schema", async {
        while let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
        {
            eprintln!("drop schema: {e}; again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_the_store_is_gone_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let bank = open_bank(&schema.url()).await;
    let app = app(bank.clone(), DEFAULT_READY_MAX_LAG);
    let server = Server::start_app(bank.clone(), app).await;
    let opened = server.post("/accounts", json!({"account": "alice"}), None);
    assert_eq!(opened.await.0, 201);
    let (status, body) = ready_until(&server, |status, _| status == 200).await;
    assert_ready(status, &body);

    drop_schema(&schema).await;
    let gone = |_: u16, body: &Value| body["checks"]["store"]["ok"] == false;
    let (status, body) = ready_until(&server, gone).await;
    assert_eq!(status, 503, "{body}");
    let error = body["checks"]["store"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(!error.is_empty(), "says why: {body}");
    server.stop().await;
}

/// The value of the series `series` (name and labels, as rendered) in a Prometheus text.
fn series(text: &str, series: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{series} ")))?;
    line.rsplit_once(' ')?.1.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_serve_exports_metrics_and_logs_json() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = [
        "--store",
        "memory:",
        "--log-format",
        "json",
        "serve",
        "--addr",
    ];
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args(args)
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bank serve"),
    );
    within("bank serve is ready", async {
        while tokio::net::TcpStream::connect(addr).await.is_err()
            || request(addr, "GET", "/health/ready", "", "").await.0 != 200
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let post = |path: &'static str, body: Value| async move {
        request(addr, "POST", path, "", &body.to_string()).await.0
    };
    assert_eq!(post("/accounts", json!({"account": "alice"})).await, 201);
    assert_eq!(
        post("/accounts/alice/deposits", json!({"amount": "10"})).await,
        200
    );
    let refused = post("/accounts/alice/withdrawals", json!({"amount": "100"}));
    assert_eq!(refused.await, 422);

    let (status, head, text) = request(addr, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    let ok = r#"cqrs_commands_total{aggregate="account",outcome="ok"}"#;
    assert_eq!(series(&text, ok), Some(2.0), "{text}");
    let rejected = r#"cqrs_commands_total{aggregate="account",outcome="rejected"}"#;
    assert_eq!(series(&text, rejected), Some(1.0), "{text}");
    let appended = r#"cqrs_appended_events_total{aggregate="account"}"#;
    assert_eq!(series(&text, appended), Some(2.0), "{text}");
    let applied = r#"cqrs_projection_events_total{projection="accounts"}"#;
    assert_eq!(series(&text, applied), Some(2.0), "{text}");
    let running = r#"cqrs_supervisor_running{job="transfers"}"#;
    assert_eq!(series(&text, running), Some(1.0), "{text}");
    let p99 = r#"cqrs_command_duration_seconds_bucket{aggregate="account",outcome="ok",le="+Inf"}"#;
    assert_eq!(series(&text, p99), Some(2.0), "a true histogram: {text}");
    assert!(text.contains("# HELP cqrs_commands_total"), "{text}");

    let term = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    assert!(term.expect("run kill").success());
    let exited = within("bank serve exits", async {
        loop {
            if let Some(status) = server.0.try_wait().expect("wait for bank serve") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(exited.success(), "{exited:?}");
    let mut logs = String::new();
    let stderr = server.0.stderr.take().expect("piped");
    std::io::Read::read_to_string(&mut { stderr }, &mut logs).unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("each log line is JSON"))
        .collect();
    let serving = lines.iter().find(|l| l["fields"]["message"] == "serving");
    assert!(serving.is_some(), "a JSON line says it serves: {logs}");
}
