//! Criterion benches of the event log: appending batches to a segment (with and without an
//! fsync per batch), replaying 1M events (decode only, and into a fresh engine — the work of a
//! restart with a 1M-event window), against a naive baseline that decodes into a Vec first.
//!
//! Run: `cargo bench -p pulse-benches --bench log`.

// Bench code: a failed unwrap is a failed setup, which should stop the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pulse_benches::{cheap_visitor, EventFactory, T0_MS};
use pulse_engine::{Engine, EngineLimits};
use pulse_snapshot::{replay, LogEntry, ReplayOptions, SegmentLimits, SegmentWriter};

const BATCH: usize = 100;
const REPLAY_EVENTS: u64 = 1_000_000;

fn entries(factory: &EventFactory, first: u64, count: usize, span_ms: i64) -> Vec<LogEntry> {
    (first..first + count as u64)
        .map(|n| LogEntry {
            event: std::sync::Arc::new(factory.event(
                n,
                T0_MS + (n as i64 * span_ms) / REPLAY_EVENTS as i64,
                cheap_visitor(n % 300_000),
            )),
            carried_from: None,
        })
        .collect()
}

fn segment_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment_append");
    group.throughput(Throughput::Elements(BATCH as u64));
    let factory = EventFactory::new("bench");
    let batch = entries(&factory, 0, BATCH, 60_000);
    for fsync in [false, true] {
        let name = if fsync {
            "batch_100_fsync_each"
        } else {
            "batch_100_no_fsync"
        };
        group.bench_function(name, |b| {
            let dir = tempfile::tempdir().unwrap();
            let mut writer =
                SegmentWriter::create(dir.path(), 0, T0_MS, SegmentLimits::default()).unwrap();
            b.iter(|| {
                writer.append(&batch, T0_MS).unwrap();
                if fsync {
                    writer.sync().unwrap();
                }
            });
        });
    }
    group.finish();
}

fn replay_benches(c: &mut Criterion) {
    let factory = EventFactory::new("bench");
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(dir.path(), 0, T0_MS, SegmentLimits::default()).unwrap();
    // 1M events spread over 25 minutes, written as the server would: many small batches.
    let span_ms = 25 * 60 * 1000;
    for first in (0..REPLAY_EVENTS).step_by(1000) {
        writer
            .append(&entries(&factory, first, 1000, span_ms), T0_MS)
            .unwrap();
    }
    writer.sync().unwrap();
    drop(writer);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!("replay fixture: {REPLAY_EVENTS} events, {bytes} bytes on disk");

    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REPLAY_EVENTS));
    group.bench_function("decode_1m_events", |b| {
        b.iter(|| {
            let mut n = 0_u64;
            let report = replay(dir.path(), ReplayOptions::default(), |e| {
                n += e.seq & 1;
                black_box(&e);
            })
            .unwrap();
            assert_eq!(report.events, REPLAY_EVENTS);
            n
        });
    });
    group.bench_function("naive_collect_then_iterate_1m_events", |b| {
        b.iter(|| {
            let mut all = Vec::new();
            replay(dir.path(), ReplayOptions::default(), |e| all.push(e)).unwrap();
            black_box(all.iter().map(|e| e.seq).sum::<u64>())
        });
    });
    group.bench_function("into_engine_1m_events_restart_to_ready", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let engine = Engine::new(EngineLimits::default()).unwrap();
                engine.add_website(factory.website().clone()).unwrap();
                let start = Instant::now();
                replay(dir.path(), ReplayOptions::default(), |e| {
                    let _ = engine.ingest(e.entry.event, e.entry.carried_from);
                })
                .unwrap();
                total += start.elapsed();
                let answer = engine
                    .realtime(factory.website(), T0_MS + span_ms, true)
                    .unwrap();
                assert_eq!(answer.total_in_window, REPLAY_EVENTS);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, segment_append, replay_benches);
criterion_main!(benches);
