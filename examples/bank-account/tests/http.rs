//! The HTTP API, driven by a real HTTP/1.1 client over TCP.

use std::net::SocketAddr;
use std::time::Duration;

use example_bank_account::Bank;
use example_bank_account::domain::{AccountServices, Cents};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts `bank serve` on a free port; the server stops when the sender is dropped.
async fn start() -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let bank = Bank::open(
        "memory:",
        AccountServices::new(Cents::new(1_000_000).unwrap()),
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        example_bank_account::http::serve(bank, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, server)
}

/// How long a request, or the server's shutdown, may take: a guard against a hang, never
/// a timing check.
const DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `future`, failing the test if it does not finish within [`DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
}

/// One request with `Connection: close`; returns the status and the JSON body.
async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_deposits_withdrawals_and_errors() {
    let (addr, stop, server) = start().await;
    let (status, body) = call(
        addr,
        "POST",
        "/accounts",
        Some(r#"{"account":"alice","owner":"Alice"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["owner"], "Alice");
    assert_eq!(
        call(addr, "POST", "/accounts", Some(r#"{"account":"alice"}"#))
            .await
            .0,
        422,
        "already exists"
    );

    let (status, body) = call(
        addr,
        "POST",
        "/accounts/alice/deposits",
        Some(r#"{"amount":"12.50"}"#),
    )
    .await;
    assert_eq!((status, body["balance_cents"].clone()), (200, json!(1250)));
    let (status, body) = call(
        addr,
        "POST",
        "/accounts/alice/deposits",
        Some(r#"{"amount":7.5}"#),
    )
    .await;
    assert_eq!((status, body["balance"].clone()), (200, json!("20.00")));
    // Read-your-writes: a GET right after the command sees it.
    assert_eq!(
        call(addr, "GET", "/accounts/alice", None).await.1["balance_cents"],
        2000
    );

    let (status, body) = call(
        addr,
        "POST",
        "/accounts/alice/withdrawals",
        Some(r#"{"amount":"25"}"#),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("insufficient funds"),
        "{body}"
    );
    for bad in [
        r#"{"amount":"1.234"}"#,
        r#"{"amount":"-3"}"#,
        r#"{"amount":"0"}"#,
        r#"{"amount":"ten"}"#,
        r#"{"amount":"#,
        "{}",
        // Numbers are read from their text, by the rules of strings: never rounded
        // through a float, no exponents.
        r#"{"amount":999999999.99999999}"#,
        r#"{"amount":1.0000000000000001}"#,
        r#"{"amount":1e-2}"#,
        r#"{"amount":1e2}"#,
        r#"{"amount":true}"#,
        r#"{"amount":null}"#,
    ] {
        let (status, body) = call(addr, "POST", "/accounts/alice/deposits", Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(
        call(addr, "GET", "/accounts/alice", None).await.1["balance_cents"],
        2000,
        "bad input wrote nothing"
    );
    assert_eq!(call(addr, "GET", "/accounts/nobody", None).await.0, 404);
    assert_eq!(
        call(
            addr,
            "POST",
            "/accounts/nobody/deposits",
            Some(r#"{"amount":"1"}"#)
        )
        .await
        .0,
        404
    );

    let (status, body) = call(addr, "GET", "/accounts/alice/history", None).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["opened", "deposit", "deposit"]);

    assert_eq!(
        call(addr, "POST", "/accounts/alice/close", None).await.0,
        422,
        "balance is not zero"
    );
    drop(stop);
    within("the server stops when told", server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_complete_or_are_refunded() {
    let (addr, stop, server) = start().await;
    for account in ["a", "b"] {
        assert_eq!(
            call(
                addr,
                "POST",
                "/accounts",
                Some(&json!({ "account": account }).to_string())
            )
            .await
            .0,
            201
        );
    }
    call(
        addr,
        "POST",
        "/accounts/a/deposits",
        Some(r#"{"amount":"100"}"#),
    )
    .await;

    let (status, done) = call(
        addr,
        "POST",
        "/transfers",
        Some(r#"{"from":"a","to":"b","amount":"40"}"#),
    )
    .await;
    assert_eq!(
        (status, done["status"].clone()),
        (200, json!("completed")),
        "{done}"
    );
    // To a missing account: refused before anything is written.
    let (status, refused) = call(
        addr,
        "POST",
        "/transfers",
        Some(r#"{"from":"a","to":"ghost","amount":"10"}"#),
    )
    .await;
    assert_eq!(status, 404, "{refused}");
    // To a closed account: the transfer exists, failed, and the debit was refunded.
    let open = Some(r#"{"account":"c"}"#);
    assert_eq!(call(addr, "POST", "/accounts", open).await.0, 201);
    assert_eq!(call(addr, "POST", "/accounts/c/close", None).await.0, 200);
    let (status, failed) = call(
        addr,
        "POST",
        "/transfers",
        Some(r#"{"from":"a","to":"c","amount":"10"}"#),
    )
    .await;
    assert_eq!(
        (status, failed["status"].clone()),
        (200, json!("failed")),
        "{failed}"
    );
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("account is closed")
    );
    assert_eq!(
        call(
            addr,
            "POST",
            "/transfers",
            Some(r#"{"from":"a","to":"a","amount":"1"}"#)
        )
        .await
        .0,
        422
    );

    let (_, a) = call(addr, "GET", "/accounts/a", None).await;
    let (_, b) = call(addr, "GET", "/accounts/b", None).await;
    assert_eq!(
        (a["balance_cents"].clone(), b["balance_cents"].clone()),
        (json!(6000), json!(4000))
    );

    let path = format!("/transfers/{}", failed["transfer_id"].as_str().unwrap());
    assert_eq!(call(addr, "GET", &path, None).await.1["status"], "failed");
    assert_eq!(
        call(
            addr,
            "GET",
            "/transfers/5f0e8c1e-0000-4000-8000-000000000000",
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(addr, "GET", "/transfers/not-a-uuid", None).await.0,
        400
    );
    let (_, all) = call(addr, "GET", "/accounts", None).await;
    assert_eq!(all["accounts"].as_array().unwrap().len(), 3);
    drop(stop);
    within("the server stops when told", server).await.unwrap();
}
