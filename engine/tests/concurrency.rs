//! Concurrency: writer threads ingest while reader threads query the same website.
//!
//! Readers must always see a consistent list (newest first, no duplicates, only events that were
//! really ingested), and every reader must have seen a non-empty list in a query during which a
//! writer ingested (writers go on past their quota until each reader has, so the test cannot pass
//! with readers that ran only before or after them); after the writers join, the ring must hold
//! exactly the last `ring_capacity` arrivals of each class, and the counts must equal a model
//! computed from what was sent.

// Test and bench code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pulse_engine::{
    Browser, DeviceType, Engine, EngineLimits, Event, EventKind, Ingested, Timestamp, VisitorId,
    WebsiteId,
};

const WRITERS: u64 = 4;
const READERS: usize = 2;
const T0: i64 = 1_780_000_000_000;
/// How long writers go on past their quota waiting for every reader to see them write.
const OVERLAP_DEADLINE: Duration = Duration::from_secs(30);

fn site() -> WebsiteId {
    WebsiteId::new("busy").unwrap()
}

/// Event `i` of writer `w`: its target encodes both, so readers can check what they see.
fn event(w: u64, i: u64) -> Event {
    Event {
        website: site(),
        // Writers interleave timestamps, so arrivals are out of timestamp order.
        ts: Timestamp::from_unix_ms(T0 + (i * 7 + w * 3) as i64).unwrap(),
        visitor: VisitorId(w * 1_000 + i % 37),
        kind: EventKind::Pageview,
        target: Arc::from(format!("{w}:{i}")),
        referrer_domain: None,
        is_bot: w == 0,
        browser: Browser::Chrome,
        device: DeviceType::Desktop,
        country: None,
    }
}

fn run(events_per_writer: u64, ring_capacity: usize) {
    let limits = EngineLimits {
        ring_capacity,
        recent_limit: ring_capacity,
        ..EngineLimits::default()
    };
    let engine = Arc::new(Engine::new(limits).unwrap());
    engine.add_website(site()).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    // Events ingested so far, and readers that saw a non-empty list in a query during which
    // that number grew.
    let pushed = Arc::new(AtomicU64::new(0));
    let overlapped = Arc::new(AtomicU64::new(0));
    let now = T0 + (events_per_writer * 7 + WRITERS * 3) as i64;

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let engine = Arc::clone(&engine);
            let done = Arc::clone(&done);
            let (pushed, overlapped) = (Arc::clone(&pushed), Arc::clone(&overlapped));
            thread::spawn(move || {
                let mut queries = 0_u64;
                let mut saw_writes = false;
                while !done.load(Ordering::Acquire) || queries == 0 {
                    let before = pushed.load(Ordering::Acquire);
                    let answer = engine.realtime(&site(), now, r % 2 == 0).unwrap();
                    let during = pushed.load(Ordering::Acquire) > before;
                    if during && !saw_writes && !answer.recent_events.is_empty() {
                        saw_writes = true;
                        overlapped.fetch_add(1, Ordering::AcqRel);
                    }
                    let mut seen = HashSet::new();
                    for pair in answer.recent_events.windows(2) {
                        let key = |e: &pulse_engine::RecentEvent| (e.event.ts, e.arrival);
                        assert!(key(&pair[0]) > key(&pair[1]), "not newest first");
                    }
                    for recent in &answer.recent_events {
                        assert!(seen.insert(recent.arrival), "duplicate arrival");
                        let (w, i) = recent.event.target.split_once(':').unwrap();
                        let expected = event(w.parse().unwrap(), i.parse().unwrap());
                        assert_eq!(recent.event.ts, expected.ts, "torn or foreign event");
                        assert_eq!(recent.event.visitor, expected.visitor);
                    }
                    queries += 1;
                }
                queries
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let engine = Arc::clone(&engine);
            let (pushed, overlapped) = (Arc::clone(&pushed), Arc::clone(&overlapped));
            thread::spawn(move || {
                let mut arrivals = Vec::new();
                let mut quota_done_at = None;
                for i in 0.. {
                    if i >= events_per_writer {
                        if overlapped.load(Ordering::Acquire) == READERS as u64 {
                            break;
                        }
                        let since = *quota_done_at.get_or_insert_with(Instant::now);
                        assert!(
                            since.elapsed() < OVERLAP_DEADLINE,
                            "readers saw no events while writers wrote"
                        );
                    }
                    match engine.ingest(event(w, i), None).unwrap() {
                        Ingested::Windowed { arrival } => arrivals.push(arrival),
                        other => panic!("event {w}:{i} was {other:?}"),
                    }
                    pushed.fetch_add(1, Ordering::AcqRel);
                }
                arrivals
            })
        })
        .collect();

    let mut arrivals: Vec<(u64, u64)> = Vec::new();
    let mut written = [0_u64; WRITERS as usize];
    for (w, writer) in writers.into_iter().enumerate() {
        let mine = writer.join().unwrap();
        written[w] = mine.len() as u64;
        arrivals.extend(mine.into_iter().map(|a| (a, w as u64)));
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(
        overlapped.load(Ordering::Acquire),
        READERS as u64,
        "every reader saw a non-empty list while writers wrote"
    );

    // Arrival numbers are unique and gap-free across all writers.
    arrivals.sort_unstable();
    let total: u64 = written.iter().sum();
    assert_eq!(arrivals.len() as u64, total);
    assert!(arrivals
        .iter()
        .enumerate()
        .all(|(n, (a, _))| *a == n as u64));

    // Each ring holds exactly the last `ring_capacity` arrivals of its class.
    for (include_bots, class_is_bot) in [(false, false), (true, true)] {
        let answer = engine.realtime(&site(), now, include_bots).unwrap();
        let got: HashSet<u64> = answer
            .recent_events
            .iter()
            .filter(|r| r.event.is_bot == class_is_bot)
            .map(|r| r.arrival)
            .collect();
        let class: Vec<u64> = arrivals
            .iter()
            .filter(|(_, w)| (*w == 0) == class_is_bot)
            .map(|(a, _)| *a)
            .collect();
        let expected: HashSet<u64> = class
            .iter()
            .skip(class.len().saturating_sub(ring_capacity))
            .copied()
            .collect();
        if include_bots {
            // With bots included the answer is the newest `limit` of both rings together.
            assert!(
                got.is_subset(&expected),
                "bot ring holds an evicted or foreign event"
            );
        } else {
            assert_eq!(got, expected, "human ring lost or duplicated events");
        }
    }

    // Counts equal the model: every event is inside the window.
    let humans = engine.realtime(&site(), now, false).unwrap();
    let all = engine.realtime(&site(), now, true).unwrap();
    let distinct = |w: usize| written[w].min(37);
    assert_eq!(humans.total_in_window, total - written[0]);
    assert_eq!(all.total_in_window, total);
    assert_eq!(
        humans.active_visitors,
        (1..WRITERS as usize).map(distinct).sum::<u64>()
    );
    assert_eq!(
        all.active_visitors,
        (0..WRITERS as usize).map(distinct).sum::<u64>()
    );
}

#[test]
fn concurrent_ingest_and_queries_lose_and_duplicate_nothing() {
    run(300, 4096);
}

#[test]
fn concurrent_ingest_past_ring_capacity_keeps_exactly_the_newest() {
    run(3_000, 512);
}
