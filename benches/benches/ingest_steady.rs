//! Steady-state ingest, timed in CPU time: the workload of `engine`'s `ingest/precomputed_id`
//! (200k visitors cycling, 4 events per millisecond, a tenth bots), but with the 30-minute window
//! filled first (7.2M events) so every measured event also evicts one, and timed with the
//! thread's CPU clock (`/proc/thread-self/schedstat`) so a machine shared with other work
//! skews it less than wall time. A second workload gives the events varied breakdown values as
//! a site's visitors would: each visitor keeps its browser (6), device (3), country (30) and
//! referrer (20 sites, a third of visitors) and moves among 4 of 500 pages; 5% of events are
//! custom events (8 names).
//!
//! The file uses only the engine's public `ingest`, so the same file builds against an older
//! engine for a same-run before/after (BENCHMARKS.md, "Breakdowns").
//!
//! Run: `cargo bench -p pulse-benches --bench ingest_steady`. `PULSE_STEADY_VISITORS` sets the
//! number of visitors cycling (default 200000), to see how the cost moves with the working set.

// Bench code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use pulse_benches::{cheap_visitor, EventFactory, T0_MS};
use pulse_engine::{Browser, CountryCode, DeviceType, Engine, EngineLimits, Event, EventKind};

/// Events the 30-minute window holds at 4 events per millisecond.
const FILL: u64 = 4 * 1_800_000;
const ROUND: u64 = 2_000_000;
const ROUNDS: usize = 5;

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

struct Varied {
    pages: Vec<Arc<str>>,
    names: Vec<Arc<str>>,
    referrers: Vec<Arc<str>>,
    countries: Vec<CountryCode>,
}

impl Varied {
    fn new() -> Self {
        let text = |prefix: &str, n: usize, suffix: &str| -> Vec<Arc<str>> {
            (0..n)
                .map(|i| Arc::from(format!("{prefix}{i}{suffix}")))
                .collect()
        };
        let countries = (0..30_u8)
            .map(|i| {
                let code = [b'A' + i / 26, b'A' + i % 26];
                CountryCode::new(std::str::from_utf8(&code).unwrap()).unwrap()
            })
            .collect();
        Self {
            pages: text("/docs/page-", 500, ""),
            names: text("signup-", 8, ""),
            referrers: text("site-", 20, ".example"),
            countries,
        }
    }

    fn apply(&self, event: &mut Event, n: u64, client: u64) {
        let spread = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let visitor = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        if spread % 20 == 0 {
            event.kind = EventKind::Custom;
            event.target = Arc::clone(&self.names[(spread / 20 % 8) as usize]);
        } else {
            let page = (visitor + spread % 4) % 500;
            event.target = Arc::clone(&self.pages[page as usize]);
        }
        event.referrer_domain =
            (visitor % 3 == 0).then(|| Arc::clone(&self.referrers[(visitor / 3 % 20) as usize]));
        event.browser = Browser::ALL[(client % 6) as usize];
        event.device = DeviceType::ALL[(client % 3) as usize];
        event.country = Some(self.countries[(client % 30) as usize]);
    }
}

fn run(name: &str, visitors: u64, varied: Option<&Varied>) {
    let factory = EventFactory::new("bench");
    let engine = Engine::new(EngineLimits::default()).unwrap();
    engine.add_website(factory.website().clone()).unwrap();
    let mut n = 0_u64;
    let mut ingest = |count: u64| {
        for _ in 0..count {
            let client = n % visitors;
            let mut event = factory.event(n, T0_MS + (n / 4) as i64, cheap_visitor(client));
            if let Some(varied) = varied {
                varied.apply(&mut event, n, client);
            }
            black_box(engine.ingest(event, None).ok());
            n += 1;
        }
    };
    ingest(FILL);
    let mut cpu_ns_per_event = Vec::new();
    let mut wall_ns_per_event = Vec::new();
    for _ in 0..ROUNDS {
        let (cpu, wall) = (thread_cpu_ns(), Instant::now());
        ingest(ROUND);
        cpu_ns_per_event.push((thread_cpu_ns() - cpu) as f64 / ROUND as f64);
        wall_ns_per_event.push(wall.elapsed().as_nanos() as f64 / ROUND as f64);
    }
    cpu_ns_per_event.sort_by(f64::total_cmp);
    wall_ns_per_event.sort_by(f64::total_cmp);
    println!(
        "ingest_steady/{name}: median {:.1} ns/event CPU ({:.2} M events/s), rounds {:?}, wall median {:.1} ns, {visitors} visitors",
        cpu_ns_per_event[ROUNDS / 2],
        1e3 / cpu_ns_per_event[ROUNDS / 2],
        cpu_ns_per_event.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
        wall_ns_per_event[ROUNDS / 2],
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one workload.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let visitors = std::env::var("PULSE_STEADY_VISITORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(200_000);
    if wanted("factory_values") {
        run("factory_values", visitors, None);
    }
    if wanted("varied_values") {
        let varied = Varied::new();
        run("varied_values", visitors, Some(&varied));
    }
}
