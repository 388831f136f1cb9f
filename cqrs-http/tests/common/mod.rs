//! A test server on a free port, and raw HTTP/1.1 clients that misbehave on purpose.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use cqrs_http::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// How long anything in these tests may take: a guard against a hang, never a timing
/// check. The timeouts under test are a fraction of it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A short timeout for the limit under test.
pub const SHORT: Duration = Duration::from_millis(500);

/// A timeout long enough never to run out during a test.
pub const LONG: Duration = Duration::from_secs(600);

/// A server running [`cqrs_http::serve`] in a task; the task ends with the test's
/// runtime if the test fails before [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    /// `GET /wait` waits for a permit here: the test decides when it finishes.
    pub gate: Arc<Semaphore>,
    /// `GET /wait` adds a permit here when it is in the handler.
    pub entered: Arc<Semaphore>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The release gate and the entry count of `GET /wait`.
type Gates = (Arc<Semaphore>, Arc<Semaphore>);

/// `GET /hello` answers at once; `POST /echo` reads the whole body and answers its
/// length; `GET /wait` answers when the test adds a permit to the gate.
pub async fn start(config: ServeConfig) -> TestServer {
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(Semaphore::new(0));
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/echo",
            post(|body: String| async move { body.len().to_string() }),
        )
        .route(
            "/wait",
            get(|State(gates): State<Gates>| async move {
                gates.1.add_permits(1);
                gates.0.acquire().await.expect("gate open").forget();
                "released"
            }),
        )
        .with_state((Arc::clone(&gate), Arc::clone(&entered)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(cqrs_http::serve(listener, app, config, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        gate,
        entered,
        stop,
        task,
    }
}

impl TestServer {
    /// Waits until `n` requests are inside `GET /wait`.
    pub async fn entered(&self, n: u32) {
        let entered = self.entered.acquire_many(n);
        within("requests enter the handler", entered)
            .await
            .expect("semaphore open")
            .forget();
    }

    /// Asks the server to stop and waits (within the deadline) until `serve` returned.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        within("the server stops", self.task).await.unwrap();
    }

    /// Sends the stop signal without waiting; `serve`'s task is returned.
    pub fn signal_stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        self.task
    }
}

/// Awaits `future`, failing the test if it does not finish within [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
}

/// Reads until the server closes the connection (end of stream or reset) and returns
/// what it sent; `None` if it is still open at the deadline.
pub async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.ok()?;
    Some(received)
}

/// The status code of the first response in `bytes`, if there is one.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

/// One request with `Connection: close`; the status and the raw response.
pub async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let response = read_until_closed(&mut stream)
        .await
        .expect("the response within the deadline");
    let status = status_of(&response).expect("a status line");
    (status, String::from_utf8_lossy(&response).into_owned())
}

/// `GET path` with `Connection: close`.
pub async fn get_status(addr: SocketAddr, path: &str) -> u16 {
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    request(addr, &head, b"").await.0
}

/// Whether the server has closed `stream`, without waiting: `true` on end of stream or
/// an error, `false` while it is open and silent.
pub fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}
