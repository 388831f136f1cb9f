//! A message that is not one of the bank's, published to the bank's account subjects,
//! goes to the statements service's dead letters: listed and counted through
//! `statements serve`, left there by a redrive, and read directly once the server is
//! gone (sled).

mod common;

use std::process::Command;

use common::broker::{TestStream, nats_url};
use common::{Killed, statements, wait_for};

#[test]
fn a_foreign_message_is_dead_lettered_and_listed() {
    let Some(stream) = TestStream::new() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = format!("sled:{}", dir.path().join("statements").display());
    let port = common::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut consumer = Killed::start(
        Command::new(common::statements_bin())
            .args([
                "--store",
                &store,
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--from", &nats_url(), "--stream", &stream.name])
            .args(["--prefix", &stream.prefix]),
        &dir.path().join("statements.log"),
    );
    stream.publish_foreign("mallory");

    let list = ["dead-letters", "list", "--json", "--server", &server];
    let letters = wait_for(
        "the foreign message dead-lettered",
        common::ARRIVAL_DEADLINE,
        || {
            let (code, json, stderr) = statements(&store, &list);
            match json["dead_letters"].as_array() {
                Some(letters) if code == 0 && !letters.is_empty() => Ok(letters.clone()),
                _ => Err(format!("exit {code}: {json} {stderr}")),
            }
        },
    );
    consumer.assert_running();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        letter["subject"],
        format!("{}.account.mallory", stream.prefix)
    );
    assert_eq!(letter["payload"], "not one of the bank's events");
    assert_eq!(
        letter["stream"],
        serde_json::Value::Null,
        "no envelope: no stream"
    );
    assert!(letter["reason"].as_str().is_some_and(|r| !r.is_empty()));

    let (code, stats, stderr) = statements(&store, &["stats", "--json", "--server", &server]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stats["dead_letters"], 1, "{stats}");
    assert_eq!(stats["consumer"]["dead_lettered"], 1, "{stats}");

    let redrive = ["dead-letters", "redrive", "--json", "--server", &server];
    let (code, report, stderr) = statements(&store, &redrive);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&report["applied"], &report["remaining"]),
        (&0.into(), &1.into())
    );

    // While the server holds the sled database, only the server can answer.
    let (code, _, stderr) = statements(&store, &["dead-letters", "list"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("--server"),
        "the error names the way out: {stderr}"
    );

    drop(consumer);
    let (code, json, stderr) = statements(&store, &["dead-letters", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        json["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{json}"
    );
}
