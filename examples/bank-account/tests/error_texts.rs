//! Errors a person can act on (issue 11, item 5): a representative set of failures of
//! the real `bank` binary each ends with one line on standard error, `bank: ` and the
//! reason, with no panic text and no `backtrace ()` (sled's corruption message carried
//! one until cqrs-sled reworded it), even with `RUST_BACKTRACE=1`.

use std::path::Path;
use std::process::Command;

mod common;

use common::{COMMAND_DEADLINE, output_within};

/// Runs `bank --store <store> <args>`: the exit code and standard error.
fn bank(store: &str, args: &[&str]) -> (i32, String) {
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .arg("--store")
            .arg(store)
            .args(args)
            .env_remove("BANK_STORE")
            .env("RUST_BACKTRACE", "1"),
        COMMAND_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

/// A copy of the database at `base` in `dir/name`, its log file changed by `damage`.
fn damaged(base: &Path, dir: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> String {
    let copy = dir.join(name);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(base).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(copy.join("blobs")).unwrap();
    let mut db = std::fs::read(copy.join("db")).unwrap();
    damage(&mut db);
    std::fs::write(copy.join("db"), db).unwrap();
    format!("sled:{}", copy.display())
}

#[test]
fn no_error_text_carries_a_backtrace_or_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let store = format!("sled:{}", base.display());
    for args in [&["open", "alice"][..], &["deposit", "alice", "5"]] {
        assert_eq!(bank(&store, args).0, 0);
    }
    let inverted = damaged(&base, dir.path(), "inverted", |db| {
        db.iter_mut().take(4096).for_each(|b| *b = !*b);
    });
    let truncated = damaged(&base, dir.path(), "truncated", |db| db.truncate(100));
    let emptied = damaged(&base, dir.path(), "emptied", Vec::clear);

    let cases: [(&str, &[&str], i32, &str); 8] = [
        ("nosuch:x", &["accounts"], 2, "unknown store URL"),
        (
            "postgres://postgres@127.0.0.1:1/x",
            &["balance", "a"],
            3,
            "Connection refused",
        ),
        (&inverted, &["accounts"], 3, "corrupted data"),
        (
            &truncated,
            &["balance", "alice"],
            3,
            "is not a sled event store",
        ),
        (
            &emptied,
            &["--json", "replay", "--all"],
            3,
            "is not a sled event store",
        ),
        (&store, &["balance", "nobody"], 1, "unknown account"),
        (
            &store,
            &["deposit", "a\u{1b}[2J", "1"],
            2,
            "control character U+001B",
        ),
        (&store, &["withdraw", "alice", "6"], 1, "insufficient funds"),
    ];
    for (store, args, code, reason) in cases {
        let (exit, stderr) = bank(store, args);
        let what = format!("{store} {args:?}: {stderr}");
        assert_eq!(exit, code, "{what}");
        assert!(stderr.contains(reason), "{what}");
        assert!(!stderr.to_lowercase().contains("backtrace"), "{what}");
        assert!(!stderr.contains("panicked"), "{what}");
        assert!(stderr.starts_with("bank: "), "{what}");
        assert_eq!(stderr.lines().count(), 1, "one line: {what}");
    }
}
