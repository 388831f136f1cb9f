//! The accept loop, the per-connection task and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tower_service::Service;

use crate::ServeConfig;
use crate::body::DeadlineBody;
use crate::connection::{Activity, Registry, Tracked};

/// How long the accept loop pauses after an accept error that is not about one client
/// (out of file descriptors, out of memory), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often the accept loop, waiting for a free connection slot, looks again for an
/// idle connection to close.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// What every connection task shares.
#[derive(Debug)]
struct Server {
    router: Router,
    config: ServeConfig,
    registry: Arc<Registry>,
    in_flight: Arc<Semaphore>,
}

/// Serves `router` over HTTP/1.1 on `listener` with the timeouts and limits of `config`,
/// until `shutdown` completes; then shuts down gracefully and returns.
///
/// Graceful shutdown: the listener is closed at once (new clients are refused),
/// connections without a request in flight are closed, and requests in flight are
/// finished and answered (their connections close after the response), for at most
/// [`ServeConfig::shutdown_timeout`]; connections still open after that are cut.
///
/// Nothing here ends serving early: an accept error that concerns one client is
/// skipped, and one that concerns the process (out of file descriptors) closes the
/// oldest idle connection and retries after a short pause. A panic in a handler ends
/// only its connection and is logged (`tracing`, level error). Handlers can extract
/// the peer address as [`ConnectInfo<SocketAddr>`].
///
/// # Examples
///
/// ```no_run
/// use axum::Router;
/// use axum::routing::get;
/// use cqrs_http::{ServeConfig, serve, shutdown_signal};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// serve(listener, app, ServeConfig::default(), shutdown_signal()?).await;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) {
    let server = Arc::new(Server {
        router,
        config,
        registry: Arc::new(Registry::default()),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (stop, _) = watch::channel(());
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => report(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // At the limit, the new client waits (holding one descriptor) until
                    // an idle connection has been closed for it or a busy one ends;
                    // meanwhile the kernel's backlog holds the clients behind it.
                    let slot = tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        slot = free_slot(&slots, &server.registry) => slot,
                    };
                    let Some(slot) = slot else { break };
                    let (server, stop) = (Arc::clone(&server), stop.subscribe());
                    tasks.spawn(connection(server, stream, peer, slot, stop));
                }
                Err(e) if is_about_one_client(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    server.registry.evict_oldest_idle();
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    stop.send_replace(());
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            report(done);
        }
    };
    if tokio::time::timeout(config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tasks.len(),
            timeout = ?config.shutdown_timeout,
            "requests still in flight at the end of the shutdown timeout: cut"
        );
        tasks.shutdown().await;
    }
}

/// Takes a connection slot; when none is free, closes the oldest idle connection to
/// free one, or waits for one. `None` only if the semaphore was closed (never).
async fn free_slot(slots: &Arc<Semaphore>, registry: &Registry) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Some(permit);
        }
        registry.evict_oldest_idle();
        tokio::select! {
            permit = Arc::clone(slots).acquire_owned() => return permit.ok(),
            () = tokio::time::sleep(EVICT_RETRY) => {}
        }
    }
}

/// Errors of `accept` that concern the one client being accepted.
fn is_about_one_client(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

fn report(done: Result<(), JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a connection's task failed");
    }
}

/// Serves one connection until it ends, a phase outlasts its timeout, the accept loop
/// evicts it, or the server stops. Returning drops the connection, closing the socket.
async fn connection(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    mut stop: watch::Receiver<()>,
) {
    // Without it, small responses wait for the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let config = server.config;
    let activity = Arc::new(Activity::new());
    let _registered = server.registry.register(Arc::clone(&activity));
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |request| handle(Arc::clone(&server), Arc::clone(&activity), peer, request))
    };
    // hyper's own header timer runs from the moment a connection is idle until a whole
    // head is read; the watchdog below splits that into idle and head phases, so
    // hyper's timer is only a backstop behind both.
    let backstop = config
        .idle_timeout
        .saturating_add(config.header_read_timeout);
    let io = TokioIo::new(Tracked::new(stream, Arc::clone(&activity)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(backstop)
        .serve_connection(io, service);
    let mut conn = pin!(conn);
    let mut stopping = false;
    loop {
        // No deadline while busy: the phase changes when the response is done.
        let deadline = activity.deadline(&config);
        let wake = deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            () = activity.changed() => {}
            () = tokio::time::sleep_until(wake), if deadline.is_some() => {
                if activity.deadline(&config).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "connection idle or slow for too long: closed");
                    return;
                }
            }
            () = activity.evicted() => {
                tracing::debug!(%peer, "idle connection closed to make room for a new one");
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if !activity.is_busy() {
                    return;
                }
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One request: admitted or refused by the limits, then handed to the router. The
/// request counts as in flight until its response body has been written.
fn handle(
    server: Arc<Server>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> impl Future<
    Output = Result<
        Response<impl http_body::Body<Data = Bytes, Error = axum::Error> + Send + 'static>,
        Infallible,
    >,
> + Send
+ 'static {
    let permit = Arc::clone(&server.in_flight).try_acquire_owned().ok();
    let admitted = permit.is_some();
    let in_flight = activity.request(permit);
    async move {
        let config = server.config;
        let limit = u64::try_from(config.max_request_body).unwrap_or(u64::MAX);
        let response = if !admitted {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight; retry shortly\n",
            )
        } else if request.body().size_hint().lower() > limit {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this server accepts\n",
            )
        } else {
            request.extensions_mut().insert(ConnectInfo(peer));
            let request = request.map(|body| {
                let body = DeadlineBody::new(body, config.request_body_timeout);
                Limited::new(body, config.max_request_body)
            });
            let mut router = server.router.clone();
            match router.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        };
        Ok(response.map(move |body| {
            body.map_frame(move |frame| {
                let _still_in_flight = &in_flight;
                frame
            })
        }))
    }
}

/// A short plain-text refusal sent by the server itself.
fn refuse(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
