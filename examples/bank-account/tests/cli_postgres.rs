//! End-to-end: the real `bank` binary against PostgreSQL, and two `bank serve`
//! processes sharing one database.
//!
//! Needs a server at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! without one the tests print why and pass, unless `CQRS_REQUIRE_POSTGRES=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use serde_json::Value;

mod common;

use common::{COMMAND_DEADLINE, Killed, output_within};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Writes a line straight to standard error, past the test harness's capture.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A fresh schema for one test, dropped with this value: at the end of the test, or
/// while a failing test unwinds. `None` (after saying why) when no server is reachable
/// and it is not required.
struct Schema {
    name: String,
}

impl Schema {
    async fn fresh() -> Option<Schema> {
        let url = database_url();
        match PgConnection::connect(&url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                Some(Schema {
                    name: format!("bank_e2e_{}", uuid::Uuid::new_v4().simple()),
                })
            }
            Err(e) if std::env::var("CQRS_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("CQRS_REQUIRE_POSTGRES=1 but no PostgreSQL at {url}: {e}")
            }
            Err(e) => {
                let test = std::thread::current().name().unwrap_or("a test").to_owned();
                say(&format!("skipped: {test}: no PostgreSQL at {url} ({e})"));
                None
            }
        }
    }

    fn url(&self) -> String {
        let url = database_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}schema={}", self.name)
    }
}

impl Drop for Schema {
    /// Drop cannot await: the schema is dropped on a fresh connection, on a thread of its
    /// own with its own runtime (the test's runtime may be the one unwinding).
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '20s'; SET statement_timeout = '25s'; \
             DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        );
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("start a runtime: {e}"))?;
            runtime.block_on(async {
                let mut conn = tokio::time::timeout(
                    Duration::from_secs(10),
                    PgConnection::connect(&database_url()),
                )
                .await
                .map_err(|_| "connecting timed out after 10 s".to_owned())?
                .map_err(|e| format!("connect: {e}"))?;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn),
                )
                .await
                .map_err(|_| "DROP SCHEMA timed out after 30 s".to_owned())?
                .map_err(|e| format!("DROP SCHEMA: {e}"))?;
                let _ = conn.close().await;
                Ok::<_, String>(())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the thread dropping it panicked".to_owned()));
        match dropped {
            Ok(()) => {}
            Err(reason) if std::thread::panicking() => {
                say(&format!(
                    "could not drop the test schema {}: {reason}",
                    self.name
                ));
            }
            Err(reason) => panic!("could not drop the test schema {}: {reason}", self.name),
        }
    }
}

fn bank(url: &str, args: &[&str]) -> (i32, String, String) {
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .arg("--store")
            .arg(url)
            .args(args),
        COMMAND_DEADLINE,
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn ok_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = bank(url, &all);
    assert_eq!(code, 0, "bank {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_transfers_refunds_replay_and_bad_input_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let url = &schema.url();
    ok_json(url, &["open", "alice"]);
    ok_json(url, &["open", "bob"]);
    assert_eq!(
        ok_json(url, &["deposit", "alice", "100"])["balance_cents"],
        10_000
    );
    assert_eq!(
        ok_json(url, &["transfer", "alice", "bob", "25.25"])["status"],
        "completed"
    );
    let (code, _, stderr) = bank(url, &["transfer", "alice", "ghost", "5"]);
    assert_eq!(code, 1, "{stderr}");
    // Read-your-writes from another process.
    assert_eq!(ok_json(url, &["balance", "alice"])["balance_cents"], 7_475);
    assert_eq!(ok_json(url, &["balance", "bob"])["balance_cents"], 2_525);

    let events = ok_json(url, &["stats"])["events"].clone();
    for amount in ["0", "-2", "0.001", "x"] {
        assert_eq!(bank(url, &["deposit", "alice", amount]).0, 2, "{amount}");
    }
    assert_eq!(
        ok_json(url, &["stats"])["events"],
        events,
        "bad input wrote nothing"
    );

    let before = ok_json(url, &["accounts"]);
    ok_json(url, &["replay", "--all"]);
    assert_eq!(
        ok_json(url, &["accounts"]),
        before,
        "replay gives identical read models"
    );
    assert_eq!(
        ok_json(url, &["stats"])["events"],
        events,
        "replay sent no command again"
    );
}

/// Starts `bank serve`; the server is killed when the value is dropped.
fn serve(url: &str, addr: SocketAddr) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_bank"))
        .args(["--store", url, "serve", "--addr", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bank serve");
    Killed(child)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request with `Connection: close`: the status and the JSON body; `None`
/// when the server cannot be reached or does not answer within 60 s.
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let limit = Duration::from_secs(60);
    let mut stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn wait_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(addr, "GET", "/accounts", "").is_none() {
        assert!(
            Instant::now() < deadline,
            "bank serve did not come up on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_database() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let url = schema.url();
    // Create the schema first so the two servers do not race to migrate it.
    ok_json(&url, &["accounts"]);
    let (a, b) = (free_addr(), free_addr());
    let first = serve(&url, a);
    let second = serve(&url, b);
    let url_for_checks = url.clone();
    tokio::task::spawn_blocking(move || {
        wait_up(a);
        wait_up(b);
        assert_eq!(
            call(a, "POST", "/accounts", r#"{"account":"x"}"#)
                .unwrap()
                .0,
            201
        );
        assert_eq!(
            call(b, "POST", "/accounts", r#"{"account":"y"}"#)
                .unwrap()
                .0,
            201
        );
        // Written through one server, read through the other.
        assert_eq!(
            call(a, "POST", "/accounts/x/deposits", r#"{"amount":"10"}"#)
                .unwrap()
                .0,
            200
        );
        let (status, moved) = call(
            b,
            "POST",
            "/transfers",
            r#"{"from":"x","to":"y","amount":"4"}"#,
        )
        .unwrap();
        assert_eq!(
            (status, moved["status"].as_str()),
            (200, Some("completed")),
            "{moved}"
        );
        assert_eq!(
            call(a, "GET", "/accounts/y", "").unwrap().1["balance_cents"],
            400
        );
        assert_eq!(
            call(b, "GET", "/accounts/x", "").unwrap().1["balance_cents"],
            600
        );
        // Kill the first server; the second takes over its projection work.
        drop(first);
        let (status, moved) = call(
            b,
            "POST",
            "/transfers",
            r#"{"from":"y","to":"x","amount":"1"}"#,
        )
        .unwrap();
        assert_eq!(
            (status, moved["status"].as_str()),
            (200, Some("completed")),
            "{moved}"
        );
        assert_eq!(
            call(b, "GET", "/accounts/x", "").unwrap().1["balance_cents"],
            700
        );
        // A replay while a server runs is refused with the reason, not blamed on a
        // projection (it used to say "projection transfers" for a replay of accounts).
        let (code, _, stderr) = bank(&url_for_checks, &["replay", "--projection", "accounts"]);
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains("another bank process is running") && !stderr.contains("transfers"),
            "{stderr}"
        );
        drop(second);
        // And the CLI still sees it all.
        let (code, stdout, stderr) = bank(&url_for_checks, &["--json", "balance", "y"]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            serde_json::from_str::<Value>(&stdout).unwrap()["balance_cents"],
            300
        );
    })
    .await
    .unwrap();
}
