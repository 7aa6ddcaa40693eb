//! Checkpoints of the `pulse` binary (issue 15): a restart loads the newest checkpoint and
//! replays only the log after it, and answers exactly as before the stop (SIGTERM or SIGKILL)
//! and as a replay of the whole log would; a damaged checkpoint, one of another format version
//! or one made under other limits is ignored and the whole log replayed; SIGKILL while a
//! checkpoint is being written (slowed down by the hidden `--checkpoint-write-pace-ms`) never
//! loses an acknowledged event nor changes an answer. The breakdown is part of the checkpoint:
//! its lists and series are the same after a restart from one.

// SIGKILL is a Unix notion.
#![cfg(unix)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pulse_testkit::fixtures::{eventually, CHROME_DESKTOP, GOOGLEBOT, SAFARI_IPHONE};
use pulse_testkit::server::{Opts, Server};
use serde_json::{json, Value};

use crate::start_in;

const SITE: &str = "w";
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a test waits for the server to write a checkpoint.
const CHECKPOINT_DEADLINE: Duration = Duration::from_secs(30);

fn opts(interval_secs: &str) -> Opts {
    Opts::default().args(&[
        "--durability",
        "sync",
        "--checkpoint-interval-secs",
        interval_secs,
    ])
}

/// Sends events `from..from + count` (URL `/n/{n}`), visitor `v{n % visitors}`, in batches of
/// 50, asserting each batch is accepted.
async fn send(server: &Server, from: u64, count: u64, visitors: u64) {
    let numbers: Vec<u64> = (from..from + count).collect();
    for batch in numbers.chunks(50) {
        let body: Vec<Value> = batch
            .iter()
            .map(|n| {
                json!({"website_id": SITE, "type": "pageview", "url": format!("/n/{n}"),
                       "visitor_id": format!("v{}", n % visitors)})
            })
            .collect();
        let resp = server.collect(&Value::Array(body)).await;
        assert_eq!(resp.status, 202, "collect: {resp:?}");
    }
}

fn checkpoint_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

/// The checkpoint files in `data_dir` (name, sequence number), `.tmp` files left out.
fn checkpoints(data_dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(checkpoint_dir(data_dir)) else {
        return Vec::new();
    };
    let mut found: Vec<(String, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = name.strip_suffix(".ckpt")?.parse().ok()?;
            Some((name, seq))
        })
        .collect();
    found.sort();
    found
}

/// Waits for a checkpoint holding at least `events` events.
async fn wait_for_checkpoint(server: &Server, events: u64) -> PathBuf {
    let dir = server.data_dir().to_owned();
    let written = eventually(CHECKPOINT_DEADLINE, || {
        let found = checkpoints(&dir);
        async move { found.iter().any(|(_, seq)| *seq >= events) }
    })
    .await;
    assert!(
        written,
        "no checkpoint of {events} events within {CHECKPOINT_DEADLINE:?}: {:?}; stderr:\n{}",
        checkpoints(&dir),
        server.stderr()
    );
    let (name, _) = checkpoints(&dir).pop().unwrap();
    checkpoint_dir(&dir).join(name)
}

/// The answers a restart must keep: humans only and with bots.
async fn answers(server: &Server) -> (Value, Value) {
    (
        server.realtime_q(SITE, "?include_bots=false").await,
        server.realtime_q(SITE, "?include_bots=true").await,
    )
}

/// `/readyz`'s `checkpoint` object, once the server is ready.
async fn ready_checkpoint(server: &Server) -> (Value, Value) {
    let replay = server.wait_ready(READY_DEADLINE).await;
    let body = server.readyz().await.json();
    (replay, body["checkpoint"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_checkpoint_answers_as_before_after_sigterm_and_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start_in(opts("1"), tmp.path());
    server.site(SITE, "w.example").await;
    send(&server, 0, 600, 250).await;
    wait_for_checkpoint(&server, 600).await;
    // The tail: logged after the checkpoint, replayed at the restart.
    send(&server, 600, 150, 400).await;
    let before = answers(&server).await;
    assert_eq!(before.0["pagination"]["total_in_window"], 750);

    server.restart();
    let (replay, checkpoint) = ready_checkpoint(&server).await;
    assert_eq!(checkpoint["loaded"], true, "{checkpoint}");
    assert!(
        replay["events"].as_u64().unwrap() < 750,
        "the checkpoint's events were replayed too: {replay}"
    );
    assert_eq!(answers(&server).await, before, "after SIGTERM");

    send(&server, 750, 100, 300).await;
    let before = answers(&server).await;
    server.kill_9();
    server.respawn();
    let (_, checkpoint) = ready_checkpoint(&server).await;
    assert_eq!(checkpoint["loaded"], true, "{checkpoint}");
    assert_eq!(answers(&server).await, before, "after SIGKILL");
    let scrape = server.scrape().await;
    assert!(scrape.value("pulse_checkpoint_bytes", &[]) > 0.0);
    assert!(scrape.value("pulse_checkpoint_age_seconds", &[]) >= 0.0);
}

/// Both breakdowns (humans only, and with bots) with every row of every list.
async fn breakdowns(server: &Server) -> (Value, Value) {
    (
        server
            .breakdown_q(SITE, "?limit=100&include_bots=false")
            .await,
        server
            .breakdown_q(SITE, "?limit=100&include_bots=true")
            .await,
    )
}

/// Events `from..from + count` of a mix: visitor `b{n % 7}`, a page of five (every third with a
/// referrer), every fourth a custom event, user agents alternating between a desktop, a phone
/// and a crawler (a bot).
async fn send_mixed(server: &Server, from: u64, count: u64) {
    for n in from..from + count {
        let mut event = if n % 4 == 3 {
            json!({"website_id": SITE, "type": "event", "url": "/", "event_name": format!("e{}", n % 2)})
        } else {
            json!({"website_id": SITE, "type": "pageview", "url": format!("/p/{}", n % 5)})
        };
        event["visitor_id"] = json!(format!("b{}", n % 7));
        if n % 3 == 0 {
            event["referrer"] = json!(format!("https://r{}.example/x", n % 2));
        }
        let agent = [CHROME_DESKTOP, SAFARI_IPHONE, GOOGLEBOT][(n % 3) as usize];
        let resp = server.collect_with(&event, Some(agent), &[]).await;
        assert_eq!(resp.status, 202, "collect {event}: {resp:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_checkpoint_keeps_the_breakdown_after_sigterm_and_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    // Mid-minute, so the series' minutes are the test clock's whatever the wall clock does.
    let t0 = 1_772_532_030_000_i64;
    let mut server = start_in(opts("1").test_clock(t0), tmp.path());
    server.site(SITE, "w.example").await;
    for minute in 0..3 {
        server.set_clock(t0 + minute * 60_000).await;
        send_mixed(&server, minute as u64 * 40, 40).await;
    }
    wait_for_checkpoint(&server, 120).await;
    // The tail: logged after the checkpoint, replayed at the restart.
    let now_ms = t0 + 3 * 60_000;
    server.set_clock(now_ms).await;
    send_mixed(&server, 120, 30).await;
    let before = breakdowns(&server).await;
    let pageviews: u64 = before.1["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pageviews"].as_u64().unwrap())
        .sum();
    assert_eq!(pageviews, 113, "{}", before.1);
    assert_ne!(
        before.0, before.1,
        "the crawler's events count only with bots"
    );

    server.stop();
    server.opts_mut().test_clock_ms = Some(now_ms);
    server.respawn();
    let (replay, checkpoint) = ready_checkpoint(&server).await;
    assert_eq!(checkpoint["loaded"], true, "{checkpoint}");
    assert!(
        replay["events"].as_u64().unwrap() < 150,
        "the checkpoint's events were replayed too: {replay}"
    );
    assert_eq!(breakdowns(&server).await, before, "after SIGTERM");

    send_mixed(&server, 150, 20).await;
    wait_for_checkpoint(&server, 170).await;
    let before = breakdowns(&server).await;
    server.kill_9();
    server.respawn();
    let (_, checkpoint) = ready_checkpoint(&server).await;
    assert_eq!(checkpoint["loaded"], true, "{checkpoint}");
    assert_eq!(breakdowns(&server).await, before, "after SIGKILL");
}

/// Rewrites the checkpoint header's format version, with a valid header checksum: a file a
/// later (or earlier) Pulse could have written.
fn set_version(path: &Path, version: u16) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[8..10].copy_from_slice(&version.to_le_bytes());
    let crc_at = pulse_snapshot::checkpoint::HEADER_CRC_AT;
    let crc = crc32c::crc32c(&bytes[..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_foreign_or_other_limits_checkpoint_is_ignored_and_the_log_replayed_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start_in(opts("1"), tmp.path());
    server.site(SITE, "w.example").await;
    send(&server, 0, 400, 150).await;
    let path = wait_for_checkpoint(&server, 400).await;
    let before = answers(&server).await;
    server.stop();
    let valid = std::fs::read(&path).unwrap();

    // Checkpoints stay enabled (a disabled server would not even look), rarely enough that the
    // restarted server writes none.
    let enabled = || opts("3600");
    type Spoil = Box<dyn Fn(&Path)>;
    let damage: [(&str, Spoil, Opts); 3] = [
        (
            "a flipped body byte",
            Box::new(|p: &Path| {
                let mut bytes = std::fs::read(p).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x40;
                std::fs::write(p, bytes).unwrap();
            }),
            enabled(),
        ),
        (
            "another format version",
            Box::new(|p: &Path| set_version(p, 99)),
            enabled(),
        ),
        (
            "other limits",
            Box::new(|_: &Path| {}),
            enabled().args(&["--ring-capacity", "300"]),
        ),
    ];
    for (what, spoil, restart_opts) in damage {
        std::fs::write(&path, &valid).unwrap();
        spoil(&path);
        let mut restarted = start_in(restart_opts, tmp.path());
        let (replay, checkpoint) = ready_checkpoint(&restarted).await;
        assert_eq!(checkpoint["loaded"], false, "{what}: {checkpoint}");
        assert_eq!(checkpoint["ignored"], 1, "{what}: {checkpoint}");
        assert_eq!(replay["events"], 400, "{what}: the whole log is replayed");
        assert_eq!(answers(&restarted).await, before, "{what}");
        assert!(
            restarted.stderr().contains("checkpoint ignored"),
            "{what}: no log line says the checkpoint was ignored"
        );
        restarted.stop();
    }
}

/// One round's stop: SIGKILL while a checkpoint file is being written.
async fn kill_while_writing(server: &mut Server, delay: Duration) {
    let dir = checkpoint_dir(server.data_dir());
    let writing = eventually(CHECKPOINT_DEADLINE, || {
        let dir = dir.clone();
        async move {
            std::fs::read_dir(&dir).is_ok_and(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
        }
    })
    .await;
    assert!(
        writing,
        "no checkpoint was being written within the deadline"
    );
    tokio::time::sleep(delay).await;
    server.kill_9();
}

/// The answers of a server on `data_dir` that replays the whole log (checkpoints moved aside).
async fn full_replay_answers(data_dir: &Path) -> (Value, Value) {
    let aside = data_dir.join("checkpoints-aside");
    std::fs::rename(checkpoint_dir(data_dir), &aside).unwrap();
    let mut reference = start_in(opts("0"), data_dir);
    let (_, checkpoint) = ready_checkpoint(&reference).await;
    assert_eq!(checkpoint["loaded"], false);
    let full = answers(&reference).await;
    reference.stop();
    std::fs::rename(&aside, checkpoint_dir(data_dir)).unwrap();
    full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_checkpoint_is_written_loses_nothing_and_changes_no_answer() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 ms between 64 KiB writes: a checkpoint of 20,000 visitors takes a few of them.
    let slow = || opts("1").args(&["--checkpoint-write-pace-ms", "20"]);
    let mut server = start_in(slow(), tmp.path());
    server.site(SITE, "w.example").await;
    let mut sent = 0;
    for round in 0..4_u64 {
        send(&server, sent, 5_000, 20_000).await;
        sent += 5_000;
        // A complete checkpoint of the round's events, then a tail the next one would hold.
        wait_for_checkpoint(&server, sent).await;
        send(&server, sent, 500, 20_000).await;
        sent += 500;
        let before = answers(&server).await;
        // Points spread over the write: at once, mid-way, near the end, after the rename.
        kill_while_writing(&mut server, Duration::from_millis(round * 35)).await;
        server.respawn();
        let (_, checkpoint) = ready_checkpoint(&server).await;
        assert_eq!(checkpoint["loaded"], true, "round {round}: {checkpoint}");
        let after = answers(&server).await;
        assert_eq!(
            after, before,
            "round {round}: the restart changed the answer"
        );
        assert_eq!(
            after.0["pagination"]["total_in_window"], sent,
            "round {round}"
        );
        server.stop();
        assert_eq!(
            full_replay_answers(tmp.path()).await,
            after,
            "round {round}: the checkpoint's restart and a full replay disagree"
        );
        server.respawn();
        server.wait_ready(READY_DEADLINE).await;
    }
    server.stop();
    let mut logged = BTreeSet::new();
    pulse_snapshot::replay(
        &tmp.path().join("segments"),
        pulse_snapshot::ReplayOptions::default(),
        |e| {
            if let Some(event) = e.entry.event() {
                logged.insert(event.target.to_string());
            }
        },
    )
    .unwrap();
    let missing: Vec<u64> = (0..sent)
        .filter(|n| !logged.contains(&format!("/n/{n}")))
        .collect();
    assert!(missing.is_empty(), "acknowledged events lost: {missing:?}");
    assert!(
        checkpoints(tmp.path()).len() <= 1,
        "older checkpoints are kept: {:?}",
        checkpoints(tmp.path())
    );
}
