//! The reference model of the engine and the runner that compares the two, shared by the
//! engine's property test (`engine/tests/model.rs`) and the `engine_model` fuzz target. The
//! model keeps every event in a `Vec` and answers each query by scanning it. It does not choose
//! the operations: the property test draws them with proptest, the fuzz target from its input.
//! Besides the realtime answer, every query compares the breakdown (every list and the minute
//! series) with one computed from the model's events in the window.

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use pulse_engine::{
    Breakdown, BreakdownList, Browser, CountryCode, DailySalt, DeviceType, Engine, EngineLimits,
    Event, EventKind, Ingested, Salt, SaltSchedule, Timestamp, VisitorId, WebsiteId,
    SERIES_MINUTES,
};

pub const SITES: usize = 3;
pub const PEOPLE: u8 = 12;
pub const TARGETS: [&str; 6] = ["/", "/pricing", "/blog", "/docs", "signup", "download"];
/// Targets from this index on are custom event names; the ones before are page paths.
pub const FIRST_CUSTOM: usize = 4;
const REFERRERS: [Option<&str>; 4] = [
    None,
    Some("google.com"),
    Some("news.ycombinator.com"),
    Some("duckduckgo.com"),
];
const COUNTRIES: [Option<&str>; 4] = [None, Some("SE"), Some("US"), Some("DE")];
/// Rows each breakdown list is compared with in full (more than the values the model draws).
const ALL_ROWS: usize = 100;

/// What an event carries besides its target, drawn from the op's fields so the op (and the
/// fuzz target building it) stays the same: a person mostly keeps one browser, device and
/// country, sometimes not (a client-chosen id may change browsers); referrers vary per event.
#[derive(Debug, Clone, Copy)]
struct Attributes {
    referrer: Option<&'static str>,
    browser: Browser,
    device: DeviceType,
    country: Option<&'static str>,
}

fn attributes(person: u8, step_ms: i64, target: usize) -> Attributes {
    let p = usize::from(person);
    let wobble = usize::from(step_ms.rem_euclid(11) == 0);
    Attributes {
        referrer: REFERRERS[(step_ms.rem_euclid(5) as usize + target) % REFERRERS.len()],
        browser: Browser::ALL[(p + wobble) % 4],
        device: DeviceType::ALL[(p + wobble) % 3],
        country: COUNTRIES[(p + 2 * wobble) % COUNTRIES.len()],
    }
}

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
    /// A query `step_ms` after the current time.
    Query {
        site: usize,
        step_ms: i64,
        include_bots: bool,
    },
    /// A query exactly where an earlier event leaves the window, give or take a millisecond.
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
    target: &'static str,
    arrival: u64,
    kind: EventKind,
    attributes: Attributes,
}

/// The naive reference: every windowed event in a Vec, scanned on each query.
struct Model {
    limits: EngineLimits,
    events: Vec<ModelEvent>,
    clock: [i64; SITES],
    next_arrival: [u64; SITES],
}

/// A breakdown as both sides must agree on it: per list `(value, visitors, events)` in rank
/// order, and per minute `(minute start, visitors, pageviews)`.
#[derive(Debug, PartialEq, Eq)]
struct BreakdownAnswer {
    as_of_ms: i64,
    lists: Vec<Vec<(String, u64, u64)>>,
    series: Vec<(i64, u64, u64)>,
    approximate: bool,
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

    /// Records `event` (its `arrival` is assigned here) and applies the midnight carry-over.
    fn ingest(&mut self, mut event: ModelEvent, carried_from: Option<u64>) -> bool {
        let site = event.site;
        self.clock[site] = self.clock[site].max(event.ts);
        let cutoff = self.clock[site] - self.window_ms();
        if event.ts <= cutoff {
            return false;
        }
        let (id, is_bot) = (event.id, event.is_bot);
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
        event.arrival = self.next_arrival[site];
        self.next_arrival[site] += 1;
        self.events.push(event);
        true
    }

    fn breakdown(
        &mut self,
        site: usize,
        now: i64,
        include_bots: bool,
        limit: usize,
    ) -> BreakdownAnswer {
        self.clock[site] = self.clock[site].max(now);
        let as_of = self.clock[site];
        let cutoff = as_of - self.window_ms();
        let counted: Vec<&ModelEvent> = self
            .events
            .iter()
            .filter(|e| {
                e.site == site && (include_bots || !e.is_bot) && e.ts > cutoff && e.ts <= as_of
            })
            .collect();
        type Counts = BTreeMap<String, (BTreeSet<(u64, bool)>, u64)>;
        let mut lists: Vec<Counts> = (0..BreakdownList::ALL.len())
            .map(|_| Counts::new())
            .collect();
        for e in &counted {
            let a = e.attributes;
            let mut values: Vec<(BreakdownList, String)> = vec![
                (BreakdownList::Browsers, a.browser.as_str().to_owned()),
                (BreakdownList::Devices, a.device.as_str().to_owned()),
            ];
            values.push(match e.kind {
                EventKind::Pageview => (BreakdownList::Pages, e.target.to_owned()),
                EventKind::Custom => (BreakdownList::Events, e.target.to_owned()),
            });
            if let Some(referrer) = a.referrer {
                values.push((BreakdownList::Referrers, referrer.to_owned()));
            }
            if let Some(country) = a.country {
                values.push((BreakdownList::Countries, country.to_owned()));
            }
            for (list, value) in values {
                let entry = lists[list.index()].entry(value).or_default();
                entry.0.insert((e.id, e.is_bot));
                entry.1 += 1;
            }
        }
        let lists = lists
            .into_iter()
            .map(|counts| {
                let mut rows: Vec<(String, u64, u64)> = counts
                    .into_iter()
                    .map(|(value, (visitors, events))| (value, visitors.len() as u64, events))
                    .collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
                rows.truncate(limit);
                rows
            })
            .collect();
        let last_minute = as_of.div_euclid(60_000);
        let series = (0..SERIES_MINUTES as i64)
            .map(|i| {
                let minute = last_minute - (SERIES_MINUTES as i64 - 1) + i;
                let in_minute: Vec<&&ModelEvent> = counted
                    .iter()
                    .filter(|e| e.ts.div_euclid(60_000) == minute)
                    .collect();
                let visitors: BTreeSet<(u64, bool)> =
                    in_minute.iter().map(|e| (e.id, e.is_bot)).collect();
                let pageviews = in_minute
                    .iter()
                    .filter(|e| e.kind == EventKind::Pageview)
                    .count();
                (minute * 60_000, visitors.len() as u64, pageviews as u64)
            })
            .collect();
        BreakdownAnswer {
            as_of_ms: as_of,
            lists,
            series,
            approximate: false,
        }
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
        let total = self.events.iter().filter(counted).count() as u64;

        // The rings keep the last `ring_capacity` arrivals of each class.
        let retained = |is_bot: bool| {
            let class: Vec<&ModelEvent> = self
                .events
                .iter()
                .filter(|e| e.site == site && e.is_bot == is_bot)
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
                .map(|e| (e.ts, e.arrival, e.target.to_owned()))
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

fn engine_breakdown(
    engine: &Engine,
    site: usize,
    now: i64,
    include_bots: bool,
    limit: usize,
) -> BreakdownAnswer {
    let answer: Breakdown = engine
        .breakdown(&site_id(site), now, include_bots, limit)
        .unwrap();
    BreakdownAnswer {
        as_of_ms: answer.as_of_ms,
        lists: answer
            .lists
            .iter()
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.value.to_string(), r.visitors, r.events))
                    .collect()
            })
            .collect(),
        series: answer
            .series
            .iter()
            .map(|p| (p.minute_ms, p.visitors, p.pageviews))
            .collect(),
        approximate: answer.approximate,
    }
}

/// Compares the realtime answer and the breakdown (in full and cut to two rows) at `now`.
fn compare_at(
    engine: &Engine,
    model: &mut Model,
    site: usize,
    now: i64,
    include_bots: bool,
) -> Result<(), String> {
    let expected = model.realtime(site, now, include_bots);
    same(engine_answer(engine, site, now, include_bots), expected)?;
    for limit in [ALL_ROWS, 2] {
        let expected = model.breakdown(site, now, include_bots, limit);
        let actual = engine_breakdown(engine, site, now, include_bots, limit);
        if actual != expected {
            return Err(format!(
                "breakdowns differ (limit {limit}):\n engine {actual:?}\n model  {expected:?}"
            ));
        }
    }
    Ok(())
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
    let mut ingested_ts: Vec<i64> = Vec::new();

    for op in ops {
        match *op {
            Op::Ingest {
                site,
                person,
                step_ms,
                target,
            } => {
                let ts = if step_ms >= 0 {
                    cursor += step_ms;
                    cursor
                } else {
                    cursor + step_ms
                };
                let now = Timestamp::from_unix_ms(cursor).unwrap();
                if let Some(day) = salts.day_to_rotate(now) {
                    salts.rotate(salt_for(day));
                }
                salts.expire_previous(now);
                let ts_at = Timestamp::from_unix_ms(ts).unwrap();
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, person));
                let ua = format!("agent-{person}");
                let Ok(identity) = salts.identify(ts_at, ip, &ua) else {
                    // No salt is held for that day any more: the server would refuse it too.
                    continue;
                };
                let is_bot = person >= FIRST_BOT;
                let kind = if target >= FIRST_CUSTOM {
                    EventKind::Custom
                } else {
                    EventKind::Pageview
                };
                let attributes = attributes(person, step_ms, target);
                let event = Event {
                    website: site_id(site),
                    ts: ts_at,
                    visitor: identity.visitor,
                    kind,
                    target: Arc::from(TARGETS[target]),
                    referrer_domain: attributes.referrer.map(Arc::from),
                    is_bot,
                    browser: attributes.browser,
                    device: attributes.device,
                    country: attributes.country.and_then(CountryCode::new),
                };
                let outcome = engine.ingest(event, identity.carried_from).unwrap();
                let windowed = model.ingest(
                    ModelEvent {
                        site,
                        ts,
                        id: identity.visitor.0,
                        is_bot,
                        target: TARGETS[target],
                        arrival: 0,
                        kind,
                        attributes,
                    },
                    identity.carried_from.map(|v: VisitorId| v.0),
                );
                if matches!(outcome, Ingested::Windowed { .. }) != windowed {
                    return Err(format!(
                        "ingest outcome differs at ts {ts}: engine {outcome:?}"
                    ));
                }
                ingested_ts.push(ts);
            }
            Op::Query {
                site,
                step_ms,
                include_bots,
            } => {
                cursor += step_ms;
                compare_at(&engine, &mut model, site, cursor, include_bots)?;
            }
            Op::QueryAtEdge {
                site,
                event_pick,
                delta_ms,
                include_bots,
            } => {
                if ingested_ts.is_empty() {
                    continue;
                }
                let edge = ingested_ts[event_pick % ingested_ts.len()] + limits.window_ms();
                let now = edge + delta_ms;
                cursor = cursor.max(now);
                compare_at(&engine, &mut model, site, now, include_bots)?;
            }
        }
    }
    for site in 0..SITES {
        for include_bots in [false, true] {
            compare_at(&engine, &mut model, site, cursor, include_bots)?;
        }
    }
    Ok(())
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
