//! Two services on PostgreSQL, each in a schema of its own, as separate processes: the
//! bank appends while `bank relay` publishes; `statements consume` applies; `statements
//! show`, `stats` and `dead-letters` read the tables directly meanwhile. A foreign
//! message on the bank's subjects goes to the dead letters; an account the bank deletes
//! leaves this service too.

mod common;

use std::process::Command;

use common::broker::{TestStream, nats_url};
use common::pg::Schema;
use common::{Killed, bank, bank_bin, bank_view, months, statement_at, statements, wait_for};

#[test]
fn statements_follow_the_bank_through_jetstream_on_postgres() {
    let Some(stream) = TestStream::new() else {
        return;
    };
    let (Some(bank_schema), Some(schema)) = (Schema::fresh("bank"), Schema::fresh("st")) else {
        return;
    };
    let (bank_store, store) = (bank_schema.url(), schema.url());
    let dir = tempfile::tempdir().expect("a temporary directory for the logs");
    bank(&bank_store, &["open", "ada"]);
    bank(&bank_store, &["open", "bo"]);
    bank(&bank_store, &["deposit", "ada", "100"]);

    let url = nats_url();
    let mut relay = Killed::start(
        Command::new(bank_bin())
            .args(["--store", &bank_store, "relay", "--to", &url])
            .args(["--stream", &stream.name, "--prefix", &stream.prefix]),
        &dir.path().join("relay.log"),
    );
    let mut consumer = Killed::start(
        Command::new(common::statements_bin())
            .args(["--store", &store, "consume", "--from", &url])
            .args(["--stream", &stream.name, "--prefix", &stream.prefix]),
        &dir.path().join("consume.log"),
    );
    // The bank writes on while both run (PostgreSQL: any number of processes).
    bank(&bank_store, &["withdraw", "ada", "12.34"]);
    bank(&bank_store, &["transfer", "ada", "bo", "40"]);
    stream.publish_foreign("stranger");
    bank(&bank_store, &["deposit", "bo", "1"]);

    for account in ["ada", "bo"] {
        let (cents, version, bank_months) = bank_view(&bank_store, account);
        let statement = statement_at(&store, &[], account, version);
        assert_eq!(statement["balance_cents"], cents, "{statement}");
        assert_eq!(statement["last_event"]["version"], version);
        assert_eq!(months(&statement), bank_months, "{statement}");
    }
    relay.assert_running();
    consumer.assert_running();

    let letters = wait_for(
        "the foreign message dead-lettered",
        common::ARRIVAL_DEADLINE,
        || {
            let (code, json, stderr) = statements(&store, &["dead-letters", "list", "--json"]);
            match json["dead_letters"].as_array() {
                Some(list) if code == 0 && !list.is_empty() => Ok(list.clone()),
                _ => Err(format!("exit {code}: {json} {stderr}")),
            }
        },
    );
    assert_eq!(letters.len(), 1, "{letters:?}");
    let subject = letters[0]["subject"].as_str().expect("a subject");
    assert_eq!(subject, format!("{}.account.stranger", stream.prefix));
    assert!(letters[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));

    let (code, stats, stderr) = statements(&store, &["stats", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&stats["streams"], &stats["dead_letters"]),
        (&2.into(), &1.into())
    );
    // A foreign message stays a dead letter when redriven.
    let (code, report, stderr) = statements(&store, &["dead-letters", "redrive", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&report["applied"], &report["remaining"]),
        (&0.into(), &1.into())
    );

    // The bank deletes bo's stream (issue 15) while both run: the tombstone crosses
    // over, and this service drops bo's statement (its months too).
    bank(&bank_store, &["delete", "--stream", "account/bo"]);
    wait_for(
        "bo's statement to go",
        common::ARRIVAL_DEADLINE,
        || match statements(&store, &["show", "bo", "--json"]) {
            (1, _, _) => Ok(()),
            (code, json, stderr) => Err(format!("exit {code}: {json} {stderr}")),
        },
    );
    let (code, ada, stderr) = statements(&store, &["show", "ada", "--json"]);
    assert_eq!(code, 0, "ada's statement stays: {stderr}");
    assert_eq!(ada["account"], "ada");
    relay.assert_running();
    consumer.assert_running();
}
