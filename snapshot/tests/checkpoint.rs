//! Checkpoints against the log: a restart from a checkpoint plus the log after it must answer
//! exactly as a replay of the whole log does, and a website restored from a checkpoint must go
//! on exactly as the original would — over random ingests and touches, late events, expiries, a
//! midnight carry-over, approximate counts under a memory budget, and websites deleted and created
//! again.

// Test code: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use pulse_engine::{
    Breakdown, Browser, DeviceType, Engine, EngineLimits, Event, EventKind, Realtime, Timestamp,
    Touch, VisitorId, WebsiteExport, WebsiteId,
};
use pulse_snapshot::checkpoint::{self, Checkpoint, WebsiteCheckpoint};
use pulse_snapshot::{replay, LogEntry, ReplayOptions, SegmentLimits, SegmentWriter};

const SITES: [&str; 3] = ["a", "b", "c"];
/// A UTC midnight: the runs start 20 minutes before it.
const MIDNIGHT: i64 = 20_000 * Timestamp::DAY_MS;
const CARRY_MS: i64 = 30 * 60 * 1000;
/// Yesterday's ids are today's plus this (a stand-in for the other salt).
const YESTERDAY: u64 = 10_000;

fn site(i: usize) -> WebsiteId {
    WebsiteId::new(SITES[i]).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// An event `step_ms` after the previous instant (negative: late); page 4 is a touch (a
    /// visitor seen without an event).
    Ingest {
        site: usize,
        step_ms: i64,
        person: u64,
        bot: bool,
        page: u8,
    },
    /// The server's timer: the engine advances to the current instant.
    Advance { step_ms: i64 },
    /// The website is deleted and created again under the same id.
    Recreate { site: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let step = prop_oneof![
        8 => 0..4_000_i64,
        2 => -90_000..0_i64,
        1 => 1_700_000..2_000_000_i64,
    ];
    prop_oneof![
        20 => (0..SITES.len(), step.clone(), 0..40_u64, proptest::bool::weighted(0.2), 0..5_u8)
            .prop_map(|(site, step_ms, person, bot, page)| Op::Ingest {
                site,
                step_ms,
                person,
                bot,
                page,
            }),
        3 => step.prop_map(|step_ms| Op::Advance { step_ms }),
        1 => (0..SITES.len()).prop_map(|site| Op::Recreate { site }),
    ]
}

/// Visitor memory: none to speak of (always approximate), a little (both modes, switching),
/// or unlimited (always exact).
fn budget() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1_usize), Just(48 * 1024), Just(usize::MAX)]
}

fn limits(visitor_memory_bytes: usize) -> EngineLimits {
    EngineLimits {
        ring_capacity: 12,
        recent_limit: 5,
        visitor_memory_bytes,
        ..EngineLimits::default()
    }
}

/// Turns ops into events with their instants, as the server would identify them: before
/// midnight a person has yesterday's id; in the carry-over after it, today's id carried from
/// yesterday's.
struct Clock {
    now_ms: i64,
    /// The latest instant so far (`now_ms` steps back for late events).
    max_ms: i64,
}

impl Clock {
    fn at(now_ms: i64) -> Self {
        Self {
            now_ms,
            max_ms: now_ms,
        }
    }

    fn step(&mut self, step_ms: i64) -> i64 {
        self.now_ms = (self.now_ms + step_ms).max(MIDNIGHT - 3_600_000);
        self.max_ms = self.max_ms.max(self.now_ms);
        self.now_ms
    }

    fn entry(&mut self, site: usize, step_ms: i64, person: u64, bot: bool, page: u8) -> LogEntry {
        let ts = self.step(step_ms);
        let (visitor, carried_from) = if ts < MIDNIGHT {
            (person + YESTERDAY, None)
        } else if ts < MIDNIGHT + CARRY_MS {
            (person, Some(VisitorId(person + YESTERDAY)))
        } else {
            (person, None)
        };
        if page == 4 {
            return LogEntry::Touch {
                touch: Touch {
                    website: crate::site(site),
                    ts: Timestamp::from_unix_ms(ts).unwrap(),
                    visitor: VisitorId(visitor),
                    is_bot: bot,
                },
                carried_from,
            };
        }
        LogEntry::Event {
            event: Arc::new(Event {
                website: crate::site(site),
                ts: Timestamp::from_unix_ms(ts).unwrap(),
                visitor: VisitorId(visitor),
                kind: if page == 3 {
                    EventKind::Custom
                } else {
                    EventKind::Pageview
                },
                target: Arc::from(format!("/page/{page}")),
                referrer_domain: (page == 1).then(|| Arc::from("example.com")),
                is_bot: bot,
                browser: if bot {
                    Browser::Other
                } else {
                    Browser::Firefox
                },
                device: if bot {
                    DeviceType::Other
                } else {
                    DeviceType::Mobile
                },
                country: None,
            }),
            carried_from,
        }
    }
}

/// Counts `entry` in `engine`, as the server does (an entry of an unknown website is dropped).
fn count(engine: &Engine, entry: LogEntry) {
    let _ = match entry {
        LogEntry::Event {
            event,
            carried_from,
        } => engine.ingest(event, carried_from).map(drop),
        LogEntry::Touch {
            touch,
            carried_from,
        } => engine.touch(&touch, carried_from).map(drop),
    };
}

fn new_engine(limits: EngineLimits) -> Engine {
    let engine = Engine::new(limits).unwrap();
    for i in 0..SITES.len() {
        engine.add_website(site(i)).unwrap();
    }
    engine
}

/// Every website's realtime answer and breakdown (every row of every list, and the series),
/// without bots and with them.
fn answers(engine: &Engine, now_ms: i64) -> Vec<(Realtime, Breakdown)> {
    let mut all = Vec::new();
    for i in 0..SITES.len() {
        for bots in [false, true] {
            all.push((
                engine.realtime(&site(i), now_ms, bots).unwrap(),
                engine.breakdown(&site(i), now_ms, bots, 100).unwrap(),
            ));
        }
    }
    all
}

/// A website's exported state with its visitors in one order (a window lists them in slab
/// order, which depends on the order of arrivals and evictions, not on what is held).
fn state_of(engine: &Engine, i: usize) -> WebsiteExport {
    let mut state = engine.export_website(&site(i)).unwrap();
    for class in [&mut state.counts.humans, &mut state.counts.bots] {
        let visitors = &mut class.visitors;
        let shadow = visitors
            .approximate
            .as_mut()
            .and_then(|a| a.shadow.as_mut());
        for window in visitors
            .exact
            .iter_mut()
            .chain(shadow.map(|s| &mut s.window))
        {
            window.visitors.sort_unstable();
        }
    }
    state
}

/// `checkpoint`, written to a file in `dir` and read back.
fn through_a_file(dir: &Path, checkpoint: &Checkpoint) -> Checkpoint {
    let bytes = checkpoint::encode(checkpoint).unwrap();
    checkpoint::write_checkpoint(dir, checkpoint.seq, &bytes, Duration::ZERO).unwrap();
    let loaded = checkpoint::load_newest(dir, &checkpoint.limits).unwrap();
    assert!(loaded.refused.is_empty(), "{:?}", loaded.refused);
    let (read, _) = loaded.checkpoint.unwrap();
    assert_eq!(
        &read, checkpoint,
        "a checkpoint reads back as it was written"
    );
    read
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A website restored from a checkpoint answers, and takes every later event, exactly as the
    /// one it was copied from: both engines run the same ops after the checkpoint and are
    /// compared after each.
    #[test]
    fn a_restored_engine_goes_on_exactly_as_the_original(
        ops in proptest::collection::vec(op(), 1..160),
        split in 0..160_usize,
        budget in budget(),
    ) {
        let limits = limits(budget);
        let live = new_engine(limits);
        let mut clock = Clock::at(MIDNIGHT - 20 * 60_000);
        let split = split.min(ops.len());
        let apply = |engine: &Engine, clock: &mut Clock, op: &Op| match *op {
            Op::Ingest { site, step_ms, person, bot, page } => {
                count(engine, clock.entry(site, step_ms, person, bot, page));
            }
            Op::Advance { step_ms } => engine.advance_to(clock.step(step_ms)),
            Op::Recreate { site } => {
                engine.remove_website(&crate::site(site)).unwrap();
                engine.add_website(crate::site(site)).unwrap();
            }
        };
        for op in &ops[..split] {
            apply(&live, &mut clock, op);
        }
        let dir = tempfile::tempdir().unwrap();
        // The log's positions do not matter here: every website stands after its start.
        let checkpoint = Checkpoint {
            seq: 1,
            created_ms: clock.now_ms,
            limits,
            websites: (0..SITES.len())
                .map(|i| WebsiteCheckpoint {
                    id: site(i),
                    seq: 1,
                    state: live.export_website(&site(i)).unwrap(),
                })
                .collect(),
        };
        let restored = new_engine(limits);
        let starts = (0..SITES.len()).map(|i| (site(i), 0)).collect();
        through_a_file(dir.path(), &checkpoint).restore(&restored, &starts).unwrap();
        prop_assert_eq!(restored.budget().used_bytes(), live.budget().used_bytes());
        let mut restored_clock = Clock::at(clock.now_ms);
        for op in &ops[split..] {
            apply(&live, &mut clock, op);
            apply(&restored, &mut restored_clock, op);
            for i in 0..SITES.len() {
                prop_assert_eq!(state_of(&restored, i), state_of(&live, i), "after {:?}", op);
            }
            prop_assert_eq!(answers(&restored, clock.now_ms), answers(&live, clock.now_ms));
        }
        let now_ms = clock.max_ms + 1;
        prop_assert_eq!(answers(&restored, now_ms), answers(&live, now_ms));
    }

    /// The server's restart: the live engine is checkpointed one website at a time while the
    /// log grows (each website's state stands at its own sequence number), websites are deleted
    /// and created again meanwhile, then a restart from the checkpoint and the log after it
    /// answers as a replay of the whole log.
    #[test]
    fn a_checkpoint_and_the_log_after_it_answer_as_the_whole_log(
        ops in proptest::collection::vec(op(), 1..160),
        start in 0..160_usize,
        delays in proptest::collection::vec(0..30_usize, SITES.len()),
        budget in prop_oneof![Just(1_usize), Just(usize::MAX)],
    ) {
        let limits = limits(budget);
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("segments");
        let checkpoint_dir = dir.path().join("checkpoints");
        let live = new_engine(limits);
        let mut writer =
            SegmentWriter::create(&log_dir, 0, MIDNIGHT, SegmentLimits::default()).unwrap();
        let mut clock = Clock::at(MIDNIGHT - 20 * 60_000);
        let mut log_starts: HashMap<WebsiteId, u64> =
            (0..SITES.len()).map(|i| (site(i), 0)).collect();
        let start = start.min(ops.len());
        let mut checkpoint_seq = None;
        let mut exports: Vec<WebsiteCheckpoint> = Vec::new();
        // Each website is copied `delay` ops after the checkpoint starts (at the end at the latest).
        let export_due = |i: usize, delay: usize| (start + delay).min(ops.len()) == i;
        for i in 0..=ops.len() {
            if i == start {
                checkpoint_seq = Some(writer.next_seq());
            }
            for (s, delay) in delays.iter().enumerate() {
                if export_due(i, *delay) {
                    exports.push(WebsiteCheckpoint {
                        id: site(s),
                        seq: writer.next_seq(),
                        state: live.export_website(&site(s)).unwrap(),
                    });
                }
            }
            let Some(op) = ops.get(i) else { break };
            match *op {
                Op::Ingest { site, step_ms, person, bot, page } => {
                    let entry = clock.entry(site, step_ms, person, bot, page);
                    writer.append(std::slice::from_ref(&entry), clock.now_ms).unwrap();
                    count(&live, entry);
                }
                Op::Advance { step_ms } => live.advance_to(clock.step(step_ms)),
                Op::Recreate { site } => {
                    log_starts.insert(crate::site(site), writer.next_seq());
                    live.remove_website(&crate::site(site)).unwrap();
                    live.add_website(crate::site(site)).unwrap();
                }
            }
        }
        drop(writer);
        let checkpoint = Checkpoint {
            seq: checkpoint_seq.unwrap_or(0),
            created_ms: clock.now_ms,
            limits,
            websites: exports,
        };

        let full = new_engine(limits);
        replay(&log_dir, ReplayOptions::default(), |logged| {
            if logged.seq >= log_starts[logged.entry.website()] {
                count(&full, logged.entry);
            }
        })
        .unwrap();

        let from_checkpoint = new_engine(limits);
        let restored = through_a_file(&checkpoint_dir, &checkpoint)
            .restore(&from_checkpoint, &log_starts)
            .unwrap();
        let options = ReplayOptions {
            skip_below_seq: restored.replay_from_seq,
            ..ReplayOptions::default()
        };
        replay(&log_dir, options, |logged| {
            if logged.seq >= restored.starts[logged.entry.website()] {
                count(&from_checkpoint, logged.entry);
            }
        })
        .unwrap();
        let now_ms = clock.max_ms;
        prop_assert_eq!(answers(&from_checkpoint, now_ms), answers(&full, now_ms));
    }
}

#[test]
fn a_website_deleted_after_its_checkpoint_is_not_restored() {
    let limits = limits(usize::MAX);
    let live = new_engine(limits);
    let mut clock = Clock::at(MIDNIGHT + CARRY_MS);
    count(&live, clock.entry(0, 0, 1, false, 0));
    let checkpoint = Checkpoint {
        seq: 1,
        created_ms: clock.now_ms,
        limits,
        websites: vec![WebsiteCheckpoint {
            id: site(0),
            seq: 1,
            state: live.export_website(&site(0)).unwrap(),
        }],
    };
    // Deleted and created again at sequence 5: the checkpoint's state is the old website's.
    let log_starts = HashMap::from([(site(0), 5), (site(1), 0), (site(2), 0)]);
    let engine = new_engine(limits);
    let restored = checkpoint.clone().restore(&engine, &log_starts).unwrap();
    assert_eq!((restored.websites, restored.left_out), (0, 1));
    assert_eq!(restored.starts[&site(0)], 5);
    assert_eq!(restored.replay_from_seq, 0);
    assert_eq!(
        engine
            .realtime(&site(0), clock.now_ms, true)
            .unwrap()
            .active_visitors,
        0
    );
    // Not deleted: restored, and replay of that website starts after it.
    let log_starts = HashMap::from([(site(0), 0), (site(1), 3), (site(2), 4)]);
    let engine = new_engine(limits);
    let restored = checkpoint.restore(&engine, &log_starts).unwrap();
    assert_eq!((restored.websites, restored.starts[&site(0)]), (1, 1));
    assert_eq!(restored.replay_from_seq, 1);
    assert_eq!(
        engine
            .realtime(&site(0), clock.now_ms, true)
            .unwrap()
            .active_visitors,
        1
    );
}
