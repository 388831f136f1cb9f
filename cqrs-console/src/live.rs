//! The global log's live tail: server-sent events, one table row per event, woken by
//! the store's append notifications (polling once a second where it has none).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use cqrs_core::{EventStore, LogWatcher, Position};
use futures::Stream;
use serde::Deserialize;
use tokio::time::Instant;

use crate::jobs::chain;
use crate::render;
use crate::routes::Shared;

/// A tail stream ends after this long, or when the server shuts down
/// ([`Console::closing_on`](crate::Console::closing_on)); the browser reconnects from
/// its last event id (`Last-Event-ID`).
const MAX_STREAM: Duration = Duration::from_secs(300);
/// The longest wait between two reads when the store's notification does not come.
const POLL: Duration = Duration::from_secs(1);
/// Events read at a time.
const BATCH: u64 = 100;

#[derive(Debug, Deserialize)]
pub(crate) struct TailQuery {
    after: Option<String>,
}

struct Tail<S> {
    shared: Arc<Shared<S>>,
    after: Position,
    watcher: LogWatcher,
    pending: VecDeque<Event>,
    deadline: Instant,
    done: bool,
}

/// `GET <base>/log/tail?after=<position>`: every event after the position, then each
/// new one as it is appended. Each SSE event is named `row`, its data one `<tr>` (the
/// log page's row, escaped on the server), its id the event's position.
pub(crate) async fn tail<S: EventStore + Clone + Send + Sync + 'static>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Query(q): Query<TailQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = resumed
        .or(q.after.as_deref())
        .and_then(|a| a.parse::<Position>().ok())
        .unwrap_or(Position::START);
    let watcher = shared.ops.store().watch();
    let state = Tail {
        shared,
        after,
        watcher,
        pending: VecDeque::new(),
        deadline: Instant::now() + MAX_STREAM,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut t| async move {
        loop {
            if let Some(event) = t.pending.pop_front() {
                return Some((Ok(event), t));
            }
            let closed = t
                .shared
                .closing
                .as_ref()
                .is_some_and(|c| c.peek().is_some());
            if t.done || closed || Instant::now() >= t.deadline {
                return None;
            }
            t.watcher.mark_seen();
            match t.shared.ops.log_page(t.after, BATCH).await {
                Ok(events) if !events.is_empty() => {
                    for e in &events {
                        let row = render::log_row(&t.shared.base, e);
                        let id = e.position.to_string();
                        t.pending
                            .push_back(Event::default().event("row").id(id).data(row));
                    }
                    t.after = events.last().map_or(t.after, |e| e.position);
                }
                Ok(_) => {
                    let wait = POLL.min(t.deadline.saturating_duration_since(Instant::now()));
                    let changed = tokio::time::timeout(wait, t.watcher.changed());
                    match t.shared.closing.clone() {
                        Some(closing) => {
                            tokio::select! {
                                _ = changed => {}
                                () = closing => t.done = true,
                            }
                        }
                        None => drop(changed.await),
                    }
                }
                Err(e) => {
                    let message = crate::escape(&chain(&e));
                    t.pending
                        .push_back(Event::default().event("failure").data(message));
                    t.done = true;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
