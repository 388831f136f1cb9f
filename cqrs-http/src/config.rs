//! The limits a server keeps, with their defaults.

use std::time::Duration;

use tokio::sync::Semaphore;

/// The timeouts and limits [`serve`](crate::serve) enforces on every connection and
/// request. Every limit is on by default; the defaults suit a JSON API or an operations
/// console on one machine (ADR 0016 gives the reasons).
///
/// | setting | default | at the limit |
/// |---|---|---|
/// | [`header_read_timeout`](Self::header_read_timeout) | 10 s | connection closed |
/// | [`request_body_timeout`](Self::request_body_timeout) | 30 s | body read fails (400), connection closed |
/// | [`idle_timeout`](Self::idle_timeout) | 60 s | connection closed |
/// | [`max_connections`](Self::max_connections) | 512 | oldest idle connection closed, else accept waits |
/// | [`max_in_flight`](Self::max_in_flight) | 256 | `503 Service Unavailable` at once |
/// | [`max_request_body`](Self::max_request_body) | 2 MiB | `413 Payload Too Large` |
/// | [`shutdown_timeout`](Self::shutdown_timeout) | 20 s | unfinished connections cut |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// use cqrs_http::ServeConfig;
///
/// let config = ServeConfig::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .max_connections(2_000);
/// assert_eq!(config.max_connections_limit(), 2_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeConfig {
    pub(crate) header_read_timeout: Duration,
    pub(crate) request_body_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_request_body: usize,
    pub(crate) shutdown_timeout: Duration,
}

impl ServeConfig {
    /// Default [`header_read_timeout`](Self::header_read_timeout): 10 seconds.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`request_body_timeout`](Self::request_body_timeout): 30 seconds.
    pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default [`idle_timeout`](Self::idle_timeout): 60 seconds.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default [`max_connections`](Self::max_connections): 512, well below the common
    /// soft limit of 1,024 open files, so the store keeps room for its own files and
    /// database connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
    /// Default [`max_in_flight`](Self::max_in_flight): 256 requests.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
    /// Default [`max_request_body`](Self::max_request_body): 2 MiB (axum's own default
    /// for its body extractors).
    pub const DEFAULT_MAX_REQUEST_BODY: usize = 2 * 1024 * 1024;
    /// Default [`shutdown_timeout`](Self::shutdown_timeout): 20 seconds, inside the 30 s
    /// a Kubernetes pod and the 90 s a systemd unit get before they are killed.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

    /// How long a client may take to send a complete request head (request line and
    /// headers), counted from its first byte. A client that sends half a header and
    /// stops (slowloris) is disconnected when it runs out, however slowly it trickles.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a client may take to send a whole request body, counted from the end of
    /// its head. It bounds the whole body, not the gap between two chunks, so trickling
    /// a byte at a time does not keep a request alive. When it runs out the handler's
    /// body read fails ([`Error::BodyTimedOut`](crate::Error::BodyTimedOut), answered
    /// `400` by axum's extractors) and the connection is closed after the response.
    #[must_use]
    pub fn request_body_timeout(mut self, timeout: Duration) -> Self {
        self.request_body_timeout = timeout;
        self
    }

    /// How long a connection may stay open with no request on it: after it is accepted,
    /// or after a response was sent, until the first byte of the next request arrives.
    /// Then the connection is closed.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most connections open at once (at least 1). When all are taken, the server
    /// closes the connection that has had no request in flight for the longest time to
    /// serve the new one; when every connection is busy, the new client waits for one to
    /// end and accepting stops (the kernel's listen backlog holds the clients behind
    /// it). Keep it below the process's open-file limit
    /// (`ulimit -n`) minus what the application itself needs.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// The most requests handled at once, over all connections (at least 1). A request
    /// beyond it is answered `503 Service Unavailable` with `Retry-After: 1` at once,
    /// without reaching the application, rather than queued without bound.
    #[must_use]
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// The largest request body accepted, in bytes. A request whose `Content-Length` is
    /// larger is answered `413 Payload Too Large` without reading it; a chunked body that
    /// grows past it fails the handler's read, which axum's extractors answer `413`.
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// How long a graceful shutdown lets requests in flight finish before the remaining
    /// connections are cut.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The connection limit in force (see [`max_connections`](Self::max_connections)).
    pub fn max_connections_limit(&self) -> usize {
        self.max_connections
    }

    /// The in-flight request limit in force (see [`max_in_flight`](Self::max_in_flight)).
    pub fn max_in_flight_limit(&self) -> usize {
        self.max_in_flight
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            request_body_timeout: Self::DEFAULT_REQUEST_BODY_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            max_request_body: Self::DEFAULT_MAX_REQUEST_BODY,
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_of_zero_or_too_many_are_clamped() {
        let config = ServeConfig::default()
            .max_connections(0)
            .max_in_flight(usize::MAX);
        assert_eq!(config.max_connections_limit(), 1);
        assert_eq!(config.max_in_flight_limit(), Semaphore::MAX_PERMITS);
    }
}
