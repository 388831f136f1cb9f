//! The real `bank serve` under slow and many clients: slow clients are cut off, a normal
//! client is served while 1,000 idle connections are open, memory returns near its
//! baseline once they are gone, and SIGTERM stops the server gracefully (exit 0, the
//! request in flight answered).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::Killed;

/// How long any one wait may take: a guard against a hang, never a timing check.
const DEADLINE: Duration = Duration::from_secs(60);

const IDLE_CONNECTIONS: usize = 1_000;
const SLOW_CLIENTS: usize = 20;

/// How far above its baseline the server's resident memory may stay once the clients
/// are gone (before the fix, 20,000 idle connections left it at 593 MB).
const RSS_MARGIN_KIB: u64 = 64 * 1024;

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// One request with `Connection: close`: the status and the raw response; `None` if
/// the server cannot be reached.
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response))
}

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`; `None` where there
/// is no `/proc`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the server closed `stream` within the deadline (end of stream or reset).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn slow_and_many_clients_do_not_take_the_server_down_and_sigterm_stops_it_gracefully() {
    if rss_kib(std::process::id()).is_none() {
        eprintln!("skipped: serve limits: no /proc to read memory from");
        return;
    }
    let addr = free_addr();
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_bank"))
            .args(["--store", "memory:", "serve", "--addr", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bank serve"),
    );
    let pid = server.0.id();
    wait_until("bank serve comes up", || {
        call(addr, "GET", "/accounts", "").is_some()
    });

    // Warm up, then take the baseline.
    let open = r#"{"account":"alice","owner":"Alice"}"#;
    assert_eq!(call(addr, "POST", "/accounts", open).unwrap().0, 201);
    for _ in 0..50 {
        let (status, response) = call(
            addr,
            "POST",
            "/accounts/alice/deposits",
            r#"{"amount":"1.00"}"#,
        )
        .unwrap();
        assert_eq!(status, 200, "{response}");
    }
    let baseline = rss_kib(pid).expect("the server's memory");

    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS).map(|_| connect(addr)).collect();
    let mut slow: Vec<TcpStream> = (0..SLOW_CLIENTS)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(b"GET /accounts HTTP/1.1\r\nHo").unwrap();
            stream
        })
        .collect();
    let (status, response) = call(addr, "GET", "/accounts/alice", "").unwrap();
    assert_eq!(
        status, 200,
        "served while the idle and slow clients are open"
    );
    assert!(response.contains("50.00"), "{response}");
    let peak = rss_kib(pid).expect("the server's memory");
    for stream in &mut slow {
        assert!(closed_by_server(stream), "a slow client was not cut off");
    }
    drop((idle, slow));
    wait_until("memory returns near its baseline", || {
        rss_kib(pid).is_some_and(|rss| rss <= baseline + RSS_MARGIN_KIB)
    });
    eprintln!(
        "serve limits: RSS baseline {baseline} KiB, with {IDLE_CONNECTIONS} idle and \
         {SLOW_CLIENTS} slow clients {peak} KiB, after {} KiB",
        rss_kib(pid).unwrap_or(0)
    );

    // A request in flight when SIGTERM arrives: the server has asked for its body
    // (`100 Continue`), so the application is handling it.
    let body = r#"{"account":"bob","owner":"Bob"}"#;
    let mut in_flight = connect(addr);
    let head = format!(
        "POST /accounts HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).unwrap();
    let mut continued = Vec::new();
    while !continued.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        in_flight.read_exact(&mut byte).expect("100 Continue");
        continued.push(byte[0]);
    }
    assert!(continued.starts_with(b"HTTP/1.1 100"), "{continued:?}");
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    // Shutting down: the listener is closed, new clients are refused...
    wait_until("the listener closes", || TcpStream::connect(addr).is_err());
    // ...and the request in flight is still answered.
    in_flight.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    in_flight.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let mut exit = None;
    wait_until("bank serve exits", || {
        exit = server.0.try_wait().expect("wait for bank serve");
        exit.is_some()
    });
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{exit:?}");
}
