//! CORS for the public ingest routes (`/api/collect`, `/e`, `/api/event`, `/api/send`): any
//! site may send events, including with credentials. Trackers send JSON-typed beacons
//! (`navigator.sendBeacon` with an `application/json` Blob), which browsers preflight in
//! credentials mode `include`; such a request is refused when the answer is the wildcard
//! `Access-Control-Allow-Origin: *`, and the tracker never learns it. So every answer echoes the
//! request's `Origin`, allows credentials and varies by `Origin`. Pulse sets no cookies and reads
//! none, so allowing credentials exposes nothing. The preflight allows the headers that describe
//! a body (`Content-Type`, and `Content-Encoding` for a page that gzips with
//! `CompressionStream`) and Umami's `x-umami-cache`.
//!
//! Owns only these headers; the admin routes are same-origin and send none.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The request headers the trackers Pulse accepts send: `content-type` (all of them),
/// `content-encoding` (a page or server that gzips its body) and `x-umami-cache` (Umami's
/// browser tracker echoes the `cache` token of the previous answer).
pub const ALLOWED_HEADERS: &str = "content-type, content-encoding, x-umami-cache";

/// CORS headers on every ingest response, errors included, so a tracker can read them.
pub async fn allow_ingest_origin(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(request).await;
    add_ingest_cors(origin, response.headers_mut());
    response
}

/// Adds the ingest routes' CORS headers for a request that sent `origin` (the middleware's
/// work, also done by collect's path around the router, `routes::collect::serve_direct`).
pub fn add_ingest_cors(origin: Option<HeaderValue>, headers: &mut HeaderMap) {
    match origin {
        Some(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // No `Origin`: not a CORS request (a server-side client); nothing to echo.
        None => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    // The answer depends on `Origin`, so a shared cache must not hand one site's to another.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// `OPTIONS` on an ingest route: the CORS preflight.
pub async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}
