//! Fuzz target `engine_model`: arbitrary sequences of ingests, touches and queries across
//! websites, compared answer by answer with the naive reference model that the engine's
//! property test uses too (`pulse_testkit::model`).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pulse_engine::EngineLimits;
use pulse_testkit::model::{run, Op, PEOPLE, SITES, TARGETS};

#[derive(Debug, Arbitrary)]
enum FuzzOp {
    Ingest {
        site: u8,
        person: u8,
        step_ms: i32,
        target: u8,
    },
    Touch {
        site: u8,
        person: u8,
        step_ms: i32,
    },
    Query {
        site: u8,
        step_ms: u32,
        include_bots: bool,
    },
    QueryAtEdge {
        site: u8,
        pick: u16,
        delta_ms: i8,
        include_bots: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    recent_limit: u8,
    headroom: u8,
    start_offset_ms: u32,
    ops: Vec<FuzzOp>,
}

/// 2026-03-03 23:10:00 UTC, so runs cross midnight and exercise the salt carry-over.
const BEFORE_MIDNIGHT_MS: i64 = 1_772_579_400_000;

fuzz_target!(|input: Input| {
    let recent_limit = usize::from(input.recent_limit % 40) + 1;
    let limits = EngineLimits {
        recent_limit,
        ring_capacity: recent_limit + usize::from(input.headroom % 40),
        ..EngineLimits::default()
    };
    let ops: Vec<Op> = input
        .ops
        .iter()
        .take(400)
        .map(|op| match *op {
            FuzzOp::Ingest {
                site,
                person,
                step_ms,
                target,
            } => Op::Ingest {
                site: usize::from(site) % SITES,
                person: person % PEOPLE,
                // Late by up to ~3 minutes, or ahead by up to ~35 minutes.
                step_ms: i64::from(step_ms) % 2_100_000,
                target: usize::from(target) % TARGETS.len(),
            },
            FuzzOp::Touch {
                site,
                person,
                step_ms,
            } => Op::Touch {
                site: usize::from(site) % SITES,
                person: person % PEOPLE,
                step_ms: i64::from(step_ms) % 2_100_000,
            },
            FuzzOp::Query {
                site,
                step_ms,
                include_bots,
            } => Op::Query {
                site: usize::from(site) % SITES,
                step_ms: i64::from(step_ms % 2_100_000),
                include_bots,
            },
            FuzzOp::QueryAtEdge {
                site,
                pick,
                delta_ms,
                include_bots,
            } => Op::QueryAtEdge {
                site: usize::from(site) % SITES,
                event_pick: usize::from(pick),
                delta_ms: i64::from(delta_ms % 2),
                include_bots,
            },
        })
        .map(|op| match op {
            Op::Ingest {
                site,
                person,
                step_ms,
                target,
            } if step_ms < -180_000 => Op::Ingest {
                site,
                person,
                step_ms: step_ms % 180_000,
                target,
            },
            Op::Touch {
                site,
                person,
                step_ms,
            } if step_ms < -180_000 => Op::Touch {
                site,
                person,
                step_ms: step_ms % 180_000,
            },
            other => other,
        })
        .collect();
    let start = BEFORE_MIDNIGHT_MS + i64::from(input.start_offset_ms % 3_600_000);
    if let Err(mismatch) = run(limits, start, &ops) {
        panic!("{mismatch}");
    }
});
