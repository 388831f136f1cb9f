//! Helpers for the statements tests: the `bank` and `statements` binaries run with
//! deadlines, long-running ones killed by guards, a JetStream stream and PostgreSQL
//! schemas per test, dropped by guards, also when a test fails.
#![allow(dead_code, unreachable_pub)]

pub mod broker;
pub mod kafka;
pub mod pg;

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one command may take: a guard against a hang, never a timing check.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// How long a test waits for the events to reach the statements read model.
pub const ARRIVAL_DEADLINE: Duration = Duration::from_secs(90);

/// Runs `future` to its end on a runtime of its own (the tests are synchronous: they
/// mostly wait for processes).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// The `statements` binary.
pub fn statements_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_statements"))
}

/// The `bank` binary, built beside `statements` (once per test process) by the same
/// cargo: it is another package's binary, which cargo does not build for these tests.
pub fn bank_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = statements_bin()
                .parent()
                .expect("the binaries' directory")
                .to_owned();
            let profile = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("debug")
                .to_owned();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "--quiet",
                "-p",
                "example-bank-account",
                "--bin",
                "bank",
            ]);
            if profile != "debug" {
                build.args(["--profile", &profile]);
            }
            let output = output_within(&mut build, Duration::from_secs(900));
            assert!(
                output.status.success(),
                "building bank failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let bank = dir.join(format!("bank{}", std::env::consts::EXE_SUFFIX));
            assert!(bank.exists(), "no bank binary at {}", bank.display());
            bank
        })
        .clone()
}

/// A child process, killed and reaped when dropped: at the end of the test, or while a
/// failing test unwinds.
pub struct Killed {
    pub child: Child,
    /// Where its standard error goes (shown when a wait for it fails).
    pub log: PathBuf,
}

impl Killed {
    /// Starts `command` in the background, its standard output and error to `log`.
    pub fn start(command: &mut Command, log: &Path) -> Killed {
        let file = File::create(log).expect("create the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .expect("start the process");
        Killed {
            child,
            log: log.to_owned(),
        }
    }

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if it has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("it exited ({status}): {}", self.log());
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end within `limit` (killing it and failing the test after
/// that), collecting its output as `Command::output` does.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut child = Killed {
        child,
        log: PathBuf::new(),
    };
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.child.try_wait().expect("wait for the command") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().expect("read stdout"),
        stderr: stderr.join().expect("read stderr"),
    }
}

/// Runs `program ARGS…` within [`COMMAND_DEADLINE`]: its exit code, the JSON it
/// printed (`Null` if none), and its standard error.
pub fn run(program: &Path, args: &[&str]) -> (i32, Value, String) {
    let output = output_within(
        Command::new(program)
            .args(args)
            .env_remove("BANK_STORE")
            .env_remove("STATEMENTS_STORE"),
        COMMAND_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), json, stderr)
}

/// `bank --store STORE ARGS…`, which must succeed: its JSON.
#[track_caller]
pub fn bank(store: &str, args: &[&str]) -> Value {
    let (code, json, stderr) = run(&bank_bin(), &[&["--store", store], args].concat());
    assert_eq!(code, 0, "bank {args:?} failed: {stderr}");
    json
}

/// `statements --store STORE ARGS…`: exit code, JSON, standard error.
pub fn statements(store: &str, args: &[&str]) -> (i32, Value, String) {
    run(&statements_bin(), &[&["--store", store], args].concat())
}

/// A TCP port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// Calls `probe` every 100 ms until it returns `Some`, at most `limit`; then fails the
/// test with `what` and the last probe's description.
#[track_caller]
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(found) => return found,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The statement of `account` (`show --json`, with `extra` arguments such as
/// `--server URL`) once its last event is version `version` or later.
#[track_caller]
pub fn statement_at(store: &str, extra: &[&str], account: &str, version: u64) -> Value {
    wait_for(
        &format!("the statement of {account} at version {version}"),
        ARRIVAL_DEADLINE,
        || {
            let args = [&["show", account, "--json"], extra].concat();
            let (code, json, stderr) = statements(store, &args);
            match json["last_event"]["version"].as_u64() {
                Some(v) if code == 0 && v >= version => Ok(json),
                _ => Err(format!("exit {code}: {json} {stderr}")),
            }
        },
    )
}

/// What the bank says of `account` (`bank balance` and `bank history`): its balance
/// and version, and its totals in and out per month (`YYYY-MM`, UTC), as the
/// statements service's JSON has them.
pub fn bank_view(store: &str, account: &str) -> (i64, u64, Value) {
    let balance = bank(store, &["balance", account]);
    let history = bank(store, &["history", account]);
    let mut months = std::collections::BTreeMap::<String, (i64, i64)>::new();
    for line in history["history"].as_array().expect("a history") {
        let cents = line["amount_cents"].as_i64().expect("amount_cents");
        if cents == 0 {
            continue;
        }
        let ms = line["recorded_at_ms"].as_i64().expect("recorded_at_ms");
        let month = example_bank_statements::statement::month(ms * 1000);
        let totals = months.entry(month).or_default();
        if cents > 0 {
            totals.0 += cents;
        } else {
            totals.1 -= cents;
        }
    }
    let months: Vec<Value> = months
        .into_iter()
        .map(|(month, (i, o))| serde_json::json!({ "month": month, "in_cents": i, "out_cents": o }))
        .collect();
    let cents = balance["balance_cents"].as_i64().expect("balance_cents");
    let version = balance["version"].as_u64().expect("version");
    (cents, version, Value::Array(months))
}

/// The statement's months with only `month`, `in_cents` and `out_cents`.
pub fn months(statement: &Value) -> Value {
    let months = statement["months"].as_array().expect("months");
    Value::Array(
        months
            .iter()
            .map(|m| {
                serde_json::json!({
                    "month": m["month"], "in_cents": m["in_cents"], "out_cents": m["out_cents"]
                })
            })
            .collect(),
    )
}
