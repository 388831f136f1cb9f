//! Helpers shared by the bank's command-line tests: running `bank` with a deadline and
//! killing what a test started, also when it fails.
#![allow(dead_code, unreachable_pub)]

pub mod pg;

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one `bank` command may take: a guard against a hang, never a timing check.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// A child process, killed and reaped when dropped: at the end of the test, or while a
/// failing test unwinds.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` to its end within `limit` (killing it and failing the test after
/// that), collecting its output as `Command::output` does.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = Killed(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bank"),
    );
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.0.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.0.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for bank") {
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

/// Runs `bank --store URL ARGS…` within [`COMMAND_DEADLINE`]: its exit code, the JSON
/// it printed (`Null` if none), and its standard error.
pub fn bank_on(url: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args(["--store", url])
            .args(args)
            .env_remove("BANK_STORE"),
        COMMAND_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), json, stderr)
}

/// As [`bank_on`], for a command that must succeed: its JSON.
#[track_caller]
pub fn ok_on(url: &str, args: &[&str]) -> serde_json::Value {
    let (code, json, stderr) = bank_on(url, args);
    assert_eq!(code, 0, "bank {args:?} failed: {stderr}");
    json
}
