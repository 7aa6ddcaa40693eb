//! HTTP integration tests of the `pulse` binary (issue 3): each test starts the real binary on
//! `127.0.0.1:0` with its own temporary data directory and checks one behaviour through HTTP —
//! collect and its every error, realtime, websites, visitor identity and client IPs, bots,
//! DNT/GPC, referrers, the recent-events limit, restart, salts and privacy on disk, auth, GeoIP,
//! CORS, body and header limits, slow clients and SIGTERM.

use std::collections::BTreeSet;
use std::time::Duration;

use pulse_testkit::fixtures::{
    assert_error, contains, counts_of, error_check, event_with_url, eventually, files_under,
    geoip_test_db, keys, now_secs, pageview, parse_utc_second, recent, Failures, CHROME_DESKTOP,
    CURL, FIREFOX_DESKTOP, GOOGLEBOT, SAFARI_IPHONE,
};
use pulse_testkit::http::{raw_exchange, Response};
use pulse_testkit::server::{run_expecting_exit, send, Opts};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{pulse_bin, start};

/// The body limit of `POST /api/collect`, in bytes.
const BODY_LIMIT: usize = 102_400;
/// How long a raw exchange may wait for the server to answer.
const RAW_DEADLINE: Duration = Duration::from_secs(5);

/// Asserts a 202 `{"ok":true}`.
#[track_caller]
fn assert_accepted(resp: &Response, context: &str) {
    assert_eq!(resp.status, 202, "{context}: expected 202, got {resp:?}");
    assert_eq!(resp.json(), json!({"ok": true}), "{context}: 202 body");
}

/// The urls of the recent events, in the order given.
fn urls(data: &Value) -> Vec<String> {
    recent(data)
        .iter()
        .map(|e| e["url"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A JSON body made of `prefix` padded with trailing spaces to exactly `len` bytes.
fn padded(prefix: &Value, len: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(prefix).unwrap();
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

// ---------------------------------------------------------------------------------------------
// Health, routing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let server = start(Opts::default());
    assert_eq!(server.get("/healthz").await.status, 200);
    let ready = eventually(Duration::from_secs(10), || async {
        server.get("/readyz").await.status == 200
    })
    .await;
    assert!(ready, "/readyz never answered 200");
}

#[tokio::test]
async fn unknown_routes_are_404_not_found() {
    let server = start(Opts::default());
    for path in [
        "/nope",
        "/api/nope",
        "/api/websites/x/y/z",
        "/api/collect/extra",
    ] {
        assert_error(&server.get(path).await, 404, "not_found", path);
    }
}

// ---------------------------------------------------------------------------------------------
// Collect and realtime
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn collected_pageview_appears_in_realtime_with_the_exact_shape() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let before = now_secs();
    let mut event = pageview("s", "https://example.com/pricing?email=a@b.c#top");
    event["referrer"] = json!("https://www.google.com/search?q=pulse");
    assert_accepted(&server.collect(&event).await, "pageview");
    let after = now_secs();

    let body = server.get("/api/websites/s/realtime").await;
    assert_eq!(body.status, 200, "{body:?}");
    let body = body.json();
    assert_eq!(keys(&body), ["data"], "top level of {body}");
    let data = &body["data"];
    assert_eq!(
        keys(data),
        ["active_visitors", "pagination", "recent_events"],
        "{data}"
    );
    assert_eq!(
        data["pagination"],
        json!({"limit": 100, "total_in_window": 1})
    );
    assert_eq!(data["active_visitors"], 1);
    let events = recent(data);
    assert_eq!(events.len(), 1, "{data}");
    let e = &events[0];
    assert_eq!(
        keys(e),
        [
            "browser",
            "country",
            "device_type",
            "event_type",
            "referrer_domain",
            "ts",
            "url"
        ],
        "{e}"
    );
    assert_eq!(e["url"], "/pricing");
    assert_eq!(e["referrer_domain"], "google.com");
    assert_eq!(e["event_type"], "pageview");
    assert_eq!(e["browser"], "Chrome");
    assert_eq!(e["device_type"], "desktop");
    assert_eq!(e["country"], Value::Null, "no GeoIP database was given");
    let ts = e["ts"].as_str().unwrap_or_default();
    let secs = parse_utc_second(ts)
        .unwrap_or_else(|| panic!("ts {ts:?} is not RFC 3339 UTC to the second with `Z`"));
    assert!(
        (before - 2..=after + 2).contains(&secs),
        "ts {ts} is not the time of receipt ({before}..={after})"
    );
}

#[tokio::test]
async fn custom_event_shows_its_name_as_url() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let event = json!({
        "website_id": "s", "type": "event", "url": "/checkout?card=4111",
        "event_name": "signup", "event_data": {"plan": "pro", "seats": 3}
    });
    assert_accepted(&server.collect(&event).await, "custom event");
    let data = server.realtime("s").await;
    let e = event_with_url(&data, "signup");
    assert_eq!(e["event_type"], "event", "{e}");
    assert_eq!(counts_of(&data), (1, 1));
}

#[tokio::test]
async fn query_string_and_fragment_are_stripped_from_urls() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let sent = [
        ("/a?email=someone@example.org", "/a"),
        ("/b#section-2", "/b"),
        ("/c/d/?q=1&r=2#frag", "/c/d/"),
        ("https://example.com/e?token=secret", "/e"),
        ("http://example.com/f#x", "/f"),
        ("https://example.com", "/"),
    ];
    let batch: Vec<Value> = sent.iter().map(|(url, _)| pageview("s", url)).collect();
    assert_accepted(&server.collect(&json!(batch)).await, "batch");
    let data = server.realtime("s").await;
    let got: BTreeSet<String> = urls(&data).into_iter().collect();
    let want: BTreeSet<String> = sent.iter().map(|(_, u)| (*u).to_owned()).collect();
    assert_eq!(got, want, "{data}");
}

#[tokio::test]
async fn browser_and_device_come_from_the_user_agent() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let cases = [
        ("/chrome", CHROME_DESKTOP, "Chrome", "desktop"),
        ("/iphone", SAFARI_IPHONE, "Safari", "mobile"),
        ("/firefox", FIREFOX_DESKTOP, "Firefox", "desktop"),
    ];
    for (url, ua, _, _) in cases {
        let resp = server
            .collect_with(&pageview("s", url), Some(ua), &[])
            .await;
        assert_accepted(&resp, url);
    }
    let data = server.realtime("s").await;
    let mut failures = Failures::default();
    for (url, _, browser, device) in cases {
        let e = event_with_url(&data, url);
        if e["browser"] != browser || e["device_type"] != device {
            failures.push(format!("{url}: want {browser}/{device}, got {e}"));
        }
    }
    failures.assert_none();
}

#[tokio::test]
async fn distinct_user_agents_are_distinct_visitors() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    for (i, ua) in [CHROME_DESKTOP, FIREFOX_DESKTOP, SAFARI_IPHONE]
        .into_iter()
        .enumerate()
    {
        let resp = server
            .collect_with(&pageview("s", &format!("/{i}")), Some(ua), &[])
            .await;
        assert_accepted(&resp, ua);
    }
    assert_eq!(server.counts("s").await, (3, 3));
    // The same person again: one more event, no new visitor.
    let resp = server
        .collect_with(&pageview("s", "/again"), Some(FIREFOX_DESKTOP), &[])
        .await;
    assert_accepted(&resp, "repeat");
    assert_eq!(server.counts("s").await, (3, 4));
}

#[tokio::test]
async fn forwarded_headers_are_ignored_without_trusted_proxies() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let headers: [&[(&str, &str)]; 5] = [
        &[],
        &[("x-forwarded-for", "1.1.1.1")],
        &[("x-forwarded-for", "2.2.2.2")],
        &[("x-forwarded-for", "3.3.3.3, 4.4.4.4")],
        &[("x-real-ip", "5.5.5.5")],
    ];
    for (i, h) in headers.into_iter().enumerate() {
        let resp = server
            .collect_with(&pageview("s", &format!("/{i}")), Some(CHROME_DESKTOP), h)
            .await;
        assert_accepted(&resp, &format!("{h:?}"));
    }
    assert_eq!(
        server.counts("s").await,
        (1, 5),
        "the peer is 127.0.0.1 and untrusted: forwarded headers must not create visitors"
    );
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_identifies_the_client() {
    let server = start(Opts::default().trusted_proxies("10.0.0.0/8,127.0.0.1/32"));
    server.site("s", "example.com").await;
    // (headers, active visitors expected after this pageview)
    let steps: [(&[(&str, &str)], u64); 9] = [
        (&[("x-forwarded-for", "1.1.1.1")], 1),
        (&[("x-forwarded-for", "2.2.2.2")], 2),
        // Right-most untrusted address: 127.0.0.1 and 10.x are trusted hops.
        (&[("x-forwarded-for", "1.1.1.1, 127.0.0.1")], 2),
        (&[("x-forwarded-for", "2.2.2.2, 10.1.2.3")], 2),
        // A spoofed left-most entry does not matter: the right-most untrusted one does.
        (&[("x-forwarded-for", "9.9.9.9, 1.1.1.1")], 2),
        // X-Real-IP when there is no X-Forwarded-For.
        (&[("x-real-ip", "1.1.1.1")], 2),
        (&[("x-real-ip", "3.3.3.3")], 3),
        (&[("x-forwarded-for", "6.6.6.6")], 4),
        // No header at all: the peer itself.
        (&[], 5),
    ];
    let mut failures = Failures::default();
    for (i, (headers, want)) in steps.into_iter().enumerate() {
        let resp = server
            .collect_with(
                &pageview("s", &format!("/{i}")),
                Some(CHROME_DESKTOP),
                headers,
            )
            .await;
        assert_accepted(&resp, &format!("{headers:?}"));
        let (active, _) = server.counts("s").await;
        if active != want {
            failures.push(format!(
                "after {headers:?}: {active} active visitors, want {want}"
            ));
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Bots, DNT/GPC, referrers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bots_are_excluded_by_default_and_included_on_request() {
    let server = start(Opts::default());
    let site = server.site("s", "example.com").await;
    assert_eq!(site["bot_policy"], "exclude");
    for (url, ua) in [
        ("/human", CHROME_DESKTOP),
        ("/google", GOOGLEBOT),
        ("/curl", CURL),
    ] {
        let resp = server
            .collect_with(&pageview("s", url), Some(ua), &[])
            .await;
        assert_accepted(&resp, ua);
    }
    let default = server.realtime("s").await;
    assert_eq!(counts_of(&default), (1, 1), "{default}");
    assert_eq!(urls(&default), ["/human"]);
    let without = server.realtime_q("s", "?include_bots=false").await;
    assert_eq!(counts_of(&without), (1, 1), "{without}");
    let with = server.realtime_q("s", "?include_bots=true").await;
    assert_eq!(counts_of(&with), (3, 3), "{with}");
    let got: BTreeSet<String> = urls(&with).into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from(["/human", "/google", "/curl"].map(String::from))
    );

    // Switching the policy changes the default.
    let patched = server
        .patch_json("/api/websites/s", &json!({"bot_policy": "include"}))
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(server.counts("s").await, (3, 3));
}

#[tokio::test]
async fn bot_policy_include_counts_bots_by_default() {
    let server = start(Opts::default());
    server
        .create_website(&json!({
            "id": "s", "name": "S", "domain": "example.com", "bot_policy": "include"
        }))
        .await;
    for (url, ua) in [("/human", SAFARI_IPHONE), ("/google", GOOGLEBOT)] {
        let resp = server
            .collect_with(&pageview("s", url), Some(ua), &[])
            .await;
        assert_accepted(&resp, ua);
    }
    assert_eq!(server.counts("s").await, (2, 2));
    let without = server.realtime_q("s", "?include_bots=false").await;
    assert_eq!(counts_of(&without), (1, 1), "{without}");
    assert_eq!(urls(&without), ["/human"]);
}

#[tokio::test]
async fn missing_or_empty_user_agent_is_a_bot() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let resp = server
        .collect_with(&pageview("s", "/none"), None, &[])
        .await;
    assert_accepted(&resp, "no User-Agent");
    let resp = server
        .collect_with(&pageview("s", "/empty"), Some(""), &[])
        .await;
    assert_accepted(&resp, "empty User-Agent");
    assert_eq!(server.counts("s").await, (0, 0));
    let with = server.realtime_q("s", "?include_bots=true").await;
    assert_eq!(counts_of(&with).1, 2, "{with}");
}

#[tokio::test]
async fn dnt_and_gpc_are_respected_by_default() {
    let server = start(Opts::default());
    let site = server.site("s", "example.com").await;
    assert_eq!(site["respect_dnt"], true);
    for header in ["dnt", "sec-gpc"] {
        let resp = server
            .collect_with(
                &pageview("s", "/private"),
                Some(CHROME_DESKTOP),
                &[(header, "1")],
            )
            .await;
        assert_accepted(&resp, header);
    }
    assert_eq!(
        server.counts("s").await,
        (0, 0),
        "DNT/GPC events were counted"
    );
    let with = server.realtime_q("s", "?include_bots=true").await;
    assert_eq!(
        counts_of(&with),
        (0, 0),
        "DNT/GPC events were stored: {with}"
    );
    let resp = server
        .collect_with(&pageview("s", "/ok"), Some(CHROME_DESKTOP), &[("dnt", "0")])
        .await;
    assert_accepted(&resp, "DNT: 0");
    assert_accepted(&server.collect(&pageview("s", "/ok2")).await, "no DNT");
    assert_eq!(server.counts("s").await, (1, 2));
}

#[tokio::test]
async fn dnt_and_gpc_are_counted_when_respect_dnt_is_false() {
    let server = start(Opts::default());
    let site = server
        .create_website(&json!({
            "id": "s", "name": "S", "domain": "example.com", "respect_dnt": false
        }))
        .await;
    assert_eq!(site["respect_dnt"], false);
    for header in ["dnt", "sec-gpc"] {
        let resp = server
            .collect_with(&pageview("s", "/p"), Some(CHROME_DESKTOP), &[(header, "1")])
            .await;
        assert_accepted(&resp, header);
    }
    assert_eq!(server.counts("s").await, (1, 2));
}

#[tokio::test]
async fn referrer_domain_is_normalised_and_self_referrals_are_null() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let cases: [(Option<&str>, Value); 11] = [
        (
            Some("https://WWW.Google.com/search?q=x"),
            json!("google.com"),
        ),
        (Some("https://duckduckgo.com/"), json!("duckduckgo.com")),
        (Some("http://www.bing.com"), json!("bing.com")),
        (Some("https://notexample.com/"), json!("notexample.com")),
        (Some("https://example.com/other"), Value::Null),
        (Some("https://www.example.com/"), Value::Null),
        (Some("https://blog.example.com/post"), Value::Null),
        (Some("https://EXAMPLE.com/"), Value::Null),
        (None, Value::Null),
        (Some(""), Value::Null),
        (Some("not a url"), Value::Null),
    ];
    let batch: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (referrer, _))| {
            let mut e = pageview("s", &format!("/r{i}"));
            if let Some(r) = referrer {
                e["referrer"] = json!(r);
            }
            e
        })
        .collect();
    assert_accepted(&server.collect(&json!(batch)).await, "batch");
    let data = server.realtime("s").await;
    let mut failures = Failures::default();
    for (i, (referrer, want)) in cases.iter().enumerate() {
        let e = event_with_url(&data, &format!("/r{i}"));
        if e["referrer_domain"] != *want {
            failures.push(format!(
                "referrer {referrer:?}: want {want}, got {}",
                e["referrer_domain"]
            ));
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Recent events and realtime parameters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn recent_events_are_the_newest_100_newest_first() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let mut sent = 0;
    for size in [50, 50, 20] {
        let batch: Vec<Value> = (sent..sent + size)
            .map(|i| pageview("s", &format!("/p/{i}")))
            .collect();
        assert_accepted(&server.collect(&json!(batch)).await, "batch");
        sent += size;
    }
    let data = server.realtime("s").await;
    assert_eq!(
        data["pagination"],
        json!({"limit": 100, "total_in_window": 120})
    );
    assert_eq!(data["active_visitors"], 1);
    let events = recent(&data);
    assert_eq!(events.len(), 100);

    let ts: Vec<i64> = events
        .iter()
        .map(|e| {
            let ts = e["ts"].as_str().unwrap_or_default();
            parse_utc_second(ts).unwrap_or_else(|| panic!("bad ts {ts:?}"))
        })
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] >= w[1]),
        "ts must be non-increasing (newest first): {ts:?}"
    );
    let got = urls(&data);
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want: Vec<String> = (20..120).rev().map(|i| format!("/p/{i}")).collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    assert_eq!(got_set, want_set, "the set must be the last 100 sent");
    assert_eq!(got, want, "ties are ordered by arrival, later first");
}

#[tokio::test]
async fn realtime_rejects_bad_include_bots_and_unknown_websites() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let mut failures = Failures::default();
    for query in ["yes", "1", "0", "", "truee"] {
        let path = format!("/api/websites/s/realtime?include_bots={query}");
        failures.check(
            &path,
            error_check(&server.get(&path).await, 400, "invalid_parameter"),
        );
    }
    for path in [
        "/api/websites/nope/realtime",
        "/api/websites/nope/realtime?include_bots=true",
    ] {
        failures.check(
            path,
            error_check(&server.get(path).await, 404, "unknown_website"),
        );
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Collect validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn collect_rejects_invalid_input_with_the_documented_errors() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let long = |n: usize| "x".repeat(n);
    // `event_data` of exactly 4097 bytes serialised: `{"k":"…"}` is 8 bytes plus the value.
    let data_4097 = json!({"k": long(4089)});
    assert_eq!(serde_json::to_string(&data_4097).unwrap().len(), 4097);
    let with = |field: &str, value: Value| {
        let mut e = pageview("s", "/");
        e[field] = value;
        e
    };
    let without = |field: &str| {
        let mut e = pageview("s", "/");
        e.as_object_mut().unwrap().remove(field);
        e
    };
    let event = |name: Value, data: Option<Value>| {
        let mut e = json!({"website_id": "s", "type": "event", "url": "/", "event_name": name});
        if let Some(d) = data {
            e["event_data"] = d;
        }
        e
    };
    let json_cases: Vec<(&str, Value, u16, &str)> = vec![
        ("no website_id", without("website_id"), 400, "missing_field"),
        ("no type", without("type"), 400, "missing_field"),
        ("no url", without("url"), 400, "missing_field"),
        (
            "event without event_name",
            json!({"website_id": "s", "type": "event", "url": "/"}),
            400,
            "missing_field",
        ),
        (
            "website_id a number",
            with("website_id", json!(5)),
            400,
            "invalid_field",
        ),
        (
            "type unknown",
            with("type", json!("click")),
            400,
            "invalid_field",
        ),
        (
            "type a number",
            with("type", json!(1)),
            400,
            "invalid_field",
        ),
        ("url a number", with("url", json!(5)), 400, "invalid_field"),
        (
            "url relative",
            with("url", json!("pricing")),
            400,
            "invalid_field",
        ),
        (
            "url javascript:",
            with("url", json!("javascript:alert(1)")),
            400,
            "invalid_field",
        ),
        (
            "url ftp:",
            with("url", json!("ftp://example.com/x")),
            400,
            "invalid_field",
        ),
        (
            "referrer a number",
            with("referrer", json!(5)),
            400,
            "invalid_field",
        ),
        (
            "language an object",
            with("language", json!({})),
            400,
            "invalid_field",
        ),
        (
            "screen 50 000 chars",
            with("screen", json!(long(50_000))),
            400,
            "invalid_field",
        ),
        (
            "utm_source 50 000 chars",
            with("utm_source", json!(long(50_000))),
            400,
            "invalid_field",
        ),
        (
            "event_name 101 chars",
            event(json!(long(101)), None),
            400,
            "invalid_field",
        ),
        (
            "event_name a number",
            event(json!(7), None),
            400,
            "invalid_field",
        ),
        (
            "event_data a string",
            event(json!("e"), Some(json!("x"))),
            400,
            "invalid_field",
        ),
        (
            "event_data an array",
            event(json!("e"), Some(json!([1, 2]))),
            400,
            "invalid_field",
        ),
        (
            "event_data 4097 bytes",
            event(json!("e"), Some(data_4097)),
            400,
            "invalid_field",
        ),
        (
            "batch of 51",
            json!((0..51).map(|_| pageview("s", "/")).collect::<Vec<_>>()),
            400,
            "batch_too_large",
        ),
        ("empty batch", json!([]), 400, "empty_batch"),
        (
            "unknown website",
            pageview("nope", "/"),
            404,
            "unknown_website",
        ),
    ];
    let mut raw_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not JSON", b"hello".to_vec(), 400, "invalid_json"),
        ("empty body", Vec::new(), 400, "invalid_json"),
        (
            "truncated JSON",
            br#"{"website_id":"s","type":"pageview""#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "invalid UTF-8",
            b"{\"website_id\":\"s\xff\xfe\",\"type\":\"pageview\",\"url\":\"/\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "10 000 nested arrays",
            nested(10_000).into_bytes(),
            400,
            "invalid_json",
        ),
        (
            // 2 KB, so under the event_data limit: only the nesting is wrong.
            "1 000 nested arrays inside event_data",
            format!(
                r#"{{"website_id":"s","type":"event","url":"/","event_name":"e","event_data":{{"a":{}}}}}"#,
                nested(1_000)
            )
            .into_bytes(),
            400,
            "invalid_json",
        ),
    ];
    for (name, body, status, code) in json_cases {
        raw_cases.push((name, serde_json::to_vec(&body).unwrap(), status, code));
    }

    let mut failures = Failures::default();
    for (name, body, status, code) in raw_cases {
        let resp = server.collect_raw(Some("application/json"), body).await;
        failures.check(name, error_check(&resp, status, code));
    }
    // Nothing from any rejected request was recorded, bots included.
    let data = server.realtime_q("s", "?include_bots=true").await;
    if counts_of(&data) != (0, 0) {
        failures.push(format!("rejected requests were recorded: {data}"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn collect_accepts_values_at_the_limits() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let data_4096 = json!({"k": "x".repeat(4088)});
    assert_eq!(serde_json::to_string(&data_4096).unwrap().len(), 4096);
    let cases: Vec<(&str, Value, u64)> = vec![
        (
            "event_name of 100 chars",
            json!({"website_id": "s", "type": "event", "url": "/", "event_name": "n".repeat(100)}),
            1,
        ),
        (
            "event_data of 4096 bytes",
            json!({"website_id": "s", "type": "event", "url": "/", "event_name": "e",
                   "event_data": data_4096}),
            1,
        ),
        (
            "every optional field",
            json!({"website_id": "s", "type": "pageview", "url": "http://example.com/x",
                   "referrer": "https://google.com/", "screen": "1920x1080", "language": "en-GB",
                   "utm_source": "news", "utm_medium": "email", "utm_campaign": "spring",
                   "utm_term": "shoes", "utm_content": "banner"}),
            1,
        ),
        ("batch of 1", json!([pageview("s", "/one")]), 1),
        (
            "batch of 50",
            json!((0..50)
                .map(|i| pageview("s", &format!("/b/{i}")))
                .collect::<Vec<_>>()),
            50,
        ),
    ];
    let mut expected = 0;
    let mut failures = Failures::default();
    for (name, body, events) in cases {
        let resp = server.collect(&body).await;
        if resp.status == 202 {
            expected += events;
        } else {
            failures.push(format!("{name}: expected 202, got {resp:?}"));
        }
    }
    let (_, total) = server.counts("s").await;
    if total != expected {
        failures.push(format!("{total} events recorded, want {expected}"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn collect_batches_are_all_or_nothing() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let ok = |i: usize| pageview("s", &format!("/ok/{i}"));
    let cases: [(Value, u16, &str); 3] = [
        (
            json!([ok(0), ok(1), {"website_id": "s", "type": "click", "url": "/"}]),
            400,
            "invalid_field",
        ),
        (
            json!([ok(0), {"website_id": "s", "type": "pageview"}]),
            400,
            "missing_field",
        ),
        (
            json!([ok(0), pageview("nope", "/")]),
            404,
            "unknown_website",
        ),
    ];
    let mut failures = Failures::default();
    for (body, status, code) in cases {
        let resp = server.collect(&body).await;
        failures.check(&format!("{body}"), error_check(&resp, status, code));
    }
    if server.counts("s").await != (0, 0) {
        failures.push("part of a rejected batch was recorded".to_owned());
    }
    failures.assert_none();
    assert_accepted(&server.collect(&json!([ok(0), ok(1)])).await, "good batch");
    assert_eq!(server.counts("s").await, (1, 2));
}

#[tokio::test]
async fn collect_accepts_json_and_text_plain_and_refuses_other_media_types() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let body = serde_json::to_vec(&pageview("s", "/ct")).unwrap();
    let mut failures = Failures::default();
    let accepted = [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "text/plain;charset=UTF-8",
    ];
    for ct in accepted {
        let resp = server.collect_raw(Some(ct), body.clone()).await;
        if resp.status != 202 {
            failures.push(format!("{ct}: expected 202, got {resp:?}"));
        }
    }
    for ct in [
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "image/png",
    ] {
        let resp = server.collect_raw(Some(ct), body.clone()).await;
        failures.check(ct, error_check(&resp, 415, "unsupported_media_type"));
    }
    let counts = server.counts("s").await;
    if counts != (1, 4) {
        failures.push(format!("counts {counts:?}, want (1, 4)"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn collect_other_methods_are_405() {
    let server = start(Opts::default());
    for method in ["GET", "PUT", "DELETE"] {
        let resp = send(server.request(method, "/api/collect")).await;
        assert_error(&resp, 405, "method_not_allowed", method);
    }
}

#[tokio::test]
async fn collect_answers_cors_preflight_and_echoes_any_origin() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let preflight = send(
        server
            .client()
            .request("OPTIONS", "/api/collect")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    )
    .await;
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(
        preflight.header("access-control-allow-origin").as_deref(),
        Some("https://example.com")
    );
    let methods = preflight
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "allow-methods: {methods:?}");

    let ok = server
        .collect_with(
            &pageview("s", "/"),
            Some(CHROME_DESKTOP),
            &[("origin", "https://example.com")],
        )
        .await;
    assert_accepted(&ok, "cross-origin collect");
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://example.com")
    );
    let bad = server
        .collect_with(
            &pageview("nope", "/"),
            Some(CHROME_DESKTOP),
            &[("origin", "https://example.com")],
        )
        .await;
    assert_error(&bad, 404, "unknown_website", "cross-origin error");
    assert_eq!(
        bad.header("access-control-allow-origin").as_deref(),
        Some("https://example.com"),
        "error responses to collect must be readable cross-origin too"
    );
}

/// Collect and `/e` are answered in front of the router (`serve_direct`); their CORS headers
/// must stay those of the router's ingest layer, for successes and errors, with and without an
/// `Origin`, and `Vary: Origin` on every answer so a shared cache never mixes them.
#[tokio::test]
async fn collect_and_its_alias_answer_cors_with_vary_on_success_and_error() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    for path in ["/api/collect", "/e"] {
        for (body, status) in [
            (pageview("s", "/cors"), 202),
            (json!(["not an event"]), 400),
        ] {
            for origin in [None, Some("https://example.com")] {
                let mut request = server
                    .client()
                    .post(path)
                    .header("user-agent", CHROME_DESKTOP)
                    .json(&body);
                if let Some(origin) = origin {
                    request = request.header("origin", origin);
                }
                let resp = send(request).await;
                let case = format!("{path}, status {status}, origin {origin:?}: {resp:?}");
                assert_eq!(resp.status, status, "{case}");
                assert_eq!(
                    resp.header("content-type").as_deref(),
                    Some("application/json"),
                    "{case}"
                );
                assert_eq!(
                    resp.header("access-control-allow-origin").as_deref(),
                    Some(origin.unwrap_or("*")),
                    "{case}"
                );
                assert_eq!(
                    resp.header("access-control-allow-credentials").as_deref(),
                    origin.map(|_| "true"),
                    "{case}"
                );
                assert_eq!(resp.header_all("vary"), vec!["Origin"], "{case}");
            }
        }
    }
    // Both successful requests of each path counted, the failed ones not.
    assert_eq!(server.counts("s").await.1, 4);
}

// ---------------------------------------------------------------------------------------------
// Body limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn collect_body_limit_is_exactly_102400_bytes() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let at_limit = padded(&pageview("s", "/limit"), BODY_LIMIT);
    let resp = server.collect_raw(Some("application/json"), at_limit).await;
    assert_accepted(&resp, "a body of exactly 102400 bytes");
    let over = padded(&pageview("s", "/over"), BODY_LIMIT + 1);
    let resp = server.collect_raw(Some("application/json"), over).await;
    assert_error(&resp, 413, "payload_too_large", "a body of 102401 bytes");
    assert_eq!(server.counts("s").await, (1, 1));
}

#[tokio::test]
async fn oversized_content_length_is_refused_before_the_body_is_read() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    for length in ["1000000000000", "102401"] {
        // Only the head is sent: a server that waited for the body would time out here.
        let request = format!(
            "POST /api/collect HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {CHROME_DESKTOP}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        );
        let out = raw_exchange(server.addr(), request.into_bytes(), RAW_DEADLINE)
            .await
            .unwrap();
        assert!(
            !out.timed_out,
            "Content-Length {length}: no answer within {RAW_DEADLINE:?}: {out:?}"
        );
        assert_eq!(out.status(), Some(413), "Content-Length {length}: {out:?}");
        assert!(
            out.body_text().contains("payload_too_large"),
            "Content-Length {length}: {}",
            out.body_text()
        );
    }
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let chunked = |body: &[u8]| {
        let mut req = format!(
            "POST /api/collect HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {CHROME_DESKTOP}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.chunks(8 * 1024) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        req
    };
    // Chunked within the limit works.
    let small = chunked(&serde_json::to_vec(&pageview("s", "/small")).unwrap());
    let out = raw_exchange(server.addr(), small, RAW_DEADLINE)
        .await
        .unwrap();
    assert_eq!(out.status(), Some(202), "small chunked body: {out:?}");
    // Over the limit: a valid event padded with spaces to 110 000 bytes.
    let big = chunked(&padded(&pageview("s", "/big"), 110_000));
    let out = raw_exchange(server.addr(), big, RAW_DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        out.status(),
        Some(413),
        "chunked body over the limit: {out:?}"
    );
    assert!(out.body_text().contains("payload_too_large"), "{out:?}");
    assert_eq!(server.counts("s").await, (1, 1));
}

// ---------------------------------------------------------------------------------------------
// Websites
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn websites_can_be_created_listed_read_patched_and_deleted() {
    let server = start(Opts::default());
    assert_eq!(
        server.get("/api/websites").await.json(),
        json!({"data": []})
    );

    let blog = server
        .create_website(&json!({"name": "Blog", "domain": "blog.example.org"}))
        .await;
    assert_eq!(
        keys(&blog),
        [
            "accept_client_ids",
            "aliases",
            "bot_policy",
            "created_at",
            "domain",
            "id",
            "name",
            "respect_dnt"
        ],
        "{blog}"
    );
    let id = blog["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "server-generated id {id:?} is not URL-safe"
    );
    assert_eq!(blog["name"], "Blog");
    assert_eq!(blog["domain"], "blog.example.org");
    assert_eq!(blog["bot_policy"], "exclude", "default bot_policy");
    assert_eq!(blog["respect_dnt"], true, "default respect_dnt");
    assert!(blog["created_at"].is_string(), "{blog}");

    let shop = server
        .create_website(&json!({
            "id": "shop_1-A", "name": "Shop", "domain": "shop.example.net",
            "bot_policy": "include", "respect_dnt": false
        }))
        .await;
    assert_eq!(shop["id"], "shop_1-A");
    assert_eq!(shop["bot_policy"], "include");
    assert_eq!(shop["respect_dnt"], false);
    let other = server
        .create_website(&json!({"name": "Blog", "domain": "blog.example.org"}))
        .await;
    assert_ne!(other["id"], blog["id"], "generated ids must be unique");

    let dup = server
        .post_json(
            "/api/websites",
            &json!({"id": "shop_1-A", "name": "Again", "domain": "x.com"}),
        )
        .await;
    assert_error(&dup, 409, "website_exists", "duplicate id");

    let list = server.get("/api/websites").await;
    assert_eq!(list.status, 200, "{list:?}");
    let list = list.json();
    assert_eq!(keys(&list), ["data"]);
    let mut listed = list["data"].as_array().cloned().unwrap_or_default();
    listed.sort_by_key(|w| w["id"].to_string());
    let mut want = vec![blog.clone(), shop.clone(), other.clone()];
    want.sort_by_key(|w| w["id"].to_string());
    assert_eq!(listed, want);

    let got = server.get("/api/websites/shop_1-A").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json(), json!({"data": shop}));

    let patched = server
        .patch_json("/api/websites/shop_1-A", &json!({"name": "Shop 2"}))
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let mut want_shop = shop.clone();
    want_shop["name"] = json!("Shop 2");
    assert_eq!(patched.json(), json!({"data": want_shop}));
    let patched = server
        .patch_json(
            "/api/websites/shop_1-A",
            &json!({"domain": "shop.example.com", "bot_policy": "exclude", "respect_dnt": true}),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    want_shop["domain"] = json!("shop.example.com");
    want_shop["bot_policy"] = json!("exclude");
    want_shop["respect_dnt"] = json!(true);
    assert_eq!(patched.json(), json!({"data": want_shop}));
    assert_eq!(
        server.get("/api/websites/shop_1-A").await.json(),
        json!({"data": want_shop})
    );

    let gone = server.delete("/api/websites/shop_1-A").await;
    assert_eq!(gone.status, 204, "{gone:?}");
    assert!(gone.body.is_empty(), "204 with a body: {gone:?}");
    let mut failures = Failures::default();
    failures.check(
        "GET deleted",
        error_check(
            &server.get("/api/websites/shop_1-A").await,
            404,
            "unknown_website",
        ),
    );
    failures.check(
        "DELETE deleted",
        error_check(
            &server.delete("/api/websites/shop_1-A").await,
            404,
            "unknown_website",
        ),
    );
    failures.check(
        "PATCH unknown",
        error_check(
            &server
                .patch_json("/api/websites/nope", &json!({"name": "x"}))
                .await,
            404,
            "unknown_website",
        ),
    );
    failures.check(
        "realtime of deleted",
        error_check(
            &server.get("/api/websites/shop_1-A/realtime").await,
            404,
            "unknown_website",
        ),
    );
    failures.check(
        "collect to deleted",
        error_check(
            &server.collect(&pageview("shop_1-A", "/")).await,
            404,
            "unknown_website",
        ),
    );
    let remaining = server.get("/api/websites").await.json();
    if remaining["data"].as_array().map(Vec::len) != Some(2) {
        failures.push(format!("after DELETE the list should hold 2: {remaining}"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn website_validation_errors() {
    let server = start(Opts::default());
    let base = |extra: Value| {
        let mut w = json!({"name": "N", "domain": "example.com"});
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        w
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty object", json!({}), "missing_field"),
        ("no name", json!({"domain": "example.com"}), "missing_field"),
        ("no domain", json!({"name": "N"}), "missing_field"),
        ("name a number", base(json!({"name": 5})), "invalid_field"),
        (
            "domain a number",
            base(json!({"domain": 5})),
            "invalid_field",
        ),
        (
            "bot_policy unknown",
            base(json!({"bot_policy": "maybe"})),
            "invalid_field",
        ),
        (
            "respect_dnt a string",
            base(json!({"respect_dnt": "yes"})),
            "invalid_field",
        ),
        (
            "id with a space",
            base(json!({"id": "bad id!"})),
            "invalid_field",
        ),
        (
            "id with a slash",
            base(json!({"id": "a/b"})),
            "invalid_field",
        ),
        ("id empty", base(json!({"id": ""})), "invalid_field"),
        (
            "id of 65 chars",
            base(json!({"id": "a".repeat(65)})),
            "invalid_field",
        ),
        ("id a number", base(json!({"id": 5})), "invalid_field"),
    ];
    let mut failures = Failures::default();
    for (name, body, code) in cases {
        let resp = server.post_json("/api/websites", &body).await;
        failures.check(name, error_check(&resp, 400, code));
    }
    let resp = send(
        server
            .request("POST", "/api/websites")
            .header("content-type", "application/json")
            .body("{\"name\":"),
    )
    .await;
    failures.check("invalid JSON", error_check(&resp, 400, "invalid_json"));

    // The longest id is fine.
    let longest = "a".repeat(64);
    let resp = server
        .post_json("/api/websites", &base(json!({"id": longest})))
        .await;
    if resp.status != 201 {
        failures.push(format!("a 64-char id should be 201, got {resp:?}"));
    }
    let path = format!("/api/websites/{longest}");
    for (name, body) in [
        ("PATCH bot_policy unknown", json!({"bot_policy": "maybe"})),
        ("PATCH respect_dnt a number", json!({"respect_dnt": 1})),
        ("PATCH name a number", json!({"name": 5})),
    ] {
        let resp = server.patch_json(&path, &body).await;
        failures.check(name, error_check(&resp, 400, "invalid_field"));
    }
    let list = server.get("/api/websites").await.json();
    if list["data"].as_array().map(Vec::len) != Some(1) {
        failures.push(format!("only the valid website should exist: {list}"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn websites_survive_restart() {
    let mut server = start(Opts::default());
    server.site("keep", "keep.example.com").await;
    server.site("patched", "patched.example.com").await;
    server.site("deleted", "deleted.example.com").await;
    let resp = server
        .patch_json(
            "/api/websites/patched",
            &json!({"name": "Renamed", "bot_policy": "include", "respect_dnt": false}),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(server.delete("/api/websites/deleted").await.status, 204);
    let before = server.get("/api/websites").await.json();

    let status = server.restart();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");

    let after = server.get("/api/websites").await.json();
    let sorted = |v: &Value| {
        let mut list = v["data"].as_array().cloned().unwrap_or_default();
        list.sort_by_key(|w| w["id"].to_string());
        list
    };
    assert_eq!(sorted(&after), sorted(&before));
    assert_eq!(sorted(&after).len(), 2, "{after}");
    assert_error(
        &server.get("/api/websites/deleted").await,
        404,
        "unknown_website",
        "deleted before restart",
    );
    assert_accepted(
        &server.collect(&pageview("patched", "/")).await,
        "collect after restart",
    );
}

// ---------------------------------------------------------------------------------------------
// Salts and privacy on disk
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn salt_is_private_and_unchanged_by_restart() {
    use std::os::unix::fs::PermissionsExt;

    let mut server = start(Opts::default());
    server.site("s", "example.com").await;
    assert_accepted(&server.collect(&pageview("s", "/1")).await, "first");
    let salts_dir = server.data_dir().join("salts");
    let salts = files_under(&salts_dir);
    assert!(
        !salts.is_empty(),
        "no salt file under {} after a collect",
        salts_dir.display()
    );
    for (path, bytes) in &salts {
        assert!(!bytes.is_empty(), "{} is empty", path.display());
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is readable by others: mode {mode:o}",
            path.display()
        );
    }

    let status = server.restart();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert_accepted(&server.collect(&pageview("s", "/2")).await, "after restart");
    let after = files_under(&salts_dir);
    for (path, bytes) in &salts {
        assert_eq!(
            after.get(path),
            Some(bytes),
            "salt file {} changed or vanished across a restart",
            path.display()
        );
    }
    // The same person before and after the restart is one visitor (whether or not the events
    // from before the restart are replayed).
    let (active, _) = server.counts("s").await;
    assert_eq!(active, 1, "the visitor id changed across a restart");
}

#[tokio::test]
async fn no_ip_or_user_agent_reaches_disk_or_logs() {
    const UA: &str = "PulseTestAgent/9.9 unique-xyz";
    const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like \
         Gecko) Chrome/124.0.0.0 Safari/537.36 PulseTestAgent/9.9 unique-xyz";
    const IPS: [&str; 2] = ["203.0.113.77", "198.51.100.23"];

    // At `trace`, every log call site of the server and its crates is on.
    let mut server = start(
        Opts::default()
            .trusted_proxies("127.0.0.1/32")
            .env("PULSE_LOG", "trace"),
    );
    server.site("s", "example.com").await;
    let requests: [(&str, (&str, &str)); 4] = [
        (UA, ("x-forwarded-for", IPS[0])),
        (BROWSER_UA, ("x-forwarded-for", IPS[0])),
        (BROWSER_UA, ("x-real-ip", IPS[1])),
        (UA, ("x-real-ip", IPS[1])),
    ];
    for (ua, header) in requests {
        let event = pageview("s", "/private");
        let resp = server.collect_with(&event, Some(ua), &[header]).await;
        assert_accepted(&resp, ua);
        let custom = json!({"website_id": "s", "type": "event", "url": "/", "event_name": "e"});
        assert_accepted(&server.collect_with(&custom, Some(ua), &[header]).await, ua);
    }
    let (active, _) = counts_of(&server.realtime_q("s", "?include_bots=true").await);
    assert_eq!(active, 4, "2 IPs x 2 User-Agents");
    assert_eq!(server.stop().code(), Some(0));

    // As text, and as the raw bytes a binary format would hold: each address's 4 octets in
    // network and in little-endian order, and as an IPv4-mapped IPv6 address.
    let mut needles: Vec<(String, Vec<u8>)> = ["PulseTestAgent", "unique-xyz"]
        .iter()
        .chain(&IPS)
        .map(|text| ((*text).to_owned(), text.as_bytes().to_vec()))
        .collect();
    for ip in IPS {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let octets = ip.octets();
        let mut reversed = octets;
        reversed.reverse();
        needles.push((format!("{ip} as 4 bytes"), octets.to_vec()));
        needles.push((format!("{ip} as 4 bytes, little-endian"), reversed.to_vec()));
        needles.push((
            format!("{ip} as 16 bytes (IPv4-mapped)"),
            ip.to_ipv6_mapped().octets().to_vec(),
        ));
    }
    let files = files_under(server.data_dir());
    assert!(!files.is_empty(), "the data dir is empty");
    let mut failures = Failures::default();
    for (path, bytes) in &files {
        for (name, needle) in &needles {
            if contains(bytes, needle) {
                failures.push(format!("{} contains {name}", path.display()));
            }
        }
    }
    // Every log call site is enabled at `trace` (the `operator` tests check `PULSE_LOG` is
    // honoured), so a `debug!` or `trace!` that ever carries an address or a header fails here.
    let logs = server.stderr();
    let stdout = server.stdout_lines().join("\n");
    for (name, needle) in &needles {
        if contains(logs.as_bytes(), needle) {
            failures.push(format!("the server's logs (stderr) contain {name}"));
        }
        if contains(stdout.as_bytes(), needle) {
            failures.push(format!("the server's stdout contains {name}"));
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Auth and configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_token_guards_everything_but_collect_health_and_static_files() {
    const TOKEN: &str = "s3cret-token-123";
    let server = start(Opts::default().admin_token(TOKEN));
    server.site("s", "example.com").await; // with the token
    let bare = |method: &str, path: &str| server.client().request(method, path);
    let guarded: [(&str, &str, Option<Value>); 6] = [
        ("GET", "/api/websites", None),
        (
            "POST",
            "/api/websites",
            Some(json!({"id": "t2", "name": "T", "domain": "t.com"})),
        ),
        ("GET", "/api/websites/s", None),
        ("PATCH", "/api/websites/s", Some(json!({"name": "P"}))),
        ("GET", "/api/websites/s/realtime", None),
        ("DELETE", "/api/websites/s", None),
    ];
    let wrong: [Option<String>; 5] = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(TOKEN.to_owned()),
    ];
    let mut failures = Failures::default();
    for (method, path, body) in &guarded {
        for auth in &wrong {
            let mut req = bare(method, path);
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            failures.check(
                &format!("{method} {path} with authorization {auth:?}"),
                error_check(&send(req).await, 401, "unauthorized"),
            );
        }
    }
    // The right token opens every one of them (DELETE last, as it removes the website).
    for ((method, path, body), want) in guarded.iter().zip([200, 201, 200, 200, 200, 204]) {
        let mut req = bare(method, path).bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = send(req).await;
        if resp.status != want {
            failures.push(format!(
                "{method} {path} with the token: want {want}, got {resp:?}"
            ));
        }
    }
    // Open routes.
    server.site("open", "example.com").await;
    let resp = server.collect(&pageview("open", "/")).await;
    if resp.status != 202 {
        failures.push(format!("collect without a token: {resp:?}"));
    }
    let preflight = send(
        bare("OPTIONS", "/api/collect")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "POST"),
    )
    .await;
    if preflight.status != 204 {
        failures.push(format!("CORS preflight without a token: {preflight:?}"));
    }
    for path in ["/healthz", "/readyz"] {
        let resp = send(bare("GET", path)).await;
        if resp.status != 200 {
            failures.push(format!("{path} without a token: {resp:?}"));
        }
    }
    // The dashboard and the tracker as embedded (the page with its files' hashed paths filled
    // in), without the token.
    type IsTheFile = fn(&str) -> bool;
    let assets: [(&str, &str, IsTheFile); 2] = [
        ("/", "text/html", |body| {
            fills_the_template(include_str!("../../src/assets/index.html"), body)
        }),
        ("/s.js", "javascript", |body| {
            body == include_str!("../../src/assets/s.js")
        }),
    ];
    for (path, content_type, is_the_file) in assets {
        let resp = send(bare("GET", path)).await;
        let served_type = resp.header("content-type").unwrap_or_default();
        if resp.status != 200 || !served_type.contains(content_type) || !is_the_file(&resp.text()) {
            failures.push(format!(
                "static {path} without a token: want 200 {content_type} with the embedded file, \
                 got {} {served_type:?} and {} bytes",
                resp.status,
                resp.body.len()
            ));
        }
    }
    failures.assert_none();
}

/// Whether `served` is the dashboard `template` with each `{{app.css}}` and `{{app.js}}`
/// replaced by a content-hashed path (`/assets/app.<hex>.css`, `.js`) and nothing else changed.
fn fills_the_template(template: &str, served: &str) -> bool {
    let mut rest = served;
    let mut parts = template.split("{{");
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(after) = rest.strip_prefix(first) else {
        return false;
    };
    rest = after;
    for part in parts {
        let Some((name, literal)) = part.split_once("}}") else {
            return false;
        };
        let Some(extension) = name.strip_prefix("app.") else {
            return false;
        };
        let Some(hashed) = rest.strip_prefix("/assets/app.") else {
            return false;
        };
        let hex_len = hashed.chars().take_while(char::is_ascii_hexdigit).count();
        let Some(after) = hashed[hex_len..]
            .strip_prefix('.')
            .and_then(|tail| tail.strip_prefix(extension))
            .and_then(|tail| tail.strip_prefix(literal))
            .filter(|_| hex_len > 0)
        else {
            return false;
        };
        rest = after;
    }
    rest.is_empty()
}

#[tokio::test]
async fn without_a_token_the_api_is_open_on_loopback() {
    let server = start(Opts::default());
    let bare = |method: &str, path: &str| server.client().request(method, path);
    let created = send(
        bare("POST", "/api/websites")
            .json(&json!({"id": "s", "name": "S", "domain": "example.com"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    for path in [
        "/api/websites",
        "/api/websites/s",
        "/api/websites/s/realtime",
    ] {
        let resp = send(bare("GET", path)).await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        // An Authorization header is simply not needed, whatever it says.
        let resp = send(bare("GET", path).bearer_auth("anything")).await;
        assert_eq!(resp.status, 200, "{path} with a stray token: {resp:?}");
    }
}

#[tokio::test]
async fn non_loopback_listen_requires_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let refused = run_expecting_exit(
        pulse_bin(),
        &Opts::default().listen("0.0.0.0:0"),
        dir.path(),
    );
    assert!(
        !refused.status.success(),
        "listening on 0.0.0.0 without a token must fail: {refused:?}"
    );
    assert!(
        refused.stderr.to_ascii_lowercase().contains("admin token"),
        "the refusal must mention the admin token on stderr: {refused:?}"
    );

    let server = start(Opts::default().listen("0.0.0.0:0").admin_token("tok"));
    assert_eq!(server.get("/healthz").await.status, 200);
    let resp = send(server.client().get("/api/websites")).await;
    assert_error(&resp, 401, "unauthorized", "no token on 0.0.0.0");
    assert_eq!(server.get("/api/websites").await.status, 200);
}

#[tokio::test]
async fn configuration_can_come_from_pulse_environment_variables() {
    let server = start(
        Opts::default()
            .admin_token("env-token")
            .trusted_proxies("127.0.0.1/32")
            .via_env(),
    );
    // PULSE_ADMIN_TOKEN
    let resp = send(server.client().get("/api/websites")).await;
    assert_error(&resp, 401, "unauthorized", "PULSE_ADMIN_TOKEN");
    server.site("s", "example.com").await;
    // PULSE_TRUSTED_PROXIES
    for ip in ["1.1.1.1", "2.2.2.2"] {
        let resp = server
            .collect_with(
                &pageview("s", "/"),
                Some(CHROME_DESKTOP),
                &[("x-forwarded-for", ip)],
            )
            .await;
        assert_accepted(&resp, ip);
    }
    assert_eq!(server.counts("s").await, (2, 2), "PULSE_TRUSTED_PROXIES");
    // PULSE_DATA_DIR
    assert!(
        server.data_dir().join("salts").is_dir(),
        "PULSE_DATA_DIR was not used: no salts/ in {}",
        server.data_dir().display()
    );
}

#[tokio::test]
async fn geoip_database_fills_the_country() {
    let server = start(
        Opts::default()
            .trusted_proxies("127.0.0.1/32")
            .geoip_db(geoip_test_db()),
    );
    server.site("s", "example.com").await;
    let cases = [
        ("/gb", "81.2.69.142", json!("GB")),
        ("/se", "89.160.20.112", json!("SE")),
        ("/private", "10.0.0.1", Value::Null),
    ];
    for (url, ip, _) in &cases {
        let resp = server
            .collect_with(
                &pageview("s", url),
                Some(CHROME_DESKTOP),
                &[("x-forwarded-for", ip)],
            )
            .await;
        assert_accepted(&resp, ip);
    }
    let data = server.realtime("s").await;
    let mut failures = Failures::default();
    for (url, ip, want) in &cases {
        let e = event_with_url(&data, url);
        if e["country"] != *want {
            failures.push(format!("{ip}: country {}, want {want}", e["country"]));
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Hardening and shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_request_heads_are_refused_and_the_server_survives() {
    let server = start(Opts::default());
    let many: String = (0..200)
        .map(|i| format!("X-Filler-{i}: value-{i}\r\n"))
        .collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    for (name, headers) in [("200 headers", many), ("a 64 KB header", big)] {
        let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n");
        let out = raw_exchange(server.addr(), request.into_bytes(), RAW_DEADLINE)
            .await
            .unwrap();
        assert!(!out.timed_out, "{name}: no answer within {RAW_DEADLINE:?}");
        match out.status() {
            Some(status) => assert!(
                (400..500).contains(&status),
                "{name}: expected a 4xx (431 or 400) or a closed connection, got {status}"
            ),
            None => assert!(
                out.closed && out.bytes.is_empty(),
                "{name}: neither a response nor a clean close: {out:?}"
            ),
        }
        assert_eq!(
            server.get("/healthz").await.status,
            200,
            "{name}: the server stopped answering"
        );
    }
}

#[tokio::test]
async fn slow_or_incomplete_requests_do_not_wedge_the_server() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let mut stalled = Vec::new();
    // Bodies that promise 1000 bytes and deliver 10, and heads that never end.
    for i in 0..8 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        let head = if i % 2 == 0 {
            format!(
                "POST /api/collect HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {CHROME_DESKTOP}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"website\""
            )
        } else {
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_owned()
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        assert_eq!(server.get("/healthz").await.status, 200);
        assert_accepted(&server.collect(&pageview("s", "/")).await, "collect");
        server.counts("s").await
    })
    .await;
    let counts = answered.unwrap_or_else(|_| panic!("the server wedged behind stalled clients"));
    assert_eq!(counts, (1, 1), "a stalled body must record nothing");
    drop(stalled);
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn sigterm_exits_zero_after_printing_one_stdout_line() {
    let mut server = start(Opts::default());
    server.site("s", "example.com").await;
    assert_accepted(&server.collect(&pageview("s", "/")).await, "collect");
    // A keep-alive connection stays open in the client's pool while the server shuts down.
    let addr = server.addr();
    let status = server.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let lines = server.stdout_lines();
    assert_eq!(lines.len(), 1, "stdout must be exactly one line: {lines:?}");
    assert_eq!(lines[0], format!("listening on {addr}"));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting connections after exit"
    );
}
