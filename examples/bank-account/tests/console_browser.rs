//! The operations console in real headless Chromium (chromedriver + fantoccini) against
//! a real `bank serve`: the overview lists the projections, a stream page shows its
//! events, the XSS payloads in an owner name and an account id do not execute, and a
//! replay is refused without the token and reaches 100 % with it. Screenshots (1280 px
//! and 390 px wide) go to `<target>/console-screenshots/`.
//!
//! Without `chromedriver` on the PATH this prints `skipped`, unless
//! `CQRS_REQUIRE_BROWSER=1` (then it fails).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const TOKEN: &str = "browser-test-token";
const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = r#""><img src=x onerror=alert(1)>"#;
/// Every wait in this test ends by then.
const WAIT: Duration = Duration::from_secs(30);

/// A child process killed (and reaped) when the test ends, also when it fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`, or fails at the deadline.
fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("chromedriver"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CQRS_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "CQRS_REQUIRE_BROWSER=1 but no chromedriver on the PATH"
        );
        eprintln!(
            "skipped: no chromedriver on the PATH (apt-get install chromium chromium-driver)"
        );
    }
    found
}

fn bank(store: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bank"));
    command.arg("--store").arg(store).args(args);
    command
}

/// One HTTP/1.1 request to the bank's API; the status line.
fn http_post(port: u16, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .to_path_buf()
        },
        PathBuf::from,
    );
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `script` (a function body returning a value) returns true.
async fn until(client: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if client.execute(script, vec![]).await.unwrap() == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No alert is open, no `<img>` was injected, and the only script is the console's.
async fn nothing_injected(client: &Client, page: &str) {
    assert!(
        client.get_alert_text().await.is_err(),
        "{page}: an alert is open"
    );
    let found = client
        .execute(
            "return [document.querySelectorAll('img').length, \
                     document.querySelectorAll('script').length, \
                     window.__xss === undefined];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(found, json!([0, 1, true]), "{page}: injected elements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium() {
    let Some(chromedriver) = chromedriver() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sled:{}", dir.path().join("bank").display());
    // Seed: an owner name and an account id that hold the XSS payloads, and a transfer.
    for args in [
        &["open", "acc-1", "--owner", SCRIPT][..],
        &["open", IMG, "--owner", IMG],
        &["deposit", "acc-1", "100"],
        &["open", "acc-2", "--owner", "Ada Lovelace"],
        &["transfer", "acc-1", "acc-2", "25"],
    ] {
        let out = bank(&store, args).output().unwrap();
        assert!(
            out.status.success(),
            "bank {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let serve = bank(
        &store,
        &["serve", "--addr", &addr, "--console-token", TOKEN],
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    let mut serve = Killed(serve);
    wait_for_port(port, "bank serve", &mut serve.0);

    let driver_port = free_port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut driver = Killed(driver);
    wait_for_port(driver_port, "chromedriver", &mut driver.0);

    let mut capabilities = serde_json::Map::new();
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ];
    capabilities.insert("goog:chromeOptions".into(), json!({ "args": args }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut builder = ClientBuilder::new(connector);
    let webdriver = format!("http://127.0.0.1:{driver_port}");
    let connecting = builder.capabilities(capabilities).connect(&webdriver);
    let client = tokio::time::timeout(WAIT, connecting)
        .await
        .unwrap()
        .unwrap();
    let checked = run(&client, port).await;
    let _ = client.close().await;
    checked.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        panic!("{e}\n-- bank serve's log:\n{log}")
    });
}

/// The checks; a WebDriver failure is an `Err`, a failed check a panic.
async fn run(client: &Client, port: u16) -> Result<(), CmdError> {
    let base = format!("http://127.0.0.1:{port}/console");
    client.set_window_size(1280, 1000).await?;

    // Overview: both projections, green once caught up.
    client.goto(&format!("{base}/")).await?;
    let wait = client.wait().at_most(WAIT);
    wait.for_element(Locator::Css(r#"tr[data-projection="accounts"]"#))
        .await?;
    client
        .find(Locator::Css(r#"tr[data-projection="transfers"]"#))
        .await?;
    until(
        client,
        "running projections",
        "return document.querySelectorAll('.badge.running').length === 2;",
    )
    .await;
    nothing_injected(client, "overview").await;
    screenshot(client, "overview-1280").await;

    // A stream page: its events, the payload shown as text.
    let stream = format!("{base}/stream?type=account&id=acc-1");
    client.goto(&stream).await?;
    let events = client
        .execute(
            "return document.querySelectorAll('article.event').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(events, json!(3), "acc-1 has 3 events");
    let first = client.find(Locator::Css("article.event pre.json")).await?;
    let text = first.text().await?;
    assert!(text.contains(SCRIPT), "the owner is shown as text: {text}");
    nothing_injected(client, "stream acc-1").await;
    screenshot(client, "stream-1280").await;

    // The account whose id is the img payload: reached through the streams page.
    client.goto(&format!("{base}/streams?type=account")).await?;
    nothing_injected(client, "streams").await;
    let link = client
        .find(Locator::XPath("//a[contains(., 'onerror')]"))
        .await?;
    link.click().await?;
    let wait = client.wait().at_most(WAIT);
    let title = wait.for_element(Locator::Css("main h1")).await?;
    let title = title.text().await?;
    assert_eq!(title, format!("account/{IMG}"));
    nothing_injected(client, "stream of the img id").await;

    // The log, and its live tail picking up a deposit made through the API.
    client.goto(&format!("{base}/log")).await?;
    nothing_injected(client, "log").await;
    let rows = "return document.querySelectorAll('#log-rows tr').length;";
    let before = client
        .execute(rows, vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(0);
    client.find(Locator::Id("tail")).await?.click().await?;
    until(
        client,
        "the tail to connect",
        "return document.getElementById('tail-status').textContent === 'live';",
    )
    .await;
    let status = http_post(port, "/accounts/acc-2/deposits", r#"{"amount":"5"}"#);
    assert!(status.contains("200"), "deposit: {status}");
    let more = format!("return document.querySelectorAll('#log-rows tr').length > {before};");
    until(client, "the tail to add the deposit", &more).await;
    screenshot(client, "log-1280").await;

    // Actions: refused without the token, then a replay that reaches 100 %.
    client.goto(&format!("{base}/actions")).await?;
    let select = client.find(Locator::Css("select[name=projection]")).await?;
    select.select_by_value("accounts").await?;
    let replay = r#"form[data-action="replay"] button"#;
    client.find(Locator::Css(replay)).await?.click().await?;
    until(client, "the refusal", "const e = document.getElementById('action-error'); return !e.hidden && e.textContent.startsWith('403');").await;
    let refusal = client.find(Locator::Id("action-error")).await?;
    let refusal = refusal.text().await?;
    assert!(refusal.contains("token is required"), "{refusal}");
    let job = client.find(Locator::Id("job")).await?;
    assert!(
        !job.is_displayed().await?,
        "no job started without the token"
    );
    screenshot(client, "actions-refused-1280").await;
    let token = client.find(Locator::Id("token")).await?;
    token.send_keys(TOKEN).await?;
    client.find(Locator::Css(replay)).await?.click().await?;
    until(
        client,
        "the replay to finish",
        "return document.getElementById('job').dataset.state === 'done';",
    )
    .await;
    let percent = client.find(Locator::Id("job-percent")).await?;
    assert_eq!(percent.text().await?, "100 %");
    let bar = client
        .execute(
            "return document.getElementById('job-progress').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bar, json!(100));
    screenshot(client, "actions-replayed-1280").await;

    // A phone's width.
    client.set_window_size(390, 844).await?;
    for (page, name) in [
        ("/", "overview-390"),
        ("/stream?type=account&id=acc-1", "stream-390"),
        ("/log", "log-390"),
        ("/actions", "actions-390"),
    ] {
        client.goto(&format!("{base}{page}")).await?;
        nothing_injected(client, name).await;
        let overflow = client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(overflow, json!(true), "{name} scrolls sideways");
        screenshot(client, name).await;
    }
    Ok(())
}
