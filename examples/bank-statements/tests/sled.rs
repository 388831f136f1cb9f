//! Two services on sled, as real processes: the bank appends, `bank relay` (then
//! `bank serve --relay-to`) publishes to JetStream, `statements serve` consumes, and
//! `statements show --server` shows what `bank balance` and `bank history` say; a
//! stream the bank deletes leaves this service too.

mod common;

use std::process::Command;

use common::broker::{TestStream, nats_url};
use common::{Killed, bank, bank_bin, bank_view, months, statement_at, statements};

#[test]
fn statements_follow_the_bank_through_jetstream_on_sled() {
    let Some(stream) = TestStream::new() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bank_store = format!("sled:{}", dir.path().join("bank").display());
    let store = format!("sled:{}", dir.path().join("statements").display());
    bank(&bank_store, &["open", "ada"]);
    bank(&bank_store, &["open", "bo", "--owner", "Bo"]);
    bank(&bank_store, &["deposit", "ada", "100"]);
    bank(&bank_store, &["withdraw", "ada", "30.25"]);
    bank(&bank_store, &["transfer", "ada", "bo", "20"]);
    bank(&bank_store, &["deposit", "bo", "5"]);
    let (ada_cents, ada_version, ada_months) = bank_view(&bank_store, "ada");
    assert_eq!(ada_cents, 4975, "100 - 30.25 - 20");

    let url = nats_url();
    let port = common::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let from = [
        "--from",
        &url,
        "--stream",
        &stream.name,
        "--prefix",
        &stream.prefix,
    ];
    let mut consumer = Killed::start(
        Command::new(common::statements_bin())
            .args([
                "--store",
                &store,
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(from),
        &dir.path().join("statements.log"),
    );
    let mut relay = Killed::start(
        Command::new(bank_bin())
            .args(["--store", &bank_store, "relay", "--to", &url])
            .args(["--stream", &stream.name, "--prefix", &stream.prefix]),
        &dir.path().join("relay.log"),
    );

    let ada = statement_at(&store, &["--server", &server], "ada", ada_version);
    relay.assert_running();
    consumer.assert_running();
    assert_eq!(ada["balance_cents"], ada_cents, "{ada}");
    assert_eq!(ada["last_event"]["version"], ada_version);
    assert_eq!(months(&ada), ada_months, "{ada}");
    assert_eq!(ada["owner"], "ada");
    let (code, _, stderr) = statements(&store, &["show", "nobody", "--server", &server]);
    assert_eq!(code, 1, "an account never seen: not found; {stderr}");

    // The relay process goes; the bank writes on; `bank serve --relay-to` publishes the
    // rest (resuming from the relay's checkpoint).
    drop(relay);
    bank(&bank_store, &["deposit", "bo", "7.50"]);
    bank(&bank_store, &["withdraw", "bo", "1"]);
    let (bo_cents, bo_version, bo_months) = bank_view(&bank_store, "bo");
    assert_eq!(bo_cents, 3150, "20 + 5 + 7.50 - 1");
    let bank_port = common::free_port();
    let mut serving = Killed::start(
        Command::new(bank_bin())
            .args(["--store", &bank_store, "serve"])
            .args(["--addr", &format!("127.0.0.1:{bank_port}")])
            .args(["--relay-to", &url, "--relay-stream", &stream.name])
            .args(["--relay-prefix", &stream.prefix]),
        &dir.path().join("bank-serve.log"),
    );
    let bo = statement_at(&store, &["--server", &server], "bo", bo_version);
    serving.assert_running();
    assert_eq!(bo["balance_cents"], bo_cents, "{bo}");
    assert_eq!(months(&bo), bo_months, "{bo}");
    assert_eq!(bo["owner"], "Bo");

    let (code, stats, stderr) = statements(&store, &["stats", "--json", "--server", &server]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&stats["streams"], &stats["dead_letters"]),
        (&2.into(), &0.into())
    );
    let applied = stats["consumer"]["applied"].as_u64().unwrap_or(0);
    assert_eq!(
        applied,
        ada_version + bo_version,
        "each event applied once: {stats}"
    );

    // The bank deletes ada's stream (issue 15): its tombstone crosses over, and this
    // service drops her statement.
    drop(serving);
    bank(&bank_store, &["delete", "--stream", "account/ada"]);
    let mut serving = Killed::start(
        Command::new(bank_bin())
            .args(["--store", &bank_store, "serve"])
            .args(["--addr", &format!("127.0.0.1:{bank_port}")])
            .args(["--relay-to", &url, "--relay-stream", &stream.name])
            .args(["--relay-prefix", &stream.prefix]),
        &dir.path().join("bank-serve-again.log"),
    );
    common::wait_for(
        "ada's statement to go",
        common::ARRIVAL_DEADLINE,
        || match statements(&store, &["show", "ada", "--server", &server]) {
            (1, _, _) => Ok(()),
            (code, json, stderr) => Err(format!("exit {code}: {json} {stderr}")),
        },
    );
    serving.assert_running();

    // With no server running, `show` reads the sled database directly.
    drop(serving);
    drop(consumer);
    let (code, direct, stderr) = statements(&store, &["show", "bo", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(direct, bo);
    let (code, _, stderr) = statements(&store, &["show", "ada", "--json"]);
    assert_eq!(code, 1, "ada's statement is gone: {stderr}");
    drop(stream);
}
