//! A replay that fails leaves the old read model serving (issue 11, item 1), and a
//! damaged read-model row is reported, never shown as a balance: on sled, an event
//! record damaged after the read model applied it; on PostgreSQL, an event row edited by
//! hand. `verify` names both.
//!
//! The PostgreSQL case needs a server at `DATABASE_URL`; without one it prints `skipped`
//! and passes, unless `CQRS_REQUIRE_POSTGRES=1`.

use std::path::Path;

use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use serde_json::Value;

mod common;

use common::pg::{Schema, database_url};

use common::{bank_on as bank, ok_on as ok};

#[track_caller]
fn assert_balance(url: &str, account: &str, balance: &str) {
    let row = ok(url, &["balance", account]);
    assert_eq!(row["balance"], balance, "{row}");
}

/// alice: 10.00, bob: 20.00.
fn open_two_accounts(url: &str) {
    for (account, amount) in [("alice", "10"), ("bob", "20")] {
        ok(url, &["open", account]);
        ok(url, &["deposit", account, amount]);
    }
    assert_balance(url, "alice", "10.00");
}

/// Flips one byte of `key`'s value in the sled tree `tree` of the database at `dir`,
/// through sled (so sled's own checks pass, as they do for a damaged record it wrote).
fn damage(dir: &Path, tree: &str, key: &[u8], at: impl Fn(usize) -> usize) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(tree).unwrap();
    let mut value = tree
        .get(key)
        .unwrap()
        .expect("the record to damage")
        .to_vec();
    let at = at(value.len());
    value[at] ^= 0x20;
    tree.insert(key, value).unwrap();
    db.flush().unwrap();
}

#[test]
fn on_sled_a_failed_replay_leaves_the_old_read_model_answering() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().display());
    open_two_accounts(&url);
    // alice's deposit (position 2) rots on disk after the read model applied it.
    let log_key = [&b"L"[..], &2u64.to_be_bytes()].concat();
    damage(dir.path(), "cqrs.events", &log_key, |len| len / 2);

    let (code, _, stderr) = bank(&url, &["replay", "--all"]);
    assert_eq!(code, 3, "the replay meets the damaged record: {stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    // The rebuild was built beside the read model, which still answers in full.
    assert_balance(&url, "alice", "10.00");
    assert_balance(&url, "bob", "20.00");
    let (code, report, stderr) = bank(&url, &["--json", "verify"]);
    assert_eq!(code, 4, "verify reports the damage: {stderr}");
    assert!(
        report["problems"].to_string().contains("position 2"),
        "{report}"
    );
}

#[test]
fn on_sled_a_damaged_read_model_row_is_an_error_until_a_replay_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().display());
    open_two_accounts(&url);
    damage(
        dir.path(),
        "cqrs.rmg.accounts\u{0}1\u{0}accounts",
        b"alice",
        |_| 12,
    );

    let (code, row, stderr) = bank(&url, &["balance", "alice"]);
    assert_eq!((code, &row), (3, &Value::Null), "never a value: {stderr}");
    assert!(
        stderr.contains("accounts/accounts") && stderr.contains("alice"),
        "{stderr}"
    );
    assert_balance(&url, "bob", "20.00");
    let (code, report, stderr) = bank(&url, &["--json", "verify"]);
    assert_eq!(code, 4, "verify reports the damaged row: {stderr}");
    assert!(report["problems"].to_string().contains("alice"), "{report}");

    ok(&url, &["replay", "--all"]);
    assert_balance(&url, "alice", "10.00");
    assert_eq!(bank(&url, &["verify"]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_failed_replay_leaves_the_old_read_model_answering() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let url = schema.url();
    tokio::task::block_in_place(|| open_two_accounts(&url));
    // alice's deposit is edited by hand: its checksum no longer matches.
    let mut conn = PgConnection::connect(&database_url()).await.unwrap();
    let edit = format!(
        "UPDATE \"{}\".events SET payload = payload || '\\x20'::bytea \
         WHERE aggregate_id = 'alice' AND version = 2",
        schema.0
    );
    let edited = sqlx::query(AssertSqlSafe(edit))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    conn.close().await.unwrap();

    tokio::task::block_in_place(|| {
        let (code, _, stderr) = bank(&url, &["replay", "--all"]);
        assert_eq!(code, 3, "the replay meets the edited row: {stderr}");
        assert!(stderr.contains("corrupt"), "{stderr}");
        // The rebuild's transaction rolled back: the old tables answer in full.
        assert_balance(&url, "alice", "10.00");
        assert_balance(&url, "bob", "20.00");
    });
}

/// Copies the files of the sled database at `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    for entry in walk(from) {
        let target = to.join(entry.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    let nested = |p: std::path::PathBuf| if p.is_dir() { walk(&p) } else { vec![p] };
    entries.flat_map(nested).collect()
}

#[test]
fn on_sled_a_log_that_lost_events_is_refused_and_verify_lists_the_loss() {
    let (early, late) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let early_url = format!("sled:{}", early.path().display());
    open_two_accounts(&early_url);
    // The same store later, with two more events; then its log is "cut" back to the
    // early one (as sled's recovery cuts a damaged log), while its mark says more.
    copy_dir(early.path(), late.path());
    let late_url = format!("sled:{}", late.path().display());
    ok(&late_url, &["deposit", "alice", "1"]);
    ok(&late_url, &["deposit", "bob", "1"]);
    std::fs::copy(
        late.path().join("cqrs-sled.mark"),
        early.path().join("cqrs-sled.mark"),
    )
    .unwrap();

    let (code, _, stderr) = bank(&early_url, &["balance", "alice"]);
    assert_eq!(
        code, 3,
        "never an old balance as if it were current: {stderr}"
    );
    assert!(stderr.contains("lost"), "{stderr}");
    let (code, report, stderr) = bank(&early_url, &["--json", "verify"]);
    assert_eq!(code, 4, "verify opens it to list the loss: {stderr}");
    assert!(
        report["problems"]
            .to_string()
            .contains("log positions 5..=6"),
        "{report}"
    );
}
