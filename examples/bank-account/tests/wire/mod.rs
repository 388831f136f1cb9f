//! An in-process HTTP server of the bank's API and a minimal HTTP/1.1 client, for the
//! tests of committed writes and retries.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use example_bank_account::Bank;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a request, or the server's shutdown, may take: a guard against a hang,
/// never a timing check.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `future`, failing the test if it does not finish within [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
}

/// The API's router over a bank, with its process manager running, on a free port.
pub struct Server {
    pub addr: SocketAddr,
    bank: Bank,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A status, the JSON body, and the response's head (lowercase).
pub type Answer = (u16, Value, String);

impl Server {
    pub async fn start(bank: Bank) -> Server {
        let app = example_bank_account::http::router(bank.clone());
        Self::start_app(bank, app).await
    }

    /// Serves `app` (the API, and more) over `bank`.
    pub async fn start_app(bank: Bank, app: axum::Router) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        bank.start();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            served.await.unwrap();
        });
        Server {
            addr,
            bank,
            stop: Some(stop),
            task,
        }
    }

    /// Stops serving and the process manager.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        within("the server's end", &mut self.task).await.unwrap();
        within("the process manager's end", self.bank.stop())
            .await
            .unwrap();
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, "", None).await
    }

    /// A POST with a JSON body and, if given, an `Idempotency-Key`.
    pub async fn post(&self, path: &str, body: Value, key: Option<&str>) -> Answer {
        self.call("POST", path, &body.to_string(), key).await
    }

    async fn call(&self, method: &str, path: &str, body: &str, key: Option<&str>) -> Answer {
        let key = key.map_or(String::new(), |key| format!("Idempotency-Key: {key}\r\n"));
        let (status, head, body) = request(self.addr, method, path, &key, body).await;
        let body = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, body, head.to_lowercase())
    }
}

/// One request to `addr` with `Connection: close` (and `headers`, each ending in CRLF):
/// the status, the head and the body as text.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = within(&format!("{method} {path}"), async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
    })
    .await;
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

impl Drop for Server {
    /// A failing test still stops the server.
    fn drop(&mut self) {
        self.task.abort();
    }
}
