//! Realtime breakdowns: for one class of traffic (humans or bots), the pages, referrers, custom
//! events, browsers, devices and countries of the events in the window — each value with its
//! distinct visitors and its events — and a 30-minute series of visitors and pageviews per UTC
//! minute. Kept incrementally (O(1) amortised per event, no scan of the window), exact while it
//! fits the memory budget and estimated while it does not, like `VisitorCount`.
//!
//! - `values`: `ValueTable`, dense ids for the values, with a per-list cap and `(other)`.
//! - `exact`: `ExactBreakdown`, the event queue, per-visitor value pairs and minute bits.
//! - `estimate`: `EstimatedBreakdown`, per-minute value counts and visitor sketches.
//! - `export`: `ClassBreakdown::export` and `import`, for checkpoints.
//! - here: `ClassBreakdown`, which switches between the two under the budget (with a shadow
//!   exact state to come back, as `VisitorCount` does), and the answer: `Breakdown`, ranked.
//!
//! The window's edge is the visitor count's: an event is counted while `clock - window < ts <=
//! clock`. This module does not know about websites, locks or HTTP.

mod estimate;
mod exact;
mod export;
mod values;

use std::sync::Arc;

use crate::budget::MemoryBudget;
use crate::event::{Event, VisitorId};
use estimate::EstimatedBreakdown;
use exact::{ExactBreakdown, MINUTE_MS};
use values::ValueTable;
pub use values::{BreakdownList, OTHER_VALUE};

/// Points in a breakdown's series: one per UTC minute, the last being the current one. With the
/// default 30-minute window every minute shown lies wholly inside the window, which is what keeps
/// the series exact; with a shorter window a minute's events may leave it before the minute does.
pub const SERIES_MINUTES: usize = 30;

/// Bytes an exact breakdown needs per active visitor and per event, used to decide when an
/// estimated one would fit again (a node of 64 bytes, its table slot and its pending check, a
/// 16-byte record, rounded up for the containers' growth headroom).
const EXACT_BYTES_PER_VISITOR: usize = 112;
const EXACT_BYTES_PER_EVENT: usize = 24;

/// One value of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakdownRow {
    /// The page path, referrer domain, event name, browser, device or country code;
    /// `(other)` for values past the list's cap.
    pub value: Arc<str>,
    /// Distinct visitors with at least one event carrying the value in the window.
    pub visitors: u64,
    /// Events carrying the value in the window (pageviews for pages, custom events for events).
    pub events: u64,
}

/// One minute of the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinutePoint {
    /// Start of the UTC minute, in unix milliseconds.
    pub minute_ms: i64,
    /// Distinct visitors with an event in that minute.
    pub visitors: u64,
    /// Pageviews in that minute.
    pub pageviews: u64,
}

/// A website's breakdown at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breakdown {
    /// The instant the answer is for (as `Realtime::as_of_ms`).
    pub as_of_ms: i64,
    /// The six lists, in the order of `BreakdownList::ALL`, each ranked by visitors, then
    /// events (both descending), then value (ascending), and cut to the asked limit.
    pub lists: [Vec<BreakdownRow>; 6],
    /// `SERIES_MINUTES` points, oldest first.
    pub series: Vec<MinutePoint>,
    /// True when a class's breakdown is estimated (it did not fit the memory budget).
    pub approximate: bool,
}

impl Breakdown {
    /// The ranked rows of `list`.
    pub fn list(&self, list: BreakdownList) -> &[BreakdownRow] {
        &self.lists[list.index()]
    }
}

/// A value's counts while an answer is assembled, borrowing its text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tally<'a> {
    text: &'a str,
    visitors: u64,
    events: u64,
}

/// What the classes contribute to one answer.
#[derive(Debug)]
pub(crate) struct Gathered<'a> {
    lists: [Vec<Tally<'a>>; 6],
    series: [(u64, u64); SERIES_MINUTES],
    first_minute: i64,
    approximate: bool,
    /// Per list, how many classes contributed rows: only then are equal texts summed.
    contributors: [u8; 6],
}

impl<'a> Gathered<'a> {
    /// Ready to gather for the series ending with the minute of `as_of_ms`.
    pub fn new(as_of_ms: i64) -> Self {
        Self {
            lists: Default::default(),
            series: [(0, 0); SERIES_MINUTES],
            first_minute: as_of_ms.div_euclid(MINUTE_MS) - (SERIES_MINUTES as i64 - 1),
            approximate: false,
            contributors: [0; 6],
        }
    }

    /// Ranks each list and keeps its first `limit` rows.
    pub fn rank(self, as_of_ms: i64, limit: usize) -> Breakdown {
        let mut merge = self.contributors.map(|classes| classes > 1).into_iter();
        let lists = self
            .lists
            .map(|tallies| rank(tallies, merge.next().unwrap_or(true), limit));
        let series = (0..SERIES_MINUTES)
            .map(|i| MinutePoint {
                minute_ms: (self.first_minute + i as i64) * MINUTE_MS,
                visitors: self.series[i].0,
                pageviews: self.series[i].1,
            })
            .collect();
        Breakdown {
            as_of_ms,
            lists,
            series,
            approximate: self.approximate,
        }
    }
}

fn order(a: &Tally<'_>, b: &Tally<'_>) -> std::cmp::Ordering {
    b.visitors
        .cmp(&a.visitors)
        .then(b.events.cmp(&a.events))
        .then(a.text.cmp(b.text))
}

/// Sums equal texts (when two classes contributed), then selects and sorts the top `limit`.
fn rank(mut tallies: Vec<Tally<'_>>, merge: bool, limit: usize) -> Vec<BreakdownRow> {
    if merge {
        tallies.sort_unstable_by(|a, b| a.text.cmp(b.text));
        tallies.dedup_by(|later, kept| {
            let same = later.text == kept.text;
            if same {
                kept.visitors += later.visitors;
                kept.events += later.events;
            }
            same
        });
    }
    if limit == 0 {
        return Vec::new();
    }
    if tallies.len() > limit {
        tallies.select_nth_unstable_by(limit - 1, order);
        tallies.truncate(limit);
    }
    tallies.sort_unstable_by(order);
    tallies
        .into_iter()
        .map(|t| BreakdownRow {
            value: Arc::from(t.text),
            visitors: t.visitors,
            events: t.events,
        })
        .collect()
}

#[derive(Debug)]
struct Shadow {
    exact: ExactBreakdown,
    since_ms: i64,
}

#[derive(Debug)]
enum Mode {
    Exact(ExactBreakdown),
    Estimated {
        estimate: EstimatedBreakdown,
        shadow: Option<Shadow>,
        /// No new shadow before this instant (after one was dropped).
        retry_at_ms: i64,
    },
}

/// One class's breakdown: exact while it fits the memory budget, estimated while it does not.
#[derive(Debug)]
pub(crate) struct ClassBreakdown {
    window_ms: i64,
    clock_ms: i64,
    cutoff_ms: i64,
    values: ValueTable,
    mode: Mode,
}

impl ClassBreakdown {
    /// An empty, exact breakdown over a window of `window_secs`, holding at most
    /// `values_per_list` distinct texts per list.
    pub fn new(window_secs: u32, values_per_list: usize) -> Self {
        let window_ms = i64::from(window_secs.max(1)) * 1000;
        Self {
            window_ms,
            clock_ms: i64::MIN,
            cutoff_ms: i64::MIN,
            values: ValueTable::new(values_per_list),
            mode: Mode::Exact(ExactBreakdown::new(window_ms, i64::MIN)),
        }
    }

    /// Whether the counts are estimates now.
    pub fn is_approximate(&self) -> bool {
        matches!(self.mode, Mode::Estimated { .. })
    }

    /// Bytes held: the values, and the exact state or the estimate and its shadow.
    pub fn memory_bytes(&self) -> usize {
        self.values.memory_bytes()
            + match &self.mode {
                Mode::Exact(exact) => exact.memory_bytes(),
                Mode::Estimated {
                    estimate, shadow, ..
                } => {
                    estimate.memory_bytes() + shadow.as_ref().map_or(0, |s| s.exact.memory_bytes())
                }
            }
    }

    fn move_clock(&mut self, now_ms: i64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        let cutoff_ms = self.clock_ms.saturating_sub(self.window_ms);
        if cutoff_ms <= self.cutoff_ms {
            return;
        }
        self.cutoff_ms = cutoff_ms;
        match &mut self.mode {
            Mode::Exact(exact) => exact.expire_through(cutoff_ms, &mut self.values),
            Mode::Estimated {
                estimate, shadow, ..
            } => {
                estimate.expire_through(cutoff_ms, &mut self.values);
                if let Some(s) = shadow {
                    s.exact.expire_through(cutoff_ms, &mut self.values);
                }
            }
        }
    }

    /// Counts `event` (see `VisitorWindow::record` for `carried_from`), turning estimated
    /// first when its growth does not fit `budget`. The caller reports the change in
    /// `memory_bytes` to the budget.
    pub fn record(
        &mut self,
        event: &Event,
        carried_from: Option<VisitorId>,
        budget: &MemoryBudget,
    ) {
        let ts_ms = event.ts.unix_ms();
        self.move_clock(ts_ms);
        if ts_ms <= self.cutoff_ms {
            return;
        }
        if let Mode::Exact(exact) = &self.mode {
            let growth = exact.growth_bytes_on_insert();
            if growth > 0
                && !budget.fits(growth)
                && self.memory_bytes() + growth > budget.share_bytes()
            {
                self.switch_to_estimate();
            }
        }
        let values = self.values.retain_event(event);
        let clock_ms = self.clock_ms;
        let window_ms = self.window_ms;
        match &mut self.mode {
            Mode::Exact(exact) => exact.record(event.visitor, ts_ms, carried_from, values),
            Mode::Estimated {
                estimate,
                shadow,
                retry_at_ms,
            } => {
                estimate.record(event.visitor, ts_ms, &values, &mut self.values);
                if let Some(s) = shadow {
                    let growth = s.exact.growth_bytes_on_insert();
                    let too_big = growth > 0
                        && (!budget.fits(growth)
                            || s.exact.memory_bytes() + growth > budget.share_bytes());
                    if too_big {
                        s.exact.release_all(&mut self.values);
                        *shadow = None;
                        *retry_at_ms = clock_ms.saturating_add(window_ms);
                    } else {
                        self.values.retain(&values);
                        s.exact.record(event.visitor, ts_ms, carried_from, values);
                    }
                }
            }
        }
    }

    /// Moves the clock to `now_ms`, expires, and moves back towards exact when the budget
    /// allows: a shadow exact state starts when twice what it would need fits (sized from
    /// `visitors_in_window`), and takes over once it has seen one full window.
    pub fn advance_to(&mut self, now_ms: i64, visitors_in_window: u64, budget: &MemoryBudget) {
        self.move_clock(now_ms);
        let clock_ms = self.clock_ms;
        let window_ms = self.window_ms;
        let promote = match &mut self.mode {
            Mode::Exact(_) => false,
            Mode::Estimated {
                estimate,
                shadow,
                retry_at_ms,
            } => {
                let needed = (visitors_in_window as usize)
                    .saturating_mul(EXACT_BYTES_PER_VISITOR)
                    .saturating_add(
                        (estimate.total_events() as usize).saturating_mul(EXACT_BYTES_PER_EVENT),
                    );
                if shadow.is_none()
                    && clock_ms >= *retry_at_ms
                    && needed.saturating_mul(2) <= budget.share_bytes()
                    && budget.fits(needed.saturating_mul(2))
                {
                    *shadow = Some(Shadow {
                        exact: ExactBreakdown::new(window_ms, self.cutoff_ms),
                        since_ms: clock_ms,
                    });
                }
                shadow
                    .as_ref()
                    .is_some_and(|s| clock_ms.saturating_sub(s.since_ms) >= window_ms)
            }
        };
        if promote {
            let placeholder = ExactBreakdown::new(window_ms, self.cutoff_ms);
            let old = std::mem::replace(&mut self.mode, Mode::Exact(placeholder));
            if let Mode::Estimated {
                mut estimate,
                shadow: Some(shadow),
                ..
            } = old
            {
                estimate.release_all(&mut self.values);
                self.mode = Mode::Exact(shadow.exact);
            }
        }
    }

    /// Converts the exact state into an estimate of the same events.
    pub fn switch_to_estimate(&mut self) {
        let Mode::Exact(exact) = &mut self.mode else {
            return;
        };
        let mut estimate = EstimatedBreakdown::new();
        let values = &mut self.values;
        exact.for_each_event(|ts_ms, visitor, event_values| {
            values.retain(&event_values);
            estimate.record(visitor, ts_ms, &event_values, values);
        });
        exact.release_all(values);
        self.mode = Mode::Estimated {
            estimate,
            shadow: None,
            retry_at_ms: self.clock_ms.saturating_add(self.window_ms),
        };
    }

    /// Gives memory back when the budget is exceeded: an exact state holding events turns
    /// estimated; an estimated one drops its shadow. Returns false when there is nothing to give.
    pub fn shed_memory(&mut self) -> bool {
        let clock_ms = self.clock_ms;
        let window_ms = self.window_ms;
        match &mut self.mode {
            Mode::Exact(exact) if exact.events() > 0 => {
                self.switch_to_estimate();
                true
            }
            Mode::Exact(_) => false,
            Mode::Estimated {
                shadow,
                retry_at_ms,
                ..
            } => match shadow.take() {
                Some(mut s) => {
                    s.exact.release_all(&mut self.values);
                    *retry_at_ms = clock_ms.saturating_add(window_ms);
                    true
                }
                None => false,
            },
        }
    }

    /// Adds this class's values and series to `into`. `visitors_in_window` and the estimate's
    /// events scale estimated visitor counts.
    pub fn gather<'a>(&'a self, visitors_in_window: u64, into: &mut Gathered<'a>) {
        let before = into.lists.each_ref().map(Vec::len);
        let first_minute = into.first_minute;
        for id in 0..self.values.id_bound() {
            let (visitors, events) = match &self.mode {
                Mode::Exact(exact) => {
                    let counts = exact.counts(id);
                    (u64::from(counts.visitors), u64::from(counts.events))
                }
                Mode::Estimated { estimate, .. } => {
                    let events = u64::from(estimate.events_of(id));
                    let total = estimate.total_events().max(1);
                    let scaled = (events * visitors_in_window + total / 2) / total;
                    (scaled.clamp(1, events.max(1)).min(events), events)
                }
            };
            if events == 0 {
                continue;
            }
            into.lists[self.values.list_of(id).index()].push(Tally {
                text: self.values.text_of(id),
                visitors,
                events,
            });
        }
        for (list, len) in before.into_iter().enumerate() {
            if into.lists[list].len() > len {
                into.contributors[list] += 1;
            }
        }
        for (i, point) in into.series.iter_mut().enumerate() {
            let minute = first_minute + i as i64;
            let (visitors, pageviews) = match &self.mode {
                Mode::Exact(exact) => exact.minute(minute),
                Mode::Estimated { estimate, .. } => estimate.minute(minute),
            };
            point.0 += u64::from(visitors);
            point.1 += u64::from(pageviews);
        }
        into.approximate |= self.is_approximate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::event::{test_pageview, CountryCode, WebsiteId};
    use crate::limits::EngineLimits;

    const T0: i64 = 1_772_532_000_000;

    fn site() -> WebsiteId {
        WebsiteId::new("s").unwrap()
    }

    fn event(ts: i64, visitor: u64, target: &str) -> Event {
        Event {
            country: CountryCode::new("se"),
            ..test_pageview("s", visitor, ts, target)
        }
    }

    fn engine(limits: EngineLimits) -> Engine {
        let engine = Engine::new(limits).unwrap();
        engine.add_website(site()).unwrap();
        engine
    }

    fn pages(answer: &Breakdown) -> Vec<(String, u64, u64)> {
        answer
            .list(BreakdownList::Pages)
            .iter()
            .map(|r| (r.value.to_string(), r.visitors, r.events))
            .collect()
    }

    fn row(value: &str, visitors: u64, events: u64) -> (String, u64, u64) {
        (value.to_owned(), visitors, events)
    }

    #[test]
    fn values_past_the_cap_count_as_other_until_some_leave_the_window() {
        let engine = engine(EngineLimits {
            breakdown_values_per_list: 2,
            ..EngineLimits::default()
        });
        engine.ingest(event(T0, 1, "/a"), None).unwrap();
        engine.ingest(event(T0 + 1_000, 2, "/b"), None).unwrap();
        engine.ingest(event(T0 + 2_000, 3, "/c"), None).unwrap();
        engine.ingest(event(T0 + 2_000, 4, "/d"), None).unwrap();
        let answer = engine.breakdown(&site(), T0 + 2_000, false, 10).unwrap();
        assert_eq!(
            pages(&answer),
            [row(OTHER_VALUE, 2, 2), row("/a", 1, 1), row("/b", 1, 1)]
        );
        assert!(
            !answer.approximate,
            "the cap bounds values, the counts stay exact"
        );
        // "/a" leaves the window, so its place is free for the next new value.
        let later = T0 + 1_800_000 + 500;
        engine.ingest(event(later, 5, "/e"), None).unwrap();
        let answer = engine.breakdown(&site(), later, false, 10).unwrap();
        assert_eq!(
            pages(&answer),
            [row(OTHER_VALUE, 2, 2), row("/b", 1, 1), row("/e", 1, 1)]
        );
    }

    #[test]
    fn a_value_leaves_exactly_when_its_last_event_leaves_the_window() {
        let engine = engine(EngineLimits::default());
        engine.ingest(event(T0, 1, "/a"), None).unwrap();
        engine.ingest(event(T0 + 10, 1, "/a"), None).unwrap();
        let edge = T0 + 1_800_000;
        let at = |now: i64| pages(&engine.breakdown(&site(), now, false, 10).unwrap());
        assert_eq!(at(edge - 1), [row("/a", 1, 2)]);
        assert_eq!(at(edge), [row("/a", 1, 1)], "(clock - window, clock]");
        assert_eq!(at(edge + 10), []);
    }

    #[test]
    fn series_has_thirty_minutes_ending_with_the_current_one() {
        let engine = engine(EngineLimits::default());
        let minute = 60_000;
        engine.ingest(event(T0 + 5, 1, "/"), None).unwrap();
        engine.ingest(event(T0 + 6, 1, "/"), None).unwrap();
        engine.ingest(event(T0 + 7, 2, "/"), None).unwrap();
        engine
            .ingest(event(T0 + 29 * minute + 30_000, 1, "/"), None)
            .unwrap();
        let answer = engine
            .breakdown(&site(), T0 + 29 * minute + 31_000, false, 10)
            .unwrap();
        assert_eq!(answer.series.len(), SERIES_MINUTES);
        assert_eq!(answer.series[0].minute_ms, T0);
        assert_eq!(
            (answer.series[0].visitors, answer.series[0].pageviews),
            (2, 3)
        );
        let last = answer.series[SERIES_MINUTES - 1];
        assert_eq!(
            (last.minute_ms, last.visitors, last.pageviews),
            (T0 + 29 * minute, 1, 1)
        );
        assert!(answer.series[1..29]
            .iter()
            .all(|p| p.visitors == 0 && p.pageviews == 0));
    }

    /// 60k visitors on one website under a 512 KiB budget: its breakdown turns estimated (event
    /// counts exact, visitors scaled), stays within the budget, and is exact again once the
    /// traffic it cannot hold has left and a shadow has seen a whole window.
    #[test]
    fn a_full_budget_estimates_visitors_keeps_events_exact_and_recovers() {
        let engine = engine(EngineLimits {
            visitor_memory_bytes: 512 * 1024,
            ..EngineLimits::default()
        });
        let paths = ["/a", "/b", "/c"];
        for v in 0..60_000_u64 {
            let e = event(T0 + (v % 1_000) as i64, v, paths[(v % 3) as usize]);
            engine.ingest(e, None).unwrap();
        }
        engine.advance_to(T0 + 1_000);
        assert!(engine.budget().used_bytes() <= engine.budget().limit_bytes());
        let answer = engine.breakdown(&site(), T0 + 1_000, false, 10).unwrap();
        assert!(answer.approximate);
        let rows = pages(&answer);
        assert_eq!(rows.iter().map(|r| r.2).sum::<u64>(), 60_000, "{rows:?}");
        for (_, visitors, events) in &rows {
            assert_eq!(*events, 20_000);
            let error = (*visitors as f64 - 20_000.0).abs() / 20_000.0;
            assert!(error < 0.05, "{rows:?}");
        }
        let series_visitors: u64 = answer.series.iter().map(|p| p.visitors).sum();
        let error = (series_visitors as f64 - 60_000.0).abs() / 60_000.0;
        assert!(error < 0.25, "sketched minute visitors {series_visitors}");

        // Ten visitors every 10 s (an exact state of 1,800 events fits) for two windows and a
        // bit: exact again.
        let mut now = T0 + 1_000;
        for _ in 0..400 {
            now += 10_000;
            for v in 0..10 {
                let visitor = 1_000_000 + v;
                engine.ingest(event(now, visitor, "/quiet"), None).unwrap();
            }
            engine.advance_to(now);
        }
        let answer = engine.breakdown(&site(), now, false, 10).unwrap();
        assert!(!answer.approximate, "still estimated");
        assert_eq!(pages(&answer), [row("/quiet", 10, 1_800)]);
    }

    #[test]
    fn shedding_turns_an_exact_breakdown_estimated_and_keeps_its_events() {
        let mut class = ClassBreakdown::new(1800, 100);
        let budget = MemoryBudget::new(usize::MAX);
        for v in 0..100_u64 {
            class.record(&event(T0 + v as i64, v, "/x"), None, &budget);
        }
        let exact = class.memory_bytes();
        assert!(class.shed_memory());
        assert!(class.is_approximate());
        assert!(class.memory_bytes() < exact + 16 * 1024);
        assert!(!class.shed_memory(), "nothing more to give");
        let mut gathered = Gathered::new(T0 + 100);
        class.gather(100, &mut gathered);
        let answer = gathered.rank(T0 + 100, 10);
        assert_eq!(pages(&answer), [row("/x", 100, 100)]);
    }

    /// A node keeps its times as 32-bit offsets from a base; a visitor that never leaves for
    /// fifty days outgrows them, and the node moves its base without losing a count.
    #[test]
    fn a_visitor_active_for_fifty_days_keeps_exact_counts() {
        let mut class = ClassBreakdown::new(1800, 100);
        let budget = MemoryBudget::new(usize::MAX);
        let step = 10 * 60_000;
        let events = 50 * 24 * 6;
        let answer = |class: &ClassBreakdown, now: i64| {
            let mut gathered = Gathered::new(now);
            class.gather(1, &mut gathered);
            gathered.rank(now, 10)
        };
        for i in 0..events {
            let page = if i % 2 == 0 { "/a" } else { "/b" };
            let now = T0 + i * step;
            class.record(&event(now, 7, page), None, &budget);
            let rows = pages(&answer(&class, now));
            let held = rows.iter().map(|r| r.2).sum::<u64>();
            assert!(
                rows.iter().all(|r| r.1 == 1) && held == (i + 1).min(3) as u64,
                "day {}: {rows:?}",
                i / 144
            );
        }
        let last = T0 + (events - 1) * step;
        // The window (last - 30 min, last] holds the last three events: /b, /a, /b.
        assert_eq!(
            pages(&answer(&class, last)),
            [row("/b", 1, 2), row("/a", 1, 1)]
        );
        let browsers = answer(&class, last);
        let chrome = &browsers.list(BreakdownList::Browsers)[0];
        assert_eq!((chrome.visitors, chrome.events), (1, 3));
        class.advance_to(last + 25 * 60_000, 0, &budget);
        assert_eq!(
            pages(&answer(&class, last + 25 * 60_000)),
            [row("/b", 1, 1)]
        );
        class.advance_to(last + 30 * 60_000, 0, &budget);
        let empty = answer(&class, last + 30 * 60_000);
        assert!(empty.lists.iter().all(Vec::is_empty), "{empty:?}");
    }

    /// Records keep the low 32 bits of their time; a window straddling a multiple of 2^32 ms
    /// still expires them in order, late ones included.
    #[test]
    fn records_across_a_wrap_of_their_32_bit_time_expire_in_order() {
        let mut class = ClassBreakdown::new(60, 100);
        let budget = MemoryBudget::new(usize::MAX);
        let wrap = 1_i64 << 32;
        let times = [
            wrap - 30_000,
            wrap - 1,
            wrap + 5_000,
            wrap - 20_000,
            wrap + 20_000,
        ];
        for (i, ts) in times.into_iter().enumerate() {
            class.record(&event(ts, i as u64, &format!("/{i}")), None, &budget);
        }
        let pages_at = |class: &mut ClassBreakdown, now: i64| {
            class.advance_to(now, 0, &budget);
            let mut gathered = Gathered::new(now);
            class.gather(0, &mut gathered);
            let mut rows = pages(&gathered.rank(now, 10));
            rows.sort();
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
        };
        assert_eq!(
            pages_at(&mut class, wrap + 20_000),
            ["/0", "/1", "/2", "/3", "/4"]
        );
        assert_eq!(
            pages_at(&mut class, wrap + 31_000),
            ["/1", "/2", "/3", "/4"]
        );
        assert_eq!(pages_at(&mut class, wrap + 41_000), ["/1", "/2", "/4"]);
        assert_eq!(pages_at(&mut class, wrap + 60_000), ["/2", "/4"]);
        assert_eq!(pages_at(&mut class, wrap + 66_000), ["/4"]);
        assert!(pages_at(&mut class, wrap + 80_000).is_empty());
    }

    /// A crawler's pairs overflow its node into the shared table; counts stay exact, and
    /// everything is given back when its events leave.
    #[test]
    fn a_crawler_with_a_thousand_pages_counts_exactly_and_leaves_nothing_behind() {
        let engine = engine(EngineLimits::default());
        for page in 0..1_000_i64 {
            let path = format!("/p/{page}");
            engine.ingest(event(T0 + page, 7, &path), None).unwrap();
            engine.ingest(event(T0 + page, 8, &path), None).unwrap();
        }
        let answer = engine.breakdown(&site(), T0 + 1_000, false, 100).unwrap();
        assert_eq!(answer.list(BreakdownList::Pages).len(), 100);
        assert!(answer
            .list(BreakdownList::Pages)
            .iter()
            .all(|r| (r.visitors, r.events) == (2, 2)));
        let browsers = answer.list(BreakdownList::Browsers);
        assert_eq!((browsers[0].visitors, browsers[0].events), (2, 2_000));
        let later = T0 + 1_800_000 + 1_000;
        let answer = engine.breakdown(&site(), later, false, 100).unwrap();
        assert_eq!(answer.list(BreakdownList::Pages).len(), 0);
        let mut class = ClassBreakdown::new(1800, 4_096);
        let budget = MemoryBudget::new(usize::MAX);
        for page in 0..1_000_i64 {
            class.record(&event(T0 + page, 7, &format!("/p/{page}")), None, &budget);
        }
        class.advance_to(later, 0, &budget);
        let mut gathered = Gathered::new(later);
        class.gather(0, &mut gathered);
        assert!(gathered.lists.iter().all(Vec::is_empty));
    }
}
