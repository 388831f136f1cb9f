//! A message that is not one of the bank's, and an event of the bank's shape whose
//! payload does not decode, published to the bank's account subjects, go to the
//! statements service's dead letters (the event's account parked): listed and counted
//! through `statements serve`, left there by a redrive, and read directly once the
//! server is gone (sled).

mod common;

use std::process::Command;

use common::broker::{TestStream, nats_url};
use common::{Killed, statements, wait_for};

#[test]
fn foreign_and_poison_messages_are_dead_lettered_and_listed() {
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
    stream.publish_poison("eve");

    let list = ["dead-letters", "list", "--json", "--server", &server];
    let letters = wait_for(
        "the foreign message dead-lettered",
        common::ARRIVAL_DEADLINE,
        || {
            let (code, json, stderr) = statements(&store, &list);
            match json["dead_letters"].as_array() {
                Some(letters) if code == 0 && letters.len() >= 2 => Ok(letters.clone()),
                _ => Err(format!("exit {code}: {json} {stderr}")),
            }
        },
    );
    consumer.assert_running();
    assert_eq!(letters.len(), 2, "{letters:?}");
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
    let poison = &letters[1];
    assert_eq!(poison["stream"], "account/eve", "{poison}");
    assert_eq!(poison["version"], 1, "{poison}");
    let reason = poison["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot decode"), "{reason}");

    let (code, stats, stderr) = statements(&store, &["stats", "--json", "--server", &server]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stats["dead_letters"], 2, "{stats}");
    assert_eq!(
        stats["parked"], 1,
        "eve's stream waits behind its dead letter: {stats}"
    );
    assert_eq!(stats["consumer"]["dead_lettered"], 2, "{stats}");

    let redrive = ["dead-letters", "redrive", "--json", "--server", &server];
    let (code, report, stderr) = statements(&store, &redrive);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&report["applied"], &report["remaining"]),
        (&0.into(), &2.into())
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
        Some(2),
        "{json}"
    );
}
