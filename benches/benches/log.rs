//! Criterion benches of the event log: appending batches to a segment (with and without an
//! fsync per batch), replaying 1M events (decode only, and into a fresh engine — the work of a
//! restart with a 1M-event window), against a naive baseline that decodes into a Vec first.
//!
//! Two design claims are checked against their alternatives here: the hand-written batch layout
//! against a generic encoder (`layout/*`: bincode 2 over serde, encoding and decoding the same
//! 100-event batches, with the same validation on decode), and reading a segment through mmap
//! against `fs::read` (`segment_read/*`: one 1M-event segment scanned both ways).
//!
//! Run: `cargo bench -p pulse-benches --bench log`.

// Bench code: a failed unwrap is a failed setup, which should stop the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The mmap side of `segment_read` maps a file, as `pulse_snapshot::replay` does.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pulse_benches::{cheap_visitor, EventFactory, T0_MS};
use pulse_engine::{
    Browser, CountryCode, DeviceType, Engine, EngineLimits, Event, EventKind, Timestamp, VisitorId,
    WebsiteId,
};
use pulse_snapshot::batch;
use pulse_snapshot::record::MAX_RECORD_BYTES;
use pulse_snapshot::{
    replay, scan_segment, LogEntry, LoggedEvent, ReplayOptions, SegmentLimits, SegmentWriter,
};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

const BATCH: usize = 100;
const REPLAY_EVENTS: u64 = 1_000_000;

fn entries(factory: &EventFactory, first: u64, count: usize, span_ms: i64) -> Vec<LogEntry> {
    (first..first + count as u64)
        .map(|n| LogEntry::Event {
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
                replay(dir.path(), ReplayOptions::default(), |e| match e.entry {
                    LogEntry::Event {
                        event,
                        carried_from,
                    } => {
                        let _ = engine.ingest(event, carried_from);
                    }
                    LogEntry::Touch {
                        touch,
                        carried_from,
                    } => {
                        let _ = engine.touch(&touch, carried_from);
                    }
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

/// One event as a generic encoder sees it: the same fields as the hand-written layout, strings
/// borrowed, enums as their index in the engine's `ALL` lists.
#[derive(Serialize, Deserialize)]
struct WireEvent<'a> {
    ts_ms: i64,
    visitor: u64,
    carried_from: Option<u64>,
    is_bot: bool,
    custom: bool,
    browser: u8,
    device: u8,
    country: Option<[u8; 2]>,
    website: &'a str,
    target: &'a str,
    referrer: Option<&'a str>,
}

impl<'a> WireEvent<'a> {
    fn new(entry: &'a LogEntry) -> Self {
        let LogEntry::Event {
            event,
            carried_from,
        } = entry
        else {
            panic!("the layout bench compares event batches only");
        };
        let index = |found: Option<usize>| found.unwrap() as u8;
        Self {
            ts_ms: event.ts.unix_ms(),
            visitor: event.visitor.0,
            carried_from: carried_from.map(|v| v.0),
            is_bot: event.is_bot,
            custom: event.kind == EventKind::Custom,
            browser: index(Browser::ALL.iter().position(|b| *b == event.browser)),
            device: index(DeviceType::ALL.iter().position(|d| *d == event.device)),
            country: event.country.map(|c| c.as_bytes()),
            website: event.website.as_str(),
            target: &event.target,
            referrer: event.referrer_domain.as_deref(),
        }
    }
}

/// A batch as the generic encoder writes it, serialised straight from the entries (no
/// intermediate Vec), like `batch::encode`.
struct WireBatchOut<'a> {
    first_seq: u64,
    entries: &'a [LogEntry],
}

impl Serialize for WireBatchOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Events<'a>(&'a [LogEntry]);
        impl Serialize for Events<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for entry in self.0 {
                    seq.serialize_element(&WireEvent::new(entry))?;
                }
                seq.end()
            }
        }
        let mut batch = serializer.serialize_struct("WireBatch", 2)?;
        batch.serialize_field("first_seq", &self.first_seq)?;
        batch.serialize_field("events", &Events(self.entries))?;
        batch.end()
    }
}

#[derive(Deserialize)]
struct WireBatchIn<'a> {
    first_seq: u64,
    #[serde(borrow)]
    events: Vec<WireEvent<'a>>,
}

type WireConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD_BYTES>,
>;

fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// Decodes a bincode batch with the checks `batch::decode` makes, into the same `LoggedEvent`s.
fn decode_wire(
    payload: &[u8],
    website_cache: &mut Option<WebsiteId>,
    mut visit: impl FnMut(LoggedEvent),
) -> Result<u64, &'static str> {
    let (batch, used): (WireBatchIn<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(payload, wire_config()).map_err(|_| "bincode")?;
    if used != payload.len() {
        return Err("trailing bytes");
    }
    for (i, wire) in batch.events.into_iter().enumerate() {
        let ts = Timestamp::from_unix_ms(wire.ts_ms).map_err(|_| "timestamp")?;
        let browser = *Browser::ALL
            .get(usize::from(wire.browser))
            .ok_or("browser")?;
        let device = *DeviceType::ALL
            .get(usize::from(wire.device))
            .ok_or("device")?;
        let country = match wire.country {
            Some(code) => Some(
                std::str::from_utf8(&code)
                    .ok()
                    .and_then(CountryCode::new)
                    .ok_or("country")?,
            ),
            None => None,
        };
        let website = match website_cache {
            Some(cached) if cached.as_str() == wire.website => cached.clone(),
            _ => {
                let id = WebsiteId::new(wire.website).map_err(|_| "website")?;
                *website_cache = Some(id.clone());
                id
            }
        };
        visit(LoggedEvent {
            seq: batch.first_seq + i as u64,
            entry: LogEntry::Event {
                event: Arc::new(Event {
                    website,
                    ts,
                    visitor: VisitorId(wire.visitor),
                    kind: if wire.custom {
                        EventKind::Custom
                    } else {
                        EventKind::Pageview
                    },
                    target: Arc::from(wire.target),
                    referrer_domain: wire.referrer.map(Arc::from),
                    is_bot: wire.is_bot,
                    browser,
                    device,
                    country,
                }),
                carried_from: wire.carried_from.map(VisitorId),
            },
        });
    }
    Ok(batch.first_seq)
}

/// The hand-written layout (`batch::encode`/`decode`) against bincode 2 over serde, on the same
/// 100-event batches. Half the events carry a country and every fifth a carried-over id, so every
/// optional field is exercised.
fn layout(c: &mut Criterion) {
    let factory = EventFactory::new("bench");
    let mut batch = entries(&factory, 0, BATCH, 60_000);
    for (i, entry) in batch.iter_mut().enumerate() {
        let LogEntry::Event {
            event,
            carried_from,
        } = entry
        else {
            panic!("entries() makes events");
        };
        let mut changed = Event::clone(event);
        changed.country = (i % 2 == 0).then(|| CountryCode::new("DE").unwrap());
        changed.browser = Browser::ALL[i % Browser::ALL.len()];
        changed.device = DeviceType::ALL[i % DeviceType::ALL.len()];
        *event = Arc::new(changed);
        *carried_from = (i % 5 == 0).then_some(VisitorId(i as u64));
    }
    let mut hand = Vec::new();
    assert_eq!(batch::encode(7, &batch, &mut hand), BATCH);
    let wire = bincode::serde::encode_to_vec(
        WireBatchOut {
            first_seq: 7,
            entries: &batch,
        },
        wire_config(),
    )
    .unwrap();
    // Both decoders must read back the same events before their speed means anything.
    let (mut from_hand, mut from_wire) = (Vec::new(), Vec::new());
    batch::decode(&hand, &mut None, |e| from_hand.push(e)).unwrap();
    decode_wire(&wire, &mut None, |e| from_wire.push(e)).unwrap();
    assert_eq!(from_hand, from_wire);
    assert_eq!(from_hand.len(), BATCH);
    println!(
        "layout fixture: {BATCH} events, hand-written {} bytes, bincode {} bytes",
        hand.len(),
        wire.len()
    );

    let mut group = c.benchmark_group("layout");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut out = Vec::with_capacity(hand.len().max(wire.len()));
    group.bench_function("encode_100/hand_written", |b| {
        b.iter(|| {
            out.clear();
            let taken = batch::encode(7, black_box(&batch), &mut out);
            (taken, out.len())
        });
    });
    group.bench_function("encode_100/bincode", |b| {
        b.iter(|| {
            out.clear();
            let value = WireBatchOut {
                first_seq: 7,
                entries: black_box(&batch),
            };
            bincode::serde::encode_into_std_write(value, &mut out, wire_config()).unwrap()
        });
    });
    group.bench_function("decode_100/hand_written", |b| {
        b.iter(|| {
            let mut n = 0_u64;
            batch::decode(black_box(&hand), &mut None, |e| n += e.seq).unwrap();
            n
        });
    });
    group.bench_function("decode_100/bincode", |b| {
        b.iter(|| {
            let mut n = 0_u64;
            decode_wire(black_box(&wire), &mut None, |e| n += e.seq).unwrap();
            n
        });
    });
    group.finish();
}

/// One 1M-event segment read through a memory map (what `replay` does) and through
/// `fs::read` into a buffer, then scanned the same way. The file is in the page cache for both,
/// as it is on a restart that follows a clean stop.
fn segment_read(c: &mut Criterion) {
    let factory = EventFactory::new("bench");
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(dir.path(), 0, T0_MS, SegmentLimits::default()).unwrap();
    for first in (0..REPLAY_EVENTS).step_by(1000) {
        writer
            .append(&entries(&factory, first, 1000, 25 * 60 * 1000), T0_MS)
            .unwrap();
    }
    writer.sync().unwrap();
    let path = writer.path().to_owned();
    drop(writer);
    let scan = |bytes: &[u8]| {
        let mut n = 0_u64;
        let scan = scan_segment(bytes, 0, |e| n += e.seq & 1);
        assert_eq!(scan.events, REPLAY_EVENTS);
        n
    };

    let mut group = c.benchmark_group("segment_read");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REPLAY_EVENTS));
    group.bench_function("mmap_1m_events", |b| {
        b.iter(|| {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: read-only map of a file nothing else writes while the bench runs.
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            scan(&map)
        });
    });
    group.bench_function("fs_read_1m_events", |b| {
        b.iter(|| scan(&std::fs::read(&path).unwrap()));
    });
    group.finish();
}

criterion_group!(
    benches,
    segment_append,
    replay_benches,
    layout,
    segment_read
);
criterion_main!(benches);
