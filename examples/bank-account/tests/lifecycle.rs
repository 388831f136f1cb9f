//! `bank delete`, `bank archive`, `bank restore` and `bank truncate` (issue 15, stream
//! deletion and archiving), on sled and PostgreSQL: the read model drops a deleted
//! account, commands on it are refused (exit 1), an archive restores it exactly, and a
//! damaged archive restores nothing (exit 4).

mod common;

use common::{bank_on, ok_on};

/// Opens three accounts with some history; returns their ids.
fn accounts(url: &str) -> [&'static str; 3] {
    ok_on(url, &["open", "ada", "--owner", "Ada"]);
    ok_on(url, &["open", "bob", "--owner", "Bob"]);
    ok_on(url, &["open", "cy", "--owner", "Cy"]);
    ok_on(url, &["deposit", "ada", "20"]);
    ok_on(url, &["deposit", "bob", "5"]);
    ok_on(url, &["transfer", "ada", "cy", "2.50"]);
    ["ada", "bob", "cy"]
}

fn scenario(url: &str, dir: &std::path::Path) {
    accounts(url);
    let ada_events = ok_on(url, &["--json", "events", "--stream", "account/ada"]);
    let archive = dir.join("ada.jsonl");
    let archive = archive.to_str().unwrap();

    // Delete bob: the read model drops him, commands on him are refused.
    let dry = ok_on(
        url,
        &["--json", "delete", "--stream", "account/bob", "--dry-run"],
    );
    assert_eq!(dry["events"], 2, "{dry}");
    let deleted = ok_on(url, &["--json", "delete", "--stream", "account/bob"]);
    assert_eq!(deleted["tombstone_version"], 3, "{deleted}");
    let (code, _, stderr) = bank_on(url, &["deposit", "bob", "1"]);
    assert_eq!(code, 1, "a command on a deleted account: {stderr}");
    assert!(stderr.contains("deleted"), "{stderr}");
    let (code, _, _) = bank_on(url, &["balance", "bob"]);
    assert_eq!(code, 1, "the read model no longer has bob");
    let (code, _, stderr) = bank_on(url, &["delete", "--stream", "account/bob"]);
    assert_eq!(code, 2, "deleting twice is bad input: {stderr}");
    let (code, _, stderr) = bank_on(url, &["delete", "--stream", "account/nobody"]);
    assert_eq!(code, 2, "deleting a missing stream is bad input: {stderr}");

    // Archive ada: the file has her events, the store a tombstone.
    let archived = ok_on(
        url,
        &[
            "--json",
            "archive",
            "--stream",
            "account/ada",
            "--to",
            archive,
        ],
    );
    assert_eq!(archived["events"], 3, "{archived}");
    let (code, _, _) = bank_on(url, &["balance", "ada"]);
    assert_eq!(code, 1, "the read model no longer has ada");
    assert_eq!(ok_on(url, &["balance", "cy"])["balance"], "2.50");

    // A damaged copy restores nothing.
    let good = std::fs::read_to_string(archive).unwrap();
    let damaged = dir.join("damaged.jsonl");
    let changed = good.replacen("MoneyDeposited", "MoneyWithdrawn", 1);
    assert_ne!(changed, good);
    std::fs::write(&damaged, changed).unwrap();
    let (code, _, stderr) = bank_on(url, &["restore", "--from", damaged.to_str().unwrap()]);
    assert_eq!(code, 4, "a damaged archive: {stderr}");
    let cut = dir.join("cut.jsonl");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let (code, _, stderr) = bank_on(url, &["restore", "--from", cut.to_str().unwrap()]);
    assert_eq!(code, 4, "a truncated archive: {stderr}");
    let (code, _, _) = bank_on(url, &["balance", "ada"]);
    assert_eq!(code, 1, "nothing was restored");

    // The archive restores exactly; a replay puts her back in the read model.
    let restored = ok_on(url, &["--json", "restore", "--from", archive]);
    assert_eq!(restored["restored"][0], "account/ada", "{restored}");
    let events = ok_on(url, &["--json", "events", "--stream", "account/ada"]);
    assert_eq!(events, ada_events, "the stream is back as it was");
    ok_on(url, &["replay", "--all"]);
    let ada = ok_on(url, &["balance", "ada"]);
    assert_eq!(
        (&ada["balance"], &ada["owner"]),
        (&"17.50".into(), &"Ada".into())
    );
    ok_on(url, &["deposit", "ada", "1"]);
    let (code, _, _) = bank_on(url, &["balance", "bob"]);
    assert_eq!(
        code, 1,
        "the rebuild does not bring the deleted account back"
    );

    // Truncate cy at a snapshot: her balance and commands are unchanged.
    let cut = ok_on(
        url,
        &[
            "--json",
            "truncate",
            "--stream",
            "account/cy",
            "--at-snapshot",
        ],
    );
    assert_eq!(cut["events"], 1, "{cut}");
    assert_eq!(ok_on(url, &["balance", "cy"])["balance"], "2.50");
    ok_on(url, &["withdraw", "cy", "1"]);
    ok_on(url, &["replay", "--all"]);
    assert_eq!(ok_on(url, &["balance", "cy"])["balance"], "1.50");
}

#[test]
fn delete_archive_restore_truncate_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().join("bank-data").display());
    scenario(&url, dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_archive_restore_truncate_on_postgres() {
    let Some(schema) = common::pg::Schema::fresh().await else {
        return;
    };
    let url = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || scenario(&url, &path))
        .await
        .unwrap();
}
