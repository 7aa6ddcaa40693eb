//! What collect reads from request headers besides the client address: whether the body's
//! content type is one it parses, and the privacy signals (`DNT`, `Sec-GPC`) a website may
//! choose to respect.
//!
//! Pure functions of a `HeaderMap`; the User-Agent is read by the handler, the forwarding
//! headers by `crate::client_ip`.

use axum::http::{header, HeaderMap, HeaderName};

const DNT: HeaderName = HeaderName::from_static("dnt");
const SEC_GPC: HeaderName = HeaderName::from_static("sec-gpc");

/// Whether the request's `Content-Type` is one collect reads (JSON, or text/plain from sendBeacon).
pub fn is_accepted_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // A missing type is read as JSON; only a type that says otherwise is refused.
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json") || essence.eq_ignore_ascii_case("text/plain")
}

/// Whether the visitor asked not to be tracked (`DNT: 1` or `Sec-GPC: 1`).
pub fn opted_out(headers: &HeaderMap) -> bool {
    header_is_one(headers, &DNT) || header_is_one(headers, &SEC_GPC)
}

fn header_is_one(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}
