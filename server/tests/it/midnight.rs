//! Midnight through the real binary, on the test clock (`--test-clock`, `POST /api/test/clock`):
//! a visitor seen at 23:59 and 00:01 counts once, also after restarts inside and after the
//! carry-over, and yesterday's salt file is deleted once the carry-over has passed — by the
//! maintenance timer when no request arrives, and is gone at a start after it (`SaltStore::open`
//! deletes it; its unit tests in `salts.rs` pin that, since the timer's first tick at start
//! would too). Also the test clock's own contract (forward only, absent unless asked for).
//!
//! The unit-level rules are `pulse_engine::identity`'s and `server/src/salts.rs`'s; here the
//! question is whether the server wires them together: the salt store, the log's `carried`
//! flag, replay and the timer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pulse_testkit::fixtures::{counts_of, eventually, pageview, CHROME_DESKTOP};
use pulse_testkit::server::{assert_exit_zero, Opts, Server};
use serde_json::json;

use crate::start;

const SITE: &str = "m";
/// A UTC day (2026-02-15); its midnight into the next day is `MIDNIGHT_MS`.
const DAY: i64 = 20_499;
const DAY_MS: i64 = 86_400_000;
const MIDNIGHT_MS: i64 = (DAY + 1) * DAY_MS;
const MINUTE_MS: i64 = 60_000;
/// The carry-over after midnight: one window (30 minutes by default).
const CARRY_MS: i64 = 30 * MINUTE_MS;
/// How long start-up may take.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// The maintenance timer ticks every 5 s (real time); two ticks and some.
const MAINTENANCE_DEADLINE: Duration = Duration::from_secs(15);

/// The salt files in the server's data directory, by day, sorted (a salt being written, as
/// its temporary file, is not there yet).
fn salt_days(data_dir: &Path) -> Vec<i64> {
    let dir: PathBuf = data_dir.join("salts");
    let mut days: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".tmp"))
        .map(|name| {
            name.strip_suffix(".salt")
                .and_then(|day| day.parse().ok())
                .unwrap_or_else(|| panic!("unexpected file {name:?} in salts/"))
        })
        .collect();
    days.sort_unstable();
    days
}

/// One pageview of the harness's one visitor (127.0.0.1, desktop Chrome) to `path`, asserting
/// 202.
async fn visit(proc: &Server, path: &str) {
    let resp = proc
        .collect_with(&pageview(SITE, path), Some(CHROME_DESKTOP), &[])
        .await;
    assert_eq!(resp.status, 202, "collect {path}: {resp:?}");
}

/// A server on the test clock at `start_ms`, ready, with the website.
async fn server_at(start_ms: i64) -> Server {
    let proc = start(Opts::default().test_clock(start_ms));
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;
    proc
}

/// Restarts `proc` (SIGTERM, exit 0) with its test clock starting at `start_ms`.
async fn restart_at(proc: &mut Server, start_ms: i64) {
    assert_exit_zero(proc.stop(), "SIGTERM before a restart", &proc.stderr());
    proc.opts_mut().test_clock_ms = Some(start_ms);
    proc.respawn();
    proc.wait_ready(READY_DEADLINE).await;
}

#[tokio::test]
async fn a_visitor_seen_at_2359_and_0001_counts_once() {
    let proc = server_at(MIDNIGHT_MS - MINUTE_MS).await;
    visit(&proc, "/before").await;
    proc.set_clock(MIDNIGHT_MS + MINUTE_MS).await;
    visit(&proc, "/after").await;
    assert_eq!(
        counts_of(&proc.realtime(SITE).await),
        (1, 2),
        "one visitor with two events across midnight: (active_visitors, total_in_window)"
    );
    assert_eq!(
        salt_days(proc.data_dir()),
        [DAY, DAY + 1],
        "inside the carry-over both days' salts are kept"
    );
}

#[tokio::test]
async fn the_carry_over_survives_a_restart_inside_it_and_the_salt_is_gone_at_a_start_after_it() {
    let mut proc = server_at(MIDNIGHT_MS - MINUTE_MS).await;
    visit(&proc, "/before").await;
    proc.set_clock(MIDNIGHT_MS + MINUTE_MS).await;
    visit(&proc, "/after").await;

    // 00:10: the log's carried flag rebuilds the fold; `SaltStore::open` keeps yesterday's salt.
    restart_at(&mut proc, MIDNIGHT_MS + 10 * MINUTE_MS).await;
    assert_eq!(
        counts_of(&proc.realtime(SITE).await),
        (1, 2),
        "after a restart at 00:10 the visitor of 23:59 and 00:01 is still one"
    );
    assert_eq!(salt_days(proc.data_dir()), [DAY, DAY + 1], "at 00:10");
    visit(&proc, "/later").await;
    assert_eq!(
        counts_of(&proc.realtime(SITE).await),
        (1, 3),
        "the same visitor at 00:10, after the restart, is still the same visitor"
    );

    // 00:31: the carry-over has passed, so opening the salts deletes yesterday's.
    restart_at(&mut proc, MIDNIGHT_MS + CARRY_MS + MINUTE_MS).await;
    assert_eq!(
        salt_days(proc.data_dir()),
        [DAY + 1],
        "a start after the carry-over deletes yesterday's salt"
    );
    assert_eq!(
        counts_of(&proc.realtime(SITE).await),
        (1, 1),
        "at 00:31 only the 00:10 event is in the window"
    );
}

#[tokio::test]
async fn yesterdays_salt_is_deleted_on_schedule_without_traffic() {
    // 23:50: before the last minutes of the day, in which the new day's salt is fetched ahead.
    let proc = server_at(MIDNIGHT_MS - 10 * MINUTE_MS).await;
    visit(&proc, "/before").await;
    assert_eq!(salt_days(proc.data_dir()), [DAY]);

    // No request from here on: only the maintenance timer can fetch, rotate and delete.
    // 23:59: it fetches the new day's salt ahead of midnight.
    proc.set_clock(MIDNIGHT_MS - MINUTE_MS).await;
    let data_dir = proc.data_dir().to_owned();
    assert!(
        eventually(MAINTENANCE_DEADLINE, || {
            let days = salt_days(&data_dir);
            async move { days == [DAY, DAY + 1] }
        })
        .await,
        "the maintenance timer did not fetch the new day's salt ahead of midnight: {:?}",
        salt_days(&data_dir)
    );
    proc.set_clock(MIDNIGHT_MS + CARRY_MS - MINUTE_MS).await;
    assert!(
        eventually(MAINTENANCE_DEADLINE, || {
            let days = salt_days(&data_dir);
            async move { days.contains(&(DAY + 1)) }
        })
        .await,
        "the maintenance timer did not create the new day's salt without traffic: {:?}",
        salt_days(&data_dir)
    );
    assert_eq!(
        salt_days(&data_dir),
        [DAY, DAY + 1],
        "one minute before the carry-over ends yesterday's salt is still needed"
    );

    proc.set_clock(MIDNIGHT_MS + CARRY_MS).await;
    assert!(
        eventually(MAINTENANCE_DEADLINE, || {
            let days = salt_days(&data_dir);
            async move { days == [DAY + 1] }
        })
        .await,
        "yesterday's salt outlived the carry-over without traffic: {:?}",
        salt_days(&data_dir)
    );
}

#[tokio::test]
async fn the_test_clock_moves_only_forward_and_only_when_asked_for() {
    let proc = server_at(MIDNIGHT_MS).await;
    proc.set_clock(MIDNIGHT_MS + 1).await;
    let resp = proc
        .post_json("/api/test/clock", &json!({"now_ms": MIDNIGHT_MS}))
        .await;
    pulse_testkit::fixtures::assert_error(&resp, 409, "clock_backwards", "a step back");
    visit(&proc, "/at").await;
    let data = proc.realtime(SITE).await;
    assert_eq!(
        data["recent_events"][0]["ts"], "2026-02-16T00:00:00Z",
        "events are stamped with the test clock's now: {data}"
    );

    let system = start(Opts::default());
    system.wait_ready(READY_DEADLINE).await;
    let resp = system
        .post_json("/api/test/clock", &json!({"now_ms": MIDNIGHT_MS}))
        .await;
    pulse_testkit::fixtures::assert_error(&resp, 409, "no_test_clock", "without --test-clock");
}
