//! The request body as the application sees it: whole-body deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use tokio::time::Sleep;

use crate::Error;

/// A request body that must arrive whole before a deadline.
///
/// tower-http's `TimeoutBody` restarts its timer on every frame, so a client that sends
/// one byte just inside each period keeps a request open forever; this one bounds the
/// whole body. When the deadline passes it drops the connection's body, which makes
/// hyper close the connection once the response is written.
pub(crate) struct DeadlineBody {
    inner: Option<Incoming>,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    pub(crate) fn new(inner: Incoming, limit: Duration) -> Self {
        DeadlineBody {
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Error::BodyRead))),
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                this.inner = None;
                Poll::Ready(Some(Err(Error::BodyTimedOut { limit: this.limit })))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
