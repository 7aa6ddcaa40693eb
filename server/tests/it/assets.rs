//! Integration tests of the embedded static files (issue 5), through the real `pulse` binary:
//! the `/s.js` tracker and its content-hashed `/s.<hash>.js` twin, the dashboard at `/` and its
//! hashed `/assets/` files — content types, cache headers, strong content-hash ETags and 304s,
//! no token needed, no cookies, and the tracker's gzipped size (≤ 2 KiB, measured with the
//! system `gzip`). The browser behaviour is tested by `server/tests/browser/`.

use std::io::Write;
use std::process::{Command, Stdio};

use pulse_testkit::fixtures::assert_error;
use pulse_testkit::http::Response;
use pulse_testkit::server::{send, Opts, Server};

use crate::start;

const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const CACHE_DAY: &str = "public, max-age=86400";
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
const CACHE_REVALIDATE: &str = "no-cache";
/// The tracker's budget, gzipped.
const TRACKER_GZIP_BUDGET: usize = 2048;

/// FNV-1a 64 as 16 hex digits: what the server's ETags are made of.
fn fnv1a(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Asserts a 200 with `content_type`, `cache_control`, a strong ETag equal to the hash of the
/// body, `nosniff` and no cookie; returns the ETag.
#[track_caller]
fn assert_asset(resp: &Response, path: &str, content_type: &str, cache_control: &str) -> String {
    assert_eq!(resp.status, 200, "GET {path}: {resp:?}");
    assert!(!resp.body.is_empty(), "GET {path}: empty body");
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some(content_type),
        "GET {path}: content type"
    );
    assert_eq!(
        resp.header("cache-control").as_deref(),
        Some(cache_control),
        "GET {path}: cache control"
    );
    assert_eq!(
        resp.header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "GET {path}: nosniff"
    );
    assert!(
        resp.header("set-cookie").is_none(),
        "GET {path}: must not set cookies"
    );
    let etag = resp
        .header("etag")
        .unwrap_or_else(|| panic!("GET {path}: no ETag"));
    assert!(
        !etag.starts_with("W/"),
        "GET {path}: the ETag must be strong, got {etag}"
    );
    assert_eq!(
        etag,
        format!("\"{}\"", fnv1a(&resp.body)),
        "GET {path}: the ETag must be the content hash of the body"
    );
    etag
}

async fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = server.client().get(path);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    send(request).await
}

/// The `/assets/...` paths the dashboard HTML links to.
fn linked_assets(html: &str) -> Vec<String> {
    html.split("\"/assets/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|name| format!("/assets/{name}"))
        .collect()
}

/// The number of bytes `gzip -c` (default level) makes of `bytes`.
fn gzipped_len(bytes: &[u8]) -> usize {
    let mut child = Command::new("gzip")
        .args(["-c", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("this test measures the tracker with the system `gzip`, which failed to start ({e}); install gzip")
        });
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "gzip failed: {:?}", output.status);
    output.stdout.len()
}

#[tokio::test]
async fn tracker_is_javascript_cached_for_a_day_and_its_hashed_twin_for_a_year() {
    let server = start(Opts::default());
    let tracker = server.get("/s.js").await;
    let etag = assert_asset(&tracker, "/s.js", JAVASCRIPT, CACHE_DAY);
    assert_eq!(
        tracker.header("cross-origin-resource-policy").as_deref(),
        Some("cross-origin"),
        "any page may load the tracker"
    );

    let hash = etag.trim_matches('"');
    let versioned_path = format!("/s.{hash}.js");
    let versioned = server.get(&versioned_path).await;
    assert_asset(&versioned, &versioned_path, JAVASCRIPT, CACHE_IMMUTABLE);
    assert_eq!(versioned.body, tracker.body, "{versioned_path} differs");

    let stale = server.get("/s.0123456789abcdef.js").await;
    assert_error(
        &stale,
        404,
        "not_found",
        "a tracker hash that is not current",
    );
}

#[tokio::test]
async fn tracker_fits_in_2_kib_gzipped_and_keeps_no_state_in_the_browser() {
    let server = start(Opts::default());
    let tracker = server.get("/s.js").await;
    assert_eq!(tracker.status, 200);
    let size = gzipped_len(&tracker.body);
    println!(
        "tracker: {} bytes, {size} bytes gzipped (budget {TRACKER_GZIP_BUDGET})",
        tracker.body.len()
    );
    assert!(
        size <= TRACKER_GZIP_BUDGET,
        "/s.js is {size} bytes gzipped; the budget is {TRACKER_GZIP_BUDGET}"
    );
    let source = String::from_utf8(tracker.body).unwrap();
    for forbidden in [
        "document.cookie",
        "localStorage",
        "sessionStorage",
        "indexedDB",
    ] {
        assert!(
            !source.contains(forbidden),
            "the tracker must not use {forbidden}"
        );
    }
    assert!(
        source.contains("keepalive") && source.contains("sendBeacon"),
        "the tracker sends with fetch keepalive, or sendBeacon"
    );
}

#[tokio::test]
async fn dashboard_revalidates_and_links_immutable_hashed_css_and_js() {
    let server = start(Opts::default());
    let page = server.get("/").await;
    assert_asset(&page, "/", HTML, CACHE_REVALIDATE);
    let csp = page
        .header("content-security-policy")
        .expect("the dashboard has a Content-Security-Policy");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "the dashboard runs only its own script: {csp}"
    );

    let html = String::from_utf8(page.body).unwrap();
    let assets = linked_assets(&html);
    let css: Vec<&String> = assets.iter().filter(|p| p.ends_with(".css")).collect();
    let js: Vec<&String> = assets.iter().filter(|p| p.ends_with(".js")).collect();
    assert_eq!(css.len(), 1, "one stylesheet linked, got {assets:?}");
    assert_eq!(js.len(), 1, "one script linked, got {assets:?}");
    for (path, content_type) in [(css[0], CSS), (js[0], JAVASCRIPT)] {
        let resp = server.get(path).await;
        let etag = assert_asset(&resp, path, content_type, CACHE_IMMUTABLE);
        assert!(
            path.contains(&format!(".{}.", etag.trim_matches('"'))),
            "{path} must be named after its content hash {etag}"
        );
    }

    let script = String::from_utf8(server.get(js[0]).await.body).unwrap();
    assert!(
        !script.contains("innerHTML") && !script.contains("insertAdjacentHTML"),
        "the dashboard must put API data in the page as text only"
    );
}

#[tokio::test]
async fn a_matching_if_none_match_gets_304_without_a_body() {
    let server = start(Opts::default());
    let html = String::from_utf8(server.get("/").await.body).unwrap();
    let mut paths = vec!["/".to_owned(), "/s.js".to_owned()];
    paths.extend(linked_assets(&html));
    for path in &paths {
        let first = server.get(path).await;
        let etag = first.header("etag").unwrap();
        let cache_control = first.header("cache-control").unwrap();
        let weak = format!("W/{etag}");
        let listed = format!("\"nope\", {etag}");
        for if_none_match in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let resp = get_with(&server, path, &[("if-none-match", if_none_match)]).await;
            assert_eq!(
                resp.status, 304,
                "GET {path} with If-None-Match {if_none_match}: {resp:?}"
            );
            assert!(resp.body.is_empty(), "a 304 has no body");
            assert_eq!(resp.header("etag"), Some(etag.clone()), "{path}: 304 ETag");
            assert_eq!(
                resp.header("cache-control"),
                Some(cache_control.clone()),
                "{path}: 304 Cache-Control"
            );
        }
        let changed = get_with(&server, path, &[("if-none-match", "\"0000000000000000\"")]).await;
        assert_eq!(changed.status, 200, "GET {path} with another ETag");
        assert_eq!(changed.body, first.body);
    }
}

#[tokio::test]
async fn head_answers_the_headers_without_the_body() {
    let server = start(Opts::default());
    for (path, content_type) in [("/", HTML), ("/s.js", JAVASCRIPT)] {
        let resp = send(server.client().request("HEAD", path)).await;
        assert_eq!(resp.status, 200, "HEAD {path}");
        assert!(resp.body.is_empty(), "HEAD {path} has no body");
        assert_eq!(resp.header("content-type").as_deref(), Some(content_type));
        assert!(resp.header("etag").is_some(), "HEAD {path}: ETag");
    }
}

#[tokio::test]
async fn assets_need_no_admin_token_while_the_api_does() {
    let server = start(Opts::default().admin_token("secret-token"));
    let html = String::from_utf8(get_with(&server, "/", &[]).await.body).unwrap();
    let mut paths = vec!["/".to_owned(), "/s.js".to_owned()];
    paths.extend(linked_assets(&html));
    for path in &paths {
        // The client, not `server.get`: no Authorization header.
        let resp = get_with(&server, path, &[]).await;
        assert_eq!(resp.status, 200, "GET {path} without a token: {resp:?}");
    }
    let api = get_with(&server, "/api/websites", &[]).await;
    assert_error(&api, 401, "unauthorized", "the API still needs the token");
}
