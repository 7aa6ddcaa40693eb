//! Requests refused before the router (issue 12, item 9): every error Pulse sends has the
//! documented `{"error":{"code","message"}}` body, including the ones hyper answers by itself
//! while parsing a head (bad lengths and encodings, folded headers, HTTP/0.9, too many or too
//! large headers, an over-long target) and an axum extractor's rejection (`%ff` in a path).

use std::time::Duration;

use pulse_testkit::fixtures::{error_check, Failures};
use pulse_testkit::http::{parse_response, raw_exchange, Response};
use pulse_testkit::server::{Opts, Server};

use crate::start;

/// How long one raw exchange may take.
const RAW_DEADLINE: Duration = Duration::from_secs(5);

/// Writes `request` on a fresh connection and parses the one answer.
async fn answer_to(server: &Server, request: Vec<u8>) -> Result<Response, String> {
    let out = raw_exchange(server.addr(), request, RAW_DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    match parse_response(&out.bytes, true, false) {
        Ok(Some((response, _))) => Ok(response),
        other => Err(format!("no complete answer ({other:?}): {out:?}")),
    }
}

/// `POST /api/collect` with these header lines after `Host`, and no body.
fn collect_with_headers(lines: &str) -> Vec<u8> {
    format!("POST /api/collect HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n").into_bytes()
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_errors() {
    let server = start(Opts::default());
    let many_headers: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "Content-Length: -1",
            collect_with_headers("Content-Length: -1\r\n"),
            400,
            "malformed_request",
        ),
        (
            "Content-Length: abc",
            collect_with_headers("Content-Length: abc\r\n"),
            400,
            "malformed_request",
        ),
        (
            "Content-Length: +52",
            collect_with_headers("Content-Length: +52\r\n"),
            400,
            "malformed_request",
        ),
        (
            "two different Content-Lengths",
            collect_with_headers("Content-Length: 5\r\nContent-Length: 6\r\n"),
            400,
            "malformed_request",
        ),
        (
            "Transfer-Encoding: xchunked",
            collect_with_headers("Transfer-Encoding: xchunked\r\n"),
            400,
            "malformed_request",
        ),
        (
            "a folded header",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "an HTTP/0.9 request line",
            b"GET /healthz\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "10,000 header lines",
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a 1 MB header",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a 100 KB target",
            format!(
                "GET /healthz?{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "a".repeat(100_000)
            )
            .into_bytes(),
            414,
            "uri_too_long",
        ),
    ];
    // A target longer than hyper's read buffer (twice the 32 KiB head limit) is refused as a
    // head too large when the buffer fills before the line ends, as too long a URI when the
    // line arrived whole: which one depends on how the bytes were read, both are right.
    let alternatives =
        |name: &str| (name == "a 100 KB target").then_some((431, "headers_too_large"));
    let mut failures = Failures::default();
    for (name, request, status, code) in cases {
        match answer_to(&server, request).await {
            Ok(resp) => {
                let checked =
                    error_check(&resp, status, code).or_else(|why| match alternatives(name) {
                        Some((status, code)) => error_check(&resp, status, code),
                        None => Err(why),
                    });
                failures.check(name, checked);
                let content_type = resp.header("content-type").unwrap_or_default();
                if content_type != "application/json" {
                    failures.push(format!("{name}: content-type {content_type:?}"));
                }
            }
            Err(why) => failures.push(format!("{name}: {why}")),
        }
    }
    failures.assert_none();
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_malformed_request_after_a_good_one_on_the_same_connection_gets_a_json_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(Opts::default());
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let first = loop {
        let mut chunk = [0_u8; 4096];
        let n = tokio::time::timeout(RAW_DEADLINE, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the first answer");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((response, _)) = parse_response(&buf, true, false).unwrap() {
            break response;
        }
    };
    assert_eq!(first.status, 200, "{first:?}");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(RAW_DEADLINE, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let (second, _) = parse_response(&rest, true, false).unwrap().unwrap();
    if let Err(why) = error_check(&second, 400, "malformed_request") {
        panic!("the second request: {why}");
    }
}

#[tokio::test]
async fn a_path_that_is_not_utf8_gets_a_json_error() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let mut failures = Failures::default();
    for path in [
        "/api/websites/%ff",
        "/api/websites/%C0%AF",
        "/api/websites/%ff/realtime",
    ] {
        let resp = server.get(path).await;
        failures.check(path, error_check(&resp, 400, "bad_request"));
        let content_type = resp.header("content-type").unwrap_or_default();
        if content_type != "application/json" {
            failures.push(format!("{path}: content-type {content_type:?}"));
        }
    }
    failures.assert_none();
}
