//! End-to-end: the real `bank` binary against the embedded sled store.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;

use common::{COMMAND_DEADLINE, output_within};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

fn bank(store: &Path, args: &[&str]) -> Run {
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .arg("--store")
            .arg(format!("sled:{}", store.display()))
            .args(args)
            .env_remove("BANK_STORE"),
        COMMAND_DEADLINE,
    );
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(store: &Path, args: &[&str]) -> Run {
    let run = bank(store, args);
    assert_eq!(run.code, 0, "bank {args:?} failed: {}", run.stderr);
    run
}

fn events(store: &Path) -> u64 {
    ok(store, &["--json", "stats"]).json()["events"]
        .as_u64()
        .unwrap()
}

#[test]
fn accounts_transfers_refunds_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = &dir.path().join("bank-data");
    ok(store, &["open", "alice", "--owner", "Alice"]);
    ok(store, &["open", "bob"]);
    let deposit = ok(store, &["--json", "deposit", "alice", "100"]).json();
    assert_eq!(deposit["balance_cents"], 10_000);

    // Read-your-writes across processes: each command's effect is visible to the next.
    let transfer = ok(store, &["--json", "transfer", "alice", "bob", "30.5"]).json();
    assert_eq!(transfer["status"], "completed");
    let balance = ok(store, &["--json", "balance", "alice"]).json();
    assert_eq!(balance["account"], "alice");
    assert_eq!(balance["balance_cents"], 6_950);
    assert_eq!(balance["balance"], "69.50");
    assert_eq!(
        ok(store, &["--json", "balance", "bob"]).json()["balance_cents"],
        3_050
    );

    // A transfer to a missing account is refused (exit 1) before anything is written.
    let events_before = events(store);
    let refused = bank(store, &["transfer", "alice", "ghost", "10"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("unknown account"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        events(store),
        events_before,
        "the refused transfer wrote events"
    );
    // A transfer to a closed account fails (exit 1) and the source is refunded.
    ok(store, &["open", "carol"]);
    ok(store, &["close", "carol"]);
    let failed = bank(store, &["transfer", "alice", "carol", "10"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("account is closed"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        ok(store, &["--json", "balance", "alice"]).json()["balance_cents"],
        6_950
    );
    let history = ok(store, &["--json", "history", "alice"]).json();
    let kinds: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "deposit",
            "transfer_out",
            "transfer_out",
            "refund"
        ]
    );

    // Replaying every projection gives identical read models.
    let before = ok(store, &["--json", "accounts"]).json();
    let events_before = events(store);
    let replay = ok(store, &["--json", "replay", "--all"]).json();
    assert_eq!(replay["replayed"].as_array().unwrap().len(), 2);
    assert_eq!(ok(store, &["--json", "accounts"]).json(), before);
    assert_eq!(
        events(store),
        events_before,
        "replaying the process manager sent no command again"
    );

    // Snapshots and the log.
    assert_eq!(
        ok(store, &["--json", "snapshot", "--stream", "account/alice"]).json()["snapshots_taken"],
        1
    );
    let log = ok(store, &["--json", "events", "--stream", "account/alice"]).json();
    assert_eq!(log["events"].as_array().unwrap().len(), 5);
}

#[test]
fn bad_input_is_refused_with_exit_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = &dir.path().join("bank-data");
    ok(store, &["open", "alice"]);
    ok(store, &["deposit", "alice", "5"]);
    let before = events(store);
    for amount in ["0", "-1", "1.234", "abc", "1e3", ""] {
        let run = bank(store, &["deposit", "alice", amount]);
        assert_eq!(run.code, 2, "amount {amount:?}: {}", run.stderr);
    }
    for args in [
        &["transfer", "alice", "bob", "0.001"][..],
        &["withdraw", "alice"],
        &["frobnicate"],
        &["open", ""],
    ] {
        let run = bank(store, args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
    }
    assert_eq!(bank(store, &["--store", "nosuch:x", "accounts"]).code, 2);
    assert_eq!(events(store), before, "nothing was written");

    // Domain rejections exit 1 with the reason on stderr.
    let run = bank(store, &["withdraw", "alice", "6"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("insufficient funds"), "{}", run.stderr);
    assert_eq!(bank(store, &["open", "alice"]).code, 1);
    assert_eq!(bank(store, &["balance", "nobody"]).code, 1);
    assert_eq!(
        bank(store, &["close", "alice"]).code,
        1,
        "balance is not zero"
    );
    ok(store, &["withdraw", "alice", "5"]);
    ok(store, &["close", "alice"]);
    assert_eq!(
        ok(store, &["--json", "balance", "alice"]).json()["status"],
        "closed"
    );
}

#[test]
fn a_locked_store_is_a_store_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("bank-data");
    std::fs::write(&store, b"not a directory").unwrap();
    let run = bank(&store, &["accounts"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("bank-data"),
        "names the path: {}",
        run.stderr
    );
}

#[test]
fn the_demo_runs_and_checks_its_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let store = &dir.path().join("bank-data");
    let summary = ok(
        store,
        &[
            "--json",
            "demo",
            "--accounts",
            "10",
            "--operations",
            "300",
            "--concurrency",
            "4",
        ],
    )
    .json();
    assert_eq!(summary["ok"], true, "{summary:#}");
    assert_eq!(summary["invariants"]["money_conserved"], true);
    assert_eq!(summary["invariants"]["read_model_matches_streams"], true);
    assert_eq!(summary["transfers"]["pending"], 0);
    assert!(summary["events_written"].as_u64().unwrap() > 300);
}

#[test]
fn an_unreachable_database_fails_with_its_real_cause() {
    // Nothing listens on port 1: the connection is refused at once. Before, the pool
    // waited 30 s and said only that it had timed out.
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args([
                "--store",
                "postgres://postgres@127.0.0.1:1/postgres",
                "balance",
                "a",
            ])
            .env_remove("BANK_STORE"),
        COMMAND_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
}
