//! Property test: the engine against a naive reference model.
//!
//! The model keeps every event and touch in a `Vec` and answers each query by scanning it. Random
//! sequences of ingests, touches (a visitor seen without an event) and queries run over several
//! websites, human and bot visitors, late (out-of-order) events and touches, queries placed on
//! the exact millisecond a window edge passes, and a midnight crossing with salt rotation and
//! the carry-over of yesterday's ids. Every answer must be identical.
//!
//! A second property gives the engine a small visitor budget and a one-minute window, and adds
//! crowds of distinct visitors that push it into approximate counting: while approximate the
//! visitor count must be within 2% of the model's (all else identical), and after the crowds
//! leave the count must turn exact again and match the model.

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use proptest::prelude::*;
use pulse_engine::{
    Browser, DeviceType, Engine, EngineLimits, Event, EventKind, SaltSchedule, Timestamp,
};
use pulse_testkit::model::{run, salt_for, site_id, Op, PEOPLE, SITES, TARGETS};

/// The short window of the approximate property, in seconds.
const SHORT_WINDOW_SECS: u32 = 60;
const SHORT_WINDOW_MS: i64 = SHORT_WINDOW_SECS as i64 * 1000;
/// Visitor budget of the approximate property: each of the `SITES` websites' share is over
/// 1 MiB, so an estimate gets the full 65,536 registers (0.41% standard error, README), while a
/// crowd of ~100k visitors fills the budget and turns one website approximate.
const SMALL_VISITOR_BUDGET: usize = 3_300_000;
/// 2026-03-03 12:00:00 UTC: far from midnight, where an approximate count may legitimately count
/// a carried-over visitor twice (`visitors.rs`).
const NOON_MS: i64 = 1_772_539_200_000;

/// Operations over a one-minute window: steps up to a few windows, and crowds.
fn op_with_crowds() -> impl Strategy<Value = Op> {
    let step = prop_oneof![
        5 => 0..3_000_i64,
        2 => 0..(3 * SHORT_WINDOW_MS),
        2 => -10_000..0_i64,
        1 => Just(0_i64),
    ];
    prop_oneof![
        6 => (0..SITES, 0..PEOPLE, step, 0..TARGETS.len()).prop_map(
            |(site, person, step_ms, target)| Op::Ingest { site, person, step_ms, target }
        ),
        3 => (0..SITES, 0..(2 * SHORT_WINDOW_MS), any::<bool>()).prop_map(
            |(site, step_ms, include_bots)| Op::Query { site, step_ms, include_bots }
        ),
        2 => (0..SITES, any::<usize>(), -1..=1_i64, any::<bool>()).prop_map(
            |(site, event_pick, delta_ms, include_bots)| Op::QueryAtEdge {
                site, event_pick, delta_ms, include_bots,
            }
        ),
        1 => (0..SITES, 1_000_u32..20_000).prop_map(|(site, visitors)| Op::Crowd { site, visitors }),
    ]
}

/// After `ops`: a query past two windows (the crowds have left and a shadow window starts),
/// a few people, and a query one window later, when every count must be exact again.
fn then_back_to_exact(mut ops: Vec<Op>) -> Vec<Op> {
    ops.extend((0..SITES).map(|site| Op::Query {
        site,
        step_ms: if site == 0 {
            2 * SHORT_WINDOW_MS + 1
        } else {
            0
        },
        include_bots: false,
    }));
    ops.extend((0..PEOPLE).map(|person| Op::Ingest {
        site: usize::from(person) % SITES,
        person,
        step_ms: 1_000,
        target: 1,
    }));
    ops.extend((0..SITES).map(|site| Op::Query {
        site,
        step_ms: if site == 0 { SHORT_WINDOW_MS } else { 0 },
        include_bots: true,
    }));
    ops
}

fn op() -> impl Strategy<Value = Op> {
    let step = prop_oneof![
        5 => 0..3_000_i64,
        2 => 0..600_000_i64,
        1 => -180_000..0_i64,
        2 => -3_000..0_i64,
        1 => Just(0_i64),
    ];
    prop_oneof![
        6 => (0..SITES, 0..PEOPLE, step.clone(), 0..TARGETS.len()).prop_map(
            |(site, person, step_ms, target)| Op::Ingest { site, person, step_ms, target }
        ),
        2 => (0..SITES, 0..PEOPLE, step).prop_map(
            |(site, person, step_ms)| Op::Touch { site, person, step_ms }
        ),
        2 => (0..SITES, 0..400_000_i64, any::<bool>()).prop_map(
            |(site, step_ms, include_bots)| Op::Query { site, step_ms, include_bots }
        ),
        2 => (0..SITES, any::<usize>(), -1..=1_i64, any::<bool>()).prop_map(
            |(site, event_pick, delta_ms, include_bots)| Op::QueryAtEdge {
                site, event_pick, delta_ms, include_bots,
            }
        ),
    ]
}

fn limits() -> impl Strategy<Value = EngineLimits> {
    (1_usize..40, 0_usize..40).prop_map(|(recent_limit, headroom)| EngineLimits {
        ring_capacity: recent_limit + headroom,
        recent_limit,
        ..EngineLimits::default()
    })
}

/// 2026-03-03 23:10:00 UTC: runs start 50 minutes before midnight so many cross it.
const BEFORE_MIDNIGHT_MS: i64 = 1_772_579_400_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference_model(
        limits in limits(),
        start_offset_ms in 0_i64..3_600_000,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        run(limits, BEFORE_MIDNIGHT_MS + start_offset_ms, &ops).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn engine_matches_reference_model_with_default_limits(
        ops in prop::collection::vec(op(), 1..400),
    ) {
        run(EngineLimits::default(), BEFORE_MIDNIGHT_MS, &ops).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    // Each case ingests up to a few hundred thousand crowd visitors: fewer cases.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn approximate_counts_stay_within_2_percent_and_turn_exact_after_the_crowds_leave(
        crowd_site in 0..SITES,
        crowd in 100_000_u32..120_000,
        ops in prop::collection::vec(op_with_crowds(), 1..80),
    ) {
        let limits = EngineLimits {
            window_secs: SHORT_WINDOW_SECS,
            visitor_memory_bytes: SMALL_VISITOR_BUDGET,
            ..EngineLimits::default()
        };
        // One crowd big enough to fill the budget first, so every case counts approximately.
        let mut all = vec![
            Op::Crowd { site: crowd_site, visitors: crowd },
            Op::Query { site: crowd_site, step_ms: 1, include_bots: false },
        ];
        all.extend(ops);
        let summary = run(limits, NOON_MS, &then_back_to_exact(all))
            .map_err(TestCaseError::fail)?;
        prop_assert!(summary.approximate_answers > 0, "never approximate: {summary:?}");
        prop_assert_eq!(summary.last_approximate, [false; SITES], "not exact again at the end");
    }
}

/// A person active before midnight stays one visitor after it, although their id changes.
#[test]
fn midnight_does_not_double_count_an_active_visitor() {
    let limits = EngineLimits::default();
    let ops = [
        Op::Ingest {
            site: 0,
            person: 1,
            step_ms: 49 * 60_000,
            target: 0,
        },
        Op::Ingest {
            site: 0,
            person: 1,
            step_ms: 2 * 60_000,
            target: 1,
        },
        Op::Query {
            site: 0,
            step_ms: 0,
            include_bots: false,
        },
    ];
    run(limits, BEFORE_MIDNIGHT_MS, &ops).unwrap();

    let engine = Engine::new(limits).unwrap();
    engine.add_website(site_id(0)).unwrap();
    let midnight = BEFORE_MIDNIGHT_MS + 50 * 60_000;
    let day = Timestamp::from_unix_ms(midnight).unwrap().utc_day();
    let mut salts = SaltSchedule::new(salt_for(day - 1), None, limits.window_ms());
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let send = |ts: i64, salts: &mut SaltSchedule| {
        let at = Timestamp::from_unix_ms(ts).unwrap();
        if let Some(d) = salts.day_to_rotate(at) {
            salts.rotate(salt_for(d));
        }
        let identity = salts.identify(at, ip, "Firefox").unwrap();
        let event = Event {
            website: site_id(0),
            ts: at,
            visitor: identity.visitor,
            kind: EventKind::Pageview,
            target: Arc::from("/"),
            referrer_domain: None,
            is_bot: false,
            browser: Browser::Firefox,
            device: DeviceType::Desktop,
            country: None,
        };
        engine.ingest(event, identity.carried_from).unwrap();
        identity
    };
    let before = send(midnight - 60_000, &mut salts);
    let after = send(midnight + 60_000, &mut salts);
    assert_ne!(before.visitor, after.visitor, "the salt rotated");
    let answer = engine
        .realtime(&site_id(0), midnight + 60_000, false)
        .unwrap();
    assert_eq!(answer.active_visitors, 1);
    assert_eq!(answer.total_in_window, 2);
}

/// A person whose first event after midnight found yesterday's id inactive, then sent a late
/// event from before midnight (under yesterday's id), then another after midnight: the two ids
/// are active at once and must become one visitor in the breakdown as in the visitor count.
#[test]
fn a_late_event_under_yesterdays_id_merges_into_todays_visitor() {
    let ingest = |step_ms: i64, target: usize| Op::Ingest {
        site: 0,
        person: 2,
        step_ms,
        target,
    };
    let ops = [
        // 00:00:30, today's id; yesterday's is not active.
        ingest(50 * 60_000 + 30_000, 0),
        // 23:59:30, late, under yesterday's id.
        ingest(-60_000, 0),
        // 00:00:40, carried from yesterday's id, which is active now.
        ingest(10_000, 1),
        Op::Query {
            site: 0,
            step_ms: 0,
            include_bots: false,
        },
    ];
    run(EngineLimits::default(), BEFORE_MIDNIGHT_MS, &ops).unwrap();
}
