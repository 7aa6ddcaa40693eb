//! Crash-safety tests of the `pulse` binary's event log (issue 4): the real binary is SIGKILLed
//! at random moments under load and restarted on the same data directory, stopped with SIGTERM
//! under load, and restarted on logs damaged on purpose (a corrupt sealed segment, a torn tail).
//! Each event carries a globally unique number in its path (`/n/123`), so after the last stop the
//! log, read back with `pulse_snapshot::replay`, shows exactly which acknowledged events are
//! there, how often, and under which sequence numbers. Random choices come from a seeded PRNG;
//! the seed is printed and `PULSE_CRASH_SEED` replays it; `PULSE_CRASH_ROUNDS` adds kill rounds.

// SIGKILL, SIGTERM and exit signals are Unix notions.
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_testkit::fixtures::{
    recent, sample, segment_files, Failures, CHROME_DESKTOP, CURL, FIREFOX_DESKTOP, GOOGLEBOT,
    SAFARI_IPHONE,
};
use pulse_testkit::http::Client;
use pulse_testkit::server::{assert_exit_zero, assert_killed, send, Opts, Server};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::{start_in, target_of};

/// Kill rounds of the SIGKILL test unless `PULSE_CRASH_ROUNDS` asks for more.
const DEFAULT_ROUNDS: u64 = 20;
/// Concurrent client tasks sending numbered events.
const CLIENTS: u64 = 4;
/// Largest batch a client sends in one request.
const MAX_BATCH: u64 = 5;
/// How long start-up replay may take before `/readyz` must be 200.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// The website every test sends to.
const SITE: &str = "w";
/// Human browsers the load clients pose as.
const HUMAN_UAS: [&str; 3] = [CHROME_DESKTOP, FIREFOX_DESKTOP, SAFARI_IPHONE];

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, and good enough to pick delays and batch sizes reproducibly.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// An independent generator for a sub-task.
    fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

/// A `u64` from the environment variable `name` (decimal or `0x` hex), if set.
fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")))
}

/// The seed of this test: `PULSE_CRASH_SEED`, or one made from the clock; printed either way.
fn seed(test: &str) -> u64 {
    let seed = env_u64("PULSE_CRASH_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // Truncation is fine: any 64 bits of the clock make a seed.
        #[allow(clippy::cast_possible_truncation)]
        let low = nanos as u64;
        low ^ u64::from(std::process::id()).rotate_left(32)
    });
    println!("{test}: seed {seed} (rerun with PULSE_CRASH_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------------
// Load: client tasks sending numbered events
// ---------------------------------------------------------------------------------------------

/// A pageview whose path carries `number`.
fn numbered(number: u64) -> Value {
    json!({"website_id": SITE, "type": "pageview", "url": format!("/n/{number}")})
}

/// The number a logged target carries, if it is one of ours.
fn number_of(target: &str) -> Option<u64> {
    target.strip_prefix("/n/")?.parse().ok()
}

/// What the clients sent and what the server answered.
#[derive(Debug, Default)]
struct Ledger {
    /// Numbers answered 202.
    acked: BTreeSet<u64>,
    /// Every number put in a request (answered or not).
    sent: BTreeSet<u64>,
    /// Answers other than 202, by status, for the failure message.
    other_statuses: BTreeMap<u16, u64>,
    /// Requests that ended in a transport error (the process went away).
    transport_errors: u64,
}

impl Ledger {
    fn merge(&mut self, other: Self) {
        self.acked.extend(other.acked);
        self.sent.extend(other.sent);
        for (status, n) in other.other_statuses {
            *self.other_statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
    }
}

/// One client: sends single events and batches of up to `MAX_BATCH` numbered events, one
/// request at a time, until a request fails at the transport level (the server is gone).
async fn client_loop(
    client: Client,
    user_agent: &'static str,
    numbers: Arc<AtomicU64>,
    mut rng: Rng,
) -> Ledger {
    let mut ledger = Ledger::default();
    loop {
        let count = rng.range(1, MAX_BATCH);
        let first = numbers.fetch_add(count, Ordering::Relaxed);
        let batch: Vec<u64> = (first..first + count).collect();
        let body = if count == 1 {
            numbered(first)
        } else {
            Value::Array(batch.iter().map(|n| numbered(*n)).collect())
        };
        ledger.sent.extend(&batch);
        let request = client
            .post("/api/collect")
            .json(&body)
            .header("user-agent", user_agent);
        match request.send().await {
            Ok(resp) if resp.status == 202 => ledger.acked.extend(&batch),
            Ok(resp) => {
                *ledger.other_statuses.entry(resp.status).or_default() += 1;
                if resp.status == 503 {
                    // Queue full: back off a little as Retry-After asks, rather than spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Err(_) => {
                ledger.transport_errors += 1;
                return ledger;
            }
        }
    }
}

/// Starts `CLIENTS` client tasks against `proc`.
fn start_clients(proc: &Server, numbers: &Arc<AtomicU64>, rng: &mut Rng) -> JoinSet<Ledger> {
    let mut tasks = JoinSet::new();
    for i in 0..CLIENTS {
        let ua = HUMAN_UAS[usize::try_from(i).unwrap() % HUMAN_UAS.len()];
        tasks.spawn(client_loop(
            proc.client().clone(),
            ua,
            Arc::clone(numbers),
            rng.fork(),
        ));
    }
    tasks
}

/// Waits for every client task (each ends at its first transport error) and merges what they
/// saw into `ledger`.
async fn join_clients(mut tasks: JoinSet<Ledger>, ledger: &mut Ledger) {
    while let Some(result) = tasks.join_next().await {
        ledger.merge(result.unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// A count from the `/readyz` replay object.
fn replay_count(replay: &Value, field: &str) -> u64 {
    replay[field]
        .as_u64()
        .unwrap_or_else(|| panic!("/readyz replay.{field} is not a count: {replay}"))
}

/// Reads the whole log of `data_dir` (no server may be running) and checks it against `ledger`:
/// every acknowledged number exactly once, no number twice, nothing that was never sent,
/// sequence numbers `0, 1, 2, …` without gaps, no corrupt segment and no torn tail after a clean
/// stop. Returns the number of events in the log.
fn check_log_exactly_once(data_dir: &Path, ledger: &Ledger, context: &str) -> u64 {
    let mut times_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seqs: Vec<u64> = Vec::new();
    let mut foreign: Vec<String> = Vec::new();
    let report = pulse_snapshot::replay(
        &data_dir.join("segments"),
        pulse_snapshot::ReplayOptions::default(),
        |logged| {
            seqs.push(logged.seq);
            match number_of(target_of(&logged.entry)) {
                Some(n) => *times_seen.entry(n).or_default() += 1,
                None => foreign.push(target_of(&logged.entry).to_owned()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{context}: replaying the log failed: {e}"));

    let mut failures = Failures::default();
    let missing: Vec<u64> = ledger
        .acked
        .iter()
        .copied()
        .filter(|n| !times_seen.contains_key(n))
        .collect();
    if !missing.is_empty() {
        failures.push(format!(
            "{} acknowledged event(s) are missing from the log: {}",
            missing.len(),
            sample(&missing)
        ));
    }
    let duplicated: Vec<(u64, u64)> = times_seen
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(n, times)| (*n, *times))
        .collect();
    if !duplicated.is_empty() {
        failures.push(format!(
            "{} event(s) are in the log more than once, as (number, times): {}",
            duplicated.len(),
            sample(&duplicated)
        ));
    }
    let never_sent: Vec<u64> = times_seen
        .keys()
        .copied()
        .filter(|n| !ledger.sent.contains(n))
        .collect();
    if !never_sent.is_empty() || !foreign.is_empty() {
        failures.push(format!(
            "the log holds events that were never sent: numbers {}, other targets {}",
            sample(&never_sent),
            sample(&foreign)
        ));
    }
    if let Some(at) = seqs
        .iter()
        .enumerate()
        .position(|(i, seq)| *seq != i as u64)
    {
        failures.push(format!(
            "sequence numbers are not 0, 1, 2, …: position {at} holds {} (neighbours {})",
            seqs[at],
            sample(&seqs[at.saturating_sub(3)..(at + 4).min(seqs.len())])
        ));
    }
    let events = seqs.len() as u64;
    if report.next_seq != events {
        failures.push(format!(
            "report.next_seq is {} after {events} events",
            report.next_seq
        ));
    }
    if !report.gaps.is_empty() {
        failures.push(format!("report.gaps: {:?}", report.gaps));
    }
    if !report.broken.is_empty() {
        failures.push(format!("report.broken: {:?}", report.broken));
    }
    if let Some(torn) = &report.torn_tail {
        failures.push(format!(
            "the log had a torn tail after a clean SIGTERM stop: {torn:?}"
        ));
    }
    if !failures.is_empty() {
        failures.push(format!(
            "context: {context}; {} acknowledged, {} sent, {} logged, other statuses {:?}, \
             {} transport errors",
            ledger.acked.len(),
            ledger.sent.len(),
            events,
            ledger.other_statuses,
            ledger.transport_errors
        ));
    }
    failures.assert_none();
    events
}

// ---------------------------------------------------------------------------------------------
// SIGKILL
// ---------------------------------------------------------------------------------------------

const SYNC: [&str; 2] = ["--durability", "sync"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_exactly_once() {
    let seed = seed("acknowledged_events_survive_sigkill_exactly_once");
    let rounds = env_u64("PULSE_CRASH_ROUNDS")
        .unwrap_or(DEFAULT_ROUNDS)
        .max(1);
    let context = format!("seed {seed}, {rounds} rounds");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let numbers = Arc::new(AtomicU64::new(0));
    let mut ledger = Ledger::default();
    let started = Instant::now();

    // What each start's /readyz said that it should not have; reported with the final check,
    // which names the events concerned.
    let mut anomalies: Vec<String> = Vec::new();
    for round in 0..rounds {
        let mut proc = start_in(Opts::default().args(&SYNC), tmp.path());
        let replay = proc.wait_ready(READY_DEADLINE).await;
        // Whatever was acknowledged before earlier kills is replayed; nothing unsent appears.
        let replayed = replay_count(&replay, "events");
        let (acked, sent) = (ledger.acked.len() as u64, ledger.sent.len() as u64);
        if replayed < acked
            || replayed > sent
            || replay_count(&replay, "corrupt_segments") != 0
            || replay_count(&replay, "sequence_gaps") != 0
        {
            anomalies.push(format!(
                "round {round}: /readyz replayed {replayed} events after {acked} acknowledged \
                 and {sent} sent: {replay}"
            ));
        }
        if round == 0 {
            proc.site(SITE, "example.com").await;
        }

        let tasks = start_clients(&proc, &numbers, &mut rng);
        let delay = Duration::from_millis(rng.range(20, 250));
        tokio::time::sleep(delay).await;
        let status = tokio::task::block_in_place(|| proc.kill_9());
        assert_killed(
            status,
            &format!("{context}, round {round}, after {delay:?}"),
            &proc.stderr(),
        );
        join_clients(tasks, &mut ledger).await;
    }

    // One clean run: replay everything, then stop with SIGTERM so the log is closed cleanly.
    let mut proc = start_in(Opts::default().args(&SYNC), tmp.path());
    let replay = proc.wait_ready(READY_DEADLINE).await;
    let status = proc.stop();
    assert_exit_zero(status, &context, &proc.stderr());
    println!(
        "{rounds} kill rounds in {:?}: {} events acknowledged, {} sent",
        started.elapsed(),
        ledger.acked.len(),
        ledger.sent.len()
    );
    assert!(
        ledger.acked.len() >= rounds as usize,
        "{context}: too few events were acknowledged ({}) for the test to mean anything; \
         answers other than 202: {:?}",
        ledger.acked.len(),
        ledger.other_statuses
    );

    let context = format!("{context}; start-up anomalies: {anomalies:?}");
    let logged = check_log_exactly_once(tmp.path(), &ledger, &context);
    assert_eq!(
        replay_count(&replay, "events"),
        logged,
        "{context}: the last start replayed another number of events than the log holds"
    );
    assert!(anomalies.is_empty(), "{context}");
}

/// Kill rounds of the realtime test.
const REALTIME_ROUNDS: usize = 3;

/// Sends, concurrently, each of five visitors' (three browsers, two bots) pageviews with and
/// without referrers, a custom event and a batch, asserting every answer is 202. Returns the
/// number of events sent.
async fn send_realtime_wave(proc: &Server, tag: &str) -> u64 {
    let agents = [
        CHROME_DESKTOP,
        FIREFOX_DESKTOP,
        SAFARI_IPHONE,
        GOOGLEBOT,
        CURL,
    ];
    let mut sent = 0;
    let mut requests = JoinSet::new();
    for (i, ua) in agents.into_iter().enumerate() {
        let bodies = [
            json!({"website_id": SITE, "type": "pageview", "url": format!("/{tag}/ua{i}"),
                   "referrer": "https://www.google.com/search?q=x"}),
            json!([
                {"website_id": SITE, "type": "pageview", "url": "https://example.com/pricing?a=1"},
                {"website_id": SITE, "type": "event", "url": "/pricing", "event_name": "signup"}
            ]),
            json!({"website_id": SITE, "type": "pageview", "url": format!("/docs/{i}"),
                   "referrer": "https://news.ycombinator.com/"}),
        ];
        for body in bodies {
            sent += body.as_array().map_or(1, |a| a.len() as u64);
            let request = proc
                .client()
                .post("/api/collect")
                .json(&body)
                .header("user-agent", ua);
            requests.spawn(async move {
                let resp = send(request).await;
                assert_eq!(resp.status, 202, "collect {body}: {resp:?}");
            });
        }
    }
    while let Some(result) = requests.join_next().await {
        result.unwrap();
    }
    sent
}

/// Compares two realtime answers field by field; on a difference in `recent_events`, says
/// whether it is only an order difference and where.
fn realtime_difference(before: &Value, after: &Value) -> Option<String> {
    if after["active_visitors"] != before["active_visitors"] {
        return Some(format!(
            "active_visitors: {} before, {} after",
            before["active_visitors"], after["active_visitors"]
        ));
    }
    if after["pagination"]["total_in_window"] != before["pagination"]["total_in_window"] {
        return Some(format!(
            "pagination.total_in_window: {} before, {} after",
            before["pagination"]["total_in_window"], after["pagination"]["total_in_window"]
        ));
    }
    let (was, is) = (recent(before), recent(after));
    if was == is {
        return None;
    }
    let differing: Vec<usize> = (0..was.len().max(is.len()))
        .filter(|i| was.get(*i) != is.get(*i))
        .collect();
    let key = |events: &[Value]| {
        let mut keys: Vec<String> = events.iter().map(Value::to_string).collect();
        keys.sort();
        keys
    };
    let kind = if key(&was) == key(&is) {
        "the same events in another order (events with equal timestamps are ordered \
         differently after replay)"
    } else {
        "other events"
    };
    let rows: Vec<String> = differing
        .iter()
        .take(6)
        .map(|i| {
            format!(
                "  [{i}] before {} | after {}",
                was.get(*i).map_or("-".into(), Value::to_string),
                is.get(*i).map_or("-".into(), Value::to_string)
            )
        })
        .collect();
    Some(format!(
        "recent_events: {kind}; {} position(s) differ, first ones:\n{}",
        differing.len(),
        rows.join("\n")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_after_sigkill_equals_realtime_before() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = start_in(Opts::default().args(&SYNC), tmp.path());
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;

    let mut sent = 0_u64;
    for round in 0..REALTIME_ROUNDS {
        // Two concurrent waves, every event acknowledged (fsynced) before realtime is read.
        for wave in 0..2 {
            sent += send_realtime_wave(&proc, &format!("r{round}w{wave}")).await;
        }
        let before = proc.realtime_q(SITE, "?include_bots=true").await;
        let before_humans = proc.realtime_q(SITE, "").await;
        assert_eq!(
            before["pagination"]["total_in_window"], sent,
            "round {round}: every acknowledged event is in the window: {before}"
        );
        assert_eq!(
            before["active_visitors"], 5,
            "round {round}: five visitors: {before}"
        );

        let status = proc.kill_9();
        assert_killed(status, &format!("round {round}"), &proc.stderr());
        proc.respawn();
        let replay = proc.wait_ready(READY_DEADLINE).await;
        assert_eq!(
            replay_count(&replay, "events"),
            sent,
            "round {round}: {replay}"
        );
        let after = proc.realtime_q(SITE, "?include_bots=true").await;
        let after_humans = proc.realtime_q(SITE, "").await;

        for (name, before, after) in [
            ("include_bots=true", &before, &after),
            ("default bot policy", &before_humans, &after_humans),
        ] {
            if let Some(why) = realtime_difference(before, after) {
                panic!(
                    "round {round}, {name}: the realtime answer after SIGKILL and restart \
                     differs from the one before: {why}\nbefore: {before}\nafter: {after}"
                );
            }
        }
    }
    assert_exit_zero(proc.stop(), "realtime test", &proc.stderr());
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_event() {
    let seed = seed("sigterm_under_load_exits_zero_and_keeps_every_acknowledged_event");
    let context = format!("seed {seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    // Default durability: `interval`.
    let mut proc = start_in(Opts::default().args(&[]), tmp.path());
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;

    let numbers = Arc::new(AtomicU64::new(0));
    let mut ledger = Ledger::default();
    let tasks = start_clients(&proc, &numbers, &mut rng);
    let delay = Duration::from_millis(rng.range(150, 400));
    tokio::time::sleep(delay).await;
    let status = tokio::task::block_in_place(|| proc.stop());
    assert_exit_zero(
        status,
        &format!("{context}, SIGTERM after {delay:?} of load"),
        &proc.stderr(),
    );
    join_clients(tasks, &mut ledger).await;
    assert!(
        !ledger.acked.is_empty(),
        "{context}: no event was acknowledged before SIGTERM; answers other than 202: {:?}",
        ledger.other_statuses
    );
    println!(
        "SIGTERM after {delay:?}: {} events acknowledged, {} sent",
        ledger.acked.len(),
        ledger.sent.len()
    );

    let logged = check_log_exactly_once(tmp.path(), &ledger, &context);

    // A restart replays all of it.
    proc.respawn();
    let replay = proc.wait_ready(READY_DEADLINE).await;
    assert_eq!(
        replay_count(&replay, "events"),
        logged,
        "{context}: {replay}"
    );
    let data = proc.realtime_q(SITE, "?include_bots=true").await;
    assert_eq!(
        data["pagination"]["total_in_window"], logged,
        "{context}: realtime after restart counts another number of events than the log holds"
    );
    assert_exit_zero(proc.stop(), &context, &proc.stderr());
}

// ---------------------------------------------------------------------------------------------
// Damaged logs
// ---------------------------------------------------------------------------------------------

/// Sends one pageview to `path` as desktop Chrome, asserting 202.
async fn collect_one(proc: &Server, path: &str) {
    let resp = proc
        .collect_as(
            CHROME_DESKTOP,
            &json!({"website_id": SITE, "type": "pageview", "url": path}),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 202, "collect {path}: {resp:?}");
}

/// The urls of the recent events, sorted.
fn recent_urls(data: &Value) -> Vec<String> {
    let mut urls: Vec<String> = recent(data)
        .iter()
        .map(|e| e["url"].as_str().unwrap_or_default().to_owned())
        .collect();
    urls.sort();
    urls
}

/// Bytes of a segment header.
const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a record's frame (`len`, `crc32c`).
const RECORD_FRAME_BYTES: u64 = 8;

#[tokio::test]
async fn a_corrupt_sealed_segment_is_reported_on_readyz_and_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    // Every append after the first rolls to a new segment.
    let mut proc = start_in(
        Opts::default().args(&["--durability", "sync", "--segment-max-bytes", "1"]),
        tmp.path(),
    );
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;
    collect_one(&proc, "/first").await;
    collect_one(&proc, "/second").await;
    assert_exit_zero(proc.stop(), "first run", &proc.stderr());

    let with_records: Vec<_> = segment_files(tmp.path())
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > SEGMENT_HEADER_BYTES)
        .collect();
    assert!(
        with_records.len() >= 2,
        "two appends with --segment-max-bytes 1 should leave two segments with records, got \
         {with_records:?}"
    );
    let oldest = &with_records[0];
    let mut bytes = std::fs::read(oldest).unwrap();
    let at = usize::try_from(SEGMENT_HEADER_BYTES + RECORD_FRAME_BYTES + 4).unwrap();
    bytes[at] ^= 0xFF;
    std::fs::write(oldest, &bytes).unwrap();

    proc.respawn();
    let replay = proc.wait_ready(READY_DEADLINE).await;
    assert_eq!(
        replay_count(&replay, "corrupt_segments"),
        1,
        "/readyz should count the corrupt segment: {replay}"
    );
    let mut broken = oldest.clone().into_os_string();
    broken.push(".broken");
    let broken = std::path::PathBuf::from(broken);
    assert!(
        broken.is_file(),
        "the corrupt segment should have been moved to {}; segments dir holds {:?}",
        broken.display(),
        std::fs::read_dir(tmp.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    assert!(!oldest.exists(), "{} is still there", oldest.display());
    assert_eq!(
        std::fs::read(&broken).unwrap(),
        bytes,
        "the segment moved aside must be kept as it was"
    );
    let data = proc.realtime_q(SITE, "?include_bots=true").await;
    assert_eq!(
        data["pagination"]["total_in_window"], 1,
        "the later segment's event is still counted: {data}"
    );
    assert_eq!(recent_urls(&data), ["/second"], "{data}");
    assert_exit_zero(proc.stop(), "second run", &proc.stderr());

    // Every later start gives the same answer and still shows the damage.
    proc.respawn();
    let replay = proc.wait_ready(READY_DEADLINE).await;
    assert_eq!(
        replay_count(&replay, "corrupt_segments"),
        1,
        "the segment kept aside must stay visible until an operator acts: {replay}"
    );
    let again = proc.realtime_q(SITE, "?include_bots=true").await;
    assert_eq!(again["pagination"], data["pagination"], "{again}");
    assert_exit_zero(proc.stop(), "third run", &proc.stderr());
}

#[tokio::test]
async fn a_torn_tail_is_truncated_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = start_in(Opts::default().args(&[]), tmp.path());
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;
    let paths: Vec<String> = (0..10).map(|i| format!("/t/{i}")).collect();
    for path in &paths {
        collect_one(&proc, path).await;
    }
    assert_exit_zero(proc.stop(), "first run", &proc.stderr());

    let newest = segment_files(tmp.path()).pop().expect("no segment file");
    let clean_len = std::fs::metadata(&newest).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut file, &[0xAB; 7]).unwrap();
    drop(file);

    proc.respawn();
    let replay = proc.wait_ready(READY_DEADLINE).await;
    assert_eq!(
        replay_count(&replay, "torn_tail_bytes"),
        7,
        "/readyz should report the 7 bytes cut off: {replay}"
    );
    assert_eq!(replay_count(&replay, "corrupt_segments"), 0, "{replay}");
    assert_eq!(replay_count(&replay, "sequence_gaps"), 0, "{replay}");
    assert_eq!(replay_count(&replay, "events"), 10, "{replay}");
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        clean_len,
        "the segment should be truncated back to its last good record"
    );
    let data = proc.realtime_q(SITE, "?include_bots=true").await;
    assert_eq!(data["pagination"]["total_in_window"], 10, "{data}");
    let mut expected = paths.clone();
    expected.sort();
    assert_eq!(recent_urls(&data), expected, "{data}");
    assert_exit_zero(proc.stop(), "second run", &proc.stderr());
}

/// Start-up rounds of the early-SIGTERM test: each one is a chance to hit the window between the
/// `listening on` line and the first poll of the shutdown future.
const EARLY_SIGTERM_ROUNDS: usize = 10;

#[tokio::test]
async fn sigterm_right_after_the_address_is_announced_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = start_in(Opts::default().args(&[]), tmp.path());
    for round in 0..EARLY_SIGTERM_ROUNDS {
        // `start_in` and `respawn` return as soon as the `listening on` line is read, so the
        // signal lands while the server is still entering its accept loop.
        let status = proc.stop();
        assert_exit_zero(status, &format!("round {round}"), &proc.stderr());
        proc.respawn();
    }
    proc.wait_ready(READY_DEADLINE).await;
    assert_exit_zero(proc.stop(), "last round", &proc.stderr());
}

/// The targets of every event in the segment files of `data_dir`, read without modifying them
/// (a server may be writing).
fn logged_targets(data_dir: &Path) -> Vec<String> {
    let mut targets = Vec::new();
    for path in segment_files(data_dir) {
        let name_seq = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{} is not named by a sequence number", path.display()));
        let bytes = std::fs::read(&path).unwrap();
        pulse_snapshot::scan_segment(&bytes, name_seq, |logged| {
            targets.push(target_of(&logged.entry).to_owned());
        });
    }
    targets
}

#[tokio::test]
async fn interval_mode_writes_accepted_events_without_waiting_for_a_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    // Default durability: `interval`, where the writer lingers between writes.
    let mut proc = start_in(Opts::default().args(&[]), tmp.path());
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;
    // Back to back, so most of them arrive while the writer lingers after the first write.
    let paths: Vec<String> = (0..20).map(|i| format!("/i/{i}")).collect();
    for path in &paths {
        collect_one(&proc, path).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut logged = logged_targets(tmp.path());
        logged.sort();
        let mut expected = paths.clone();
        expected.sort();
        if logged == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after their 202s the segment files hold {logged:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Written means the OS has it: a SIGKILL now loses none of them.
    assert_killed(proc.kill_9(), "kill after the write", &proc.stderr());
    proc.respawn();
    proc.wait_ready(READY_DEADLINE).await;
    let data = proc.realtime_q(SITE, "?include_bots=true").await;
    assert_eq!(data["pagination"]["total_in_window"], 20, "{data}");
    assert_exit_zero(proc.stop(), "after the restart", &proc.stderr());
}
