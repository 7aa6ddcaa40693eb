//! Fuzz target `checkpoint_import`: a website's exported state, as a checkpoint carries it
//! (`WebsiteCounts` through serde and bincode), with some of its bytes changed and imported into
//! a fresh engine. Whatever decodes must import or be refused with `InvalidExport`, never panic;
//! a state that imports must then answer, take later events, advance and export again without
//! panicking. A checkpoint's checksums stop random damage before import; this covers a state
//! that is well-formed but inconsistent, as a bug in the build that wrote it could leave.
//!
//! The sizes of allocations (`*capacity*` fields) are fuzzed too: before allocating, the engine
//! refuses a container that grows with visitors or events past the memory budget, and one of a
//! value per id past the 16-bit id space (at most 2^17 elements), so every budget here is small
//! enough for the fuzzer's memory limits.

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pulse_engine::{
    Browser, DeviceType, Engine, EngineLimits, Event, EventKind, Timestamp, VisitorId,
    WebsiteCounts, WebsiteExport, WebsiteId,
};

/// 2026-03-03 23:50:00 UTC: events cross midnight.
const START_MS: i64 = 1_772_581_800_000;

#[derive(Debug, Arbitrary)]
struct Visit {
    person: u8,
    step_ms: u16,
    late: bool,
    bot: bool,
    page: u8,
}

#[derive(Debug, Arbitrary)]
struct Input {
    budget: u8,
    before: Vec<Visit>,
    changes: Vec<(u16, u8)>,
    after: Vec<Visit>,
}

fn engine(limits: EngineLimits, site: &WebsiteId) -> Engine {
    let engine = Engine::new(limits).unwrap();
    engine.add_website(site.clone()).unwrap();
    engine
}

/// Ingests `visits` from `*now_ms` on, moving it.
fn ingest(engine: &Engine, site: &WebsiteId, visits: &[Visit], now_ms: &mut i64) {
    for visit in visits.iter().take(200) {
        let step = i64::from(visit.step_ms) * 40;
        *now_ms = if visit.late {
            *now_ms - step
        } else {
            *now_ms + step
        };
        let page = visit.page % 12;
        let event = Event {
            website: site.clone(),
            ts: Timestamp::from_unix_ms(*now_ms).unwrap(),
            visitor: VisitorId(u64::from(visit.person % 24)),
            kind: if page % 5 == 4 {
                EventKind::Custom
            } else {
                EventKind::Pageview
            },
            target: Arc::from(format!("/p{page}")),
            referrer_domain: (page % 3 == 1).then(|| Arc::from(format!("r{}.example", page % 2))),
            is_bot: visit.bot,
            browser: if page % 2 == 0 {
                Browser::Chrome
            } else {
                Browser::Firefox
            },
            device: if page % 4 == 0 {
                DeviceType::Mobile
            } else {
                DeviceType::Desktop
            },
            country: None,
        };
        // Refusals (outside the window, over budget) are answers too.
        let _ = engine.ingest(Arc::new(event), None);
    }
}

fuzz_target!(|input: Input| {
    let limits = EngineLimits {
        ring_capacity: 12,
        recent_limit: 5,
        // The largest, 8 MiB, never fills with these visitors: exact throughout.
        visitor_memory_bytes: [1, 48 * 1024, 8 << 20][usize::from(input.budget % 3)],
        ..EngineLimits::default()
    };
    let site = WebsiteId::new("a").unwrap();
    let original = engine(limits, &site);
    let mut now_ms = START_MS;
    ingest(&original, &site, &input.before, &mut now_ms);
    let export = original.export_website(&site).unwrap();
    let config = bincode::config::standard().with_limit::<{ 1 << 22 }>();
    let mut bytes = bincode::serde::encode_to_vec(&export.counts, config).unwrap();
    for &(at, flip) in input.changes.iter().take(8) {
        let len = bytes.len();
        bytes[usize::from(at) % len] ^= flip;
    }
    let Ok((counts, _)) = bincode::serde::decode_from_slice::<WebsiteCounts, _>(&bytes, config)
    else {
        return;
    };
    let restored = engine(limits, &site);
    let state = WebsiteExport {
        counts,
        recent: export.recent,
    };
    if restored.import_website(&site, state).is_err() {
        return;
    }
    for bots in [false, true] {
        restored.realtime(&site, now_ms, bots).unwrap();
        restored.breakdown(&site, now_ms, bots, 100).unwrap();
    }
    ingest(&restored, &site, &input.after, &mut now_ms);
    restored.advance_to(now_ms + 3_600_000);
    for bots in [false, true] {
        restored.realtime(&site, now_ms, bots).unwrap();
        restored.breakdown(&site, now_ms, bots, 100).unwrap();
    }
    restored.export_website(&site).unwrap();
});
