//! The static files embedded in the binary (`server/src/assets/`): the `/s.js` tracker and the
//! dashboard at `/` with its stylesheet and script. No token needed, no CDN, works offline.
//!
//! Every file carries a strong `ETag` — its FNV-1a 64 content hash, computed once at start — and
//! `If-None-Match` gets a 304. Caching: `/s.js` a day (the URL in everyone's snippet, so an
//! upgrade reaches browsers within a day); `/s.<hash>.js` and `/assets/<name>.<hash>.<ext>` a year
//! and immutable (the hash changes with the bytes); the dashboard HTML `no-cache`, so it always
//! revalidates and names the current hashed files.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const TRACKER_JS: &str = include_str!("../assets/s.js");
const DASHBOARD_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/app.js");
const DASHBOARD_CSS: &str = include_str!("../assets/app.css");

const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// `/s.js`: stable URL, cached for a day.
pub const CACHE_DAY: &str = "public, max-age=86400";
/// Content-hashed URLs: cached for a year, never revalidated.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The dashboard HTML: always revalidated (cheap with the ETag).
pub const CACHE_REVALIDATE: &str = "no-cache";

/// The dashboard may load only its own files and talk only to its own origin.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// FNV-1a, 64 bits, as 16 lowercase hex digits: a content hash for cache busting and ETags
/// (not a security boundary).
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// One servable file.
#[derive(Debug)]
struct Asset {
    path: String,
    body: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
    etag: HeaderValue,
    extra: &'static [(HeaderName, &'static str)],
}

impl Asset {
    fn new(
        path: String,
        body: &'static [u8],
        content_type: &'static str,
        cache_control: &'static str,
        extra: &'static [(HeaderName, &'static str)],
    ) -> Self {
        let etag = HeaderValue::from_str(&format!("\"{}\"", content_hash(body)))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        Self {
            path,
            body,
            content_type,
            cache_control,
            etag,
            extra,
        }
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| etag_matches(v, &self.etag));
        let mut response = if fresh {
            // RFC 9110: a 304 may carry Content-Length only as the 200's; hyper would say 0.
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
            response
        } else {
            let mut response = self.body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            response
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in self.extra {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        response
    }
}

/// `If-None-Match` against our strong tag, with the weak comparison RFC 9110 asks for: `*`, or
/// any listed tag equal once a `W/` prefix is dropped.
fn etag_matches(if_none_match: &str, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// Headers of the tracker: any page may load it, even one that isolates itself (COEP).
static TRACKER_HEADERS: [(HeaderName, &str); 1] = [(
    header::HeaderName::from_static("cross-origin-resource-policy"),
    "cross-origin",
)];

/// Headers of the dashboard page.
static DASHBOARD_HEADERS: [(HeaderName, &str); 3] = [
    (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// Every embedded file, built once: hashes computed and the dashboard HTML pointed at the
/// hashed names of its stylesheet and script.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    let tracker_hash = content_hash(TRACKER_JS.as_bytes());
    let css_path = format!("/assets/app.{}.css", content_hash(DASHBOARD_CSS.as_bytes()));
    let js_path = format!("/assets/app.{}.js", content_hash(DASHBOARD_JS.as_bytes()));
    // Leaked once per process (a few KiB) so every file is a `&'static [u8]`.
    let html: &'static str = Box::leak(
        DASHBOARD_HTML
            .replace("{{app.css}}", &css_path)
            .replace("{{app.js}}", &js_path)
            .into_boxed_str(),
    );
    vec![
        Asset::new(
            "/".to_owned(),
            html.as_bytes(),
            HTML,
            CACHE_REVALIDATE,
            &DASHBOARD_HEADERS,
        ),
        Asset::new(
            css_path,
            DASHBOARD_CSS.as_bytes(),
            CSS,
            CACHE_IMMUTABLE,
            &[],
        ),
        Asset::new(
            js_path,
            DASHBOARD_JS.as_bytes(),
            JAVASCRIPT,
            CACHE_IMMUTABLE,
            &[],
        ),
        Asset::new(
            "/s.js".to_owned(),
            TRACKER_JS.as_bytes(),
            JAVASCRIPT,
            CACHE_DAY,
            &TRACKER_HEADERS,
        ),
        Asset::new(
            format!("/s.{tracker_hash}.js"),
            TRACKER_JS.as_bytes(),
            JAVASCRIPT,
            CACHE_IMMUTABLE,
            &TRACKER_HEADERS,
        ),
    ]
});

/// A router of `GET` (and `HEAD`) routes, one per embedded file, to merge into the public
/// (token-free) routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            &asset.path,
            get(move |headers: HeaderMap| async move { asset.respond(&headers) }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(content_hash(b""), "cbf29ce484222325");
        assert_eq!(content_hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(content_hash(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(etag_matches("\"abc\"", &etag));
        assert!(etag_matches("W/\"abc\"", &etag));
        assert!(etag_matches("\"x\", \"abc\"", &etag));
        assert!(etag_matches("*", &etag));
        assert!(!etag_matches("\"abcd\"", &etag));
        assert!(!etag_matches("abc", &etag));
        assert!(!etag_matches("", &etag));
    }

    #[test]
    fn the_dashboard_names_its_hashed_files_and_every_path_is_unique() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        assert!(!html.contains("{{"), "a placeholder was left in the HTML");
        for asset in ASSETS.iter().filter(|a| a.path.starts_with("/assets/")) {
            assert!(html.contains(&asset.path), "{} not linked", asset.path);
        }
        let mut paths: Vec<&str> = ASSETS.iter().map(|a| a.path.as_str()).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
    }
}
