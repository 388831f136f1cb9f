//! Commands are safe to retry (issue 11, item 2): every command kind sent twice with one
//! idempotency key (the HTTP `Idempotency-Key` header, the command line's
//! `--command-id`) is applied once, and the retry answers what the first run answered,
//! also after the account has moved on.

use std::process::Command;

use example_bank_account::Bank;
use example_bank_account::domain::{AccountServices, Cents};
use serde_json::{Value, json};

mod common;
mod wire;

use common::{COMMAND_DEADLINE, output_within};
use wire::Server;

/// An answer without its `read_model` status (how far the read model is behind *now*,
/// not part of what the command did), after checking that it shows the command.
#[track_caller]
fn result(mut answer: Value) -> Value {
    assert_eq!(answer["read_model"]["current"], true, "{answer}");
    answer.as_object_mut().unwrap().remove("read_model");
    answer
}

/// Runs `bank ARGS…` on a sled store; returns the JSON it printed (exit 0 asserted).
#[track_caller]
fn bank(url: &str, args: &[&str]) -> Value {
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args(["--store", url])
            .args(args)
            .env_remove("BANK_STORE"),
        COMMAND_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "bank {args:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs a command twice with one `--command-id`; the answers must be equal.
#[track_caller]
fn twice(url: &str, key: &str, args: &[&str]) -> Value {
    let args = [&["--command-id", key][..], args].concat();
    let first = result(bank(url, &args));
    assert_eq!(result(bank(url, &args)), first, "the retry of {args:?}");
    first
}

fn balance_cli(url: &str, account: &str) -> Value {
    bank(url, &["balance", account])["balance"].clone()
}

#[test]
fn every_command_retried_on_the_command_line_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().display());
    let opened = twice(&url, "open-alice", &["open", "alice"]);
    assert_eq!(
        (&opened["balance"], &opened["version"]),
        (&json!("0.00"), &json!(1))
    );
    twice(&url, "open-bob", &["open", "bob"]);

    let deposited = twice(&url, "deposit-1", &["deposit", "alice", "100"]);
    assert_eq!(deposited["balance"], "100.00", "{deposited}");
    assert_eq!(balance_cli(&url, "alice"), "100.00");
    let withdrawn = twice(&url, "withdraw-1", &["withdraw", "alice", "30"]);
    assert_eq!(withdrawn["balance"], "70.00", "{withdrawn}");
    assert_eq!(balance_cli(&url, "alice"), "70.00");

    // After another deposit, a retry still answers what the command did then.
    bank(&url, &["deposit", "alice", "1"]);
    let retried = bank(
        &url,
        &["--command-id", "deposit-1", "deposit", "alice", "100"],
    );
    assert_eq!(result(retried), deposited);
    assert_eq!(balance_cli(&url, "alice"), "71.00");

    // A transfer's id comes from the key: the retry finds the same transfer.
    let key = "transfer-1";
    let transferred = twice(&url, key, &["transfer", "alice", "bob", "21"]);
    assert_eq!(transferred["status"], "completed", "{transferred}");
    assert_eq!(balance_cli(&url, "alice"), "50.00");
    assert_eq!(balance_cli(&url, "bob"), "21.00");

    bank(&url, &["withdraw", "bob", "21"]);
    let closed = twice(&url, "close-bob", &["close", "bob"]);
    assert_eq!(closed["status"], "closed", "{closed}");
    let history = bank(&url, &["history", "alice"])["history"].clone();
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["opened", "deposit", "withdrawal", "deposit", "transfer_out"]
    );
}

/// Posts twice with one `Idempotency-Key`: same status, same answer, and the retry
/// says it is a replay.
async fn twice_http(server: &Server, key: &str, path: &str, body: Value) -> (u16, Value) {
    let (status, first, _) = server.post(path, body.clone(), Some(key)).await;
    let (again, second, head) = server.post(path, body, Some(key)).await;
    assert_eq!(again, status, "the retry of {path}: {second}");
    let first = if status < 300 { result(first) } else { first };
    let second = if again < 300 { result(second) } else { second };
    assert_eq!(second, first, "the retry of {path}");
    if path != "/transfers" {
        assert!(head.contains("idempotent-replayed: true"), "{head}");
    }
    (status, first)
}

async fn balance_http(server: &Server, account: &str) -> Value {
    server.get(&format!("/accounts/{account}")).await.1["balance"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_retried_over_http_is_applied_once() {
    let services = AccountServices::new(Cents::new(1_000_000).unwrap());
    let bank = Bank::open("memory:", services).await.unwrap();
    let server = Server::start(bank).await;
    let opened = twice_http(
        &server,
        "open-alice",
        "/accounts",
        json!({"account": "alice"}),
    )
    .await;
    assert_eq!(opened.0, 201, "{opened:?}");
    twice_http(&server, "open-bob", "/accounts", json!({"account": "bob"})).await;

    let deposit = json!({"amount": "100"});
    let (status, deposited) = twice_http(
        &server,
        "deposit-1",
        "/accounts/alice/deposits",
        deposit.clone(),
    )
    .await;
    assert_eq!((status, &deposited["balance"]), (200, &json!("100.00")));
    assert_eq!(balance_http(&server, "alice").await, "100.00");
    let withdrawal = json!({"amount": "30"});
    let (_, withdrawn) = twice_http(
        &server,
        "withdraw-1",
        "/accounts/alice/withdrawals",
        withdrawal,
    )
    .await;
    assert_eq!(withdrawn["balance"], "70.00", "{withdrawn}");

    // After another deposit, a retry still answers what the command did then.
    server
        .post("/accounts/alice/deposits", json!({"amount": "1"}), None)
        .await;
    let (_, retried, _) = server
        .post("/accounts/alice/deposits", deposit, Some("deposit-1"))
        .await;
    assert_eq!(result(retried), deposited);
    assert_eq!(balance_http(&server, "alice").await, "71.00");

    let transfer = json!({"from": "alice", "to": "bob", "amount": "21"});
    let (status, transferred) = twice_http(&server, "transfer-1", "/transfers", transfer).await;
    assert_eq!((status, &transferred["status"]), (200, &json!("completed")));
    assert_eq!(balance_http(&server, "alice").await, "50.00");
    assert_eq!(balance_http(&server, "bob").await, "21.00");

    server
        .post("/accounts/bob/withdrawals", json!({"amount": "21"}), None)
        .await;
    let (_, closed) = twice_http(&server, "close-bob", "/accounts/bob/close", json!({})).await;
    assert_eq!(closed["status"], "closed", "{closed}");
    server.stop().await;
}
