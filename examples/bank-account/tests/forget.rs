//! `bank forget` (issue 15, crypto-shredding): the owner's name is erased from every
//! answer and never stored in clear, on sled (a scan of its files), on PostgreSQL (a
//! `pg_dump` of the schema) and on memory (over the HTTP API).

use std::path::Path;
use std::time::Duration;

use example_bank_account::Bank;
use example_bank_account::domain::{AccountServices, Cents};
use serde_json::Value;

mod common;

use common::{bank_on, ok_on};

/// Every byte of every file under `dir`.
fn files(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            bytes.extend(files(&path));
        } else {
            bytes.extend(std::fs::read(&path).expect("read a file"));
        }
    }
    bytes
}

/// Whether `name` is in `bytes`, raw or in hex (a `bytea` in a dump).
fn holds(bytes: &[u8], name: &str) -> bool {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    [name.as_bytes(), hex.as_bytes()]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle))
}

/// Opens two accounts, forgets one with `bank forget`, and checks every answer; returns
/// the two owners' names (the forgotten one first).
fn open_and_forget(url: &str) -> (String, String) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (ada, bob) = (format!("Ada Forgotten {run}"), format!("Bob Kept {run}"));
    ok_on(url, &["open", "ada", "--owner", &ada]);
    ok_on(url, &["open", "bob", "--owner", &bob]);
    ok_on(url, &["deposit", "ada", "12.50"]);
    ok_on(url, &["transfer", "ada", "bob", "2.50"]);
    assert_eq!(ok_on(url, &["balance", "ada"])["owner"], ada.as_str());

    let forgot = ok_on(url, &["forget", "ada"]);
    assert_eq!(forgot["owner"], "(erased)");
    assert_eq!(forgot["already_forgotten"], false);
    let again = ok_on(url, &["forget", "ada"]);
    assert_eq!(again["already_forgotten"], true);

    // Every read still works; the account and its money stay.
    let balance = ok_on(url, &["balance", "ada"]);
    assert_eq!(
        (&balance["owner"], &balance["balance"]),
        (&Value::from("(erased)"), &Value::from("10.00"))
    );
    assert_eq!(ok_on(url, &["balance", "bob"])["owner"], bob.as_str());
    assert_eq!(
        ok_on(url, &["history", "ada"])["history"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let accounts = ok_on(url, &["accounts"]).to_string();
    assert!(
        !accounts.contains(&ada) && accounts.contains(&bob),
        "{accounts}"
    );
    let events = ok_on(url, &["--json", "events"]).to_string();
    assert!(!events.contains(&ada) && events.contains(&bob), "{events}");
    assert!(events.contains("\"erased\":true"), "{events}");
    // A deposit after the forget works (the account's state is loaded again).
    ok_on(url, &["deposit", "ada", "1"]);

    // Bad input: a typed refusal, nothing written.
    let (code, _, stderr) = bank_on(url, &["forget", "nobody"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown account"), "{stderr}");
    let (code, _, stderr) = bank_on(url, &["forget", "bad\u{7}id"]);
    assert_eq!(code, 2, "{stderr}");

    // A rebuild of the read models from the log shows the owner erased.
    ok_on(url, &["replay", "--all"]);
    assert_eq!(ok_on(url, &["balance", "ada"])["owner"], "(erased)");
    assert_eq!(ok_on(url, &["balance", "bob"])["owner"], bob.as_str());
    (ada, bob)
}

#[test]
fn forget_on_sled_leaves_no_name_in_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().join("bank-data").display());
    let (ada, bob) = open_and_forget(&url);
    // The read model keeps the names sealed too: neither is in the files.
    let bytes = files(dir.path());
    assert!(
        !holds(&bytes, &ada),
        "the forgotten name is in the sled files"
    );
    assert!(!holds(&bytes, &bob), "a name is in the sled files in clear");
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_on_postgres_leaves_no_name_in_a_dump() {
    let Some(schema) = common::pg::Schema::fresh().await else {
        return;
    };
    let url = schema.url();
    let (ada, bob) = tokio::task::spawn_blocking(move || open_and_forget(&url))
        .await
        .unwrap();
    let mut dump = tokio::process::Command::new("pg_dump");
    dump.arg("--dbname").arg(common::pg::database_url());
    dump.arg("--schema").arg(&schema.0).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), dump.output());
    let output = output
        .await
        .expect("pg_dump within a minute")
        .expect("run pg_dump");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        holds(&output.stdout, "subject_keys"),
        "the dump holds the schema"
    );
    assert!(
        !holds(&output.stdout, &ada),
        "the forgotten name is in the dump"
    );
    assert!(
        !holds(&output.stdout, &bob),
        "a name is in the dump in clear"
    );
}

/// `POST /accounts/{id}/forget` on the in-memory bank.
#[tokio::test(flavor = "multi_thread")]
async fn forget_over_http() {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let services = AccountServices::new(Cents::new(1_000_000).unwrap());
    let bank = Bank::open("memory:", services).await.unwrap();
    bank.start();
    let app = example_bank_account::http::router(bank.clone());
    let call = |method: &str, path: &str, body: &str| {
        let request = Request::builder().method(method).uri(path);
        let request = request.header("content-type", "application/json");
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let app = app.clone();
        async move {
            let deadline = Duration::from_secs(60);
            let response = tokio::time::timeout(deadline, app.oneshot(request));
            let response = response.await.expect("answered within a minute").unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let open = r#"{"account":"ada","owner":"Ada Lovelace"}"#;
    assert_eq!(call("POST", "/accounts", open).await.0, 201);
    let (status, forgot) = call("POST", "/accounts/ada/forget", "").await;
    assert_eq!((status, &forgot["owner"]), (200, &Value::from("(erased)")));
    let (status, row) = call("GET", "/accounts/ada", "").await;
    assert_eq!((status, &row["owner"]), (200, &Value::from("(erased)")));
    assert_eq!(call("POST", "/accounts/nobody/forget", "").await.0, 404);
    let (status, again) = call("POST", "/accounts/ada/forget", "").await;
    assert_eq!(
        (status, &again["already_forgotten"]),
        (200, &Value::Bool(true))
    );
    bank.stop().await.unwrap();
}
