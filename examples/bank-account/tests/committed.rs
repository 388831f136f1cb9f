//! A committed write is never reported as failed (issue 11, item 2): with an event in the
//! log that no projection can decode, a deposit over the command line and over HTTP, on
//! sled and on PostgreSQL, answers success with the account's new balance and says
//! whether the read model shows it; the transfer process manager, stopped by that event,
//! is restarted by its supervisor and its failure is visible.
//!
//! The PostgreSQL cases need a server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); without one they print `skipped` and
//! pass, unless `CQRS_REQUIRE_POSTGRES=1`.

use std::process::Command;
use std::time::Duration;

use cqrs_core::{BoxEventStore, EventData, EventLog, ExpectedVersion, StreamId};
use example_bank_account::Bank;
use example_bank_account::domain::{AccountServices, Cents};
use futures::StreamExt;
use serde_json::{Value, json};

mod common;
mod wire;

use common::pg::Schema;
use wire::{Server, within};

use common::{bank_on as bank, ok_on as ok};

/// An account event that no projection can decode: `TransferDebited` (wanted by the
/// accounts read model and by the transfer process manager) whose payload is not JSON.
async fn poison(store: &BoxEventStore) {
    let stream = StreamId::new("account", "mallory").unwrap();
    let event = EventData::new("TransferDebited", b"{not json".to_vec());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
}

/// The event types in an account's stream.
async fn event_types(store: &BoxEventStore, account: &str) -> Vec<String> {
    let stream = StreamId::new("account", account).unwrap();
    let events = store.read_stream(&stream, 1).collect::<Vec<_>>().await;
    events.into_iter().map(|e| e.unwrap().event_type).collect()
}

fn deposits(types: &[String]) -> usize {
    types.iter().filter(|t| *t == "MoneyDeposited").count()
}

/// What a deposit of 5.00 onto 10.00 must answer: success, the new balance and version
/// from the account itself, and the read model's status.
#[track_caller]
fn assert_deposited(answer: &Value, read_model_current: bool) {
    assert_eq!(answer["account"], "alice", "{answer}");
    assert_eq!(answer["balance"], "15.00", "{answer}");
    assert_eq!(answer["balance_cents"], 1500, "{answer}");
    assert_eq!(answer["version"], 3, "{answer}");
    assert_eq!(answer["status"], "open", "{answer}");
    let read_model = &answer["read_model"];
    assert_eq!(read_model["current"], read_model_current, "{answer}");
    if !read_model_current {
        let behind = read_model["behind_by"].as_u64().unwrap_or(0);
        assert!(behind >= 1, "the read model is behind: {answer}");
    }
}

/// Waits until the process manager's supervisor has restarted it after the poisoned
/// event, and checks that the failure is recorded.
async fn assert_supervised(bank: &Bank) {
    within("a restart of the process manager", async {
        while bank.supervision()[0].restarts == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let status = &bank.supervision()[0];
    assert_eq!(status.name, "transfers");
    let error = status.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("mallory"), "names the stream: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_event_does_not_fail_a_deposit_on_the_command_line_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().display());
    ok(&url, &["open", "alice"]);
    ok(&url, &["deposit", "alice", "10"]);
    {
        let store = cqrs_sled::SledEventStore::open(dir.path()).unwrap();
        poison(&BoxEventStore::new(store)).await;
    }

    let (code, answer, stderr) = bank(&url, &["deposit", "alice", "5"]);
    assert_eq!(code, 0, "a committed deposit succeeds: {stderr}");
    assert_deposited(&answer, false);
    assert!(stderr.contains("behind"), "says so: {stderr}");

    // Reads answer at once from the read model (which stopped before the poisoned
    // event), with its lag.
    let balance = ok(&url, &["balance", "alice"]);
    assert_eq!(balance["balance"], "10.00", "{balance}");
    assert_eq!(balance["read_model"]["current"], false, "{balance}");
    let history = ok(&url, &["history", "alice"]);
    assert_eq!(history["read_model"]["current"], false, "{history}");

    let store = cqrs_sled::SledEventStore::open(dir.path()).unwrap();
    let types = event_types(&BoxEventStore::new(store), "alice").await;
    assert_eq!(
        deposits(&types),
        2,
        "each deposit is in the log once: {types:?}"
    );
}

async fn open_bank(url: &str) -> Bank {
    let services = AccountServices::new(Cents::new(1_000_000).unwrap());
    Bank::open(url, services).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_event_does_not_fail_a_deposit_over_http_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_bank(&format!("sled:{}", dir.path().display())).await;
    let server = Server::start(bank.clone()).await;
    let opened = server
        .post("/accounts", json!({"account": "alice"}), None)
        .await;
    assert_eq!(opened.0, 201, "{opened:?}");
    let deposit = json!({"amount": "10"});
    assert_eq!(
        server
            .post("/accounts/alice/deposits", deposit, None)
            .await
            .0,
        200
    );
    poison(bank.store()).await;

    let (status, answer, _) = server
        .post("/accounts/alice/deposits", json!({"amount": "5"}), None)
        .await;
    assert_eq!(status, 200, "a committed deposit succeeds: {answer}");
    assert_deposited(&answer, false);
    let (status, balance, _) = server.get("/accounts/alice").await;
    assert_eq!(
        (status, &balance["balance"]),
        (200, &json!("10.00")),
        "{balance}"
    );
    assert_eq!(balance["read_model"]["current"], false, "{balance}");
    let (status, accounts, _) = server.get("/accounts").await;
    assert_eq!(status, 200, "{accounts}");
    assert!(
        accounts["read_model"]["behind_by"].as_u64() >= Some(1),
        "{accounts}"
    );

    assert_supervised(&bank).await;
    server.stop().await;
    assert_eq!(deposits(&event_types(bank.store(), "alice").await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_event_does_not_fail_a_deposit_on_the_command_line_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let url = schema.url();
    ok(&url, &["open", "alice"]);
    ok(&url, &["deposit", "alice", "10"]);
    let store = schema.plain_store().await;
    poison(&store).await;

    // The read model is written inline with each append, so it shows the deposit; the
    // process manager stops at the poisoned event, which is no failure of the deposit.
    let (code, answer, stderr) = bank(&url, &["deposit", "alice", "5"]);
    assert_eq!(code, 0, "a committed deposit succeeds: {stderr}");
    assert_deposited(&answer, true);
    let balance = ok(&url, &["balance", "alice"]);
    assert_eq!(balance["balance"], "15.00", "{balance}");
    assert_eq!(deposits(&event_types(&store, "alice").await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_event_does_not_fail_a_deposit_over_http_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let bank = open_bank(&schema.url()).await;
    let server = Server::start(bank.clone()).await;
    let opened = server
        .post("/accounts", json!({"account": "alice"}), None)
        .await;
    assert_eq!(opened.0, 201, "{opened:?}");
    let deposit = json!({"amount": "10"});
    assert_eq!(
        server
            .post("/accounts/alice/deposits", deposit, None)
            .await
            .0,
        200
    );
    let store = schema.plain_store().await;
    poison(&store).await;

    let (status, answer, _) = server
        .post("/accounts/alice/deposits", json!({"amount": "5"}), None)
        .await;
    assert_eq!(status, 200, "a committed deposit succeeds: {answer}");
    assert_deposited(&answer, true);
    assert_supervised(&bank).await;
    server.stop().await;
    assert_eq!(deposits(&event_types(&store, "alice").await), 2);
}

/// `bank serve` logs on standard error that the process manager stopped on the poisoned
/// event and is being restarted: the stop is visible to an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_serve_logs_the_stopped_process_manager_and_its_restarts() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().display());
    ok(&url, &["open", "alice"]);
    {
        let store = cqrs_sled::SledEventStore::open(dir.path()).unwrap();
        poison(&BoxEventStore::new(store)).await;
    }
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let mut server = common::Killed(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args(["--store", &url, "serve", "--addr", &addr.to_string()])
            .env_remove("BANK_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bank serve"),
    );
    let stderr = BufReader::new(server.0.stderr.take().unwrap());
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let logged = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = seen.recv_timeout(left).expect("a log line within 60 s");
        if line.contains("transfers") && line.contains("restarting") {
            break line;
        }
    };
    assert!(
        logged.contains("WARN") && logged.contains("mallory"),
        "{logged}"
    );
}
