//! Hostile account ids and owner names (issue 11, item 4) at every entry point: the
//! command line (the real `bank` binary) and the HTTP API (a real server over TCP).
//! Each class of bad text is refused naming the field, with exit 2 or HTTP 400, and
//! nothing is written; an id in NFD finds the account opened in NFC. Also the status of
//! a transfer that was carried out but failed (item 5): 200 with its outcome.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cqrs_core::{Inspect, Position};
use example_bank_account::Bank;
use example_bank_account::domain::{AccountServices, Cents};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{COMMAND_DEADLINE, output_within};

/// One text of each refused class, and what the message must say about it.
fn bad_texts() -> Vec<(String, &'static str)> {
    vec![
        (String::new(), "is empty"),
        ("   ".into(), "is empty"),
        (" alice".into(), "starts or ends with white space"),
        ("alice\u{a0}".into(), "starts or ends with white space"),
        ("a\u{1b}[31mred".into(), "control character U+001B"),
        ("a\r\nfake row".into(), "control character U+000D"),
        ("a\nb".into(), "control character U+000A"),
        ("a\u{202e}b".into(), "format character U+202E"),
        ("a\u{2067}b".into(), "format character U+2067"),
        ("a\u{200b}b".into(), "format character U+200B"),
        ("a\u{2060}b".into(), "format character U+2060"),
        ("\u{feff}a".into(), "format character U+FEFF"),
        ("a\u{2028}b".into(), "line separator U+2028"),
        // Too long for an id (100) and for an owner (200).
        ("x".repeat(201), "is longer than"),
    ]
}

const NFC: &str = "caf\u{e9}";
const NFD: &str = "cafe\u{301}";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
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
fn ok(store: &Path, args: &[&str]) -> Value {
    let run = bank(store, args);
    assert_eq!(run.code, 0, "bank {args:?} failed: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn events(store: &Path) -> u64 {
    ok(store, &["--json", "stats"])["events"].as_u64().unwrap()
}

#[test]
fn the_command_line_refuses_bad_ids_and_owners_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = &dir.path().join("bank-data");
    ok(store, &["open", "alice"]);
    ok(store, &["open", "bob"]);
    ok(store, &["deposit", "alice", "10"]);
    let (before, accounts) = (events(store), ok(store, &["accounts"]));

    let mut refused = 0;
    for (text, problem) in bad_texts() {
        let bad = text.as_str();
        let cases: [(&[&str], &str); 9] = [
            (&["open", bad], "the account id "),
            (&["open", "carol", "--owner", bad], "the owner name "),
            (&["deposit", bad, "1"], "the account id "),
            (&["withdraw", bad, "1"], "the account id "),
            (&["close", bad], "the account id "),
            (&["balance", bad], "the account id "),
            (&["history", bad], "the account id "),
            (
                &["transfer", bad, "bob", "1"],
                "the source account id (`from`) ",
            ),
            (
                &["transfer", "alice", bad, "1"],
                "the destination account id (`to`) ",
            ),
        ];
        for (args, field) in cases {
            let run = bank(store, args);
            assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
            assert!(
                run.stderr.contains(field) && run.stderr.contains(problem),
                "{args:?} must name {field:?} and say {problem:?}: {}",
                run.stderr
            );
            // The message never carries the bad text itself: one line, no escapes.
            assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
            assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
            assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
            refused += 1;
        }
    }
    assert_eq!(refused, 9 * bad_texts().len());
    assert_eq!(events(store), before, "a refused command wrote events");
    assert_eq!(ok(store, &["accounts"]), accounts);
    println!("{refused} bad commands refused with exit 2, nothing written");
}

#[test]
fn the_command_line_keeps_ids_and_owners_in_nfc() {
    let dir = tempfile::tempdir().unwrap();
    let store = &dir.path().join("bank-data");
    let opened = ok(store, &["open", NFC, "--owner", "Zoe\u{308}"]);
    assert_eq!(
        (opened["account"].as_str(), opened["owner"].as_str()),
        (Some(NFC), Some("Zo\u{eb}"))
    );
    // The same account, typed with a combining accent.
    let again = bank(store, &["open", NFD]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(ok(store, &["deposit", NFD, "7"])["balance_cents"], 700);
    assert_eq!(ok(store, &["balance", NFC])["balance_cents"], 700);
    assert_eq!(ok(store, &["balance", NFD])["account"], NFC);
    ok(store, &["open", "bob"]);
    assert_eq!(
        ok(store, &["transfer", NFD, "bob", "2"])["status"],
        "completed"
    );
    let history = ok(store, &["history", NFD])["history"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(history, 3, "opened, deposit, transfer_out");
    let same = bank(store, &["transfer", NFC, NFD, "1"]);
    assert_eq!(same.code, 1, "{}", same.stderr);
    assert!(same.stderr.contains("to itself"), "{}", same.stderr);
    let accounts = ok(store, &["accounts"]);
    let ids: Vec<_> = accounts["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{accounts}");
    assert!(ids.contains(&json!(NFC)), "{accounts}");
}

/// How long a request may take: a guard against a hang, never a timing check.
const DEADLINE: Duration = Duration::from_secs(60);

/// A server on a free port over a temporary store; stops when the sender is dropped.
struct Server {
    addr: SocketAddr,
    bank: Bank,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        let services = AccountServices::new(Cents::new(1_000_000).unwrap());
        let bank = Bank::open("memory:", services).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = bank.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            example_bank_account::http::serve(serving, listener, shutdown)
                .await
                .unwrap();
        });
        Server {
            addr,
            bank,
            stop: Some(stop),
            task,
        }
    }

    /// One request with `Connection: close`; the status and the JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map_or(String::new(), |b| b.to_string());
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            String::from_utf8(response).unwrap()
        };
        let response = tokio::time::timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {DEADLINE:?}"));
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn events(&self) -> u64 {
        self.bank
            .store()
            .count_events(Position::START)
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        drop(self.stop.take());
        let stopped = tokio::time::timeout(DEADLINE, &mut self.task).await;
        stopped.expect("the server stops when told").unwrap();
    }
}

/// `text` as one URL path segment: every byte but the unreserved ones percent-encoded.
fn segment(text: &str) -> String {
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    text.bytes()
        .map(|b| {
            if keep(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_refuses_bad_ids_and_owners_naming_the_field() {
    let server = Server::start().await;
    for account in ["alice", "bob"] {
        let (status, body) = server
            .call("POST", "/accounts", Some(json!({ "account": account })))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let deposit = Some(json!({ "amount": "10" }));
    assert_eq!(
        server
            .call("POST", "/accounts/alice/deposits", deposit)
            .await
            .0,
        200
    );
    let before = server.events().await;

    let mut refused = 0;
    for (text, problem) in bad_texts() {
        let amount = json!({ "amount": "1" });
        let mut cases = vec![
            (
                "POST",
                "/accounts".to_owned(),
                Some(json!({ "account": text })),
                "the account id ",
            ),
            (
                "POST",
                "/accounts".to_owned(),
                Some(json!({ "account": "carol", "owner": text })),
                "the owner name ",
            ),
            (
                "POST",
                "/transfers".to_owned(),
                Some(json!({ "from": text, "to": "bob", "amount": "1" })),
                "the source account id (`from`) ",
            ),
            (
                "POST",
                "/transfers".to_owned(),
                Some(json!({ "from": "alice", "to": text, "amount": "1" })),
                "the destination account id (`to`) ",
            ),
        ];
        // An empty path segment is another route; every other text goes in the path too.
        if !text.is_empty() {
            let id = segment(&text);
            for (method, path, body) in [
                (
                    "POST",
                    format!("/accounts/{id}/deposits"),
                    Some(amount.clone()),
                ),
                ("POST", format!("/accounts/{id}/withdrawals"), Some(amount)),
                ("POST", format!("/accounts/{id}/close"), None),
                ("GET", format!("/accounts/{id}"), None),
                ("GET", format!("/accounts/{id}/history"), None),
            ] {
                cases.push((method, path, body, "the account id "));
            }
        }
        for (method, path, body, field) in cases {
            let (status, answer) = server.call(method, &path, body.clone()).await;
            let error = answer["error"].as_str().unwrap_or_default();
            assert_eq!(status, 400, "{method} {path} {body:?}: {answer}");
            assert!(
                error.contains(field) && error.contains(problem),
                "{method} {path} {body:?} must name {field:?} and say {problem:?}: {error}"
            );
            refused += 1;
        }
    }
    assert_eq!(
        refused,
        9 * bad_texts().len() - 5,
        "each entry point, each class"
    );
    assert_eq!(
        server.events().await,
        before,
        "a refused request wrote events"
    );
    let (_, all) = server.call("GET", "/accounts", None).await;
    assert_eq!(all["accounts"].as_array().unwrap().len(), 2, "{all}");
    println!("{refused} bad requests refused with 400, nothing written");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_finds_an_nfc_account_by_its_nfd_id() {
    let server = Server::start().await;
    let open = Some(json!({ "account": NFC, "owner": "Zoe\u{308}" }));
    let (status, opened) = server.call("POST", "/accounts", open).await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["owner"], "Zo\u{eb}");
    let (status, again) = server
        .call("POST", "/accounts", Some(json!({ "account": NFD })))
        .await;
    assert_eq!(status, 422, "the same account: {again}");

    let nfd = segment(NFD);
    let deposit = Some(json!({ "amount": "5" }));
    let (status, row) = server
        .call("POST", &format!("/accounts/{nfd}/deposits"), deposit)
        .await;
    assert_eq!((status, row["account"].as_str()), (200, Some(NFC)), "{row}");
    let (status, row) = server.call("GET", &format!("/accounts/{nfd}"), None).await;
    assert_eq!(
        (status, row["balance_cents"].as_i64()),
        (200, Some(500)),
        "{row}"
    );
    let (status, row) = server
        .call("GET", &format!("/accounts/{}", segment(NFC)), None)
        .await;
    assert_eq!(
        (status, row["balance_cents"].as_i64()),
        (200, Some(500)),
        "{row}"
    );
    let (status, history) = server
        .call("GET", &format!("/accounts/{nfd}/history"), None)
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["history"].as_array().unwrap().len(), 2, "{history}");
    let transfer = Some(json!({ "from": NFD, "to": NFC, "amount": "1" }));
    let (status, same) = server.call("POST", "/transfers", transfer).await;
    assert_eq!(status, 422, "a transfer from an account to itself: {same}");
    let (_, all) = server.call("GET", "/accounts", None).await;
    assert_eq!(all["accounts"].as_array().unwrap().len(), 1, "{all}");
    server.stop().await;
}

/// The choice documented in `http.rs`: a transfer that was carried out and failed is not
/// an HTTP error. It exists, its outcome is `failed`, and the source was refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_answers_200_with_its_outcome() {
    let server = Server::start().await;
    for account in ["a", "closed"] {
        let (status, body) = server
            .call("POST", "/accounts", Some(json!({ "account": account })))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let deposit = Some(json!({ "amount": "10" }));
    assert_eq!(
        server.call("POST", "/accounts/a/deposits", deposit).await.0,
        200
    );
    assert_eq!(
        server.call("POST", "/accounts/closed/close", None).await.0,
        200
    );

    let transfer = Some(json!({ "from": "a", "to": "closed", "amount": "4" }));
    let (status, outcome) = server.call("POST", "/transfers", transfer).await;
    assert_eq!(
        (status, outcome["status"].as_str()),
        (200, Some("failed")),
        "{outcome}"
    );
    let reason = outcome["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("account is closed"), "{outcome}");
    let path = format!("/transfers/{}", outcome["transfer_id"].as_str().unwrap());
    let (status, again) = server.call("GET", &path, None).await;
    // The POST's answer also says how current the read model is; the outcome is the same.
    let mut outcome = outcome;
    outcome.as_object_mut().map(|o| o.remove("read_model"));
    assert_eq!(
        (status, &again),
        (200, &outcome),
        "the transfer resource exists"
    );
    let (_, a) = server.call("GET", "/accounts/a", None).await;
    assert_eq!(a["balance_cents"], 1000, "refunded: {a}");
    server.stop().await;
}
