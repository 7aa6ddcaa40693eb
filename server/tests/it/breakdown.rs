//! `GET /api/websites/{id}/realtime/breakdown` over HTTP (issue 14): the documented shape, the
//! ranking (visitors, then events, then value), `limit`, the admin token, the 400 and 404
//! answers, bots kept apart unless asked for, and the replay of the log rebuilding it. The exact counting itself is the engine's
//! property test's (`engine/tests/model.rs`); here each visitor is a distinct client address
//! behind a trusted proxy.

use std::time::Duration;

use pulse_testkit::fixtures::{
    error_check, keys, now_secs, pageview, parse_utc_second, Failures, CHROME_DESKTOP,
    FIREFOX_DESKTOP, GOOGLEBOT, SAFARI_IPHONE,
};
use pulse_testkit::server::{send, Opts, Server};
use serde_json::{json, Value};

use crate::start;

const LISTS: [&str; 6] = [
    "browsers",
    "countries",
    "devices",
    "events",
    "pages",
    "referrers",
];

/// Sends `event` from client address `ip` as `user_agent`, asserting 202.
async fn send_from(server: &Server, ip: &str, user_agent: &str, event: &Value) {
    let resp = server
        .collect_with(event, Some(user_agent), &[("x-forwarded-for", ip)])
        .await;
    assert_eq!(resp.status, 202, "{event} from {ip}: {resp:?}");
}

fn referred(site: &str, url: &str, referrer: &str) -> Value {
    let mut event = pageview(site, url);
    event["referrer"] = json!(referrer);
    event
}

fn custom(site: &str, name: &str) -> Value {
    json!({"website_id": site, "type": "event", "url": "/", "event_name": name})
}

/// `[(value, visitors, events)]` of one list.
fn rows(data: &Value, list: &str) -> Vec<(String, u64, u64)> {
    data[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list} is not an array: {data}"))
        .iter()
        .map(|row| {
            (
                row["value"].as_str().unwrap_or_default().to_owned(),
                row["visitors"].as_u64().unwrap_or(u64::MAX),
                row["events"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn row(value: &str, visitors: u64, events: u64) -> (String, u64, u64) {
    (value.to_owned(), visitors, events)
}

/// Three visitors: A (Chrome) views /pricing twice from google.com and signs up; B (Firefox)
/// views /pricing and /docs; C (Safari on a phone) views /docs, /b and /a.
async fn three_visitors(server: &Server) {
    let google = "https://www.google.com/search?q=pulse";
    send_from(
        server,
        "198.51.100.1",
        CHROME_DESKTOP,
        &referred("s", "/pricing", google),
    )
    .await;
    send_from(
        server,
        "198.51.100.1",
        CHROME_DESKTOP,
        &pageview("s", "/pricing"),
    )
    .await;
    send_from(
        server,
        "198.51.100.1",
        CHROME_DESKTOP,
        &custom("s", "signup"),
    )
    .await;
    send_from(
        server,
        "198.51.100.2",
        FIREFOX_DESKTOP,
        &pageview("s", "/pricing"),
    )
    .await;
    send_from(
        server,
        "198.51.100.2",
        FIREFOX_DESKTOP,
        &pageview("s", "/docs"),
    )
    .await;
    for url in ["/docs", "/b", "/a"] {
        send_from(server, "198.51.100.3", SAFARI_IPHONE, &pageview("s", url)).await;
    }
}

fn proxied() -> Opts {
    Opts::default().trusted_proxies("127.0.0.1/32")
}

#[tokio::test]
async fn breakdown_has_the_documented_shape_and_exact_ranked_counts() {
    let server = start(proxied());
    server.site("s", "example.com").await;
    let before = now_secs();
    three_visitors(&server).await;
    let after = now_secs();

    let resp = server.get("/api/websites/s/realtime/breakdown").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let body = resp.json();
    assert_eq!(keys(&body), ["data"], "top level of {body}");
    let data = &body["data"];
    let mut want_keys: Vec<&str> = LISTS.to_vec();
    want_keys.extend(["approximate", "series"]);
    want_keys.sort_unstable();
    assert_eq!(keys(data), want_keys, "{data}");
    assert_eq!(data["approximate"], false);
    for list in LISTS {
        for entry in data[list].as_array().unwrap() {
            assert_eq!(
                keys(entry),
                ["events", "value", "visitors"],
                "{list}: {entry}"
            );
        }
    }

    // Visitors first, then events, then the value in ascending order.
    assert_eq!(
        rows(data, "pages"),
        [
            row("/pricing", 2, 3),
            row("/docs", 2, 2),
            row("/a", 1, 1),
            row("/b", 1, 1)
        ]
    );
    assert_eq!(rows(data, "referrers"), [row("google.com", 1, 1)]);
    assert_eq!(rows(data, "events"), [row("signup", 1, 1)]);
    assert_eq!(
        rows(data, "browsers"),
        [
            row("Chrome", 1, 3),
            row("Safari", 1, 3),
            row("Firefox", 1, 2)
        ]
    );
    assert_eq!(
        rows(data, "devices"),
        [row("desktop", 2, 5), row("mobile", 1, 3)]
    );
    assert_eq!(rows(data, "countries"), [], "no GeoIP database was given");

    let series = data["series"].as_array().unwrap();
    assert_eq!(series.len(), 30, "{data}");
    let mut minutes = Vec::new();
    for point in series {
        assert_eq!(keys(point), ["minute", "pageviews", "visitors"], "{point}");
        let minute = point["minute"].as_str().unwrap();
        let secs = parse_utc_second(minute)
            .unwrap_or_else(|| panic!("minute {minute:?} is not RFC 3339 UTC with `Z`"));
        assert!(minute.ends_with(":00Z") && secs % 60 == 0, "{minute}");
        minutes.push(secs);
    }
    assert!(
        minutes.windows(2).all(|w| w[1] == w[0] + 60),
        "one point per minute, oldest first: {minutes:?}"
    );
    let last = *minutes.last().unwrap();
    assert!(
        (before - before % 60..=after - after % 60 + 60).contains(&last),
        "the last point {last} is not the current minute ({before}..={after})"
    );
    let pageviews: u64 = series
        .iter()
        .map(|p| p["pageviews"].as_u64().unwrap())
        .sum();
    assert_eq!(pageviews, 7, "the custom event is not a pageview: {data}");
    let visitors: u64 = series.iter().map(|p| p["visitors"].as_u64().unwrap()).sum();
    // Each visitor counts once per minute they were seen in: 3 if the sends fit in one
    // minute, at most 6 if they straddled a minute boundary.
    assert!((3..=6).contains(&visitors), "{data}");
}

#[tokio::test]
async fn limit_cuts_every_list_and_out_of_range_values_are_400() {
    let server = start(proxied());
    server.site("s", "example.com").await;
    three_visitors(&server).await;
    let one = server.breakdown_q("s", "?limit=1").await;
    assert_eq!(rows(&one, "pages"), [row("/pricing", 2, 3)]);
    assert_eq!(rows(&one, "browsers"), [row("Chrome", 1, 3)]);
    assert_eq!(
        one["series"].as_array().unwrap().len(),
        30,
        "limit is for lists"
    );
    let two = server.breakdown_q("s", "?limit=2&include_bots=false").await;
    assert_eq!(rows(&two, "pages").len(), 2);
    let all = server.breakdown_q("s", "?limit=100").await;
    assert_eq!(rows(&all, "pages").len(), 4);

    let mut failures = Failures::default();
    for query in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=+5",
        "limit=1.5",
        "limit=ten",
        "limit=",
        "limit",
        "limit=99999999999999999999999",
        "include_bots=yes",
        "limit=5&include_bots=1",
    ] {
        let path = format!("/api/websites/s/realtime/breakdown?{query}");
        failures.check(
            &path,
            error_check(&server.get(&path).await, 400, "invalid_parameter"),
        );
    }
    for path in [
        "/api/websites/nope/realtime/breakdown",
        "/api/websites/nope/realtime/breakdown?limit=3&include_bots=true",
    ] {
        failures.check(
            path,
            error_check(&server.get(path).await, 404, "unknown_website"),
        );
    }
    failures.assert_none();
}

#[tokio::test]
async fn bots_are_counted_apart_and_merged_only_on_request() {
    let server = start(proxied());
    server.site("s", "example.com").await;
    send_from(&server, "198.51.100.1", CHROME_DESKTOP, &pageview("s", "/")).await;
    send_from(&server, "198.51.100.9", GOOGLEBOT, &pageview("s", "/")).await;
    send_from(
        &server,
        "198.51.100.9",
        GOOGLEBOT,
        &pageview("s", "/robots"),
    )
    .await;

    let humans = server.breakdown_q("s", "").await;
    assert_eq!(rows(&humans, "pages"), [row("/", 1, 1)]);
    assert_eq!(rows(&humans, "browsers"), [row("Chrome", 1, 1)]);
    let explicit = server.breakdown_q("s", "?include_bots=false").await;
    assert_eq!(explicit, humans);

    let all = server.breakdown_q("s", "?include_bots=true").await;
    assert_eq!(rows(&all, "pages"), [row("/", 2, 2), row("/robots", 1, 1)]);
    assert_eq!(
        rows(&all, "browsers"),
        [row("Other", 1, 2), row("Chrome", 1, 1)]
    );
    let pageviews: u64 = all["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pageviews"].as_u64().unwrap())
        .sum();
    assert_eq!(pageviews, 3);

    // The website's bot policy sets the default, as for realtime.
    let patched = server
        .patch_json("/api/websites/s", &json!({"bot_policy": "include"}))
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(server.breakdown_q("s", "").await, all);
}

#[tokio::test]
async fn breakdown_needs_the_admin_token() {
    const TOKEN: &str = "s3cret-token-123";
    let server = start(Opts::default().admin_token(TOKEN));
    server.site("s", "example.com").await;
    let path = "/api/websites/s/realtime/breakdown";
    let mut failures = Failures::default();
    for auth in [
        None,
        Some("Bearer wrong".to_owned()),
        Some(TOKEN.to_owned()),
    ] {
        let mut request = server.client().request("GET", path);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        failures.check(
            &format!("authorization {auth:?}"),
            error_check(&send(request).await, 401, "unauthorized"),
        );
    }
    let with_token = send(server.client().request("GET", path).bearer_auth(TOKEN)).await;
    if with_token.status != 200 {
        failures.push(format!("with the token: {with_token:?}"));
    }
    failures.assert_none();
}

#[tokio::test]
async fn a_restart_rebuilds_the_breakdown_from_the_log() {
    let mut server = start(proxied());
    server.site("s", "example.com").await;
    three_visitors(&server).await;
    send_from(
        &server,
        "198.51.100.9",
        GOOGLEBOT,
        &pageview("s", "/robots"),
    )
    .await;
    let lists = |data: &Value| LISTS.map(|list| rows(data, list));
    let pageviews = |data: &Value| -> u64 {
        data["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pageviews"].as_u64().unwrap())
            .sum()
    };
    let before = server.breakdown_q("s", "?include_bots=true").await;
    assert_eq!(pageviews(&before), 8);

    let status = server.restart();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    server.wait_ready(Duration::from_secs(20)).await;

    let after = server.breakdown_q("s", "?include_bots=true").await;
    assert_eq!(lists(&after), lists(&before));
    assert_eq!(pageviews(&after), 8);
    let humans = server.breakdown_q("s", "").await;
    assert_eq!(rows(&humans, "pages")[0], row("/pricing", 2, 3));
}
