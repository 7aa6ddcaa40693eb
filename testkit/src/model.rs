//! The reference model of the engine and the runner that compares the two, shared by the
//! engine's property test (`engine/tests/model.rs`) and the `engine_model` fuzz target. The
//! model keeps every event and every touch (a visitor seen without an event) in a `Vec` and
//! answers each query by scanning it. It does not choose the operations: the property test
//! draws them with proptest, the fuzz target from its input.
//!
//! The model is always exact. While the engine says a count is `approximate` (a crowd pushed a
//! small visitor budget over), its visitor count must be within 2% of the model's — widened by
//! the estimate's one-tick window edge — and everything else must still be identical; once it
//! says exact again, every answer must be identical again.
//!
//! Besides the realtime answer, every query compares the breakdown (every list and the minute
//! series) with one computed from the model's events in the window; touches never count there.
//! While the engine calls a breakdown approximate it is not compared (estimates are checked by
//! the engine's own breakdown tests).

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pulse_engine::{
    Breakdown, BreakdownList, Browser, CountryCode, DailySalt, DeviceType, Engine, EngineLimits,
    Event, EventKind, Identity, Ingested, Salt, SaltSchedule, Timestamp, Touch, Touched, VisitorId,
    WebsiteId, SERIES_MINUTES,
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

/// What an event has that a touch has not.
#[derive(Debug, Clone, Copy)]
struct EventDetail {
    target: &'static str,
    kind: EventKind,
    attributes: Attributes,
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
    /// `visitors` distinct human visitors, none of them among the `PEOPLE`, one pageview each
    /// at the current time: enough of them push a small visitor budget into approximate counts.
    Crowd { site: usize, visitors: u32 },
}

/// What a run saw, for checks beyond "every answer matched".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Answers the engine marked approximate (each checked within 2% of the model).
    pub approximate_answers: u64,
    /// Whether each website's last answer was approximate.
    pub last_approximate: [bool; SITES],
    /// Breakdowns the engine marked approximate (not compared with the model).
    pub approximate_breakdowns: u64,
}

#[derive(Debug, Clone)]
struct ModelEvent {
    site: usize,
    ts: i64,
    /// The visitor id the event counts for now; a midnight carry renames earlier events.
    id: u64,
    is_bot: bool,
    /// `None` for a touch: it counts its visitor and nothing else.
    detail: Option<EventDetail>,
    arrival: u64,
    /// Its position among its website's events of its class: the ring keeps the last
    /// `ring_capacity` of them.
    class_seq: u64,
}

/// The naive reference: every windowed event and touch in a Vec, scanned on each query.
struct Model {
    limits: EngineLimits,
    events: Vec<ModelEvent>,
    clock: [i64; SITES],
    next_arrival: [u64; SITES],
    /// Events ingested per website and class (humans, bots).
    class_events: [[u64; 2]; SITES],
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
            class_events: [[0; 2]; SITES],
        }
    }

    fn window_ms(&self) -> i64 {
        self.limits.window_ms()
    }

    /// The approximate count's time resolution: 1/1000 of the window (`approx.rs`).
    fn tick_ms(&self) -> i64 {
        (self.window_ms() / 1000).max(1)
    }

    /// Records an event (`detail` set) or a touch (`None`); false when it is outside the window.
    fn record(
        &mut self,
        site: usize,
        ts: i64,
        id: u64,
        carried_from: Option<u64>,
        is_bot: bool,
        detail: Option<EventDetail>,
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
        // A touch takes no arrival number and no place in the ring.
        let mut class_seq = 0;
        if detail.is_some() {
            self.next_arrival[site] += 1;
            class_seq = self.class_events[site][usize::from(is_bot)];
            self.class_events[site][usize::from(is_bot)] += 1;
        }
        self.events.push(ModelEvent {
            site,
            ts,
            id,
            is_bot,
            detail,
            arrival,
            class_seq,
        });
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
        // Touches count visitors, never a breakdown row or a minute of the series.
        let counted: Vec<(&ModelEvent, EventDetail)> = self
            .events
            .iter()
            .filter(|e| {
                e.site == site && (include_bots || !e.is_bot) && e.ts > cutoff && e.ts <= as_of
            })
            .filter_map(|e| e.detail.map(|d| (e, d)))
            .collect();
        type Counts = BTreeMap<String, (BTreeSet<(u64, bool)>, u64)>;
        let mut lists: Vec<Counts> = (0..BreakdownList::ALL.len())
            .map(|_| Counts::new())
            .collect();
        for (e, d) in &counted {
            let a = d.attributes;
            let mut values: Vec<(BreakdownList, String)> = vec![
                (BreakdownList::Browsers, a.browser.as_str().to_owned()),
                (BreakdownList::Devices, a.device.as_str().to_owned()),
            ];
            values.push(match d.kind {
                EventKind::Pageview => (BreakdownList::Pages, d.target.to_owned()),
                EventKind::Custom => (BreakdownList::Events, d.target.to_owned()),
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
                let in_minute: Vec<&(&ModelEvent, EventDetail)> = counted
                    .iter()
                    .filter(|(e, _)| e.ts.div_euclid(60_000) == minute)
                    .collect();
                let visitors: BTreeSet<(u64, bool)> =
                    in_minute.iter().map(|(e, _)| (e.id, e.is_bot)).collect();
                let pageviews = in_minute
                    .iter()
                    .filter(|(_, d)| d.kind == EventKind::Pageview)
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
        // The clock never goes back, so what left the window never counts again (kept one
        // estimate tick longer for `check_query`); each event knows its place in the ring
        // (`class_seq`), so dropping one changes nothing else.
        let keep_after = cutoff - self.tick_ms();
        self.events.retain(|e| e.site != site || e.ts > keep_after);
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
            .filter(|e| e.detail.is_some())
            .count() as u64;

        // The rings keep the last `ring_capacity` arrivals of each class.
        let class_events = self.class_events[site];
        let capacity = self.limits.ring_capacity as u64;
        let retained =
            |e: &&ModelEvent| e.class_seq + capacity >= class_events[usize::from(e.is_bot)];
        let mut recent: Vec<&ModelEvent> = self
            .events
            .iter()
            .filter(|e| e.detail.is_some())
            .filter(counted)
            .filter(retained)
            .collect();
        recent.sort_by_key(|e| std::cmp::Reverse((e.ts, e.arrival)));
        recent.truncate(self.limits.recent_limit);
        Answer {
            as_of_ms: as_of,
            active_visitors: visitors.len() as u64,
            total_in_window: total,
            recent: recent
                .into_iter()
                .map(|e| {
                    (
                        e.ts,
                        e.arrival,
                        e.detail.map_or("", |d| d.target).to_owned(),
                    )
                })
                .collect(),
        }
    }
}

impl Model {
    /// Distinct visitors of `site` with an event in `(from_ms, as_of_ms]`.
    fn visitors_since(&self, site: usize, include_bots: bool, from_ms: i64, as_of_ms: i64) -> u64 {
        let mut visitors: Vec<(u64, bool)> = self
            .events
            .iter()
            .filter(|e| {
                e.site == site && (include_bots || !e.is_bot) && e.ts > from_ms && e.ts <= as_of_ms
            })
            .map(|e| (e.id, e.is_bot))
            .collect();
        visitors.sort_unstable();
        visitors.dedup();
        visitors.len() as u64
    }
}

/// A crowd visitor's id: distinct for every `n` (multiplying by an odd constant is a bijection).
fn crowd_id(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
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

/// The engine's answer and whether it called its visitor count approximate.
fn engine_answer(engine: &Engine, site: usize, now: i64, include_bots: bool) -> (Answer, bool) {
    let answer = engine.realtime(&site_id(site), now, include_bots).unwrap();
    let approximate = answer.approximate;
    let answer = Answer {
        as_of_ms: answer.as_of_ms,
        active_visitors: answer.active_visitors,
        total_in_window: answer.total_in_window,
        recent: answer
            .recent_events
            .iter()
            .map(|r| (r.event.ts.unix_ms(), r.arrival, r.event.target.to_string()))
            .collect(),
    };
    (answer, approximate)
}

/// The engine's event for what the model records as `detail`.
fn engine_event(
    site: usize,
    ts: i64,
    visitor: VisitorId,
    is_bot: bool,
    detail: EventDetail,
) -> Event {
    let a = detail.attributes;
    Event {
        website: site_id(site),
        ts: Timestamp::from_unix_ms(ts).unwrap(),
        visitor,
        kind: detail.kind,
        target: Arc::from(detail.target),
        referrer_domain: a.referrer.map(Arc::from),
        is_bot,
        browser: a.browser,
        device: a.device,
        country: a.country.and_then(CountryCode::new),
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

/// Compares the engine's breakdown (in full and cut to two rows) with the model's at `now`:
/// identical while the engine calls it exact.
fn check_breakdown(
    engine: &Engine,
    model: &mut Model,
    summary: &mut RunSummary,
    site: usize,
    now: i64,
    include_bots: bool,
) -> Result<(), String> {
    for limit in [ALL_ROWS, 2] {
        let actual = engine_breakdown(engine, site, now, include_bots, limit);
        if actual.approximate {
            summary.approximate_breakdowns += 1;
            continue;
        }
        let mut expected = model.breakdown(site, now, include_bots, limit);
        if model.window_ms() < SERIES_MINUTES as i64 * 60_000 {
            // The series always spans 30 minutes (`breakdown/mod.rs`); a shorter test window
            // drops events the older minutes still count, so only the lists are compared.
            expected.series.clone_from(&actual.series);
        }
        if actual != expected {
            return Err(format!(
                "breakdowns differ (limit {limit}):\n engine {actual:?}\n model  {expected:?}"
            ));
        }
    }
    Ok(())
}

/// Compares the engine's answer for `site` at `now` with the model's: identical when exact;
/// when approximate, identical but for the visitor count, which must be within 2% of the
/// model's — below, of the exact count; above, of the count with the window one estimate tick
/// (1/1000 of the window) longer, the estimate's documented edge.
fn check_query(
    engine: &Engine,
    model: &mut Model,
    summary: &mut RunSummary,
    site: usize,
    now: i64,
    include_bots: bool,
) -> Result<(), String> {
    let (mut answer, approximate) = engine_answer(engine, site, now, include_bots);
    let expected = model.realtime(site, now, include_bots);
    summary.last_approximate[site] = approximate;
    if approximate {
        summary.approximate_answers += 1;
        let from_ms = expected.as_of_ms - model.window_ms() - model.tick_ms();
        let widened = model.visitors_since(site, include_bots, from_ms, expected.as_of_ms);
        let low = (expected.active_visitors as f64 * 0.98).floor() as u64;
        let high = (widened as f64 * 1.02).ceil() as u64;
        if !(low..=high).contains(&answer.active_visitors) {
            return Err(format!(
                "approximate active_visitors {} of site {site} at {now} is not within 2% of the \
                 model's {} (or {widened} with the window one tick longer)",
                answer.active_visitors, expected.active_visitors
            ));
        }
        answer.active_visitors = expected.active_visitors;
    }
    same(answer, expected)?;
    check_breakdown(engine, model, summary, site, now, include_bots)
}

/// Runs `ops` against both the engine and the model from `start_ms`, comparing every answer
/// (see `check_query`), and says what it saw.
pub fn run(limits: EngineLimits, start_ms: i64, ops: &[Op]) -> Result<RunSummary, String> {
    let engine = Engine::new(limits).unwrap();
    let mut summary = RunSummary::default();
    let mut crowd_next: u64 = 0;
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
                let kind = if target >= FIRST_CUSTOM {
                    EventKind::Custom
                } else {
                    EventKind::Pageview
                };
                let detail = EventDetail {
                    target: TARGETS[target],
                    kind,
                    attributes: attributes(person, step_ms, target),
                };
                let event = engine_event(site, ts, identity.visitor, is_bot, detail);
                let outcome = engine.ingest(event, identity.carried_from).unwrap();
                let windowed = model.record(
                    site,
                    ts,
                    identity.visitor.0,
                    identity.carried_from.map(|v: VisitorId| v.0),
                    is_bot,
                    Some(detail),
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
                check_query(
                    &engine,
                    &mut model,
                    &mut summary,
                    site,
                    cursor,
                    include_bots,
                )?;
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
                check_query(&engine, &mut model, &mut summary, site, now, include_bots)?;
            }
            Op::Crowd { site, visitors } => {
                let detail = EventDetail {
                    target: TARGETS[0],
                    kind: EventKind::Pageview,
                    attributes: Attributes {
                        referrer: None,
                        browser: Browser::Firefox,
                        device: DeviceType::Mobile,
                        country: None,
                    },
                };
                for _ in 0..visitors {
                    crowd_next += 1;
                    let id = crowd_id(crowd_next);
                    let event = engine_event(site, cursor, VisitorId(id), false, detail);
                    let outcome = engine.ingest(event, None).unwrap();
                    let windowed = model.record(site, cursor, id, None, false, Some(detail));
                    if matches!(outcome, Ingested::Windowed { .. }) != windowed {
                        return Err(format!(
                            "crowd ingest outcome differs at ts {cursor}: engine {outcome:?}"
                        ));
                    }
                }
                seen_ts.push(cursor);
            }
        }
    }
    for site in 0..SITES {
        for include_bots in [false, true] {
            check_query(
                &engine,
                &mut model,
                &mut summary,
                site,
                cursor,
                include_bots,
            )?;
        }
    }
    Ok(summary)
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
