//! One connection: what phase it is in, the watchdog that closes it when a phase lasts
//! too long, and the registry the accept loop evicts idle connections from.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::ServeConfig;

/// Where a connection is between requests. hyper has one timer for "idle, then reading
/// a head", so the split between the two is tracked here: the first byte read moves an
/// idle connection to `Head`; the application receiving the request makes it `Busy`;
/// the end of the response body makes it idle again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request since this instant.
    Idle(Instant),
    /// A request head has been arriving since this instant.
    Head(Instant),
    /// This many requests are being handled or answered.
    Busy(usize),
}

/// The shared state of one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    phase: Mutex<Phase>,
    evicted: AtomicBool,
    evict: Notify,
    changed: Notify,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            changed: Notify::new(),
        }
    }

    // A poisoned lock only means another thread panicked between two plain stores;
    // the phase is still a valid value.
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_arrived(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            self.changed.notify_one();
        }
    }

    /// Marks a request as received; it counts until the returned guard is dropped (when
    /// the response body is done). `permit` is the request's in-flight slot, if any.
    pub(crate) fn request(self: &Arc<Self>, permit: Option<OwnedSemaphorePermit>) -> RequestGuard {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle(_) | Phase::Head(_) => Phase::Busy(1),
        };
        self.changed.notify_one();
        RequestGuard {
            activity: Arc::clone(self),
            _permit: permit,
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        matches!(*self.phase(), Phase::Busy(_))
    }

    /// When the current phase runs out, or `None` while busy.
    pub(crate) fn deadline(&self, config: &ServeConfig) -> Option<Instant> {
        match *self.phase() {
            Phase::Idle(since) => Some(since + config.idle_timeout),
            Phase::Head(since) => Some(since + config.header_read_timeout),
            Phase::Busy(_) => None,
        }
    }

    /// Resolves when the phase has changed since the last call (at once if it has
    /// changed in between).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Resolves when the accept loop chose this connection to make room.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// A request in progress on a connection; dropping it ends the request.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    activity: Arc<Activity>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut phase = self.activity.phase();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        self.activity.changed.notify_one();
    }
}

/// The open connections, so that the accept loop can close an idle one to make room.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Registry {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection; it is removed when the returned value is dropped.
    pub(crate) fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open().insert(id, activity);
        Registered {
            registry: Arc::clone(self),
            id,
        }
    }

    /// Asks the connection that has gone longest without a request in flight (idle, or
    /// still reading a head) to close. Returns whether there was one.
    pub(crate) fn evict_oldest_idle(&self) -> bool {
        let open = self.open();
        let oldest = open
            .values()
            .filter(|a| !a.evicted.load(Ordering::Relaxed))
            .filter_map(|a| match *a.phase() {
                Phase::Idle(since) | Phase::Head(since) => Some((since, a)),
                Phase::Busy(_) => None,
            })
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, activity)) => {
                activity.evicted.store(true, Ordering::Relaxed);
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's place in the [`Registry`].
#[derive(Debug)]
pub(crate) struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.open().remove(&self.id);
    }
}

/// The client socket, telling its [`Activity`] when bytes arrive.
#[derive(Debug)]
pub(crate) struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl Tracked {
    pub(crate) fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Tracked { stream, activity }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        read
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn phases_follow_bytes_and_requests() {
        let config = ServeConfig::default();
        let activity = Arc::new(Activity::new());
        let idle = activity.deadline(&config).unwrap();
        activity.bytes_arrived();
        let head = activity.deadline(&config).unwrap();
        assert!(head < idle + config.header_read_timeout);
        let first = activity.request(None);
        let second = activity.request(None);
        assert!(activity.is_busy());
        drop(first);
        assert!(activity.is_busy(), "one request is still in flight");
        drop(second);
        assert!(!activity.is_busy());
        assert!(activity.deadline(&config).is_some());
    }

    #[tokio::test]
    async fn eviction_picks_the_oldest_connection_without_a_request() {
        let registry = Arc::new(Registry::default());
        // Made one after the other, so that `old` has been idle the longest.
        let made = || {
            std::thread::sleep(Duration::from_millis(2));
            Arc::new(Activity::new())
        };
        let (old, busy, new) = (made(), made(), made());
        let _guards = [&old, &busy, &new].map(|a| registry.register(Arc::clone(a)));
        let _request = busy.request(None);
        assert!(registry.evict_oldest_idle());
        assert!(old.evicted.load(Ordering::Relaxed));
        assert!(!new.evicted.load(Ordering::Relaxed));
        assert!(registry.evict_oldest_idle());
        assert!(new.evicted.load(Ordering::Relaxed));
        assert!(
            !registry.evict_oldest_idle(),
            "the busy one is never evicted"
        );
    }
}
