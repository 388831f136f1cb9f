//! The `LISTEN` task that turns other processes' `NOTIFY`s into local wake-ups.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::LogNotifier;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

/// Listens on `channel` until aborted (when the store is dropped), waking `notifier` on
/// each notification. A lost connection is re-established; since notifications sent
/// meanwhile are lost, every (re)connection also wakes the watchers, which then read
/// whatever they missed.
pub(crate) async fn run(options: PgConnectOptions, channel: String, notifier: Arc<LogNotifier>) {
    // Its own one-connection pool: the listener's connection never starves the store's.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let mut delay = Duration::from_millis(100);
    loop {
        match listen(&pool, &channel, &notifier).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(%channel, %error, "LISTEN connection failed; readers poll until it is back");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn listen(
    pool: &sqlx::PgPool,
    channel: &str,
    notifier: &LogNotifier,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(true);
    listener.listen(channel).await?;
    notifier.notify();
    loop {
        // `None`: the connection was lost and has been re-established.
        if listener.try_recv().await?.is_none() {
            notifier.notify();
        } else {
            // Many appends notify at once: wake once for all that are buffered.
            while listener.next_buffered().is_some() {}
            notifier.notify();
        }
    }
}

/// Sends `NOTIFY channel` after appends, each time `wanted` is signalled, at most once
/// per `interval`: the appends in between share one notification. Runs until aborted
/// (when the store is dropped). A failed `NOTIFY` is logged; readers then poll.
pub(crate) async fn notify_loop(
    options: PgConnectOptions,
    channel: String,
    interval: Duration,
    wanted: Arc<tokio::sync::Notify>,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_lazy_with(options);
    loop {
        wanted.notified().await;
        if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool)
            .await
        {
            tracing::warn!(%channel, %error, "NOTIFY failed; other nodes' readers poll");
        }
        tokio::time::sleep(interval).await;
    }
}
