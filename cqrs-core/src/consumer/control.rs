//! Asking a running consumer for its dead letters, or to redrive them.

use std::fmt;

use tokio::sync::{mpsc, oneshot};

use super::{Consumer, ConsumerStats, RedriveReport};
use crate::consume::{DeadLetter, Inbox, InboxStats};
use crate::{BoxError, Codec, Projection, StreamId};

type Reply<T> = oneshot::Sender<Result<T, BoxError>>;

pub(super) enum Request {
    Redrive {
        stream: Option<StreamId>,
        reply: Reply<RedriveReport>,
    },
    DeadLetters {
        after: u64,
        limit: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    Stats {
        reply: Reply<InboxStats>,
    },
    Counts {
        reply: Reply<ConsumerStats>,
    },
}

/// Asks a running [`Consumer`] to list or redrive its dead letters, from another task
/// (an HTTP handler, an operations command): the request runs between two batches of
/// the consumer's loop, so it never races the consumer on a stream. Cheap to clone.
#[derive(Clone)]
pub struct ConsumerControl {
    pub(super) requests: mpsc::Sender<Request>,
}

impl fmt::Debug for ConsumerControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerControl").finish_non_exhaustive()
    }
}

/// The consumer is not running (it stopped, or was dropped) and cannot answer.
#[derive(Debug, thiserror::Error)]
#[error("the consumer is not running")]
pub struct NotRunning;

impl ConsumerControl {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, BoxError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| NotRunning)?;
        answer.await.map_err(|_| NotRunning)?
    }

    /// Applies the dead letters again (of one stream, or all): see [`Consumer::redrive`].
    ///
    /// # Errors
    /// [`NotRunning`], or the inbox's error.
    pub async fn redrive(&self, stream: Option<StreamId>) -> Result<RedriveReport, BoxError> {
        self.ask(|reply| Request::Redrive { stream, reply }).await
    }

    /// Up to `limit` dead letters with ids above `after`, in id order.
    ///
    /// # Errors
    /// [`NotRunning`], or the inbox's error.
    pub async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BoxError> {
        self.ask(|reply| Request::DeadLetters {
            after,
            limit,
            reply,
        })
        .await
    }

    /// The inbox's counts.
    ///
    /// # Errors
    /// [`NotRunning`], or the inbox's error.
    pub async fn stats(&self) -> Result<InboxStats, BoxError> {
        self.ask(|reply| Request::Stats { reply }).await
    }

    /// What the consumer did since it was made ([`Consumer::stats`]).
    ///
    /// # Errors
    /// [`NotRunning`].
    pub async fn counts(&self) -> Result<ConsumerStats, BoxError> {
        self.ask(|reply| Request::Counts { reply }).await
    }
}

impl<I: Inbox, P: Projection<I::Context>, C: Codec> Consumer<I, P, C> {
    pub(super) async fn answer(&mut self, request: Request) {
        match request {
            Request::Redrive { stream, reply } => {
                let _ = reply.send(self.redrive(stream.as_ref()).await);
            }
            Request::DeadLetters {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.inbox.dead_letters(after, limit).await);
            }
            Request::Stats { reply } => {
                let _ = reply.send(self.inbox.stats().await);
            }
            Request::Counts { reply } => {
                let _ = reply.send(Ok(self.stats));
            }
        }
    }
}
