//! Connections that break: which driver errors mean the statement's outcome is
//! unknown, and the retries that make reads and idempotent writes survive a lost
//! connection (a server restart, a killed backend).

use std::future::Future;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, stream};

use crate::PostgresEventStore;

impl PostgresEventStore {
    /// How many broken connections a call runs into before giving up: one more than the
    /// pool holds, so a pool whose connections all died (a server restart) is refilled.
    pub(crate) fn broken_connection_budget(&self) -> u32 {
        self.inner
            .pool
            .options()
            .get_max_connections()
            .saturating_add(1)
    }

    /// Runs a read (or an idempotent upsert) again when its connection turns out to be
    /// broken; the pool drops a broken connection when it comes back.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut op: F) -> std::result::Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut broken = 0;
        loop {
            match op().await {
                Err(e) if is_broken_connection(&e) && broken < self.broken_connection_budget() => {
                    broken += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// A streamed query that starts again when its connection turns out to be broken
    /// before the first row (later, the error is the stream's: rows were handed out).
    pub(crate) fn restarting<'a, T: Send + 'a>(
        &'a self,
        make: impl Fn() -> BoxStream<'a, std::result::Result<T, sqlx::Error>> + Send + 'a,
    ) -> impl Stream<Item = std::result::Result<T, sqlx::Error>> + Send + 'a {
        let budget = self.broken_connection_budget();
        let first = make();
        stream::unfold(
            (first, make, false, 0u32),
            move |(mut rows, make, started, mut broken)| async move {
                loop {
                    match rows.next().await {
                        None => return None,
                        Some(Err(e)) if !started && broken < budget && is_broken_connection(&e) => {
                            broken += 1;
                            rows = make();
                        }
                        Some(item) => return Some((item, (rows, make, true, broken))),
                    }
                }
            },
        )
    }
}

/// Whether the connection broke (so the statement may or may not have committed): an I/O
/// failure, or the server ending the session (SQLSTATE class 08 "connection exception",
/// 57P01-57P03 "admin/crash shutdown, cannot connect now"). sqlx has no error kind for
/// these, hence the codes.
pub(crate) fn is_broken_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}
