//! The reference model of the engine and the runner that compares the two, shared by the
//! engine's property test (`engine/tests/model.rs`) and the `engine_model` fuzz target. The
//! model keeps every event and every touch (a visitor seen without an event) in a `Vec` and
//! answers each query by scanning it. It does not choose the operations: the property test
//! draws them with proptest, the fuzz target from its input.

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pulse_engine::{
    Browser, DailySalt, DeviceType, Engine, EngineLimits, Event, EventKind, Identity, Ingested,
    Salt, SaltSchedule, Timestamp, Touch, Touched, VisitorId, WebsiteId,
};

pub const SITES: usize = 3;
pub const PEOPLE: u8 = 12;
pub const TARGETS: [&str; 5] = ["/", "/pricing", "/blog", "/docs", "signup"];

/// Person `p` is a bot when `p >= FIRST_BOT`: the flag follows the User-Agent, as in the server.
pub const FIRST_BOT: u8 = 9;

#[derive(Debug, Clone)]
pub enum Op {
    /// An event `step_ms` after the current time (step >= 0) or `-step_ms` late (step < 0).
    Ingest {
        site: usize,
        person: u8,
        step_ms: i64,
        target: usize,
    },
    /// A touch (the visitor seen without an event), timed as `Ingest`.
    Touch {
        site: usize,
        person: u8,
        step_ms: i64,
    },
    /// A query `step_ms` after the current time.
    Query {
        site: usize,
        step_ms: i64,
        include_bots: bool,
    },
    /// A query exactly where an earlier event or touch leaves the window, give or take a
    /// millisecond.
    QueryAtEdge {
        site: usize,
        event_pick: usize,
        delta_ms: i64,
        include_bots: bool,
    },
}

#[derive(Debug, Clone)]
struct ModelEvent {
    site: usize,
    ts: i64,
    /// The visitor id the event counts for now; a midnight carry renames earlier events.
    id: u64,
    is_bot: bool,
    /// `None` for a touch: it counts its visitor and nothing else.
    target: Option<&'static str>,
    arrival: u64,
}

/// The naive reference: every windowed event and touch in a Vec, scanned on each query.
struct Model {
    limits: EngineLimits,
    events: Vec<ModelEvent>,
    clock: [i64; SITES],
    next_arrival: [u64; SITES],
}

/// What both sides must agree on for one query.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    as_of_ms: i64,
    active_visitors: u64,
    total_in_window: u64,
    recent: Vec<(i64, u64, String)>,
}

impl Model {
    fn new(limits: EngineLimits) -> Self {
        Self {
            limits,
            events: Vec::new(),
            clock: [i64::MIN; SITES],
            next_arrival: [0; SITES],
        }
    }

    fn window_ms(&self) -> i64 {
        self.limits.window_ms()
    }

    /// Records an event (`target` set) or a touch (`None`); false when it is outside the window.
    fn record(
        &mut self,
        site: usize,
        ts: i64,
        id: u64,
        carried_from: Option<u64>,
        is_bot: bool,
        target: Option<&'static str>,
    ) -> bool {
        self.clock[site] = self.clock[site].max(ts);
        let cutoff = self.clock[site] - self.window_ms();
        if ts <= cutoff {
            return false;
        }
        if let Some(from) = carried_from.filter(|from| *from != id) {
            let from_active = self
                .events
                .iter()
                .any(|e| e.site == site && e.is_bot == is_bot && e.id == from && e.ts > cutoff);
            if from_active {
                for e in self.events.iter_mut() {
                    if e.site == site && e.is_bot == is_bot && e.id == from {
                        e.id = id;
                    }
                }
            }
        }
        let arrival = self.next_arrival[site];
        if target.is_some() {
            self.next_arrival[site] += 1;
        }
        self.events.push(ModelEvent {
            site,
            ts,
            id,
            is_bot,
            target,
            arrival,
        });
        true
    }

    fn realtime(&mut self, site: usize, now: i64, include_bots: bool) -> Answer {
        self.clock[site] = self.clock[site].max(now);
        let as_of = self.clock[site];
        let cutoff = as_of - self.window_ms();
        let counted = |e: &&ModelEvent| {
            e.site == site && (include_bots || !e.is_bot) && e.ts > cutoff && e.ts <= as_of
        };
        let mut visitors: Vec<(u64, bool)> = self
            .events
            .iter()
            .filter(counted)
            .map(|e| (e.id, e.is_bot))
            .collect();
        visitors.sort_unstable();
        visitors.dedup();
        let total = self
            .events
            .iter()
            .filter(counted)
            .filter(|e| e.target.is_some())
            .count() as u64;

        // The rings keep the last `ring_capacity` arrivals of each class.
        let retained = |is_bot: bool| {
            let class: Vec<&ModelEvent> = self
                .events
                .iter()
                .filter(|e| e.site == site && e.is_bot == is_bot && e.target.is_some())
                .collect();
            let skip = class.len().saturating_sub(self.limits.ring_capacity);
            class.into_iter().skip(skip)
        };
        let mut recent: Vec<&ModelEvent> = retained(false)
            .chain(retained(true).filter(|_| include_bots))
            .filter(counted)
            .collect();
        recent.sort_by_key(|e| std::cmp::Reverse((e.ts, e.arrival)));
        recent.truncate(self.limits.recent_limit);
        Answer {
            as_of_ms: as_of,
            active_visitors: visitors.len() as u64,
            total_in_window: total,
            recent: recent
                .into_iter()
                .map(|e| (e.ts, e.arrival, e.target.unwrap_or_default().to_owned()))
                .collect(),
        }
    }
}

pub fn site_id(site: usize) -> WebsiteId {
    WebsiteId::new(&format!("site-{site}")).unwrap()
}

pub fn salt_for(day: i64) -> DailySalt {
    DailySalt {
        day,
        salt: Salt::from_bytes([(day % 251) as u8; 32]),
    }
}

fn engine_answer(engine: &Engine, site: usize, now: i64, include_bots: bool) -> Answer {
    let answer = engine.realtime(&site_id(site), now, include_bots).unwrap();
    Answer {
        as_of_ms: answer.as_of_ms,
        active_visitors: answer.active_visitors,
        total_in_window: answer.total_in_window,
        recent: answer
            .recent_events
            .iter()
            .map(|r| (r.event.ts.unix_ms(), r.arrival, r.event.target.to_string()))
            .collect(),
    }
}

/// Runs `ops` against both the engine and the model from `start_ms`, comparing every answer.
pub fn run(limits: EngineLimits, start_ms: i64, ops: &[Op]) -> Result<(), String> {
    let engine = Engine::new(limits).unwrap();
    for site in 0..SITES {
        engine.add_website(site_id(site)).unwrap();
    }
    let mut model = Model::new(limits);
    let start = Timestamp::from_unix_ms(start_ms).unwrap();
    let mut salts = SaltSchedule::new(salt_for(start.utc_day()), None, limits.window_ms());
    let mut cursor = start_ms;
    let mut seen_ts: Vec<i64> = Vec::new();

    for op in ops {
        match *op {
            Op::Ingest {
                site,
                person,
                step_ms,
                target,
            } => {
                let Some((ts, identity)) = sighting(&mut salts, &mut cursor, person, step_ms)
                else {
                    continue;
                };
                let is_bot = person >= FIRST_BOT;
                let event = Event {
                    website: site_id(site),
                    ts: Timestamp::from_unix_ms(ts).unwrap(),
                    visitor: identity.visitor,
                    kind: EventKind::Pageview,
                    target: Arc::from(TARGETS[target]),
                    referrer_domain: None,
                    is_bot,
                    browser: Browser::Firefox,
                    device: DeviceType::Mobile,
                    country: None,
                };
                let outcome = engine.ingest(event, identity.carried_from).unwrap();
                let windowed = model.record(
                    site,
                    ts,
                    identity.visitor.0,
                    identity.carried_from.map(|v: VisitorId| v.0),
                    is_bot,
                    Some(TARGETS[target]),
                );
                if matches!(outcome, Ingested::Windowed { .. }) != windowed {
                    return Err(format!(
                        "ingest outcome differs at ts {ts}: engine {outcome:?}"
                    ));
                }
                seen_ts.push(ts);
            }
            Op::Touch {
                site,
                person,
                step_ms,
            } => {
                let Some((ts, identity)) = sighting(&mut salts, &mut cursor, person, step_ms)
                else {
                    continue;
                };
                let is_bot = person >= FIRST_BOT;
                let touch = Touch {
                    website: site_id(site),
                    ts: Timestamp::from_unix_ms(ts).unwrap(),
                    visitor: identity.visitor,
                    is_bot,
                };
                let outcome = engine.touch(&touch, identity.carried_from).unwrap();
                let windowed = model.record(
                    site,
                    ts,
                    identity.visitor.0,
                    identity.carried_from.map(|v: VisitorId| v.0),
                    is_bot,
                    None,
                );
                if (outcome == Touched::Counted) != windowed {
                    return Err(format!(
                        "touch outcome differs at ts {ts}: engine {outcome:?}"
                    ));
                }
                // Window edges of touches are as worth probing as those of events.
                seen_ts.push(ts);
            }
            Op::Query {
                site,
                step_ms,
                include_bots,
            } => {
                cursor += step_ms;
                let expected = model.realtime(site, cursor, include_bots);
                same(engine_answer(&engine, site, cursor, include_bots), expected)?;
            }
            Op::QueryAtEdge {
                site,
                event_pick,
                delta_ms,
                include_bots,
            } => {
                if seen_ts.is_empty() {
                    continue;
                }
                let edge = seen_ts[event_pick % seen_ts.len()] + limits.window_ms();
                let now = edge + delta_ms;
                cursor = cursor.max(now);
                let expected = model.realtime(site, now, include_bots);
                same(engine_answer(&engine, site, now, include_bots), expected)?;
            }
        }
    }
    for site in 0..SITES {
        for include_bots in [false, true] {
            let expected = model.realtime(site, cursor, include_bots);
            same(engine_answer(&engine, site, cursor, include_bots), expected)?;
        }
    }
    Ok(())
}

/// The timestamp and identity of person `person` seen `step_ms` after the cursor (moving it), or
/// `-step_ms` before it; rotates and expires salts as the server would. `None` when no salt is
/// held for that day any more (the server would refuse the request too).
fn sighting(
    salts: &mut SaltSchedule,
    cursor: &mut i64,
    person: u8,
    step_ms: i64,
) -> Option<(i64, Identity)> {
    let ts = if step_ms >= 0 {
        *cursor += step_ms;
        *cursor
    } else {
        *cursor + step_ms
    };
    let now = Timestamp::from_unix_ms(*cursor).unwrap();
    if let Some(day) = salts.day_to_rotate(now) {
        salts.rotate(salt_for(day));
    }
    salts.expire_previous(now);
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, person));
    let ua = format!("agent-{person}");
    let identity = salts
        .identify(Timestamp::from_unix_ms(ts).unwrap(), ip, &ua)
        .ok()?;
    Some((ts, identity))
}

fn same(engine: Answer, model: Answer) -> Result<(), String> {
    if engine == model {
        Ok(())
    } else {
        Err(format!(
            "engine and model differ:\n engine {engine:?}\n model  {model:?}"
        ))
    }
}
