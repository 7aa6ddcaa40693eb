//! Criterion benches of the engine on one core: ingest with and without the sha256 visitor-id
//! step (and with varied breakdown values), realtime and breakdown query latency at 1k / 100k /
//! 1M active visitors against a naive scan baseline, eviction cost, and printed
//! bytes-per-active-visitor figures.
//!
//! Run: `cargo bench -p pulse-benches --bench engine`.

// Test and bench code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

use pulse_benches::{cheap_visitor, filled_engine, EventFactory, T0_MS};
use pulse_engine::{
    Browser, CountryCode, DeviceType, Engine, EngineLimits, Event, EventKind, SlidingHll,
    VisitorWindow,
};

/// Steady-state ingest: 200k distinct visitors cycling, the clock moving 1 ms per 4 events, so
/// the window fills and evicts as it would under ~4k events/s of real traffic.
fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    const BATCH: u64 = 10_000;
    group.throughput(Throughput::Elements(BATCH));
    for hashed in [false, true] {
        let name = if hashed {
            "with_sha256_id"
        } else {
            "precomputed_id"
        };
        group.bench_function(name, |b| {
            let factory = EventFactory::new("bench");
            let engine = Engine::new(EngineLimits::default()).unwrap();
            engine.add_website(factory.website().clone()).unwrap();
            let mut n = 0_u64;
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        let client = n % 200_000;
                        let visitor = if hashed {
                            factory.hashed_visitor(client)
                        } else {
                            cheap_visitor(client)
                        };
                        let event = factory.event(n, T0_MS + (n / 4) as i64, visitor);
                        black_box(engine.ingest(event, None).ok());
                        n += 1;
                    }
                }
                start.elapsed()
            });
        });
    }
    group.finish();
}

/// Values spread the way a busy site's are: 500 pages, 5% custom events among 8 names, a
/// third of events referred by one of 20 sites, 6 browsers, 3 devices, 30 countries; each
/// visitor keeps its browser, device and country.
#[derive(Debug)]
struct VariedValues {
    pages: Vec<Arc<str>>,
    names: Vec<Arc<str>>,
    referrers: Vec<Arc<str>>,
    countries: Vec<CountryCode>,
}

impl VariedValues {
    fn new() -> Self {
        let text = |prefix: &str, n: usize| -> Vec<Arc<str>> {
            (0..n).map(|i| Arc::from(format!("{prefix}{i}"))).collect()
        };
        let countries = (0..30_u8)
            .map(|i| {
                let code = [b'A' + i / 26, b'A' + i % 26];
                CountryCode::new(std::str::from_utf8(&code).unwrap()).unwrap()
            })
            .collect();
        Self {
            pages: text("/docs/page-", 500),
            names: text("signup-", 8),
            referrers: text("site-", 20)
                .into_iter()
                .map(|r| Arc::from(format!("{r}.example")))
                .collect(),
            countries,
        }
    }

    fn apply(&self, event: &mut Event, n: u64, client: u64) {
        let spread = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        if spread % 20 == 0 {
            event.kind = EventKind::Custom;
            event.target = Arc::clone(&self.names[(spread / 20 % 8) as usize]);
        } else {
            event.target = Arc::clone(&self.pages[(spread % 500) as usize]);
        }
        event.referrer_domain =
            (spread % 3 == 0).then(|| Arc::clone(&self.referrers[(spread / 3 % 20) as usize]));
        event.browser = Browser::ALL[(client % 6) as usize];
        event.device = DeviceType::ALL[(client % 3) as usize];
        event.country = Some(self.countries[(client % 30) as usize]);
    }
}

/// Ingest as `ingest/precomputed_id`, with `VariedValues` for the breakdowns to count.
fn ingest_varied(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    const BATCH: u64 = 10_000;
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("precomputed_id_varied_values", |b| {
        let factory = EventFactory::new("bench");
        let varied = VariedValues::new();
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(factory.website().clone()).unwrap();
        let mut n = 0_u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..BATCH {
                    let client = n % 200_000;
                    let mut event = factory.event(n, T0_MS + (n / 4) as i64, cheap_visitor(client));
                    varied.apply(&mut event, n, client);
                    black_box(engine.ingest(event, None).ok());
                    n += 1;
                }
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// Breakdown query latency (limit 10) at 1k / 100k / 1M active visitors: the factory's few
/// values, and at 1M also `VariedValues` plus 4,000 more pages (about 4,600 distinct values to
/// rank). Prints the bytes the budget accounts per active visitor (window, tally and breakdown).
fn breakdown(c: &mut Criterion) {
    let mut group = c.benchmark_group("breakdown");
    for visitors in [1_000_u64, 100_000, 1_000_000] {
        let factory = EventFactory::new("bench");
        let (engine, now) = filled_engine(&factory, visitors);
        let answer = engine.breakdown(factory.website(), now, false, 10).unwrap();
        assert!(!answer.approximate);
        println!(
            "accounted_bytes_per_active_visitor/{visitors}: {:.1} (visitor window, tally and breakdown)",
            engine.budget().used_bytes() as f64 / visitors as f64
        );
        group.bench_with_input(BenchmarkId::new("engine", visitors), &visitors, |b, _| {
            b.iter(|| black_box(engine.breakdown(factory.website(), now, false, 10).ok()));
        });
    }
    let visitors = 1_000_000_u64;
    let factory = EventFactory::new("bench");
    let varied = VariedValues::new();
    let extra: Vec<Arc<str>> = (0..4_000)
        .map(|i| Arc::from(format!("/blog/{i}")))
        .collect();
    let engine = Engine::new(EngineLimits::default()).unwrap();
    engine.add_website(factory.website().clone()).unwrap();
    let span_ms = 29 * 60 * 1000;
    for v in 0..visitors {
        let ts = T0_MS + (v as i64 * span_ms) / visitors as i64;
        let mut event = factory.event(v, ts, cheap_visitor(v));
        event.is_bot = false;
        varied.apply(&mut event, v, v);
        if v % 4 == 0 {
            event.kind = EventKind::Pageview;
            event.target = Arc::clone(&extra[(v / 4 % 4_000) as usize]);
        }
        engine.ingest(event, None).unwrap();
    }
    let now = T0_MS + span_ms;
    let answer = engine.breakdown(factory.website(), now, true, 10).unwrap();
    assert!(!answer.approximate);
    println!(
        "accounted_bytes_per_active_visitor/1000000_varied: {:.1}",
        engine.budget().used_bytes() as f64 / visitors as f64
    );
    for include_bots in [false, true] {
        let name = if include_bots {
            "varied_with_bots"
        } else {
            "varied"
        };
        group.bench_with_input(BenchmarkId::new(name, visitors), &visitors, |b, _| {
            b.iter(|| {
                black_box(
                    engine
                        .breakdown(factory.website(), now, include_bots, 10)
                        .ok(),
                )
            });
        });
    }
    group.finish();
}

/// The naive baseline: every event in a Vec, scanned per query (what the model test does).
fn naive_realtime(events: &[Event], now_ms: i64, window_ms: i64) -> (usize, Vec<&Event>) {
    let cutoff = now_ms - window_ms;
    let in_window: Vec<&Event> = events
        .iter()
        .filter(|e| !e.is_bot && e.ts.unix_ms() > cutoff && e.ts.unix_ms() <= now_ms)
        .collect();
    let visitors: HashSet<u64> = in_window.iter().map(|e| e.visitor.0).collect();
    let mut recent = in_window;
    recent.sort_by_key(|e| std::cmp::Reverse(e.ts));
    recent.truncate(100);
    (visitors.len(), recent)
}

fn realtime(c: &mut Criterion) {
    let mut group = c.benchmark_group("realtime");
    for visitors in [1_000_u64, 100_000, 1_000_000] {
        let factory = EventFactory::new("bench");
        let (engine, now) = filled_engine(&factory, visitors);
        let answer = engine.realtime(factory.website(), now, false).unwrap();
        assert_eq!(answer.active_visitors, visitors);
        assert_eq!(answer.recent_events.len(), 100.min(visitors as usize));
        group.bench_with_input(BenchmarkId::new("engine", visitors), &visitors, |b, _| {
            b.iter(|| black_box(engine.realtime(factory.website(), now, false).ok()));
        });
        if visitors <= 100_000 {
            let span_ms = 29 * 60 * 1000;
            let events: Vec<Event> = (0..visitors)
                .map(|v| {
                    let ts = T0_MS + (v as i64 * span_ms) / visitors as i64;
                    let mut e = factory.event(v, ts, cheap_visitor(v));
                    e.is_bot = false;
                    e
                })
                .collect();
            let window_ms = EngineLimits::default().window_ms();
            assert_eq!(naive_realtime(&events, now, window_ms).0, visitors as usize);
            group.bench_with_input(
                BenchmarkId::new("naive_scan", visitors),
                &visitors,
                |b, _| {
                    b.iter(|| black_box(naive_realtime(&events, now, window_ms).0));
                },
            );
        }
    }
    group.finish();
}

/// Cost of expiring visitors: fill a window with 100k visitors, then advance past all of them
/// one second at a time.
fn eviction(c: &mut Criterion) {
    let mut group = c.benchmark_group("eviction");
    const VISITORS: u64 = 100_000;
    group.throughput(Throughput::Elements(VISITORS));
    group.bench_function("advance_through_100k_visitors", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut window = VisitorWindow::new(1800);
                for v in 0..VISITORS {
                    window.record(cheap_visitor(v), T0_MS + (v as i64 * 17), None);
                }
                let end = T0_MS + VISITORS as i64 * 17 + 1_800_000;
                let start = Instant::now();
                let mut now = T0_MS + 1_800_000;
                while now <= end {
                    window.advance_to(now);
                    now += 1000;
                }
                window.advance_to(end);
                total += start.elapsed();
                assert!(window.is_empty());
            }
            total
        });
    });
    group.finish();
}

/// Not a timing: prints the window's bytes per active visitor at 1M visitors.
fn bytes_per_visitor(_: &mut Criterion) {
    for visitors in [100_000_u64, 1_000_000] {
        let mut window = VisitorWindow::new(1800);
        for v in 0..visitors {
            window.record(
                cheap_visitor(v),
                T0_MS + (v as i64 * 1_700_000) / visitors as i64,
                None,
            );
        }
        let bytes = window.memory_bytes();
        println!(
            "bytes_per_active_visitor/{visitors}: {:.1} ({} bytes for {} visitors)",
            bytes as f64 / window.len() as f64,
            bytes,
            window.len()
        );
    }
}

/// Not a timing: prints the approximate mode's relative error at 1M distinct visitors spread
/// over 29 minutes (five id sets), and at 1M in a window after 1M more have expired.
fn approximate_accuracy(_: &mut Criterion) {
    const N: u64 = 1_000_000;
    let span_ms = 29 * 60 * 1000;
    let mut errors = Vec::new();
    for seed in 0..5_u64 {
        let mut hll = SlidingHll::new(1800);
        for v in 0..N {
            let ts = T0_MS + (v as i64 * span_ms) / N as i64;
            hll.record(cheap_visitor(v ^ (seed << 40)).0, ts);
        }
        let error = (hll.estimate() as f64 - N as f64) / N as f64;
        errors.push(error);
        println!(
            "approximate_accuracy/1m_in_window/seed{seed}: estimate {} error {:+.3}% memory {} bytes",
            hll.estimate(),
            error * 100.0,
            hll.memory_bytes()
        );
    }
    let mean_abs = errors.iter().map(|e| e.abs()).sum::<f64>() / errors.len() as f64;
    let max_abs = errors.iter().fold(0.0_f64, |m, e| m.max(e.abs()));
    println!(
        "approximate_accuracy/1m_in_window: mean |error| {:.3}%, max |error| {:.3}%",
        mean_abs * 100.0,
        max_abs * 100.0
    );
    // Sliding: 1M visitors in the first 30 minutes, 1M new ones in the next 30; at the end only
    // the second million is in the window.
    let mut hll = SlidingHll::new(1800);
    let window_ms = 1_800_000;
    for v in 0..2 * N {
        let ts = T0_MS + (v as i64 * 2 * window_ms) / (2 * N) as i64;
        hll.record(cheap_visitor(v).0, ts);
    }
    hll.advance_to(T0_MS + 2 * window_ms);
    let exact = N as f64;
    println!(
        "approximate_accuracy/1m_after_1m_expired: estimate {} error {:+.3}%",
        hll.estimate(),
        (hll.estimate() as f64 - exact) / exact * 100.0
    );
}

criterion_group!(
    benches,
    ingest,
    ingest_varied,
    realtime,
    breakdown,
    eviction,
    bytes_per_visitor,
    approximate_accuracy
);
criterion_main!(benches);
