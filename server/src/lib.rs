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
//!   `realtime`, `websites`, `health`, `scrape` — `GET /metrics`, `assets` — the embedded
//!   dashboard and `/s.js` tracker).
//! - `auth`: the admin token check; `admin_access`: without a token, loopback `Host` and same
//!   origin only, and JSON bodies always. `body`: bounded, timed body reading.
//! - `wire_errors`: JSON bodies for the errors hyper answers before the router runs.
//! - `client_ip`: trusted proxies and `X-Forwarded-For`. `url_normaliser`: page paths and referrer
//!   hosts.
//! - `user_agent`: bot, browser and device classification in one pass.
//! - `event_log`: `EventLog`, the write queue, replay and the writer thread (`Durability`).
//! - `salts`: daily salts on disk. `websites`: the website registry and its file.
//! - `memory`: `MemoryPlan`, how `--memory-limit` is divided. `metrics`: the Prometheus
//!   registry (`prometheus-client`), metric names, labels and the scrape encoding.
//!   `rate_limit`: per-IP token buckets in fixed memory.
//! - `geoip`: optional country lookup. `clock`: now and RFC 3339.
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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub mod admin_access;
pub mod atomic_file;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod error;
pub mod event_log;
pub mod geoip;
pub mod memory;
pub mod metrics;
pub mod rate_limit;
pub mod routes;
pub mod salts;
pub mod state;
pub mod url_normaliser;
pub mod user_agent;
pub mod websites;
pub mod wire_errors;

pub use config::Config;
pub use error::{ApiError, ServerError};
use event_log::LogFailure;
pub use state::AppState;
use wire_errors::ParseErrorsAsJson;

/// The old name of `url_normaliser`, kept until `websites` imports the new one (another change
/// is rewriting that module).
pub(crate) use url_normaliser as referrer;

/// Largest request head (request line plus headers) accepted. Browsers send a few KiB; more
/// is abuse. Hyper refuses heads that do not fit its read buffer (twice this) while parsing;
/// `head_too_large` catches heads that arrived in one read and slipped under that check.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers in one request; hyper answers 431 beyond it.
const MAX_HEADERS: usize = 100;
/// How long in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle state is evicted and salts are rotated or destroyed without traffic.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Refuses configurations that would expose the admin API without a token.
pub fn check_exposure(config: &Config) -> Result<(), ServerError> {
    let has_token = config.admin_token()?.is_some();
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
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(2 * MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);

    let maintenance = tokio::spawn(maintain(Arc::clone(&state)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        let _ = stream.set_nodelay(true);
        state.open_connections.fetch_add(1, Ordering::Relaxed);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let app = app.clone();
            async move {
                if head_too_large(&request) {
                    return Ok(ApiError::new(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "headers_too_large",
                        format!("request headers exceed {MAX_HEAD_BYTES} bytes"),
                    )
                    .into_response());
                }
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                app.oneshot(request.map(axum::body::Body::new)).await
            }
        });
        let connection = graceful
            .watch(builder.serve_connection(TokioIo::new(ParseErrorsAsJson::new(stream)), service));
        let conn_state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            conn_state.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    maintenance.abort();
    Ok(())
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
        }
    }
}
