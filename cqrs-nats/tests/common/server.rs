//! A private `nats-server -js` on a free port with a store directory of its own, for
//! tests that kill and restart the broker without disturbing other tests.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private JetStream server; killed (and its directory removed) on drop.
pub(crate) struct PrivateNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts one, or `None` (after saying `skipped`) when `nats-server` is not
    /// installed, unless `CQRS_REQUIRE_NATS=1`.
    pub(crate) fn start() -> Option<Self> {
        let installed = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("CQRS_REQUIRE_NATS").as_deref() == Ok("1") {
                panic!("CQRS_REQUIRE_NATS=1 but nats-server is not on the PATH");
            }
            eprintln!("skipped: nats-server is not installed");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = PrivateNats {
            port,
            dir: tempfile::tempdir().expect("a store directory"),
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL (no clean shutdown) and waits for the process to end.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store directory, and waits (at most 20 s)
    /// until it accepts connections.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}
