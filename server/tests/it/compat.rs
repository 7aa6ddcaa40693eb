//! Drop-in compatibility with real trackers (issue 13): Sparklytics' `/e` alias and its
//! `visitor_id`, Plausible's `POST /api/event`, Umami's `POST /api/send`, CORS that works for
//! credentialed beacons on every ingest route (and none on admin routes), and the realtime shape
//! Sparklytics' dashboard reads. Plausible's `engagement` refreshes a visitor without an event. The real clients in a browser are `server/tests/compat/`.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use pulse_testkit::fixtures::{
    assert_error, counts_of, keys, pageview, recent, CHROME_DESKTOP, FIREFOX_DESKTOP, GOOGLEBOT,
};
use pulse_testkit::http::Response;
use pulse_testkit::server::{send, Opts, Server};
use serde_json::{json, Value};

use crate::start;

const ORIGIN: &str = "https://shop.example.com";
const UMAMI_ID: &str = "94db1cb1-74f4-4a40-ad6c-962362670409";

async fn post(server: &Server, path: &str, body: &Value, ua: &str) -> Response {
    send(
        server
            .client()
            .post(path)
            .header("user-agent", ua)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body.to_string()),
    )
    .await
}

fn urls(data: &Value) -> Vec<String> {
    recent(data)
        .iter()
        .map(|e| e["url"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn sparklytics_e_is_collect_and_its_cors_allows_credentialed_beacons() {
    let server = start(Opts::default());
    server.site("s", "shop.example.com").await;
    let preflight = send(
        server
            .client()
            .request("OPTIONS", "/e")
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    )
    .await;
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(
        preflight.header("access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(
        preflight
            .header("access-control-allow-credentials")
            .as_deref(),
        Some("true")
    );
    assert!(preflight
        .header_all("vary")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("origin")));
    let resp = send(
        server
            .client()
            .post("/e")
            .header("origin", ORIGIN)
            .header("user-agent", CHROME_DESKTOP)
            .json(&pageview("s", "http://shop.example.com/p?utm_source=news")),
    )
    .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(
        resp.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let bad = send(
        server
            .client()
            .post("/e")
            .header("origin", ORIGIN)
            .json(&pageview("nope", "/")),
    )
    .await;
    assert_error(&bad, 404, "unknown_website", "/e with an unknown website");
    assert_eq!(
        bad.header("access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(urls(&server.realtime("s").await), ["/p"]);
}

#[tokio::test]
async fn every_ingest_route_preflights_the_headers_its_clients_send_and_admin_routes_none() {
    let server = start(Opts::default());
    for path in ["/api/collect", "/e", "/api/event", "/api/send"] {
        let preflight = send(
            server
                .client()
                .request("OPTIONS", path)
                .header("origin", ORIGIN)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,content-encoding,x-umami-cache",
                ),
        )
        .await;
        assert_eq!(preflight.status, 204, "{path}: {preflight:?}");
        let allowed = preflight
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            ["content-type", "content-encoding", "x-umami-cache"]
                .iter()
                .all(|h| allowed.contains(h)),
            "{path}: {allowed}"
        );
        assert_eq!(
            preflight.header("access-control-allow-origin").as_deref(),
            Some(ORIGIN),
            "{path}"
        );
    }
    let admin = send(
        server
            .client()
            .get("/api/websites")
            .header("origin", ORIGIN),
    )
    .await;
    assert_eq!(
        admin.header("access-control-allow-origin"),
        None,
        "{admin:?}"
    );
    assert_eq!(admin.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn a_client_visitor_id_counts_separately_unless_the_website_refuses_client_ids() {
    let server = start(Opts::default());
    server.site("open", "a.example").await;
    server
        .create_website(
            &json!({"id": "closed", "name": "Closed", "domain": "b.example",
            "accept_client_ids": false}),
        )
        .await;
    for site in ["open", "closed"] {
        for user in ["user-1", "user-2"] {
            let mut event = pageview(site, "/");
            event["visitor_id"] = json!(user);
            let resp = server.collect(&event).await;
            assert_eq!(resp.status, 202, "{site} {user}: {resp:?}");
        }
        // The same person without an id: by (IP, User-Agent), a third visitor on `open`.
        let resp = server.collect(&pageview(site, "/")).await;
        assert_eq!(resp.status, 202, "{resp:?}");
    }
    assert_eq!(counts_of(&server.realtime("open").await), (3, 3));
    assert_eq!(counts_of(&server.realtime("closed").await), (1, 3));

    let mut long = pageview("open", "/");
    long["visitor_id"] = json!("x".repeat(129));
    assert_error(
        &server.collect(&long).await,
        400,
        "invalid_field",
        "visitor_id over 128 characters",
    );
    let mut control = pageview("open", "/");
    control["visitor_id"] = json!("a\u{7}b");
    assert_error(
        &server.collect(&control).await,
        400,
        "invalid_field",
        "visitor_id with a control character",
    );
    // Never stored as sent.
    let stored = pulse_testkit::fixtures::files_under(server.data_dir());
    assert!(stored
        .values()
        .all(|bytes| !pulse_testkit::fixtures::contains(bytes, b"user-1")));

    let patched = server
        .patch_json("/api/websites/closed", &json!({"accept_client_ids": true}))
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.json()["data"]["accept_client_ids"], true);
    let bad = server
        .patch_json("/api/websites/closed", &json!({"accept_client_ids": "yes"}))
        .await;
    assert_error(&bad, 400, "invalid_field", "accept_client_ids not a bool");
}

#[tokio::test]
async fn plausible_events_land_by_domain_or_alias_with_long_or_short_keys() {
    let server = start(Opts::default());
    server
        .create_website(
            &json!({"id": "p", "name": "P", "domain": "shop.example.com",
            "aliases": ["127.0.0.1", "www.shop.example.org"]}),
        )
        .await;
    let pageview = json!({"n":"pageview","v":36,"u":"http://127.0.0.1:8000/p.html?x=1","d":"127.0.0.1","r":"https://www.google.com/"});
    let resp = post(&server, "/api/event", &pageview, CHROME_DESKTOP).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let custom = json!({"name":"Signup","url":"https://shop.example.org/pricing","domain":"other.example, shop.example.org",
        "props":"{\"plan\":\"pro\"}","revenue":{"amount":9.99,"currency":"EUR"},"interactive":true});
    let resp = post(&server, "/api/event", &custom, FIREFOX_DESKTOP).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let engagement = json!({"n":"engagement","sd":100,"d":"127.0.0.1","u":"http://127.0.0.1:8000/p.html","e":1857,"v":36});
    let resp = post(&server, "/api/event", &engagement, CHROME_DESKTOP).await;
    assert_eq!(resp.status, 202, "{resp:?}");

    let data = server.realtime("p").await;
    assert_eq!(counts_of(&data), (2, 2), "engagement adds no event: {data}");
    let rows = recent(&data);
    assert_eq!(urls(&data), ["Signup", "/p.html"]);
    assert_eq!(rows[1]["referrer_domain"], "google.com");
    assert_eq!(rows[0]["event_type"], "event");

    let unknown = json!({"n":"pageview","u":"/","d":"nobody.example"});
    assert_error(
        &post(&server, "/api/event", &unknown, CHROME_DESKTOP).await,
        404,
        "unknown_website",
        "unknown Plausible domain",
    );
    for (body, status, code) in [
        (json!({"u":"/","d":"127.0.0.1"}), 400, "missing_field"),
        (
            json!({"n":"pageview","d":"127.0.0.1"}),
            400,
            "missing_field",
        ),
        (json!({"n":"pageview","u":"/"}), 400, "missing_field"),
        (
            json!({"n":"x","u":"/","d":"127.0.0.1","p":[1]}),
            400,
            "invalid_field",
        ),
        (
            json!({"n":"x","u":"ftp://a/","d":"127.0.0.1"}),
            400,
            "invalid_field",
        ),
        (json!([1]), 400, "invalid_json"),
    ] {
        let resp = post(&server, "/api/event", &body, CHROME_DESKTOP).await;
        assert_error(&resp, status, code, &body.to_string());
    }
    let wrong_type = send(
        server
            .client()
            .post("/api/event")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("n=pageview"),
    )
    .await;
    assert_error(&wrong_type, 415, "unsupported_media_type", "form body");
    let dnt = send(
        server
            .client()
            .post("/api/event")
            .header("dnt", "1")
            .header("user-agent", SAFARI)
            .json(&pageview),
    )
    .await;
    assert_eq!(dnt.status, 202, "{dnt:?}");
    assert_eq!(
        counts_of(&server.realtime("p").await),
        (2, 2),
        "DNT respected"
    );
}

const SAFARI: &str = pulse_testkit::fixtures::SAFARI_IPHONE;

/// `(active_visitors, total_in_window, recent urls)` for humans, then with bots included.
async fn answers(server: &Server, id: &str) -> [(u64, u64, Vec<String>); 2] {
    let humans = server.realtime(id).await;
    let all = server.realtime_q(id, "?include_bots=true").await;
    [humans, all].map(|data| {
        let (active, total) = counts_of(&data);
        (active, total, urls(&data))
    })
}

#[tokio::test]
async fn a_plausible_engagement_keeps_a_visitor_active_without_an_event_across_a_restart() {
    let mut server = start(Opts::default());
    server.site("p", "shop.example.com").await;
    let pageview = json!({"n":"pageview","u":"https://shop.example.com/a","d":"shop.example.com"});
    let resp = post(&server, "/api/event", &pageview, CHROME_DESKTOP).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let one = (1, 1, vec!["/a".to_owned()]);
    assert_eq!(answers(&server, "p").await, [one.clone(), one]);

    // A new visitor (another User-Agent) whose first request is an engagement ping.
    let engagement = json!({"n":"engagement","sd":100,"d":"shop.example.com",
        "u":"https://shop.example.com/a","e":1857,"v":36});
    let resp = post(&server, "/api/event", &engagement, FIREFOX_DESKTOP).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let two = (2, 1, vec!["/a".to_owned()]);
    assert_eq!(
        answers(&server, "p").await,
        [two.clone(), two.clone()],
        "one more visitor, no more events"
    );

    // A bot's engagement counts in the bot class only.
    let resp = post(&server, "/api/event", &engagement, GOOGLEBOT).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let with_bot = (3, 1, vec!["/a".to_owned()]);
    let expected = [two, with_bot];
    assert_eq!(answers(&server, "p").await, expected);

    // An opted-out visitor's engagement is answered like Plausible and counted nowhere.
    let dnt = send(
        server
            .client()
            .post("/api/event")
            .header("dnt", "1")
            .header("user-agent", SAFARI)
            .header("content-type", "text/plain")
            .body(engagement.to_string()),
    )
    .await;
    assert_eq!(dnt.status, 202, "{dnt:?}");
    assert_eq!(answers(&server, "p").await, expected, "DNT respected");

    let status = server.restart();
    assert!(status.success(), "{status}");
    server.wait_ready(std::time::Duration::from_secs(30)).await;
    assert_eq!(
        answers(&server, "p").await,
        expected,
        "the log replays engagements as it counted them"
    );
}

#[tokio::test]
async fn umami_sends_land_on_a_uuid_website_and_answer_in_umamis_shape() {
    let server = start(Opts::default());
    let created = server
        .create_website(&json!({"id": UMAMI_ID, "name": "U", "domain": "example.com"}))
        .await;
    assert_eq!(created["id"], UMAMI_ID);
    let payload = json!({"website": UMAMI_ID, "hostname":"example.com","language":"en-US",
        "referrer":"https://www.google.com/","screen":"1920x1080","title":"Pricing","url":"/pricing?plan=pro"});
    let resp = post(
        &server,
        "/api/send",
        &json!({"type":"event","payload": payload}),
        CHROME_DESKTOP,
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let answer = resp.json();
    assert_eq!(keys(&answer), ["cache", "sessionId", "visitId"]);
    assert!(!answer["cache"].as_str().unwrap_or_default().is_empty());
    let mut event = payload.clone();
    event["name"] = json!("signup");
    event["data"] = json!({"plan": "pro"});
    let resp = post(
        &server,
        "/api/send",
        &json!({"type":"event","payload": event}),
        FIREFOX_DESKTOP,
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let identify =
        json!({"type":"identify","payload":{"website": UMAMI_ID, "data": {"plan": "pro"}}});
    let resp = post(&server, "/api/send", &identify, CHROME_DESKTOP).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let bot = post(
        &server,
        "/api/send",
        &json!({"type":"event","payload": payload}),
        GOOGLEBOT,
    )
    .await;
    assert_eq!(bot.status, 200, "{bot:?}");
    assert_eq!(bot.json(), json!({"beep": "boop"}));

    let data = server.realtime(UMAMI_ID).await;
    assert_eq!(counts_of(&data), (2, 2), "{data}");
    assert_eq!(urls(&data), ["signup", "/pricing"]);

    for (body, status, code) in [
        (
            json!({"type":"event","payload":{"website":"nope","url":"/"}}),
            404,
            "unknown_website",
        ),
        (
            json!({"type":"click","payload":{"website":UMAMI_ID,"url":"/"}}),
            400,
            "invalid_field",
        ),
        (json!({"type":"event"}), 400, "missing_field"),
        (
            json!({"type":"event","payload":{"url":"/"}}),
            400,
            "missing_field",
        ),
        (
            json!({"type":"event","payload":{"website":UMAMI_ID}}),
            400,
            "missing_field",
        ),
        (
            json!({"type":"event","payload":{"website":UMAMI_ID,"url":"/","data":[1]}}),
            400,
            "invalid_field",
        ),
        (json!("event"), 400, "invalid_json"),
    ] {
        let resp = post(&server, "/api/send", &body, CHROME_DESKTOP).await;
        assert_error(&resp, status, code, &body.to_string());
    }
}

#[tokio::test]
async fn an_umami_website_may_be_an_alias_of_an_existing_website() {
    let server = start(Opts::default());
    server
        .create_website(&json!({"id": "main", "name": "M", "domain": "example.com",
            "aliases": [UMAMI_ID]}))
        .await;
    let send_body = json!({"type":"event","payload":{"website": UMAMI_ID, "url":"/a"}});
    let resp = post(&server, "/api/send", &send_body, CHROME_DESKTOP).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(urls(&server.realtime("main").await), ["/a"]);
}

/// Sparklytics' dashboard renders Pulse's realtime answer: it reads these fields and no others,
/// so the answer must stay a superset of them.
#[tokio::test]
async fn realtime_stays_a_superset_of_what_sparklytics_dashboard_reads() {
    let server = start(Opts::default());
    server.site("s", "example.com").await;
    let mut event = pageview("s", "/a");
    event["referrer"] = json!("https://news.example.org/x");
    assert_eq!(server.collect(&event).await.status, 202);
    let data = server.realtime("s").await;
    for field in ["active_visitors", "recent_events", "pagination"] {
        assert!(data.get(field).is_some(), "realtime lacks {field}: {data}");
    }
    assert!(data["active_visitors"].is_u64());
    for field in ["limit", "total_in_window"] {
        assert!(
            data["pagination"][field].is_u64(),
            "pagination.{field}: {data}"
        );
    }
    let row = &recent(&data)[0];
    for field in [
        "url",
        "referrer_domain",
        "country",
        "browser",
        "device_type",
        "event_type",
        "ts",
    ] {
        assert!(
            row.as_object().is_some_and(|o| o.contains_key(field)),
            "recent_events[] lacks {field}: {row}"
        );
    }
}

/// `POST path` with `body` (already encoded) labelled `Content-Encoding: encoding`.
async fn post_encoded(server: &Server, path: &str, encoding: &str, body: Vec<u8>) -> Response {
    send(
        server
            .client()
            .post(path)
            .header("user-agent", CHROME_DESKTOP)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body),
    )
    .await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// What `/api/collect` makes of a body's bytes — gzip inflated, one byte-order mark skipped,
/// other codings 415 with `Accept-Encoding` — every other ingest route makes of them too.
#[tokio::test]
async fn every_ingest_route_reads_gzip_and_a_byte_order_mark_and_refuses_other_codings() {
    let server = start(Opts::default());
    server
        .create_website(&json!({"id": UMAMI_ID, "name": "U", "domain": "shop.example.com"}))
        .await;
    let body = |path: &str, page: &str| match path {
        "/api/event" => json!({"n": "pageview", "u": page, "d": "shop.example.com"}),
        "/api/send" => json!({"type": "event", "payload": {"website": UMAMI_ID, "url": page}}),
        _ => pageview(UMAMI_ID, page),
    };
    let ok_status = |path: &str| if path == "/api/send" { 200 } else { 202 };
    let mut expected = Vec::new();
    for path in ["/api/collect", "/e", "/api/event", "/api/send"] {
        let page = format!("/gzip{}", path.replace('/', "-"));
        let gzipped = gzip(body(path, &page).to_string().as_bytes());
        let resp = post_encoded(&server, path, "gzip", gzipped).await;
        assert_eq!(resp.status, ok_status(path), "{path} gzip: {resp:?}");
        expected.push(page);

        let page = format!("/bom{}", path.replace('/', "-"));
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend(body(path, &page).to_string().as_bytes());
        let resp = post_encoded(&server, path, "identity", with_bom.clone()).await;
        assert_eq!(resp.status, ok_status(path), "{path} BOM: {resp:?}");
        expected.push(page);
        let resp = post_encoded(&server, path, "gzip", gzip(&with_bom)).await;
        assert_eq!(resp.status, ok_status(path), "{path} gzip BOM: {resp:?}");

        let resp = post_encoded(&server, path, "br", body(path, "/br").to_string().into()).await;
        assert_error(&resp, 415, "unsupported_encoding", path);
        assert_eq!(
            resp.header("accept-encoding").as_deref(),
            Some("gzip, identity"),
            "{path}"
        );
        let plain_as_gzip = body(path, "/not-gzip").to_string().into();
        let resp = post_encoded(&server, path, "gzip", plain_as_gzip).await;
        assert_error(&resp, 400, "invalid_body", path);
    }
    let data = server.realtime(UMAMI_ID).await;
    let seen = urls(&data);
    for page in &expected {
        assert!(seen.contains(page), "{page} not recorded: {seen:?}");
    }
    assert!(
        !seen.iter().any(|u| u == "/br" || u == "/not-gzip"),
        "{seen:?}"
    );
}
