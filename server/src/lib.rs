//! The `pulse` server: HTTP ingest and realtime API over the engine, with websites, salts,
//! bot classification, privacy signals and the hardening an internet-facing service needs.
//!
//! `run(state, listener, shutdown)` serves until `shutdown` completes, then stops accepting,
//! lets in-flight requests finish and returns — the shape of tokio's mini-redis. Only this crate
//! knows HTTP, JSON and configuration.
//!
//! # Layout
//! - `config`: `Config` (flags and `PULSE_*` variables), `HttpLimits`.
//! - `state`: `AppState`, what handlers share.
//! - `routes`: the router, its paths and request metrics, and one module per route (`collect`,
//!   `realtime`, `stream` — realtime as Server-Sent Events, `websites`, `health`, `scrape` —
//!   `GET /metrics`, `assets` — the embedded dashboard and `/s.js` tracker).
//! - `live`: `LiveHub`, the live streams' shared renderings, pacing and bound.
//! - `auth`: the admin token check; `admin_access`: without a token, loopback `Host` and same
//!   origin only, and JSON bodies always. `body`: bounded, timed body reading against a budget.
//! - `connections`: `ConnectionPool`, the admitted connections and the rules for shedding them.
//! - `wire_errors`: JSON bodies for the errors hyper answers before the router runs.
//! - `client_ip`: trusted proxies and `X-Forwarded-For`. `url_normaliser`: page paths and referrer
//!   hosts.
//! - `user_agent`: bot, browser and device classification in one pass.
//! - `event_log`: `EventLog`, the write queue, replay and the writer thread (`Durability`).
//! - `checkpoints`: restoring the newest checkpoint at start-up and writing one periodically.
//! - `cluster`: cluster mode (`--cluster`) on NATS JetStream — the shared event stream, the
//!   websites and salts buckets, the consumer that fills this node's engine.
//! - `salts`: daily salts on disk. `catalog`: the websites — their file, the snapshot readers
//!   load without locks, and the engine's set, changed together by one service.
//! - `memory`: `MemoryPlan`, how `--memory-limit` is divided. `metrics`: the Prometheus
//!   registry (`prometheus-client`), metric names, labels and the scrape encoding.
//!   `rate_limit`: per-IP token buckets in fixed memory.
//! - `geoip`: optional country lookup. `clock`: now and RFC 3339. `test_clock` (feature
//!   `test-clock`, tests only): a "now" tests set over HTTP.
//! - `atomic_file`: crash-safe small-file replacement. `error`: `ApiError`, `ServerError`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub mod admin_access;
pub mod atomic_file;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod checkpoints;
pub mod client_ip;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod error;
pub mod event_log;
pub mod geoip;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod rate_limit;
pub mod routes;
pub mod salts;
pub mod state;
#[cfg(feature = "test-clock")]
pub mod test_clock;
pub mod url_normaliser;
pub mod user_agent;
pub mod wire_errors;

pub use config::Config;
use connections::{ConnectionGuard, ConnectionPool, RequestGuard};
pub use error::{ApiError, ServerError};
use event_log::LogFailure;
pub use state::AppState;
use wire_errors::ParseErrorsAsJson;

/// Largest request head (request line plus headers) accepted. Browsers send a few KiB; more
/// is abuse. Hyper refuses heads that do not fit its read buffer (twice this) while parsing;
/// `head_too_large` catches heads that arrived in one read and slipped under that check.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers in one request; hyper answers 431 beyond it.
const MAX_HEADERS: usize = 100;
/// How long in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the pool looks for idle connections to close under pressure.
const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// How often idle state is evicted and salts are rotated or destroyed without traffic.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Refuses configurations that would expose the admin API without a token.
pub fn check_exposure(config: &Config) -> Result<(), ServerError> {
    let has_token = config.admin_token()?.is_some();
    #[cfg(feature = "test-clock")]
    if config.test_clock.is_some() && !config.listen.ip().is_loopback() {
        return Err(ServerError::TestClockExposed {
            addr: config.listen,
        });
    }
    if !has_token && !config.listen.ip().is_loopback() {
        return Err(ServerError::TokenRequired {
            addr: config.listen,
        });
    }
    Ok(())
}

/// Serves `listener` with `state` until `shutdown` completes or the event log fails: then
/// stops accepting, drains in-flight requests (up to `DRAIN_TIMEOUT`), writes and fsyncs every
/// accepted event, and returns — an error if the event log failed.
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let status = Arc::clone(state.log.status());
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = status.fatal() => {}
        }
    };
    serve(Arc::clone(&state), listener, stop).await?;
    let log_state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || log_state.log.shutdown())
        .await
        .map_err(|_| ServerError::Log(Arc::new(LogFailure::Panicked)))?;
    match state.log.status().fatal_error() {
        Some(error) => Err(ServerError::Log(error)),
        None => Ok(()),
    }
}

async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let limits = state.http;
    let app = routes::router(Arc::clone(&state));
    let pool = Arc::clone(&state.connections);
    let (stop, stopped) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(2 * MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);

    let maintenance = tokio::spawn(maintain(Arc::clone(&state)));
    let checkpoints = state
        .checkpoints
        .interval
        .map(|interval| tokio::spawn(checkpoints::run(Arc::clone(&state), interval)));
    cluster::Cluster::spawn_tasks(&state);
    let reaper = tokio::spawn(reap(Arc::clone(&pool)));
    let live = tokio::spawn(routes::stream::publish_live(Arc::clone(&state)));
    tokio::pin!(shutdown);
    loop {
        // Accept first, whatever the pool holds: the pool decides, knowing the new client,
        // whether an idle connection makes room for it. Connections left in the kernel's
        // backlog would wait unseen behind idle ones.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A trusted proxy carries many clients: the per-address cap would starve them all.
        let address = peer.ip().to_canonical();
        let guard = tokio::select! {
            guard = pool.admit_or_wait(address, !state.proxies.trusts(address)) => guard,
            () = &mut shutdown => break,
        };
        let Some(guard) = guard else {
            // Its address is at the cap with every connection busy: closed unanswered.
            tracing::debug!("connection refused: its address is at its connection cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let guard = Arc::new(guard);
        let service = request_service(&state, &app, peer, &guard);
        let connection =
            builder.serve_connection(TokioIo::new(ParseErrorsAsJson::new(stream)), service);
        tokio::spawn(serve_connection(
            connection,
            guard,
            stopped.clone(),
            Arc::clone(&state),
        ));
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    // Connections that have not sent a complete request go at once; the rest finish theirs.
    // Live streams end now (their responses never would): shutdown does not wait on them.
    state.live.close();
    pool.shut_down();
    let _ = stop.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, pool.drained())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    maintenance.abort();
    reaper.abort();
    live.abort();
    if let Some(task) = checkpoints {
        task.abort();
    }
    Ok(())
}

/// The hyper service of one connection: marks the connection busy from a complete request head
/// until its response has been handed over, refuses oversized heads, serves collect
/// (`routes::collect::serve_direct`) itself and runs the router for everything else, with the
/// peer (`ConnectInfo`) and the client address for the body budget.
fn request_service(
    state: &Arc<AppState>,
    app: &axum::Router,
    peer: SocketAddr,
    guard: &Arc<ConnectionGuard>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<BusyBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<BusyBody>, std::convert::Infallible>> + Send,
> + Clone {
    let (state, app, guard) = (Arc::clone(state), app.clone(), Arc::clone(guard));
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Synchronously, as hyper hands over the head: from here shutdown lets it finish.
        let busy = guard.begin_request();
        let (state, app) = (Arc::clone(&state), app.clone());
        async move {
            let response = if head_too_large(&request) {
                ApiError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("request headers exceed {MAX_HEAD_BYTES} bytes"),
                )
                .into_response()
            } else if routes::collect::is_direct(request.method(), request.uri().path()) {
                routes::collect::serve_direct(&state, peer, request).await
            } else {
                let client = state.proxies.client_ip(peer, request.headers());
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                let request = request.map(axum::body::Body::new);
                match body::CLIENT_ADDRESS
                    .scope(client, app.oneshot(request))
                    .await
                {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            };
            // Handed to hyper as it is: one box per response (the router's body) is enough.
            Ok(response.map(|body| BusyBody { body, _busy: busy }))
        }
    })
}

/// Serves one admitted connection until it ends, the pool evicts it, or shutdown: then it is
/// closed at once if no request is in flight, else after its response (`graceful_shutdown`).
async fn serve_connection<S>(
    connection: http1::Connection<TokioIo<ParseErrorsAsJson<tokio::net::TcpStream>>, S>,
    guard: Arc<ConnectionGuard>,
    mut stopped: watch::Receiver<bool>,
    state: Arc<AppState>,
) where
    S: hyper::service::HttpService<Incoming, ResBody = BusyBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    state.open_connections.fetch_add(1, Ordering::Relaxed);
    tokio::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = guard.evicted() => None,
        _ = stopped.changed() => {
            if guard.is_idle() {
                None
            } else {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => Some(result),
                    () = guard.evicted() => None,
                }
            }
        }
    };
    if let Some(Err(error)) = ended {
        tracing::debug!(%error, "connection ended with an error");
    }
    state.open_connections.fetch_sub(1, Ordering::Relaxed);
}

/// A response body that keeps its connection marked busy until hyper has taken all of it.
struct BusyBody {
    body: axum::body::Body,
    _busy: RequestGuard,
}

impl http_body::Body for BusyBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Closes idle connections early while the pool is under pressure (`ConnectionPool::reap`).
async fn reap(pool: Arc<ConnectionPool>) {
    let mut ticker = tokio::time::interval(REAP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let closed = pool.reap();
        if closed > 0 {
            tracing::debug!(closed, "closed idle connections: the pool is nearly full");
        }
    }
}

/// Whether the request line and headers together exceed `MAX_HEAD_BYTES`.
fn head_too_large<B>(request: &hyper::Request<B>) -> bool {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    uri + headers > MAX_HEAD_BYTES
}

async fn maintain(state: Arc<AppState>) {
    let mut ticker = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        ticker.tick().await;
        let now_ms = clock::now_ms();
        state.engine.advance_to(now_ms);
        if let Ok(now) = pulse_engine::Timestamp::from_unix_ms(now_ms) {
            if let Err(error) = state.salts.maintain(now) {
                tracing::error!(%error, "salt maintenance failed");
            }
            if let Err(error) = state.salts.prefetch(now) {
                // The rotation at midnight fetches it then.
                tracing::warn!(%error, "the next day's salt could not be fetched ahead");
            }
        }
    }
}
