//! The load harness against a real Pulse server started in-process (`pulse_server::run` on
//! 127.0.0.1:0, a temp data dir, `--trusted-proxies 127.0.0.1/32`): the harness's own counts
//! must match what the server reports through its realtime API. Every wait has a deadline.

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use pulse_benches::load::traffic::{BUILTIN_BOTS, BUILTIN_BROWSERS};
use pulse_benches::load::{run, LoadConfig, Mode, Report, UserAgents};
use pulse_server::{clock, AppState, Config};
use serde_json::Value;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(30);

/// The committed User-Agent samples (`testdata/`).
fn testdata_dir() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata"))
}

/// The committed samples, asserting they were read rather than replaced by the built-in ones.
fn sample_user_agents() -> UserAgents {
    let agents = UserAgents::from_dir_or_builtin(testdata_dir());
    assert_ne!(
        agents.source, "built-in sample",
        "testdata/*-user-agents.txt were not read"
    );
    agents
}

/// The non-empty lines of `testdata/<name>`, trimmed: what the harness must load from it.
fn sample_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(testdata_dir().join(name))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// A server on the test's runtime; dropping `stop` (or sending on it) shuts it down.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::try_parse_from([
        "pulse",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--trusted-proxies",
        "127.0.0.1/32",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(AppState::open(&config, clock::now_ms()).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        pulse_server::run(state, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = blocking_get(addr, "/readyz")
            .await
            .map(|(status, _)| status);
        if status == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready in time: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Server {
        addr,
        stop: Some(stop),
        handle,
        _dir: dir,
    }
}

impl Server {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.handle)
            .await
            .expect("server stops in time")
            .unwrap();
    }
}

/// GET with a fresh connection and `Connection: close`, read to the end: independent of the
/// harness's own HTTP client. `None` when the server cannot be reached.
async fn blocking_get(addr: SocketAddr, target: &str) -> Option<(u16, Value)> {
    let target = target.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    })
    .await
    .unwrap()
}

/// `(active_visitors, total_in_window)` of `website`.
async fn realtime(addr: SocketAddr, website: &str, include_bots: bool) -> (u64, u64) {
    let (status, body) = blocking_get(
        addr,
        &format!("/api/websites/{website}/realtime?include_bots={include_bots}"),
    )
    .await
    .expect("realtime answers");
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    (
        data["active_visitors"].as_u64().unwrap(),
        data["pagination"]["total_in_window"].as_u64().unwrap(),
    )
}

/// The harness's counts agree with themselves and with the server.
async fn check_against_server(server: &Server, website: &str, report: &Report, expected: u64) {
    let c = &report.counts;
    assert_eq!(c.events_sent, expected, "{report:#?}");
    assert_eq!(
        c.events_accepted, expected,
        "every event answered 202: {report:#?}"
    );
    assert_eq!(c.requests, c.status_202, "{report:#?}");
    assert_eq!(c.requests, c.requests_started);
    assert_eq!(
        (
            c.status_429,
            c.status_503,
            c.status_other,
            c.connection_errors
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(report.unfinished_requests, 0);
    assert_eq!(c.bot_events_sent, c.bot_events_accepted);
    assert!(
        c.bot_events_sent > 0,
        "the bot share sent some bots: {report:#?}"
    );
    assert!(c.bot_events_sent < expected, "and some humans");

    let (all_visitors, all_events) = realtime(server.addr, website, true).await;
    let (human_visitors, human_events) = realtime(server.addr, website, false).await;
    assert_eq!(all_events, c.events_accepted);
    assert_eq!(human_events, c.events_accepted - c.bot_events_sent);
    assert!(
        c.distinct_visitors() >= all_visitors,
        "{c:?} vs {all_visitors}"
    );
    assert!(
        c.distinct_human_visitors >= human_visitors,
        "{c:?} vs {human_visitors}"
    );
    assert!(human_visitors > 0 && all_visitors > human_visitors);
    // The harness's own after-run reading of the server agrees with ours.
    let sr = report
        .server_realtime
        .expect("the harness read realtime after the run");
    assert_eq!(
        (sr.active_visitors, sr.events_in_window),
        (all_visitors, all_events)
    );
    assert_eq!(
        (sr.human_active_visitors, sr.human_events_in_window),
        (human_visitors, human_events)
    );
    assert!(
        !sr.approximate,
        "a few hundred visitors are counted exactly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_counts_match_the_server_at_a_fixed_rate_and_in_batches() {
    let server = start_server().await;

    // 300 single events at 600 events/s from 120 visitors, 30 % of them bots, on 4 connections,
    // with the realtime poller running.
    let mut config = LoadConfig::new(server.addr, "harness-rate");
    config.mode = Mode::Rate(600.0);
    config.max_events = Some(300);
    config.duration = Some(DEADLINE);
    config.connections = 4;
    config.bot_share = 0.3;
    config.custom_share = 0.2;
    config.visitors = 120;
    config.realtime_poll = Some(Duration::from_millis(20));
    // The committed samples, so a sample the server would classify otherwise fails the counts.
    let report = run(&config, sample_user_agents(), std::future::pending())
        .await
        .unwrap();
    assert!(
        report.user_agents.contains("testdata"),
        "the run used {}",
        report.user_agents
    );
    check_against_server(&server, "harness-rate", &report, 300).await;
    assert!(report.elapsed_secs >= 0.45, "paced at 600/s: {report:#?}");
    assert!(report.counts.custom_events_accepted > 0);
    let polls = report.realtime.as_ref().unwrap();
    assert!(polls.polls_ok > 0 && polls.p50_us.is_some(), "{polls:?}");
    assert_eq!(polls.polls_non_200 + polls.poll_errors, 0, "{polls:?}");

    // 200 events as fast as possible in batches of 7 (the last one holds 4), another website.
    let mut config = LoadConfig::new(server.addr, "harness-batch");
    config.mode = Mode::Max;
    config.max_events = Some(200);
    config.duration = Some(DEADLINE);
    config.batch = 7;
    config.connections = 3;
    config.bot_share = 0.3;
    config.realtime_poll = None;
    let report = run(&config, UserAgents::builtin(), std::future::pending())
        .await
        .unwrap();
    check_against_server(&server, "harness-batch", &report, 200).await;
    assert_eq!(report.counts.requests, 200_u64.div_ceil(7));
    assert!(report.realtime.is_none());

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_future_ends_an_open_ended_run() {
    let server = start_server().await;
    let mut config = LoadConfig::new(server.addr, "harness-stop");
    config.mode = Mode::Rate(200.0);
    config.duration = None;
    config.connections = 2;
    config.realtime_poll = Some(Duration::from_millis(10));
    let started = Instant::now();
    let report = run(
        &config,
        UserAgents::builtin(),
        tokio::time::sleep(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < DEADLINE);
    let c = &report.counts;
    assert!(c.events_accepted > 0, "{report:#?}");
    assert_eq!(c.requests, c.status_202);
    let (_, all_events) = realtime(server.addr, "harness-stop", true).await;
    assert_eq!(all_events, c.events_accepted);
    server.shutdown().await;
}

#[test]
fn the_builtin_user_agents_are_classified_as_labelled() {
    for ua in BUILTIN_BROWSERS {
        assert!(!pulse_server::user_agent::classify(ua).is_bot, "{ua}");
    }
    for ua in BUILTIN_BOTS {
        assert!(pulse_server::user_agent::classify(ua).is_bot, "{ua}");
    }
}

#[test]
fn the_testdata_user_agent_files_load_line_for_line_or_fall_back() {
    let agents = sample_user_agents();
    assert_eq!(agents.browsers, sample_lines("browser-user-agents.txt"));
    assert_eq!(agents.bots, sample_lines("bot-user-agents.txt"));
    assert!(
        agents.browsers.len() > BUILTIN_BROWSERS.len() && agents.bots.len() > BUILTIN_BOTS.len()
    );

    // Without both files the harness says it uses its built-in sample.
    let missing = UserAgents::from_dir_or_builtin(std::path::Path::new("/nonexistent"));
    assert_eq!(missing.browsers.len(), BUILTIN_BROWSERS.len());
    assert_eq!(missing.source, "built-in sample");
    let half = tempfile::tempdir().unwrap();
    std::fs::copy(
        testdata_dir().join("browser-user-agents.txt"),
        half.path().join("browser-user-agents.txt"),
    )
    .unwrap();
    assert_eq!(
        UserAgents::from_dir_or_builtin(half.path()).source,
        "built-in sample"
    );
}
