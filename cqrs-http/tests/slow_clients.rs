//! Slow clients are cut off, limits answer at once, and shutdown is graceful: each test
//! configures one short limit and checks the outcome within a generous deadline.

mod common;

use std::time::Duration;

use common::*;
use cqrs_http::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every timeout long, so that only the one a test shortens can fire.
fn patient() -> ServeConfig {
    ServeConfig::default()
        .header_read_timeout(LONG)
        .request_body_timeout(LONG)
        .idle_timeout(LONG)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_cut_off() {
    let server = start(patient().header_read_timeout(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Half: ab")
        .await
        .unwrap();
    let sent = read_until_closed(&mut stream).await;
    assert!(sent.is_some(), "the server kept a half-sent header open");
    assert_eq!(get_status(server.addr, "/hello").await, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_trickled_a_byte_at_a_time_is_cut_off() {
    let server = start(patient().header_read_timeout(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
    // A byte every 100 ms, never finishing the head: no single gap is long, the whole is.
    let trickle = async {
        loop {
            if stream.write_all(b"X").await.is_err() || is_closed(&stream) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    within("the server cuts the trickling header", trickle).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_body_is_cut_off() {
    let server = start(patient().request_body_timeout(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let sent = read_until_closed(&mut stream)
        .await
        .expect("the server kept a half-sent body open");
    assert_ne!(
        status_of(&sent),
        Some(200),
        "{}",
        String::from_utf8_lossy(&sent)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off() {
    let server = start(patient().request_body_timeout(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let trickle = async {
        loop {
            if stream.write_all(b"x").await.is_err() || is_closed(&stream) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    within("the server cuts the trickling body", trickle).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = start(patient().idle_timeout(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // The response arrives, then the connection stays open and idle until the server
    // closes it.
    let sent = read_until_closed(&mut stream)
        .await
        .expect("the server kept an idle connection open");
    assert_eq!(status_of(&sent), Some(200));
    assert!(String::from_utf8_lossy(&sent).ends_with("hello"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_served_while_slow_ones_hang() {
    let server = start(ServeConfig::default()).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHo")
            .await
            .unwrap();
        slow.push(stream);
    }
    assert_eq!(get_status(server.addr, "/hello").await, 200);
    drop(slow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused() {
    let server = start(ServeConfig::default().max_request_body(1_000)).await;
    // Declared too large: refused without reading the body.
    let head =
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n";
    let (status, response) = request(server.addr, head, &[b'x'; 2000]).await;
    assert_eq!(status, 413, "{response}");
    // Chunked, growing past the limit while it is read.
    let head = "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let chunk = format!("7d0\r\n{}\r\n0\r\n\r\n", "x".repeat(2000));
    let (status, response) = request(server.addr, head, chunk.as_bytes()).await;
    assert_eq!(status, 413, "{response}");
    // Within the limit: served.
    let head =
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 999\r\nConnection: close\r\n\r\n";
    let (status, response) = request(server.addr, head, &[b'x'; 999]).await;
    assert_eq!(status, 200, "{response}");
    assert!(response.ends_with("999"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_limit_are_answered_503_at_once() {
    let server = start(ServeConfig::default().max_in_flight(2)).await;
    let addr = server.addr;
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get_status(addr, "/wait").await }))
        .collect();
    server.entered(2).await;
    let head = "GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let (status, response) = request(addr, head, b"").await;
    assert_eq!(status, 503, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    server.gate.add_permits(2);
    for waiting in waiting {
        assert_eq!(within("a waiting request", waiting).await.unwrap(), 200);
    }
    assert_eq!(get_status(addr, "/hello").await, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_answers_requests_in_flight() {
    let server = start(patient()).await;
    let addr = server.addr;
    // An idle keep-alive connection, after one request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Its answer has begun before the shutdown, so the connection is idle, not a
    // request not yet read (which a shutdown may close unanswered).
    let mut head = Vec::new();
    let answered = async {
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = idle.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            head.extend_from_slice(&buf[..n]);
        }
    };
    within("the first answer", answered).await;
    // A request in flight, held in the handler by the gate.
    let in_flight = tokio::spawn(async move { get_status(addr, "/wait").await });
    let gate = std::sync::Arc::clone(&server.gate);
    server.entered(1).await;
    let served = server.signal_stop();
    read_until_closed(&mut idle)
        .await
        .expect("shutdown left an idle connection open");
    assert_eq!(status_of(&head), Some(200));
    let refused = async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within("the listener closes", refused).await;
    assert!(
        !served.is_finished(),
        "serve returned with a request in flight"
    );
    gate.add_permits(1);
    assert_eq!(
        within("the request in flight", in_flight).await.unwrap(),
        200
    );
    within("serve returns", served).await.unwrap();
}
