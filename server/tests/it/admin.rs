//! The admin routes as a hostile web page meets them (issue 12, item 8 and the `/readyz` part of
//! item 9). Without an admin token (the default `cargo run`) the API is open to loopback, so a
//! page the operator's browser visits must not reach it: DNS rebinding (`Host:
//! rebind.attacker.example`) is refused with 403 `forbidden_host`, a cross-site `Origin` with
//! 403 `cross_origin`, and a body not labelled `application/json` (what a form or a `no-cors`
//! fetch sends without a preflight) with 415 `unsupported_media_type`. Public routes are
//! untouched. With a token, admin routes send no CORS headers. `/readyz` tells everyone ready or
//! not in one word, and the replay report only to who may use the admin routes.
//!
//! Requests with a chosen `Host` (or none) are written raw: the test kit's client always sends
//! the server's address.

use std::time::Duration;

use pulse_testkit::fixtures::{error_check, pageview, Failures};
use pulse_testkit::http::{parse_response, raw_exchange, Response};
use pulse_testkit::server::{send, Opts, Server};
use serde_json::{json, Value};

use crate::start;

/// How long one raw exchange may take.
const RAW_DEADLINE: Duration = Duration::from_secs(5);

/// Sends `METHOD target` with exactly the header lines given (no `Host` unless among them) and
/// `body` (with its `Content-Length`), on a fresh connection, and parses the answer.
async fn exchange(
    server: &Server,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut head = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    let out = raw_exchange(server.addr(), request, RAW_DEADLINE)
        .await
        .unwrap();
    match parse_response(&out.bytes, true, method == "HEAD") {
        Ok(Some((response, _))) => response,
        other => panic!("{method} {target} {headers:?}: no complete answer ({other:?}): {out:?}"),
    }
}

/// Whether `resp` carries any `Access-Control-Allow-*` header.
fn cors_headers(resp: &Response) -> Vec<String> {
    resp.headers
        .iter()
        .filter(|(name, _)| name.starts_with("access-control-allow-"))
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

/// The admin reads: every one of them must be refused or allowed alike.
const ADMIN_READS: [&str; 4] = [
    "/api/websites",
    "/api/websites/s",
    "/api/websites/s/realtime",
    "/metrics",
];

#[tokio::test]
async fn without_a_token_admin_routes_refuse_a_rebound_or_missing_host() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let port = server.addr().port();
    let mut failures = Failures::default();
    let loopback = [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        format!("LocalHost:{port}"),
        format!("dashboard.localhost:{port}"),
    ];
    for host in &loopback {
        for path in ADMIN_READS {
            let resp = exchange(&server, "GET", path, &[("host", host)], None).await;
            if resp.status != 200 {
                failures.push(format!(
                    "GET {path} with Host {host}: want 200, got {resp:?}"
                ));
            }
        }
    }
    let foreign = [
        "evil.example".to_owned(),
        format!("rebind.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("10.0.0.1:{port}"),
        format!("localhost:{port}x"),
    ];
    for host in &foreign {
        for path in ADMIN_READS {
            let resp = exchange(&server, "GET", path, &[("host", host)], None).await;
            failures.check(
                &format!("GET {path} with Host {host}"),
                error_check(&resp, 403, "forbidden_host"),
            );
        }
    }
    for path in ADMIN_READS {
        let resp = exchange(&server, "GET", path, &[], None).await;
        failures.check(
            &format!("GET {path} without Host"),
            error_check(&resp, 403, "forbidden_host"),
        );
        let twice = [("host", "localhost"), ("host", "evil.example")];
        let resp = exchange(&server, "GET", path, &twice, None).await;
        failures.check(
            &format!("GET {path} with two Host headers"),
            error_check(&resp, 403, "forbidden_host"),
        );
    }
    // An absolute-form target names the host too.
    let absolute = format!("http://evil.example:{port}/api/websites");
    let resp = exchange(&server, "GET", &absolute, &[("host", "localhost")], None).await;
    failures.check(
        "absolute-form target on evil.example",
        error_check(&resp, 403, "forbidden_host"),
    );
    // A rebound page cannot write either, and nothing it sent was applied.
    let create = br#"{"id":"pwned","name":"P","domain":"evil.example"}"#;
    let json_type = ("content-type", "application/json");
    let rebound = ("host", "rebind.attacker.example");
    for (method, path, body) in [
        ("POST", "/api/websites", Some(&create[..])),
        ("PATCH", "/api/websites/s", Some(&br#"{"name":"P"}"#[..])),
        ("DELETE", "/api/websites/s", None),
    ] {
        let resp = exchange(&server, method, path, &[rebound, json_type], body).await;
        failures.check(
            &format!("{method} {path} rebound"),
            error_check(&resp, 403, "forbidden_host"),
        );
    }
    failures.assert_none();
    assert_eq!(server.website_ids().await, ["s"], "a refused write landed");
    assert_eq!(
        server.get("/api/websites/s").await.json()["data"]["name"],
        "Site s",
        "a refused PATCH landed"
    );
}

#[tokio::test]
async fn without_a_token_public_routes_answer_any_host() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let host = ("host", "rebind.attacker.example");
    let origin = ("origin", "https://attacker.example");
    let mut failures = Failures::default();
    for path in ["/healthz", "/readyz", "/s.js", "/"] {
        let resp = exchange(&server, "GET", path, &[host, origin], None).await;
        if resp.status != 200 {
            failures.push(format!("GET {path} from a foreign host: {resp:?}"));
        }
    }
    let event = pageview("s", "/").to_string();
    let plausible = json!({"n": "pageview", "u": "/", "d": "example.com"}).to_string();
    let umami = json!({"type": "event", "payload": {"website": "s", "url": "/"}}).to_string();
    for (path, body, ok) in [
        ("/api/collect", &event, 202),
        ("/e", &event, 202),
        ("/api/event", &plausible, 202),
        ("/api/send", &umami, 200),
    ] {
        let resp = exchange(
            &server,
            "POST",
            path,
            &[host, origin, ("content-type", "text/plain;charset=UTF-8")],
            Some(body.as_bytes()),
        )
        .await;
        if resp.status != ok {
            failures.push(format!("{path} from a foreign host and origin: {resp:?}"));
        }
    }
    failures.assert_none();
}

#[tokio::test]
async fn without_a_token_admin_routes_refuse_a_cross_site_origin() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let port = server.addr().port();
    let host = format!("127.0.0.1:{port}");
    let json_type = ("content-type", "application/json");
    let mut failures = Failures::default();
    let foreign = [
        "https://attacker.example".to_owned(),
        "null".to_owned(),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
    ];
    let create = br#"{"id":"csrf","name":"C","domain":"evil.example"}"#;
    for origin in &foreign {
        let headers = [
            ("host", host.as_str()),
            ("origin", origin.as_str()),
            json_type,
        ];
        for path in ADMIN_READS {
            let resp = exchange(&server, "GET", path, &headers, None).await;
            failures.check(
                &format!("GET {path} from {origin}"),
                error_check(&resp, 403, "cross_origin"),
            );
        }
        for (method, path, body) in [
            ("POST", "/api/websites", Some(&create[..])),
            ("PATCH", "/api/websites/s", Some(&br#"{"name":"C"}"#[..])),
            ("DELETE", "/api/websites/s", None),
        ] {
            let resp = exchange(&server, method, path, &headers, body).await;
            failures.check(
                &format!("{method} {path} from {origin}"),
                error_check(&resp, 403, "cross_origin"),
            );
        }
    }
    failures.assert_none();
    assert_eq!(
        server.website_ids().await,
        ["s"],
        "a cross-site write landed"
    );

    // The dashboard's own page (same origin) keeps working.
    let own = format!("http://{host}");
    let headers = [("host", host.as_str()), ("origin", own.as_str()), json_type];
    let resp = exchange(&server, "POST", "/api/websites", &headers, Some(create)).await;
    assert_eq!(resp.status, 201, "same-origin create: {resp:?}");
    let resp = exchange(&server, "GET", "/api/websites/csrf", &headers, None).await;
    assert_eq!(resp.status, 200, "same-origin read: {resp:?}");
}

#[tokio::test]
async fn admin_bodies_must_be_labelled_application_json() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let host = server.addr().to_string();
    let create = br#"{"id":"plain","name":"P","domain":"example.org"}"#;
    let mut failures = Failures::default();
    // The CSRF of the report: a `no-cors` fetch's text/plain body, and the other types a page
    // can send without a preflight; then no type at all and one that only looks like JSON.
    for content_type in [
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
        Some("application/jsonp"),
    ] {
        let mut headers = vec![("host", host.as_str())];
        headers.extend(content_type.map(|t| ("content-type", t)));
        for (method, path, body) in [
            ("POST", "/api/websites", &create[..]),
            ("PATCH", "/api/websites/s", &br#"{"name":"P"}"#[..]),
        ] {
            let resp = exchange(&server, method, path, &headers, Some(body)).await;
            failures.check(
                &format!("{method} {path} as {content_type:?}"),
                error_check(&resp, 415, "unsupported_media_type"),
            );
        }
    }
    failures.assert_none();
    assert_eq!(
        server.website_ids().await,
        ["s"],
        "a non-JSON body was applied"
    );

    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    let resp = exchange(&server, "POST", "/api/websites", &headers, Some(create)).await;
    assert_eq!(resp.status, 201, "JSON with a charset: {resp:?}");
}

#[tokio::test]
async fn with_a_token_admin_routes_send_no_cors_headers_and_check_the_body_type() {
    const TOKEN: &str = "cors-token-1";
    let server = start(Opts::default().admin_token(TOKEN));
    server.site("s", "example.com").await;
    let origin = ("origin", "https://attacker.example");
    let mut failures = Failures::default();
    for path in ADMIN_READS {
        for request in [
            server.client().get(path),
            server.client().get(path).bearer_auth(TOKEN),
            server
                .client()
                .request("OPTIONS", path)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
        ] {
            let line = request.line();
            let resp = send(request.header(origin.0, origin.1)).await;
            let cors = cors_headers(&resp);
            if !cors.is_empty() {
                failures.push(format!("{line} from another origin sent {cors:?}"));
            }
        }
    }
    // With the token, the token is the defence: any Host and Origin may use it…
    let resp = send(
        server
            .request("GET", "/api/websites")
            .header(origin.0, origin.1),
    )
    .await;
    if resp.status != 200 {
        failures.push(format!("token and a foreign origin: {resp:?}"));
    }
    // …but a body is still JSON or nothing.
    let resp = send(
        server
            .request("POST", "/api/websites")
            .header("content-type", "text/plain;charset=UTF-8")
            .body(br#"{"id":"t","name":"T","domain":"t.com"}"#.to_vec()),
    )
    .await;
    failures.check(
        "text/plain body with the token",
        error_check(&resp, 415, "unsupported_media_type"),
    );
    failures.assert_none();
}

#[tokio::test]
async fn readyz_shows_the_replay_report_only_to_admin_requests() {
    const TOKEN: &str = "ready-token-1";
    let server = start(Opts::default().admin_token(TOKEN));
    let replay = server.wait_ready(Duration::from_secs(30)).await;
    assert!(replay["events"].is_u64(), "with the token: {replay}");
    for request in [
        server.client().get("/readyz"),
        server.client().get("/readyz").bearer_auth("wrong"),
    ] {
        let resp = send(request).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json(), json!({"status": "ready"}), "without the token");
    }

    let open = start(Opts::default());
    let replay = open.wait_ready(Duration::from_secs(30)).await;
    assert!(
        replay["events"].is_u64(),
        "without a token, on loopback: {replay}"
    );
    for headers in [
        vec![("host", "rebind.attacker.example")],
        vec![
            ("host", "localhost"),
            ("origin", "https://attacker.example"),
        ],
    ] {
        let resp = exchange(&open, "GET", "/readyz", &headers, None).await;
        assert_eq!(resp.status, 200, "{headers:?}: {resp:?}");
        let body: Value = resp.json();
        assert_eq!(body, json!({"status": "ready"}), "{headers:?}");
    }
}
