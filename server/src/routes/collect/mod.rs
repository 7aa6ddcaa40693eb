//! `POST /api/collect`: pageviews and custom events from browsers — untrusted input.
//!
//! The handler runs named steps in order: `admit` (content type and encoding, rate limit), read,
//! `encoding::gunzip` when it is gzip, and `schema::parse_batch` the body (after one byte-order
//! mark), `resolve_websites`, `drop_opted_out` (privacy signals),
//! `log_entries` (what the connection adds: visitor identity, User-Agent class, country, the
//! clock) and `submit` (the log queue, then the engine). A batch is all-or-nothing: every event
//! is validated and its website resolved before any is recorded.
//!
//! The wire format lives in `schema`, the field rules every ingest format shares in `fields`,
//! content codings and the byte-order mark in `encoding`, CORS in `cors`, header reading in
//! `headers`; URL rules are `crate::url_normaliser`'s.
//!
//! The other ingest formats (`routes::plausible`, `routes::umami`) run the same steps through
//! `ingest` (so a gzip body, a 415 for another coding and a byte-order mark are the same on
//! every route): they bring only their parser and how they find the website. Besides events,
//! `Admitted::touch` records a visitor seen without an event (Plausible's engagement ping)
//! under the same rules: privacy signals, identity, bots, the log before the engine.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pulse_engine::{CountryCode, EngineError, Event, Identity, Timestamp, Touch};
use pulse_snapshot::LogEntry;

use crate::body::read_body_for;
use crate::catalog::WebsiteEntry;
use crate::clock;
use crate::error::ApiError;
use crate::event_log::SubmitError;
use crate::metrics::{NotRecorded, Route};
use crate::routes::path;
use crate::state::AppState;
use crate::url_normaliser::referrer_domain;
use crate::user_agent::UserAgentClass;

mod cors;
mod encoding;
pub mod fields;
mod headers;
mod schema;

pub use cors::{allow_ingest_origin, preflight, ALLOWED_HEADERS};
pub use encoding::{body_encoding, gunzip, strip_utf8_bom, BodyEncoding};
pub use fields::{
    MAX_EVENT_DATA_BYTES, MAX_EVENT_DATA_DEPTH, MAX_EVENT_NAME_CHARS, MAX_SHORT_FIELD_CHARS,
    MAX_URL_BYTES,
};
pub use headers::is_accepted_content_type;
pub use schema::{parse_batch, CollectEvent, MAX_BATCH};

/// A validated event and the website it was sent for.
#[derive(Debug)]
pub struct WebsiteEvent<'a> {
    pub website: Arc<WebsiteEntry>,
    pub event: CollectEvent<'a>,
}

/// An admitted request whose body has been read: what every ingest format's handler turns into
/// `WebsiteEvent`s and hands back to `record`.
#[derive(Debug)]
pub struct Admitted<'r> {
    pub state: &'r AppState,
    pub ip: IpAddr,
    pub headers: &'r HeaderMap,
    /// The body as its parser reads it: inflated when it was sent gzip. A byte-order mark is
    /// still there; each parser skips it with `strip_utf8_bom`.
    pub body: Bytes,
}

/// The steps every ingest route runs around its own parser: `admit`, read the body (its size
/// limit) and inflate it when it is gzip (the same limit), then `handle`, which parses,
/// resolves websites and calls `Admitted::record`. A refusal is counted in the rejection
/// metrics under its code; a 415 for a coding says which codings would do.
pub async fn ingest<B, F>(
    state: &AppState,
    peer: SocketAddr,
    request: axum::http::Request<B>,
    handle: F,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    F: AsyncFnOnce(Admitted<'_>) -> Result<Response, ApiError>,
{
    // The request itself rather than a `HeaderMap` extractor, which would clone every header.
    let (parts, body) = request.into_parts();
    let outcome = async {
        let (ip, encoding) = admit(state, peer, &parts.headers)?;
        // `ip` is the address the accept loop puts in `CLIENT_ADDRESS`: the same rule, once.
        let body =
            read_body_for(Some(ip), body, &parts.headers, &state.http, &state.bodies).await?;
        let body = match encoding {
            BodyEncoding::Identity => body,
            // Inflated synchronously, so at most one body per worker thread is being inflated,
            // and the compressed copy is let go before the request waits on the log.
            BodyEncoding::Gzip => {
                let inflated = gunzip(&body, state.http.max_body_bytes)?;
                drop(body);
                Bytes::from(inflated)
            }
        };
        handle(Admitted {
            state,
            ip,
            headers: &parts.headers,
            body,
        })
        .await
    }
    .await;
    match outcome {
        Ok(response) => Ok(response),
        Err(error) => {
            state
                .metrics
                .record_rejection(error.code, error.status.as_u16());
            if error.code == encoding::UNSUPPORTED_ENCODING {
                // RFC 9110 §15.5.16: a 415 for a coding names the codings that would do.
                let mut response = error.into_response();
                response.headers_mut().insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static(encoding::ACCEPTED_ENCODINGS),
                );
                return Ok(response);
            }
            Err(error)
        }
    }
}

impl Admitted<'_> {
    /// Records `events` under the rules every route shares: privacy signals, visitor identity
    /// (a site-chosen id when the website accepts them), User-Agent class, country, the log and
    /// the engine. Returns how many were recorded (opted-out visitors' are not).
    pub async fn record(&self, events: Vec<WebsiteEvent<'_>>) -> Result<usize, ApiError> {
        let events = drop_opted_out(self.state, self.headers, events, |e| &e.website);
        if events.is_empty() {
            return Ok(0);
        }
        let entries = log_entries(self.state, self.ip, self.headers, events)?;
        let recorded = entries.len();
        submit(self.state, entries).await?;
        Ok(recorded)
    }

    /// Counts the visitor as seen now on each of `websites` without recording an event
    /// (`Engine::touch`: no recent event, no event count), under the same rules as `record`:
    /// privacy signals, visitor identity, User-Agent class (a bot's touch counts as a bot), the
    /// log before the engine. Returns on how many websites it was counted.
    pub async fn touch(&self, websites: Vec<Arc<WebsiteEntry>>) -> Result<usize, ApiError> {
        let websites = drop_opted_out(self.state, self.headers, websites, |w| w);
        if websites.is_empty() {
            return Ok(0);
        }
        let mut visit = Visit::new(self.state, self.ip, self.headers)?;
        let entries = websites
            .iter()
            .map(|website| {
                let identity = visit.identity(website, None)?;
                Ok(LogEntry::Touch {
                    touch: Touch {
                        website: website.id.clone(),
                        ts: visit.now,
                        visitor: identity.visitor,
                        is_bot: visit.class.is_bot,
                    },
                    carried_from: identity.carried_from,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let touched = entries.len();
        submit(self.state, entries).await?;
        Ok(touched)
    }
}

/// `POST /api/collect` and its alias `POST /e` (where Sparklytics' `s.js` sends), as the router
/// serves them. `serve_direct` serves the same requests without the router.
pub async fn collect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    collect_events(&state, peer, request).await
}

async fn collect_events<B>(
    state: &AppState,
    peer: SocketAddr,
    request: axum::http::Request<B>,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    ingest(state, peer, request, async |admitted| {
        let events = resolve_websites(admitted.state, parse_batch(&admitted.body)?)?;
        admitted.record(events).await?;
        Ok(accepted())
    })
    .await
}

/// Whether a request is `POST /api/collect` or `POST /e`: the requests `serve_direct` answers
/// in front of the router.
pub fn is_direct(method: &Method, path: &str) -> bool {
    method == Method::POST && (path == path::COLLECT || path == path::COLLECT_ALIAS)
}

/// Collect without the router, for `is_direct` requests: single-event ingest is the server's
/// hottest path, and the router's layers (routing, two `from_fn` middlewares, the JSON-error
/// rewrite, each boxing the request's future) cost a sixth of its CPU (BENCHMARKS.md, "HTTP,
/// end to end"). Does what those layers do for this route, and no more: the CORS headers of
/// `allow_ingest_origin`, the request metrics of `routes::track_request` under the `collect`
/// route; every answer is already JSON (`ApiError`), which is all `json_errors` would check.
pub async fn serve_direct<B>(
    state: &AppState,
    peer: SocketAddr,
    request: axum::http::Request<B>,
) -> Response
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let started = Instant::now();
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = match collect_events(state, peer, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    cors::add_ingest_cors(origin, response.headers_mut());
    state.metrics.record_request(
        Route::Collect,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Refuses a request before its body is read: a content type or coding the ingest routes do not
/// read, or a client address over its rate. Returns the client address and the body's coding.
fn admit(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(IpAddr, BodyEncoding), ApiError> {
    if !is_accepted_content_type(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send events as application/json or text/plain",
        ));
    }
    let encoding = body_encoding(headers)?;
    let ip = state.proxies.client_ip(peer, headers);
    state
        .rate_limiter
        .check(ip, clock::now_ms())
        .map_err(|wait_secs| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address; slow down",
            )
            .retry_after(wait_secs)
        })?;
    Ok((ip, encoding))
}

/// Pairs every event with its website, or refuses the whole batch if any website is unknown.
fn resolve_websites<'a>(
    state: &AppState,
    events: Vec<CollectEvent<'a>>,
) -> Result<Vec<WebsiteEvent<'a>>, ApiError> {
    events
        .into_iter()
        .map(|event| {
            let website = state
                .websites
                .get(event.website_id.as_str())
                .ok_or_else(ApiError::unknown_website)?;
            Ok(WebsiteEvent { website, event })
        })
        .collect()
}

/// Drops what was sent for websites that respect DNT (events, or touches: `website` says which
/// website an item is for) when the visitor opted out, and counts them.
fn drop_opted_out<T>(
    state: &AppState,
    headers: &HeaderMap,
    mut events: Vec<T>,
    website: impl Fn(&T) -> &WebsiteEntry,
) -> Vec<T> {
    if !headers::opted_out(headers) {
        return events;
    }
    let before = events.len();
    events.retain(|e| !website(e).website.respect_dnt);
    let skipped = before - events.len();
    if skipped > 0 {
        state
            .metrics
            .record_not_recorded(NotRecorded::Dnt, skipped as u64);
    }
    events
}

/// What the connection adds to everything a request records: the time, the User-Agent's class,
/// the country, and the visitor's daily identity per website.
struct Visit<'r> {
    state: &'r AppState,
    ip: IpAddr,
    now: Timestamp,
    user_agent: Cow<'r, str>,
    class: UserAgentClass,
    country: Option<CountryCode>,
    /// The (IP, User-Agent) identity, computed only if something has no accepted client id.
    network_identity: Option<Identity>,
}

impl<'r> Visit<'r> {
    fn new(state: &'r AppState, ip: IpAddr, headers: &'r HeaderMap) -> Result<Self, ApiError> {
        let now = Timestamp::from_unix_ms(clock::now_ms())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let user_agent = headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .unwrap_or_default();
        let class = state.user_agents.classify(&user_agent);
        let country = state.geoip.as_ref().and_then(|g| g.country(ip));
        Ok(Self {
            state,
            ip,
            now,
            user_agent,
            class,
            country,
            network_identity: None,
        })
    }

    /// The visitor's identity on `website`: from the site-chosen `client_id` when the website
    /// accepts them, else from (IP, User-Agent).
    fn identity(
        &mut self,
        website: &WebsiteEntry,
        client_id: Option<&str>,
    ) -> Result<Identity, ApiError> {
        let no_salt = |e: EngineError| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "salt_unavailable",
                format!("no visitor salt is available: {e}"),
            )
            // The day's salt may be a moment away (another request is fetching it) or its
            // store may be down; either way a retry soon is right.
            .retry_after(1)
        };
        match client_id {
            Some(client_id) if website.website.accept_client_ids => self
                .state
                .salts
                .identify_client(self.now, website.id.as_str(), client_id)
                .map_err(no_salt),
            // A website that refuses client ids counts the visitor by (IP, User-Agent).
            _ => match self.network_identity {
                Some(identity) => Ok(identity),
                None => {
                    let identity = self
                        .state
                        .salts
                        .identify(self.now, self.ip, &self.user_agent)
                        .map_err(no_salt)?;
                    Ok(*self.network_identity.insert(identity))
                }
            },
        }
    }
}

/// The log entries for `events`: what the connection adds to each (`Visit`) and the referrer
/// reduced to a host.
fn log_entries(
    state: &AppState,
    ip: IpAddr,
    headers: &HeaderMap,
    events: Vec<WebsiteEvent<'_>>,
) -> Result<Vec<LogEntry>, ApiError> {
    let mut visit = Visit::new(state, ip, headers)?;
    events
        .into_iter()
        .map(|WebsiteEvent { website, event }| {
            let identity = visit.identity(&website, event.visitor_id.as_deref())?;
            let referrer_domain = referrer_domain(event.referrer.as_deref(), &website.site_domain);
            Ok(LogEntry::Event {
                event: Arc::new(Event {
                    website: website.id.clone(),
                    ts: visit.now,
                    visitor: identity.visitor,
                    kind: event.kind,
                    target: event.target,
                    referrer_domain: referrer_domain.map(Arc::from),
                    is_bot: visit.class.is_bot,
                    browser: visit.class.browser,
                    device: visit.class.device,
                    country: visit.country,
                }),
                carried_from: identity.carried_from,
            })
        })
        .collect()
}

/// Queues `entries` (events and touches) for the log and counts them in the engine, then waits
/// for the durability the server promises. A 202 must mean the entry will be in the log, so an
/// entry the queue refuses is not counted either. In cluster mode the log is the cluster's
/// stream: the entries are published and acknowledged by JetStream, and this node counts them
/// when its consumer reads them back, as every other node does.
pub(crate) async fn submit(state: &AppState, entries: Vec<LogEntry>) -> Result<(), ApiError> {
    if let Some(cluster) = &state.cluster {
        cluster.publish(&entries).await.map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the events could not be stored in the cluster: {error}"),
            )
            .retry_after(2)
        })?;
        state.metrics.record_accepted(entries.len() as u64);
        return Ok(());
    }
    let engine = &state.engine;
    let accepted_events = entries
        .iter()
        .filter(|e| matches!(e, LogEntry::Event { .. }))
        .count();
    let durable = state
        .log
        .submit(entries, |queued| {
            for entry in queued {
                let counted = match entry {
                    LogEntry::Event {
                        event,
                        carried_from,
                    } => engine.ingest(event, carried_from).map(drop),
                    LogEntry::Touch {
                        touch,
                        carried_from,
                    } => engine.touch(&touch, carried_from).map(drop),
                };
                if let Err(error) = counted {
                    // Only possible when the website was deleted between validation and now.
                    tracing::debug!(%error, "entry not counted for a website deleted meanwhile");
                }
            }
        })
        .map_err(|e| match e {
            SubmitError::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the server is busy writing events; retry shortly",
            )
            .retry_after(1),
            SubmitError::Closed => log_unavailable(),
            SubmitError::Stalled => log_stalled(state),
        })?;
    if let Some(durable) = durable {
        durable.await.map_err(|_| log_unavailable())?;
    }
    state.metrics.record_accepted(accepted_events as u64);
    Ok(())
}

fn log_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "log_unavailable",
        "the event log is not accepting writes",
    )
}

/// The disk refuses writes or is nearly full: nothing new is acknowledged until it recovers.
fn log_stalled(state: &AppState) -> ApiError {
    let why = state
        .log
        .status()
        .stall()
        .map_or_else(|| "the event log is stalled".to_owned(), |s| s.to_string());
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_stalled", why).retry_after(5)
}

/// `202 {"ok":true}`: the answer of collect and of Plausible's `/api/event`.
pub fn accepted() -> Response {
    let mut response = Response::new(axum::body::Body::from(r#"{"ok":true}"#));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
