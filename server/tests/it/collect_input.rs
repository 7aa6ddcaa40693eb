//! What collect makes of a body's bytes before the JSON (issue 12, item 9): its content coding
//! (gzip decoded within the body limit, every other coding 415), a leading UTF-8 byte-order
//! mark, and how the `event_data` limit is measured. Each test starts the real binary.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use pulse_testkit::fixtures::{assert_error, error_check, pageview, Failures, CHROME_DESKTOP};
use pulse_testkit::http::Response;
use pulse_testkit::server::{send, Opts, Server};
use serde_json::{json, Value};

use crate::start;

/// The body limit of `POST /api/collect`, in bytes.
const BODY_LIMIT: usize = 102_400;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// `POST /api/collect` with `body` as it is and `Content-Encoding: encoding`.
async fn collect_encoded(server: &Server, encoding: &str, body: Vec<u8>) -> Response {
    send(
        server
            .client()
            .post("/api/collect")
            .header("user-agent", CHROME_DESKTOP)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body),
    )
    .await
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

#[tokio::test]
async fn gzip_body_is_decoded_and_counted() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let one = gzip(&json_bytes(&pageview("s", "/gzip")));
    let resp = collect_encoded(&server, "gzip", one).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let batch = json!([pageview("s", "/a"), pageview("s", "/b")]);
    let resp = collect_encoded(&server, "x-gzip", gzip(&json_bytes(&batch))).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(server.counts("s").await, (1, 3));
}

#[tokio::test]
async fn plain_body_labelled_gzip_is_400_invalid_body() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let plain = json_bytes(&pageview("s", "/plain"));
    let resp = collect_encoded(&server, "gzip", plain).await;
    assert_error(&resp, 400, "invalid_body", "plain JSON labelled gzip");
    assert_eq!(server.counts("s").await, (0, 0));
}

/// The inflated size counts against the 100 KiB limit, and is checked while inflating: a bomb
/// of 10 MB of zeros (10 KB on the wire) is refused without the server ever holding it.
#[tokio::test]
async fn gzip_bomb_is_413_without_inflating_it_into_memory() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    // Up to the limit inflated is still an event: a pageview padded with spaces.
    let mut at_limit = json_bytes(&pageview("s", "/limit"));
    at_limit.resize(BODY_LIMIT, b' ');
    let resp = collect_encoded(&server, "gzip", gzip(&at_limit)).await;
    assert_eq!(
        resp.status, 202,
        "a body inflating to exactly the limit: {resp:?}"
    );
    let mut over = at_limit.clone();
    over.push(b' ');
    let resp = collect_encoded(&server, "gzip", gzip(&over)).await;
    assert_error(
        &resp,
        413,
        "payload_too_large",
        "inflating to one byte over",
    );

    let bomb = gzip(&vec![0u8; 10_000_000]);
    assert!(bomb.len() < BODY_LIMIT, "the bomb is {} bytes", bomb.len());
    let high_water_kib = || pulse_testkit::procfs::status_kib(server.pid(), "VmHWM");
    let before = high_water_kib();
    for round in 0..8 {
        let resp = collect_encoded(&server, "gzip", bomb.clone()).await;
        assert_error(&resp, 413, "payload_too_large", &format!("bomb {round}"));
    }
    // The peak resident size: a server that inflated one bomb before checking would have held
    // 10 MB at once. Only where `/proc` tells.
    if let (Some(before), Some(after)) = (before, high_water_kib()) {
        assert!(
            after.saturating_sub(before) < 4 * 1024,
            "peak RSS grew from {before} KiB to {after} KiB over 8 gzip bombs"
        );
    }
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.counts("s").await, (1, 1));
}

#[tokio::test]
async fn codings_other_than_gzip_and_identity_are_415_unsupported_encoding() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let body = json_bytes(&pageview("s", "/coded"));
    let mut failures = Failures::default();
    for encoding in [
        "br",
        "deflate",
        "compress",
        "zstd",
        "nonsense",
        "gzip, gzip",
    ] {
        let resp = collect_encoded(&server, encoding, body.clone()).await;
        failures.check(encoding, error_check(&resp, 415, "unsupported_encoding"));
        if resp.status == 415 && resp.header("accept-encoding").as_deref() != Some("gzip, identity")
        {
            failures.push(format!("{encoding}: 415 without Accept-Encoding: {resp:?}"));
        }
    }
    for encoding in ["identity", "IDENTITY", ""] {
        let resp = collect_encoded(&server, encoding, body.clone()).await;
        if resp.status != 202 {
            failures.push(format!("{encoding:?}: expected 202, got {resp:?}"));
        }
    }
    let counts = server.counts("s").await;
    if counts != (1, 3) {
        failures.push(format!("counts {counts:?}, want (1, 3)"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn preflight_allows_the_content_encoding_header() {
    let server = start(Opts::default());
    let preflight = send(
        server
            .client()
            .request("OPTIONS", "/api/collect")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,content-encoding",
            ),
    )
    .await;
    assert_eq!(preflight.status, 204, "{preflight:?}");
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("content-encoding"),
        "allow-headers: {allowed:?}"
    );
}

#[tokio::test]
async fn body_starting_with_a_utf8_bom_is_accepted() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend(json_bytes(&pageview("s", "/bom")));
    let resp = server
        .collect_raw(Some("text/plain;charset=UTF-8"), body.clone())
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let resp = collect_encoded(&server, "gzip", gzip(&body)).await;
    assert_eq!(resp.status, 202, "gzip of a body with a BOM: {resp:?}");
    assert_eq!(server.counts("s").await, (1, 2));
}

/// An event whose `event_data` has `members` members of 39 bytes compact, pretty-printed with
/// `serde_json` (two spaces of indent, a newline per member), with the data's compact and
/// pretty sizes.
fn event_with_pretty_data(members: usize) -> (Vec<u8>, usize, usize) {
    let data: serde_json::Map<String, Value> = (0..members)
        .map(|i| (format!("key{i:04}"), json!("v".repeat(26))))
        .collect();
    let compact = serde_json::to_vec(&data).unwrap().len();
    let pretty = serde_json::to_string_pretty(&data).unwrap();
    let mut event = json_bytes(&pageview("s", "/data"));
    event.pop();
    event.extend(format!(r#","event_data":{pretty}}}"#).into_bytes());
    (event, compact, pretty.len())
}

#[tokio::test]
async fn pretty_printed_event_data_is_measured_without_its_whitespace() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let (under, compact, pretty) = event_with_pretty_data(104);
    assert!(
        compact <= 4096 && pretty > 4096,
        "{compact} compact, {pretty} pretty"
    );
    let resp = server.collect_raw(Some("application/json"), under).await;
    assert_eq!(
        resp.status, 202,
        "pretty event_data of {compact} compact bytes: {resp:?}"
    );
    let (over, compact, _) = event_with_pretty_data(110);
    assert!(compact > 4096, "{compact}");
    let resp = server.collect_raw(Some("application/json"), over).await;
    assert_error(&resp, 400, "invalid_field", "event_data over 4 KB compact");
    assert_eq!(server.counts("s").await, (1, 1));
}
