//! The live stream, `GET /api/websites/{id}/realtime/stream` (issue 14), against the real binary:
//! the first message is the realtime `data`, an ingest shows within 1.5 s, a burst is paced to
//! about one message a second, heartbeats, `include_bots`, auth and 404, the bound on open
//! streams (503), streams holding their connection (never shed as idle, counted against their
//! address's cap), deleted websites ending their streams, SIGTERM ending every stream with a
//! prompt exit 0, and the stream's own `route` label in the request metrics.

use std::time::{Duration, Instant};

use pulse_testkit::fixtures::{assert_error, pageview, GOOGLEBOT};
use pulse_testkit::http::{raw_exchange, EventStream, HttpError, SseMessage};
use pulse_testkit::server::{assert_exit_zero, Opts, Server};
use serde_json::Value;

use crate::start;

/// How long a message the server owes may take to arrive, with slack for a loaded machine.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(5);
/// The bound: an ingest reaches an open stream within this.
const UPDATE_DEADLINE: Duration = Duration::from_millis(1500);

/// The next `data:` message as JSON, skipping heartbeats; panics when none comes in `deadline`.
async fn next_data(stream: &mut EventStream, deadline: Duration) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Ok(Some(SseMessage::Data(text))) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("a data line that is not JSON ({e}): {text}"))
            }
            Ok(Some(SseMessage::Comment(_))) => {}
            Ok(None) => panic!("the stream ended while a data message was awaited"),
            Err(e) => panic!("no data message within {deadline:?}: {e}"),
        }
    }
}

/// Reads until the stream ends; panics if it does not within `deadline`. Returns how many
/// messages came first.
async fn until_ended(stream: &mut EventStream, deadline: Duration) -> usize {
    let end = Instant::now() + deadline;
    let mut messages = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Ok(None) => return messages,
            Ok(Some(_)) => messages += 1,
            Err(e) => panic!("the stream did not end within {deadline:?}: {e}"),
        }
    }
}

async fn site_with_a_visit(server: &Server) {
    server.site("s", "example.com").await;
    let resp = server.collect(&pageview("s", "/first")).await;
    assert_eq!(resp.status, 202, "{resp:?}");
}

#[tokio::test]
async fn the_first_message_is_the_realtime_data_with_event_stream_headers() {
    let server = start(Opts::default());
    site_with_a_visit(&server).await;
    let mut stream = server.open_stream("s", "").await;
    assert_eq!(
        stream.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(stream.header("cache-control").as_deref(), Some("no-cache"));
    let first = next_data(&mut stream, MESSAGE_DEADLINE).await;
    let polled = server.realtime("s").await;
    assert_eq!(
        first, polled,
        "the stream's first message and GET …/realtime"
    );
    assert_eq!(first["active_visitors"], 1);
    // The stream is counted under its own route, and only the JSON answer is timed as realtime.
    let scrape = server.scrape().await;
    let stream_route = [("route", "realtime_stream"), ("status", "200")];
    assert_eq!(
        scrape.get("pulse_http_requests_total", &stream_route),
        Some(1.0)
    );
    let realtime = [("route", "realtime")];
    assert_eq!(
        scrape.get("pulse_http_request_duration_seconds_count", &realtime),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_ingest_reaches_an_open_stream_within_one_and_a_half_seconds() {
    let server = start(Opts::default());
    site_with_a_visit(&server).await;
    let mut stream = server.open_stream("s", "").await;
    let first = next_data(&mut stream, MESSAGE_DEADLINE).await;
    assert_eq!(first["pagination"]["total_in_window"], 1);
    let resp = server.collect(&pageview("s", "/second")).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let accepted = Instant::now();
    let update = next_data(&mut stream, UPDATE_DEADLINE).await;
    assert_eq!(
        update["pagination"]["total_in_window"],
        2,
        "{update} after {:?}",
        accepted.elapsed()
    );
    assert_eq!(update["recent_events"][0]["url"], "/second");
}

#[tokio::test]
async fn a_burst_of_ingests_is_paced_to_about_one_message_a_second() {
    // One client posting back to back can pass the per-address limit (2,000 in a burst) on a
    // quiet machine; the burst is about pacing the stream, so the limit is off.
    let server = start(Opts::default().args(&["--rate-limit-per-ip", "0"]));
    site_with_a_visit(&server).await;
    let mut stream = server.open_stream("s", "").await;
    next_data(&mut stream, MESSAGE_DEADLINE).await;
    // Ingest continuously for a few seconds while counting what the stream sends.
    let burst = Duration::from_secs(4);
    let collector = {
        let client = server.client().clone();
        tokio::spawn(async move {
            let end = Instant::now() + burst;
            let mut sent = 0_u64;
            while Instant::now() < end {
                let event = pageview("s", &format!("/burst/{sent}"));
                let resp = client
                    .post("/api/collect")
                    .json(&event)
                    .header("user-agent", pulse_testkit::fixtures::CHROME_DESKTOP)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status, 202, "{resp:?}");
                sent += 1;
            }
            sent
        })
    };
    let started = Instant::now();
    let mut messages = 0_u32;
    let mut last_total = 1;
    while started.elapsed() < burst {
        let left = burst.saturating_sub(started.elapsed());
        match stream.next(left).await {
            Ok(Some(SseMessage::Data(text))) => {
                messages += 1;
                let data: Value = serde_json::from_str(&text).unwrap();
                last_total = data["pagination"]["total_in_window"].as_u64().unwrap();
            }
            Ok(Some(SseMessage::Comment(_))) => {}
            Ok(None) => panic!("the stream ended during the burst"),
            Err(HttpError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let measured = started.elapsed();
    let sent = collector.await.unwrap();
    assert!(sent >= 20, "only {sent} events were ingested: no burst");
    // One a second at most, with one of slack for where the interval cuts the ticks.
    let most = measured.as_secs_f64().ceil() as u32 + 1;
    assert!(
        messages <= most,
        "{messages} messages in {measured:?} while {sent} events arrived: more than one a second"
    );
    assert!(
        messages >= 2,
        "{messages} messages in {measured:?} while {sent} events arrived: updates were held back"
    );
    assert!(
        last_total > 1,
        "the updates carried the burst: {last_total}"
    );
}

#[tokio::test]
async fn a_quiet_stream_sends_heartbeat_comments() {
    let server = start(Opts::default().args(&["--stream-heartbeat-ms", "1000"]));
    site_with_a_visit(&server).await;
    let mut stream = server.open_stream("s", "").await;
    next_data(&mut stream, MESSAGE_DEADLINE).await;
    for _ in 0..2 {
        match stream.next(MESSAGE_DEADLINE).await {
            Ok(Some(SseMessage::Comment(text))) => assert_eq!(text, "keepalive"),
            other => panic!("expected a keepalive comment, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn include_bots_is_honoured_like_the_json_route() {
    let server = start(Opts::default());
    site_with_a_visit(&server).await;
    let bot = server
        .collect_with(&pageview("s", "/crawled"), Some(GOOGLEBOT), &[])
        .await;
    assert_eq!(bot.status, 202, "{bot:?}");
    for (query, visitors) in [
        ("", 1),
        ("?include_bots=false", 1),
        ("?include_bots=true", 2),
    ] {
        let mut stream = server.open_stream("s", query).await;
        let data = next_data(&mut stream, MESSAGE_DEADLINE).await;
        assert_eq!(data["active_visitors"], visitors, "{query}: {data}");
        assert_eq!(data, server.realtime_q("s", query).await, "{query}");
    }
    let bad = server
        .get("/api/websites/s/realtime/stream?include_bots=yes")
        .await;
    assert_error(&bad, 400, "invalid_parameter", "include_bots=yes");
}

#[tokio::test]
async fn streams_need_the_admin_token_and_a_known_website() {
    let server = start(Opts::default().admin_token("s3cret"));
    server.site("s", "example.com").await;
    let path = "/api/websites/s/realtime/stream";
    let anonymous = server.client().get(path).send().await.unwrap();
    assert_error(&anonymous, 401, "unauthorized", "no token");
    let wrong = server
        .client()
        .get(path)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_error(&wrong, 401, "unauthorized", "a wrong token");
    let unknown = server.get("/api/websites/nope/realtime/stream").await;
    assert_error(&unknown, 404, "unknown_website", "an unknown website");
    server.open_stream("s", "").await;
}

#[tokio::test]
async fn deleting_a_website_ends_its_streams() {
    let server = start(Opts::default());
    site_with_a_visit(&server).await;
    let mut stream = server.open_stream("s", "").await;
    next_data(&mut stream, MESSAGE_DEADLINE).await;
    assert_eq!(server.delete("/api/websites/s").await.status, 204);
    until_ended(&mut stream, MESSAGE_DEADLINE).await;
}

#[tokio::test]
async fn streams_past_the_memory_bound_are_refused_with_503() {
    // 2% of 1 MiB holds a single stream.
    let server = start(Opts::default().args(&["--memory-limit", "1MiB"]));
    site_with_a_visit(&server).await;
    let first = server.open_stream("s", "").await;
    // The open stream is accounted in the memory metrics against its share.
    let live = [("component", "live_streams")];
    let scrape = server.scrape().await;
    assert_eq!(scrape.get("pulse_memory_bytes", &live), Some(24_576.0));
    // 2% of 1 MiB; the one stream allowed however small the limit is over it.
    assert_eq!(
        scrape.get("pulse_memory_budget_bytes", &live),
        Some(20_970.0)
    );
    // And counted as streams, against the bound the memory limit gives.
    assert_eq!(scrape.get("pulse_live_streams", &[]), Some(1.0));
    assert_eq!(scrape.get("pulse_live_streams_max", &[]), Some(1.0));
    let refused = server.get("/api/websites/s/realtime/stream").await;
    assert_error(&refused, 503, "too_many_streams", "a second stream");
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    drop(first);
    // The closed stream's place comes back once the server notices the connection is gone.
    let end = Instant::now() + MESSAGE_DEADLINE;
    loop {
        match server
            .request("GET", "/api/websites/s/realtime/stream")
            .open_stream()
            .await
        {
            Ok(_) => break,
            Err(HttpError::NotAStream(resp)) if resp.status == 503 && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the place of a closed stream never came back: {e}"),
        }
    }
}

#[tokio::test]
async fn an_open_stream_is_busy_for_the_pool_and_counts_against_its_address() {
    let server = start(Opts::default().args(&[
        "--max-connections",
        "8",
        "--max-connections-per-ip",
        "2",
        "--stream-heartbeat-ms",
        "500",
    ]));
    site_with_a_visit(&server).await;
    // The set-up's connections may still count against the cap for a moment after the client
    // closed them: a refused stream is retried until they are gone.
    let mut streams = Vec::new();
    let end = Instant::now() + MESSAGE_DEADLINE;
    while streams.len() < 2 {
        match server
            .request("GET", "/api/websites/s/realtime/stream")
            .open_stream()
            .await
        {
            Ok(stream) => streams.push(stream),
            // Refused: closed unanswered, which may arrive as a reset.
            Err(HttpError::Closed | HttpError::Io(_)) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("opening stream {}: {e}", streams.len()),
        }
    }
    // Both of the address's connections are streams, busy: a third is refused, not served by
    // shedding a stream as idle.
    tokio::time::sleep(Duration::from_millis(300)).await; // past the pool's "evictable" age
    let third = raw_exchange(
        server.addr(),
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        MESSAGE_DEADLINE,
    )
    .await
    .unwrap();
    assert!(
        third.closed && third.status().is_none(),
        "a third connection from the address should be closed unanswered: {third:?}"
    );
    for stream in &mut streams {
        next_data(stream, MESSAGE_DEADLINE).await;
        match stream.next(MESSAGE_DEADLINE).await {
            Ok(Some(_)) => {}
            other => panic!("the stream was shed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_zero_without_waiting_on_them() {
    let mut server = start(Opts::default());
    site_with_a_visit(&server).await;
    let mut streams = Vec::new();
    for query in ["", "", "?include_bots=true"] {
        let mut stream = server.open_stream("s", query).await;
        next_data(&mut stream, MESSAGE_DEADLINE).await;
        streams.push(stream);
    }
    let stopping = Instant::now();
    let status = server.stop();
    let took = stopping.elapsed();
    let stderr = server.stderr();
    assert_exit_zero(status, "SIGTERM with open streams", &stderr);
    // The drain allows requests in flight 10 s; streams must not be among what it waits for.
    assert!(
        !stderr.contains("did not finish within the drain timeout"),
        "shutdown waited on the open streams:\n{stderr}"
    );
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?}: it waited on the open streams"
    );
    for stream in &mut streams {
        until_ended(stream, MESSAGE_DEADLINE).await;
    }
}
