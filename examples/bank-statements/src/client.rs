//! The client side of `--server`: one HTTP/1.1 request to a running `statements serve`
//! (plain HTTP on a trusted network, as the server is), its JSON answer.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// How long one request may take, connecting included.
const DEADLINE: Duration = Duration::from_secs(30);

/// The largest answer read (a guard against a server that never stops sending).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Sends `method path` to `server` (`http://HOST:PORT`) and returns the answer's JSON.
///
/// # Errors
/// [`Error::InvalidInput`] for a server URL that is not `http://HOST:PORT`;
/// [`Error::NotFound`] for a 404 (with the server's message); [`Error::InvalidInput`]
/// for a 400; [`Error::Server`] if it cannot be reached, or for another status.
pub async fn request(server: &str, method: &str, path: &str) -> Result<Value> {
    let Some(authority) = server.strip_prefix("http://") else {
        return Err(Error::invalid(format!(
            "--server {server:?}: expected http://HOST:PORT"
        )));
    };
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(Error::invalid(format!(
            "--server {server:?}: expected http://HOST:PORT"
        )));
    }
    let failed = |source: cqrs_core::BoxError| Error::Server {
        server: server.to_owned(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(DEADLINE, exchange).await;
    let answer = answer
        .map_err(|_| failed(format!("no answer within {DEADLINE:?}").into()))?
        .map_err(|e| failed(e.into()))?;
    let (status, body) = parse(&answer).map_err(|e| failed(e.into()))?;
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = || {
        json["error"]
            .as_str()
            .map_or_else(|| format!("status {status}"), str::to_owned)
    };
    match status {
        200..=299 => Ok(json),
        404 => Err(Error::NotFound(message())),
        400 => Err(Error::invalid(message())),
        _ => Err(failed(message().into())),
    }
}

/// The status and body of an HTTP/1.1 answer (a `Content-Length` or chunked body, or
/// one that ends with the connection).
fn parse(answer: &[u8]) -> std::result::Result<(u16, Vec<u8>), String> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n");
    let split = split.ok_or("the answer has no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let (mut rest, mut out) = (body, Vec::new());
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n");
        let end = end.ok_or("a chunk without its size line")?;
        let size = String::from_utf8_lossy(&rest[..end]);
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "a bad chunk size")?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or("a chunk cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
            3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (404, b"{\"a\":1}".to_vec()));
        assert!(parse(b"garbage").is_err());
    }
}
