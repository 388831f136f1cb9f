//! Many idle connections: a normal request is still answered, below and beyond the
//! connection limit.

mod common;

use std::time::Duration;

use common::*;
use cqrs_http::ServeConfig;
use tokio::net::TcpStream;

const IDLE_CONNECTIONS: usize = 1_000;

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` elsewhere.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Whether this process may open both ends of `connections` connections; says
/// `skipped` when it may not.
fn enough_files(connections: usize, test: &str) -> bool {
    let needed = u64::try_from(2 * connections + 200).unwrap_or(u64::MAX);
    match open_files_limit() {
        Some(limit) if limit < needed => {
            eprintln!("skipped: {test}: the open-files limit is {limit}, {needed} are needed");
            false
        }
        _ => true,
    }
}

async fn open_idle(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(within("connect", TcpStream::connect(addr)).await.unwrap());
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_while_a_thousand_idle_connections_are_open() {
    if !enough_files(IDLE_CONNECTIONS, "a thousand idle connections") {
        return;
    }
    let config = ServeConfig::default()
        .idle_timeout(LONG)
        .header_read_timeout(LONG)
        .max_connections(2 * IDLE_CONNECTIONS);
    let server = start(config).await;
    let idle = open_idle(server.addr, IDLE_CONNECTIONS).await;
    assert_eq!(get_status(server.addr, "/hello").await, 200);
    // Below the limit nothing was closed to make room.
    let closed = idle.iter().filter(|s| is_closed(s)).count();
    assert_eq!(closed, 0, "idle connections closed below the limit");
    drop(idle);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_idle_connections_make_room() {
    let limit = 50;
    let config = ServeConfig::default()
        .idle_timeout(LONG)
        .header_read_timeout(LONG)
        .max_connections(limit);
    let server = start(config).await;
    let idle = open_idle(server.addr, 2 * limit).await;
    assert_eq!(get_status(server.addr, "/hello").await, 200);
    // For the request to be served, more than `limit` of the idle ones had to give
    // way: the oldest idle connections were closed rather than the new client refused.
    let made_room = async {
        while idle.iter().filter(|s| is_closed(s)).count() <= limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within("idle connections are closed to make room", made_room).await;
    assert_eq!(get_status(server.addr, "/hello").await, 200);
    drop(idle);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_beyond_the_default_limit_do_not_lock_clients_out() {
    if !enough_files(IDLE_CONNECTIONS, "beyond the default limit") {
        return;
    }
    let server = start(ServeConfig::default()).await;
    let idle = open_idle(server.addr, IDLE_CONNECTIONS).await;
    for _ in 0..10 {
        assert_eq!(get_status(server.addr, "/hello").await, 200);
    }
    let open_at_most = ServeConfig::DEFAULT_MAX_CONNECTIONS;
    let bounded = async {
        while idle.iter().filter(|s| !is_closed(s)).count() > open_at_most {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within("the server holds at most its limit", bounded).await;
    drop(idle);
    server.stop().await;
}
