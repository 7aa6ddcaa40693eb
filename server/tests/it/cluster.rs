//! Cluster mode end to end (issue 16): real `nats-server` processes (a 3-node JetStream cluster
//! on loopback, from `pulse_testkit::nats`) and 2–3 real `pulse --cluster …` nodes, checked from
//! outside: websites seen by every node, one exact answer whichever node events hit, a NATS node
//! lost without losing an acknowledged event, a stream leader change without 503s, a fresh node
//! rebuilding the window from the stream, 503 (never 202) with all of NATS gone while realtime
//! answers from memory, and one salt across a midnight (libfaketime moves the pulse nodes'
//! clocks; NATS keeps the real one).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pulse_testkit::fixtures::{error_check, eventually, CHROME_DESKTOP, FIREFOX_DESKTOP};
use pulse_testkit::http::Response;
use pulse_testkit::nats::NatsCluster;
use pulse_testkit::server::{Opts, Server};
use serde_json::{json, Value};

use crate::clock::{under_faketime, LIBFAKETIME};
use crate::start;

const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long every node may take to count what one of them acknowledged.
const SPREAD_DEADLINE: Duration = Duration::from_secs(10);
const SITE: &str = "shop";
/// How long every node may take to count what was acknowledged across a NATS server's death.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Options of a node of the cluster at `urls`: requests come from 127.0.0.1, a trusted proxy,
/// so each test visitor is its own `X-Forwarded-For` address.
fn node_opts(urls: &str) -> Opts {
    Opts::default()
        .trusted_proxies("127.0.0.1/32")
        .args(&["--cluster", urls])
}

/// Starts a node and waits until it has caught up with the stream.
async fn node(opts: Opts) -> Server {
    let server = start(opts);
    server.wait_ready(READY_DEADLINE).await;
    server
}

/// The address of test visitor `n` (0–249).
fn visitor_ip(n: usize) -> String {
    format!("198.51.100.{}", n + 1)
}

/// One pageview of visitor `n` to `node`.
async fn pageview(node: &Server, visitor: usize, path: &str) -> Response {
    node.collect_with(
        &json!({"website_id": SITE, "type": "pageview", "url": path}),
        Some(CHROME_DESKTOP),
        &[("x-forwarded-for", &visitor_ip(visitor))],
    )
    .await
}

/// Sends `per_visitor` pageviews from each of `visitors` visitors, event `k` to node
/// `k % nodes.len()`, asserting 202 for each; returns how many were sent.
async fn round_robin(nodes: &[&Server], visitors: usize, per_visitor: usize) -> u64 {
    let mut k = 0;
    for round in 0..per_visitor {
        for visitor in 0..visitors {
            let resp = pageview(nodes[k % nodes.len()], visitor, &format!("/p/{round}")).await;
            assert_eq!(resp.status, 202, "event {k}: {resp:?}");
            k += 1;
        }
    }
    k as u64
}

/// Waits until `node` counts `events` events in its window; returns its realtime data.
async fn wait_for_total(node: &Server, events: u64) -> Value {
    let reached = eventually(SPREAD_DEADLINE, || async {
        node.realtime(SITE).await["pagination"]["total_in_window"].as_u64() == Some(events)
    })
    .await;
    let data = node.realtime(SITE).await;
    assert!(
        reached,
        "a node should count {events} events within {SPREAD_DEADLINE:?}: {data}\nstderr:\n{}",
        node.stderr()
    );
    data
}

/// Waits until `node` counts at least the `acknowledged` events, then checks it counts at most
/// the `sent` ones: an event answered 503 may still have been stored (its ack was lost), so a
/// count in between is exact.
async fn wait_for_acknowledged(node: &Server, acknowledged: u64, sent: u64, deadline: Duration) {
    let counted = eventually(deadline, || async {
        node.realtime(SITE).await["pagination"]["total_in_window"]
            .as_u64()
            .is_some_and(|total| total >= acknowledged)
    })
    .await;
    let data = node.realtime(SITE).await;
    assert!(
        counted,
        "{acknowledged} acknowledged events, {sent} sent, but the node counts: {data}\n\
         stderr:\n{}",
        node.stderr()
    );
    let total = data["pagination"]["total_in_window"].as_u64().unwrap();
    assert!(total <= sent, "{total} counted, only {sent} sent: {data}");
}

/// Creates `SITE` on `a` and waits until `b` lists it (the set-up of every two-node test).
async fn site_on_both(a: &Server, b: &Server) {
    a.site(SITE, "shop.example").await;
    assert!(
        eventually(SPREAD_DEADLINE, || async {
            b.website_ids().await == [SITE]
        })
        .await,
        "B never listed {SITE}"
    );
}

#[tokio::test]
async fn a_website_created_on_one_node_is_listed_by_another_within_3_s() {
    let nats = NatsCluster::start(3).await;
    let a = node(node_opts(&nats.urls())).await;
    let b = node(node_opts(&nats.urls())).await;
    a.site(SITE, "shop.example").await;
    let listed = eventually(Duration::from_secs(3), || async {
        b.website_ids().await == [SITE]
    })
    .await;
    assert!(
        listed,
        "B lists {:?} 3 s after A created {SITE}",
        b.website_ids().await
    );
    // Changes and deletes travel the same way; a delete is final on every node.
    let resp = b
        .patch_json(
            &format!("/api/websites/{SITE}"),
            &json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let renamed = eventually(Duration::from_secs(3), || async {
        a.get(&format!("/api/websites/{SITE}")).await.json()["data"]["name"] == "Renamed"
    })
    .await;
    assert!(renamed, "A did not see B's change within 3 s");
    assert_eq!(b.delete(&format!("/api/websites/{SITE}")).await.status, 204);
    let gone = eventually(Duration::from_secs(3), || async {
        a.website_ids().await.is_empty()
    })
    .await;
    assert!(
        gone,
        "A still lists {:?} after B deleted it",
        a.website_ids().await
    );
    let resp = pageview(&a, 0, "/after-delete").await;
    assert!(
        error_check(&resp, 404, "unknown_website").is_ok(),
        "{resp:?}"
    );
}

#[tokio::test]
async fn events_from_50_visitors_sent_round_robin_give_one_exact_answer_on_both_nodes() {
    let nats = NatsCluster::start(3).await;
    let a = node(node_opts(&nats.urls())).await;
    let b = node(node_opts(&nats.urls())).await;
    site_on_both(&a, &b).await;
    let sent = round_robin(&[&a, &b], 50, 4).await;
    let on_a = wait_for_total(&a, sent).await;
    let on_b = wait_for_total(&b, sent).await;
    assert_eq!(
        on_a["active_visitors"].as_u64(),
        Some(50),
        "each visitor counted once whichever node it hit: {on_a}"
    );
    assert_eq!(on_a, on_b, "both nodes must give the same answer");
}

#[tokio::test]
async fn sigkill_of_one_nats_node_keeps_ingest_going_and_loses_no_acknowledged_event() {
    let mut nats = NatsCluster::start(3).await;
    // A knows only the node that will die, so it must fail over to servers it learnt about.
    let a = node(node_opts(&nats.nodes[0].url())).await;
    let b = node(node_opts(&nats.urls())).await;
    site_on_both(&a, &b).await;
    let mut acknowledged = 0_u64;
    let mut sent = 0_u64;
    // Which node answered 503 and why: what a failure before the kill has to show.
    let mut refused = Vec::new();
    let mut send = async |count: usize, acknowledged: &mut u64, refused: &mut Vec<String>| {
        for _ in 0..count {
            let (name, node) = if sent.is_multiple_of(2) {
                ("A", &a)
            } else {
                ("B", &b)
            };
            let resp = pageview(node, (sent % 50) as usize, &format!("/n/{sent}")).await;
            match resp.status {
                202 => *acknowledged += 1,
                503 => {
                    assert!(
                        error_check(&resp, 503, "cluster_unavailable").is_ok(),
                        "{resp:?}"
                    );
                    refused.push(format!("event {sent} on {name}: {}", resp.text()));
                }
                _ => panic!("collect during a NATS failover must be 202 or 503: {resp:?}"),
            }
            sent += 1;
        }
    };
    send(40, &mut acknowledged, &mut refused).await;
    if acknowledged != 40 {
        let nats_logs: String = nats
            .nodes
            .iter()
            .map(|n| format!("--- {}:\n{}\n", n.name, n.log()))
            .collect();
        panic!(
            "all events are acknowledged before the kill, but {} were not:\n{}\n\
             A's stderr:\n{}\nB's stderr:\n{}\nNATS logs:\n{nats_logs}",
            40 - acknowledged,
            refused.join("\n"),
            a.stderr(),
            b.stderr()
        );
    }
    nats.kill_9(0);
    let after_kill = acknowledged;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged < after_kill + 40 {
        assert!(
            Instant::now() < deadline,
            "ingest did not continue after one NATS node died: {} acknowledged since",
            acknowledged - after_kill
        );
        send(1, &mut acknowledged, &mut refused).await;
    }
    // A node whose events consumer lived on the dead server starts a new one, which may wait for
    // JetStream to elect new leaders: longer than `SPREAD_DEADLINE` on a loaded machine.
    for node in [&a, &b] {
        wait_for_acknowledged(node, acknowledged, sent, FAILOVER_DEADLINE).await;
    }
}

/// Asks JetStream, as an operator would (`nats stream cluster step-down`), to move the events
/// stream's leadership to another server; returns once the old leader has stepped down.
async fn step_down_events_stream_leader(nats: &NatsCluster) {
    let client = async_nats::connect(nats.nodes[1].url()).await.unwrap();
    let resp = client
        .request(
            "$JS.API.STREAM.LEADER.STEPDOWN.PULSE_EVENTS",
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(answer["success"], true, "step-down refused: {answer}");
}

/// Until the new leader takes over, JetStream answers a publish with "no responders": no server
/// took it, nothing was stored. Collect publishes again within its 3 s instead of answering 503
/// (it answered 503 at once: a burst of them whenever a loaded machine's NATS changed a stream
/// leader, as before the kill in the failover test). Only a publish caught in flight at the
/// handover may still lose its ack: one 503 at most, as the events are sent one at a time.
#[tokio::test]
async fn a_stream_leader_change_is_ridden_over_without_503s_and_loses_no_acknowledged_event() {
    let nats = NatsCluster::start(3).await;
    let a = node(node_opts(&nats.nodes[0].url())).await;
    let b = node(node_opts(&nats.urls())).await;
    site_on_both(&a, &b).await;
    let mut acknowledged = round_robin(&[&a, &b], 10, 1).await;
    step_down_events_stream_leader(&nats).await;
    // Sent at once: the first ones reach the stream while it has no leader.
    let mut refused = Vec::new();
    for k in 0..50 {
        let node = if k % 2 == 0 { &a } else { &b };
        let resp = pageview(node, k, "/after-step-down").await;
        match resp.status {
            202 => acknowledged += 1,
            503 if error_check(&resp, 503, "cluster_unavailable").is_ok() => {
                refused.push(format!("event {k}: {}", resp.text()));
            }
            _ => panic!("collect must be 202 or a retryable 503: {resp:?}"),
        }
    }
    assert!(
        refused.len() <= 1,
        "a stream leader change must not turn collect into 503s:\n{}",
        refused.join("\n")
    );
    for node in [&a, &b] {
        wait_for_acknowledged(node, acknowledged, 60, FAILOVER_DEADLINE).await;
    }
}

#[tokio::test]
async fn a_fresh_node_with_an_empty_data_dir_restores_the_exact_window_after_a_node_is_killed() {
    let nats = NatsCluster::start(3).await;
    let a = node(node_opts(&nats.urls())).await;
    let mut b = node(node_opts(&nats.urls())).await;
    site_on_both(&a, &b).await;
    let sent = round_robin(&[&a, &b], 50, 3).await;
    let before = wait_for_total(&a, sent).await;
    b.kill_9();
    let fresh = node(node_opts(&nats.urls())).await;
    assert!(
        std::fs::read_dir(fresh.data_dir())
            .unwrap()
            .all(|e| e.unwrap().file_name() != "websites.json"),
        "the fresh node keeps its websites in the cluster, not in its data directory"
    );
    assert_eq!(fresh.website_ids().await, [SITE]);
    let restored = fresh.realtime(SITE).await;
    assert_eq!(
        restored, before,
        "a node started empty must answer exactly as the running one, once ready"
    );
}

#[tokio::test]
async fn with_all_of_nats_gone_collect_answers_503_and_realtime_answers_stale_from_memory() {
    let mut nats = NatsCluster::start(3).await;
    let a = node(node_opts(&nats.urls())).await;
    a.site(SITE, "shop.example").await;
    let sent = round_robin(&[&a], 10, 2).await;
    let before = wait_for_total(&a, sent).await;
    assert!(before.get("stale").is_none(), "{before}");
    nats.kill_all();
    for n in 0..5 {
        let resp = pageview(&a, n, "/while-down").await;
        assert!(
            error_check(&resp, 503, "cluster_unavailable").is_ok(),
            "collect without NATS must be 503, never 202: {resp:?}"
        );
        assert!(resp.header("retry-after").is_some(), "{resp:?}");
    }
    // A website change cannot reach the shared bucket: retryable, like collect, not a broken
    // websites file (it was a 500 `storage_failed`).
    let resp = a
        .patch_json(
            &format!("/api/websites/{SITE}"),
            &json!({"name": "renamed"}),
        )
        .await;
    assert!(
        error_check(&resp, 503, "cluster_unavailable").is_ok(),
        "a website change without NATS must be a retryable 503: {resp:?}"
    );
    assert!(resp.header("retry-after").is_some(), "{resp:?}");
    let stale = eventually(SPREAD_DEADLINE, || async {
        a.realtime(SITE).await["stale"] == true
    })
    .await;
    let during = a.realtime(SITE).await;
    assert!(stale, "realtime must say it is stale: {during}");
    assert_eq!(
        (
            during["active_visitors"].clone(),
            during["pagination"]["total_in_window"].clone(),
            during["recent_events"].clone()
        ),
        (
            before["active_visitors"].clone(),
            before["pagination"]["total_in_window"].clone(),
            before["recent_events"].clone()
        ),
        "realtime keeps answering from memory"
    );
    let metrics = a.scrape().await;
    assert_eq!(metrics.value("pulse_cluster_stale", &[]), 1.0);
}

/// At the first requests of a UTC day with all of NATS gone, no salt for the day can be had:
/// one request waits out the key-value timeout, the others are answered 503 at once, and
/// realtime keeps answering meanwhile (each waiting request used to hold a worker thread for the
/// whole timeout, in turn, so the node stopped answering anything).
#[tokio::test]
async fn past_midnight_with_nats_gone_collect_is_a_quick_503_and_realtime_still_answers() {
    let mut nats = NatsCluster::start(3).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let midnight_ms = (now_ms / 86_400_000 + 1) * 86_400_000;
    // 23:50: NATS goes before the last minutes of the day, in which the new day's salt would be
    // fetched ahead.
    let a = node(node_opts(&nats.urls()).test_clock(midnight_ms - 600_000)).await;
    a.site(SITE, "shop.example").await;
    assert_eq!(pageview(&a, 0, "/before").await.status, 202);
    wait_for_total(&a, 1).await;
    nats.kill_all();
    a.set_clock(midnight_ms + 1_000).await;

    let a = &a;
    let collects = futures_util::future::join_all((1..=6).map(|n| async move {
        let began = Instant::now();
        let resp = pageview(a, n, "/after-midnight").await;
        (resp, began.elapsed())
    }));
    let realtime = async {
        // While the first collect waits on NATS for the day's salt.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let began = Instant::now();
        let data = a.realtime(SITE).await;
        (data, began.elapsed())
    };
    let (collects, (data, realtime_took)) = tokio::join!(collects, realtime);
    assert_eq!(data["pagination"]["total_in_window"], 1, "{data}");
    assert!(
        realtime_took < Duration::from_secs(2),
        "realtime took {realtime_took:?} while collects waited for a salt"
    );
    let mut slow = 0;
    for (resp, took) in &collects {
        assert!(
            error_check(resp, 503, "salt_unavailable").is_ok(),
            "no salt for the day, no 202: {resp:?}"
        );
        assert!(resp.header("retry-after").is_some(), "{resp:?}");
        slow += usize::from(*took >= Duration::from_secs(2));
    }
    assert!(
        slow <= 1,
        "one request may wait for NATS, not each in turn: {:?}",
        collects.iter().map(|(_, took)| *took).collect::<Vec<_>>()
    );
}

/// The clock offset that puts "now" `margin_secs` before the next UTC midnight, and that midnight
/// (Unix seconds).
fn offset_to_before_midnight(margin_secs: u64) -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let midnight = (now / 86_400 + 1) * 86_400;
    (midnight - now - margin_secs, midnight)
}

#[tokio::test]
async fn two_nodes_share_one_salt_across_midnight() {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!("SKIPPED: {LIBFAKETIME} is missing (apt-get install faketime); not checked");
        return;
    }
    let nats = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("faketime");
    // The pulse nodes' clocks run 20 s before the next UTC midnight; NATS keeps the real one.
    const MARGIN_SECS: u64 = 20;
    let (offset_secs, midnight) = offset_to_before_midnight(MARGIN_SECS);
    std::fs::write(&offset_file, format!("+{offset_secs}\n")).unwrap();
    // The real second at which the nodes' clocks reach that midnight.
    let real_midnight = midnight - offset_secs;
    let fake = |opts: Opts| under_faketime(opts, &offset_file);
    let a = node(fake(node_opts(&nats.urls()))).await;
    let b = node(fake(node_opts(&nats.urls()))).await;
    site_on_both(&a, &b).await;

    // Visitor 0 before midnight, on A.
    assert_eq!(pageview(&a, 0, "/before").await.status, 202);
    let data = wait_for_total(&a, 1).await;
    let ts = data["recent_events"][0]["ts"].as_str().unwrap().to_owned();
    let stamped = pulse_testkit::fixtures::parse_utc_second(&ts).unwrap();
    assert!(
        (stamped as u64) < midnight,
        "the first event must be stamped before midnight ({ts}); start-up took too long"
    );
    // Wait (condition and deadline) until the nodes' clocks are past midnight.
    let wait_end = Instant::now() + Duration::from_secs(MARGIN_SECS + 10);
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= real_midnight
    {
        assert!(Instant::now() < wait_end, "midnight never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After midnight: visitor 1 hits both nodes at once (both need the new day's salt and race
    // to create it), visitor 0 comes back on B.
    let (on_a, on_b) = tokio::join!(pageview(&a, 1, "/after"), pageview(&b, 1, "/after"));
    assert_eq!((on_a.status, on_b.status), (202, 202), "{on_a:?} {on_b:?}");
    let back = b
        .collect_with(
            &json!({"website_id": SITE, "type": "pageview", "url": "/back"}),
            Some(CHROME_DESKTOP),
            &[("x-forwarded-for", &visitor_ip(0))],
        )
        .await;
    assert_eq!(back.status, 202, "{back:?}");
    let on_a = wait_for_total(&a, 4).await;
    let on_b = wait_for_total(&b, 4).await;
    assert_eq!(
        on_a["active_visitors"].as_u64(),
        Some(2),
        "one salt for the new day on both nodes (visitor 1 once) and the carry-over across \
         midnight (visitor 0 once): {on_a}"
    );
    assert_eq!(on_a, on_b);
    // A visitor's id differs only by its browser: a second browser is a second visitor.
    assert_eq!(
        b.collect_with(
            &json!({"website_id": SITE, "type": "pageview", "url": "/firefox"}),
            Some(FIREFOX_DESKTOP),
            &[("x-forwarded-for", &visitor_ip(1))],
        )
        .await
        .status,
        202
    );
    assert_eq!(
        wait_for_total(&a, 5).await["active_visitors"].as_u64(),
        Some(3)
    );
}

/// Checkpoint files in `data_dir` (`checkpoints/*.ckpt`).
fn checkpoint_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("checkpoints")).map_or(0, |entries| {
        entries
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "ckpt"))
            })
            .count()
    })
}

/// Cluster mode keeps no checkpoint: a node refills its engine from the stream on every start,
/// so a checkpoint restored under it would count its events twice.
#[tokio::test]
async fn a_node_restarted_on_its_own_data_dir_counts_every_event_once() {
    let nats = NatsCluster::start(3).await;
    let mut a = node(node_opts(&nats.urls()).args(&["--checkpoint-interval-secs", "1"])).await;
    a.site(SITE, "shop.example").await;
    let sent = round_robin(&[&a], 20, 2).await;
    let before = wait_for_total(&a, sent).await;
    // Three checkpoint intervals: ample for the task to write one, were it running.
    let written = eventually(Duration::from_secs(3), || async {
        checkpoint_files(a.data_dir()) > 0
    })
    .await;
    assert!(!written, "a cluster node wrote a checkpoint");
    a.restart();
    a.wait_ready(READY_DEADLINE).await;
    let after = a.realtime(SITE).await;
    assert_eq!(
        after,
        before,
        "a node restarted on its data directory must answer as before\nstderr:\n{}",
        a.stderr()
    );
}
