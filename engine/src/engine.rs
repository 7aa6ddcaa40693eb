//! `Engine`: the set of websites and the calls everything else uses: `ingest` (an event),
//! `touch` (a visitor seen without an event) and `realtime`.
//!
//! Websites live in a sharded `DashMap`; a call looks its website up, clones the `Arc` and lets
//! the shard go before doing any work, so adding or removing websites never waits on traffic.
//! The engine has no clock of its own and does no IO: callers pass `now` and timestamps.

use std::sync::Arc;

use dashmap::DashMap;

use crate::breakdown::Breakdown;
use crate::budget::MemoryBudget;
use crate::error::EngineError;
use crate::event::{Event, Touch, VisitorId, WebsiteId};
use crate::export::WebsiteExport;
use crate::limits::EngineLimits;
use crate::website::{Ingested, Realtime, Touched, WebsiteState};

/// Every website's realtime state, the shared memory budget and the limits: what `ingest` and
/// `realtime` act on.
#[derive(Debug)]
pub struct Engine {
    limits: EngineLimits,
    budget: Arc<MemoryBudget>,
    websites: DashMap<WebsiteId, Arc<WebsiteState>>,
}

impl Engine {
    /// An engine with no websites, or an error when `limits` are inconsistent.
    pub fn new(limits: EngineLimits) -> Result<Self, EngineError> {
        limits.validate()?;
        Ok(Self {
            limits,
            budget: Arc::new(MemoryBudget::new(limits.visitor_memory_bytes)),
            websites: DashMap::new(),
        })
    }

    /// The limits the engine was created with.
    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    /// Starts tracking a website.
    pub fn add_website(&self, id: WebsiteId) -> Result<(), EngineError> {
        if self.websites.len() >= self.limits.max_websites {
            return Err(EngineError::TooManyWebsites {
                limit: self.limits.max_websites,
            });
        }
        match self.websites.entry(id) {
            dashmap::Entry::Occupied(_) => Err(EngineError::WebsiteExists),
            dashmap::Entry::Vacant(slot) => {
                let state = WebsiteState::new(self.limits, Arc::clone(&self.budget));
                slot.insert(Arc::new(state));
                self.budget.website_added();
                Ok(())
            }
        }
    }

    /// Forgets a website and everything held for it.
    pub fn remove_website(&self, id: &WebsiteId) -> Result<(), EngineError> {
        let (_, state) = self
            .websites
            .remove(id)
            .ok_or(EngineError::UnknownWebsite)?;
        self.budget.website_removed(state.window_bytes());
        Ok(())
    }

    /// Websites tracked now.
    pub fn website_count(&self) -> usize {
        self.websites.len()
    }

    /// The ids of the websites tracked now, in no particular order.
    pub fn website_ids(&self) -> Vec<WebsiteId> {
        self.websites.iter().map(|e| e.key().clone()).collect()
    }

    /// A copy of `id`'s whole state at one instant (see `WebsiteState::export`): its writer
    /// lock is held for the copy, so ingest and queries of that website wait for it.
    pub fn export_website(&self, id: &WebsiteId) -> Result<WebsiteExport, EngineError> {
        Ok(self.website(id)?.export())
    }

    /// Replaces the state of the registered website `id` with `export`, as if every event behind
    /// it had been ingested. Meant for start-up, before traffic: an event ingested into the old
    /// state meanwhile is lost with it.
    pub fn import_website(&self, id: &WebsiteId, export: WebsiteExport) -> Result<(), EngineError> {
        if !self.websites.contains_key(id) {
            return Err(EngineError::UnknownWebsite);
        }
        let wrong_site = export
            .recent
            .humans
            .slots
            .iter()
            .chain(&export.recent.bots.slots)
            .any(|slot| slot.event.website != *id);
        if wrong_site {
            return Err(EngineError::InvalidExport(
                "a recent event of another website",
            ));
        }
        let state = Arc::new(WebsiteState::import(
            self.limits,
            Arc::clone(&self.budget),
            export,
        )?);
        let replaced = match self.websites.get_mut(id) {
            Some(mut entry) => Some(std::mem::replace(entry.value_mut(), Arc::clone(&state))),
            None => None,
        };
        match replaced {
            Some(old) => {
                self.budget.update(old.window_bytes(), 0);
                Ok(())
            }
            None => {
                // Removed while the state was built: give its bytes back.
                self.budget.update(state.window_bytes(), 0);
                Err(EngineError::UnknownWebsite)
            }
        }
    }

    fn website(&self, id: &WebsiteId) -> Result<Arc<WebsiteState>, EngineError> {
        self.websites
            .get(id)
            .map(|entry| Arc::clone(entry.value()))
            .ok_or(EngineError::UnknownWebsite)
    }

    /// Records an event for its website. `carried_from` is the visitor's id under yesterday's
    /// salt during the carry-over after midnight (`SaltSchedule::identify` computes it).
    pub fn ingest(
        &self,
        event: impl Into<Arc<Event>>,
        carried_from: Option<VisitorId>,
    ) -> Result<Ingested, EngineError> {
        let event = event.into();
        let website = self.website(&event.website)?;
        Ok(website.ingest(event, carried_from))
    }

    /// Counts a touch's visitor as active at its timestamp without recording an event (see
    /// `WebsiteState::touch`). `carried_from` is as for `ingest`.
    pub fn touch(
        &self,
        touch: &Touch,
        carried_from: Option<VisitorId>,
    ) -> Result<Touched, EngineError> {
        let website = self.website(&touch.website)?;
        Ok(website.touch(
            touch.visitor,
            touch.is_bot,
            touch.ts.unix_ms(),
            carried_from,
        ))
    }

    /// Active visitors, events in the window and the most recent events of `website` at `now_ms`.
    pub fn realtime(
        &self,
        website: &WebsiteId,
        now_ms: i64,
        include_bots: bool,
    ) -> Result<Realtime, EngineError> {
        Ok(self.website(website)?.realtime(now_ms, include_bots))
    }

    /// The ranked breakdown lists and minute series of `website` at `now_ms`, each list cut to
    /// `limit` rows.
    pub fn breakdown(
        &self,
        website: &WebsiteId,
        now_ms: i64,
        include_bots: bool,
        limit: usize,
    ) -> Result<Breakdown, EngineError> {
        Ok(self
            .website(website)?
            .breakdown(now_ms, include_bots, limit))
    }

    /// Advances every website to `now_ms`, evicting what expired, and — if the visitor budget is
    /// still exceeded — switches the largest exact windows to approximate counts until it fits.
    /// The server calls this on a timer so idle websites give their memory back.
    pub fn advance_to(&self, now_ms: i64) {
        let mut websites: Vec<(WebsiteId, Arc<WebsiteState>)> = self
            .websites
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        // In id order, not the map's (random per process): each website's advance changes what
        // the shared budget holds, which decides whether the next one may start going back to
        // exact, so the same events must advance them in the same order in every run (a restart
        // from a checkpoint included).
        websites.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, website) in &websites {
            website.advance_to(now_ms);
        }
        let over = || self.budget.used_bytes() > self.budget.limit_bytes();
        if !over() {
            return;
        }
        // Largest first, ties by id: the map's order is random per process, and the same events
        // must degrade the same websites in every run (a restart from a checkpoint included).
        let mut by_size: Vec<(usize, &WebsiteId, &Arc<WebsiteState>)> = websites
            .iter()
            .map(|(id, w)| (w.window_bytes(), id, w))
            .collect();
        by_size.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        for (_, _, website) in by_size {
            while over() && website.shed_memory() {}
            if !over() {
                break;
            }
        }
    }

    /// The visitor-window budget and what it holds now.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Websites whose visitor count is approximate right now.
    pub fn approximate_websites(&self) -> usize {
        self.websites
            .iter()
            .filter(|e| e.value().is_approximate())
            .count()
    }

    /// Bytes held for all websites.
    pub fn memory_bytes(&self) -> usize {
        self.websites
            .iter()
            .map(|entry| entry.value().memory_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{test_pageview, Timestamp};

    fn site(id: &str) -> WebsiteId {
        WebsiteId::new(id).unwrap()
    }

    fn event(website: &str, ts: i64, visitor: u64, is_bot: bool, target: &str) -> Event {
        Event {
            is_bot,
            ..test_pageview(website, visitor, ts, target)
        }
    }

    /// An engine under `limits` with website "a" holding one pageview of each of `visitors`
    /// visitors at one instant, each on its own page.
    fn engine_with_visitors(limits: EngineLimits, visitors: u64) -> Engine {
        let engine = Engine::new(limits).unwrap();
        engine.add_website(site("a")).unwrap();
        for visitor in 0..visitors {
            let target = format!("/{visitor}");
            engine
                .ingest(event("a", 1_800_000_000_000, visitor, false, &target), None)
                .unwrap();
        }
        engine
    }

    /// Asserts that a fresh engine under `limits` refuses each damaged export of website "a".
    fn assert_imports_refused<const N: usize>(
        limits: EngineLimits,
        damaged: [(&str, WebsiteExport); N],
    ) {
        for (what, export) in damaged {
            let restored = Engine::new(limits).unwrap();
            restored.add_website(site("a")).unwrap();
            assert!(
                matches!(
                    restored.import_website(&site("a"), export),
                    Err(EngineError::InvalidExport(_))
                ),
                "{what}"
            );
        }
    }

    /// An export whose clocks, or whose estimate's minutes, lie outside the range of timestamps
    /// (a damaged checkpoint that decodes) is refused, not imported to overflow on the next
    /// advance, as the estimate's minute arithmetic once did (found by the `checkpoint_import`
    /// fuzz target).
    #[test]
    fn an_export_with_a_clock_or_minute_outside_timestamps_is_refused() {
        let limits = EngineLimits {
            // No room for exact visitors: the breakdown is an estimate.
            visitor_memory_bytes: 1,
            ..EngineLimits::default()
        };
        let original = engine_with_visitors(limits, 1)
            .export_website(&site("a"))
            .unwrap();
        // A minute placed in its slot (minute mod 32) with one event.
        let put_minute = |export: &mut WebsiteExport, minute: i64| {
            let estimate = export.counts.humans.breakdown.estimated.as_mut().unwrap();
            let slot = &mut estimate.minutes[minute.rem_euclid(32) as usize];
            slot.minute = minute;
            slot.events = 1;
            slot.pageviews = 0;
            slot.values.clear();
            slot.registers[0] = 1;
        };
        let far_ms = i64::MAX - 1;
        let mut clocks_far = original.clone();
        clocks_far.counts.clock_ms = far_ms;
        for class in [&mut clocks_far.counts.humans, &mut clocks_far.counts.bots] {
            class.visitors.clock_ms = far_ms;
            class.breakdown.clock_ms = far_ms;
            class.breakdown.cutoff_ms = far_ms - limits.window_ms();
        }
        put_minute(&mut clocks_far, far_ms.div_euclid(60_000));
        // The event's own minute moved 2^57 windows of 32 minutes back: the same slot, the
        // same values, a minute before any timestamp.
        let mut minute_before_time = original.clone();
        let slot = 1_800_000_000_000_i64.div_euclid(60_000).rem_euclid(32) as usize;
        let estimate = minute_before_time
            .counts
            .humans
            .breakdown
            .estimated
            .as_mut()
            .unwrap();
        estimate.minutes[slot].minute -= 32 << 57;
        assert!(estimate.minutes[slot].minute < 0);
        assert_imports_refused(
            limits,
            [("clocks", clocks_far), ("minute", minute_before_time)],
        );
    }

    /// An export naming a container far larger than the memory budget (a damaged checkpoint
    /// that decodes) is refused before anything is allocated: with the capacities below, the
    /// allocation alone (about 100 GB) aborted the process on this 24 GiB machine.
    #[test]
    fn an_export_claiming_more_than_the_memory_budget_is_refused_before_allocating() {
        let limits = EngineLimits {
            visitor_memory_bytes: 64 << 20,
            ..EngineLimits::default()
        };
        let engine = engine_with_visitors(limits, 100);
        let original = engine.export_website(&site("a")).unwrap();
        let huge = u64::from(u32::MAX) - 2;
        let mut slab = original.clone();
        let window = slab.counts.humans.visitors.exact.as_mut().unwrap();
        window.slab_capacity = huge;
        let mut queue = original.clone();
        queue
            .counts
            .humans
            .breakdown
            .exact
            .as_mut()
            .unwrap()
            .capacities[0] = huge;
        assert_imports_refused(limits, [("visitor slab", slab), ("breakdown queue", queue)]);
        // The same state with the capacities it really had imports under the same budget.
        let restored = Engine::new(limits).unwrap();
        restored.add_website(site("a")).unwrap();
        restored.import_website(&site("a"), original).unwrap();
        assert_eq!(restored.budget().used_bytes(), engine.budget().used_bytes());
    }

    /// An estimated breakdown holds one counter per value id whatever the budget, so under a
    /// budget of one byte its real capacities import (they were once refused as larger than
    /// the budget, failing every checkpoint made in approximate mode), while a capacity past
    /// the id space is refused before allocating.
    #[test]
    fn an_estimate_imports_its_value_capacities_under_any_budget_but_not_past_the_id_space() {
        let limits = EngineLimits {
            visitor_memory_bytes: 1,
            ..EngineLimits::default()
        };
        let engine = engine_with_visitors(limits, 100);
        let original = engine.export_website(&site("a")).unwrap();
        let estimate = original.counts.humans.breakdown.estimated.as_ref().unwrap();
        assert!(estimate.events_capacity > 1, "{}", estimate.events_capacity);
        let restored = Engine::new(limits).unwrap();
        restored.add_website(site("a")).unwrap();
        restored
            .import_website(&site("a"), original.clone())
            .unwrap();
        assert_eq!(restored.budget().used_bytes(), engine.budget().used_bytes());

        let huge = u64::from(u32::MAX) - 2;
        let mut events = original.clone();
        let estimate = events.counts.humans.breakdown.estimated.as_mut().unwrap();
        estimate.events_capacity = huge;
        let mut minute = original;
        let estimate = minute.counts.humans.breakdown.estimated.as_mut().unwrap();
        let filled = estimate.minutes.iter_mut().find(|m| !m.values.is_empty());
        filled.unwrap().values_capacity = huge;
        assert_imports_refused(limits, [("events", events), ("minute values", minute)]);
    }

    #[test]
    fn unknown_and_duplicate_websites_are_refused() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        assert_eq!(
            engine.ingest(event("nope", 1, 1, false, "/"), None),
            Err(EngineError::UnknownWebsite)
        );
        engine.add_website(site("a")).unwrap();
        assert_eq!(
            engine.add_website(site("a")),
            Err(EngineError::WebsiteExists)
        );
        engine.remove_website(&site("a")).unwrap();
        assert!(engine.realtime(&site("a"), 1, false).is_err());
    }

    #[test]
    fn max_websites_is_enforced() {
        let limits = EngineLimits {
            max_websites: 2,
            ..EngineLimits::default()
        };
        let engine = Engine::new(limits).unwrap();
        engine.add_website(site("a")).unwrap();
        engine.add_website(site("b")).unwrap();
        assert_eq!(
            engine.add_website(site("c")),
            Err(EngineError::TooManyWebsites { limit: 2 })
        );
    }

    #[test]
    fn exactly_100_humans_come_back_when_bots_dominate() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let t0 = 1_700_000_000_000;
        let mut ts = t0;
        for human in 0..150_u64 {
            ts += 1;
            engine
                .ingest(event("a", ts, human, false, "/h"), None)
                .unwrap();
            for bot in 0..20_u64 {
                ts += 1;
                engine
                    .ingest(event("a", ts, 1_000_000 + bot, true, "/bot"), None)
                    .unwrap();
            }
        }
        let humans = engine.realtime(&site("a"), ts, false).unwrap();
        assert_eq!(humans.recent_events.len(), 100);
        assert!(humans.recent_events.iter().all(|e| !e.event.is_bot));
        assert_eq!(humans.active_visitors, 150);
        assert_eq!(humans.total_in_window, 150);
        let all = engine.realtime(&site("a"), ts, true).unwrap();
        assert_eq!(all.active_visitors, 170);
        assert_eq!(all.total_in_window, 150 * 21);
        assert!(all.recent_events.iter().any(|e| e.event.is_bot));
    }

    #[test]
    fn an_event_older_than_the_window_is_outside_and_changes_nothing() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let now = 1_700_000_000_000;
        engine.ingest(event("a", now, 1, false, "/"), None).unwrap();
        let old = now - i64::from(EngineLimits::DEFAULT_WINDOW_SECS) * 1000;
        assert_eq!(
            engine.ingest(event("a", old, 2, false, "/old"), None),
            Ok(Ingested::OutsideWindow)
        );
        let answer = engine.realtime(&site("a"), now, false).unwrap();
        assert_eq!((answer.active_visitors, answer.total_in_window), (1, 1));
    }

    #[test]
    fn a_full_budget_turns_the_largest_website_approximate_and_keeps_events_exact() {
        let limits = EngineLimits {
            visitor_memory_bytes: 512 * 1024,
            ..EngineLimits::default()
        };
        let engine = Engine::new(limits).unwrap();
        engine.add_website(site("big")).unwrap();
        engine.add_website(site("small")).unwrap();
        let now = 1_700_000_000_000;
        for v in 0..10 {
            engine
                .ingest(event("small", now, v, false, "/"), None)
                .unwrap();
        }
        for v in 0..60_000 {
            engine
                .ingest(event("big", now + (v % 1000) as i64, v, false, "/"), None)
                .unwrap();
        }
        engine.advance_to(now + 1000);
        assert!(engine.budget().used_bytes() <= engine.budget().limit_bytes());
        let big = engine.realtime(&site("big"), now + 1000, false).unwrap();
        assert!(big.approximate);
        let error = (big.active_visitors as f64 - 60_000.0).abs() / 60_000.0;
        assert!(error <= 0.02, "estimate {}", big.active_visitors);
        assert_eq!(big.total_in_window, 60_000, "event counts stay exact");
        assert_eq!(big.recent_events.len(), 100, "the ring stays exact");
        let small = engine.realtime(&site("small"), now + 1000, false).unwrap();
        assert!(!small.approximate);
        assert_eq!(small.active_visitors, 10);
        assert_eq!(engine.approximate_websites(), 1);
    }

    /// The server's overload flood, slowed down as on a loaded machine: 200k distinct visitors
    /// arriving over 25 minutes, `per_timestamp` of them sharing each millisecond, with
    /// `advance_to` every simulated second as the server's timer does. The visitor counts and
    /// tallies must fit the budget however long the flood lasts, and the estimate stay within 2%.
    fn slow_flood_within_budget(per_timestamp: u64) {
        let limits = EngineLimits {
            visitor_memory_bytes: 1_048_550,
            ..EngineLimits::default()
        };
        let engine = Engine::new(limits).unwrap();
        engine.add_website(site("a")).unwrap();
        let t0 = 1_700_000_000_000;
        let visitors = 200_000_u64;
        let step_ms = 25 * 60 * 1000 / (visitors / per_timestamp) as i64;
        let mut now = t0;
        let mut last_advance = t0;
        for v in 0..visitors {
            if v % per_timestamp == 0 {
                now += step_ms;
            }
            engine.ingest(event("a", now, v, false, "/"), None).unwrap();
            if now - last_advance >= 1_000 {
                engine.advance_to(now);
                last_advance = now;
                assert!(
                    engine.budget().used_bytes() <= engine.budget().limit_bytes(),
                    "after {v} visitors over {} s the visitor counts hold {} bytes, over their \
                     budget of {}",
                    (now - t0) / 1000,
                    engine.budget().used_bytes(),
                    engine.budget().limit_bytes()
                );
            }
        }
        engine.advance_to(now);
        let answer = engine.realtime(&site("a"), now, false).unwrap();
        assert!(answer.approximate);
        let error = (answer.active_visitors as f64 - visitors as f64).abs() / visitors as f64;
        assert!(error <= 0.02, "estimate {}", answer.active_visitors);
        assert_eq!(answer.total_in_window, visitors);
    }

    #[test]
    fn a_slow_flood_of_distinct_visitors_stays_within_the_visitor_budget() {
        // 100 visitors a millisecond: the event tally stays small, the visitor counts grow.
        slow_flood_within_budget(100);
    }

    #[test]
    fn a_slow_flood_with_an_event_in_every_few_milliseconds_stays_within_the_visitor_budget() {
        // One visitor every 7 ms: 200k distinct milliseconds for the event tally to hold.
        slow_flood_within_budget(1);
    }

    fn touch(website: &str, ts: i64, visitor: u64, is_bot: bool) -> Touch {
        Touch {
            website: site(website),
            ts: Timestamp::from_unix_ms(ts).unwrap(),
            visitor: VisitorId(visitor),
            is_bot,
        }
    }

    #[test]
    fn a_touch_of_a_new_visitor_counts_it_without_an_event() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let now = 1_700_000_000_000;
        engine.ingest(event("a", now, 1, false, "/"), None).unwrap();
        assert_eq!(
            engine.touch(&touch("a", now + 1, 2, false), None),
            Ok(Touched::Counted)
        );
        let answer = engine.realtime(&site("a"), now + 1, false).unwrap();
        assert_eq!(answer.active_visitors, 2, "the touched visitor is active");
        assert_eq!(answer.total_in_window, 1, "a touch is not an event");
        assert_eq!(answer.recent_events.len(), 1, "a touch is not listed");
        assert_eq!(answer.as_of_ms, now + 1);
        // The next event still gets the next arrival number: the touch took none.
        assert_eq!(
            engine.ingest(event("a", now + 2, 1, false, "/b"), None),
            Ok(Ingested::Windowed { arrival: 1 })
        );
    }

    #[test]
    fn a_touch_keeps_a_visitor_active_past_its_last_event() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let window_ms = EngineLimits::default().window_ms();
        let t0 = 1_700_000_000_000;
        engine.ingest(event("a", t0, 1, false, "/"), None).unwrap();
        engine
            .touch(&touch("a", t0 + 60_000, 1, false), None)
            .unwrap();
        // Past the event's window, within the touch's: still one visitor, no event left.
        let later = engine.realtime(&site("a"), t0 + window_ms, false).unwrap();
        assert_eq!(
            (later.active_visitors, later.total_in_window),
            (1, 0),
            "{later:?}"
        );
        assert!(later.recent_events.is_empty());
        let gone = engine
            .realtime(&site("a"), t0 + 60_000 + window_ms, false)
            .unwrap();
        assert_eq!(gone.active_visitors, 0);
    }

    #[test]
    fn a_late_touch_never_moves_a_visitors_last_seen_time_back() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let window_ms = EngineLimits::default().window_ms();
        let t0 = 1_700_000_000_000;
        engine
            .ingest(event("a", t0 + 60_000, 1, false, "/"), None)
            .unwrap();
        assert_eq!(
            engine.touch(&touch("a", t0, 1, false), None),
            Ok(Touched::Counted)
        );
        let answer = engine
            .realtime(&site("a"), t0 + 60_000 + window_ms - 1, false)
            .unwrap();
        assert_eq!(answer.active_visitors, 1);
    }

    #[test]
    fn a_touch_at_or_before_the_cutoff_changes_nothing() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let now = 1_700_000_000_000;
        engine.ingest(event("a", now, 1, false, "/"), None).unwrap();
        let cutoff = now - EngineLimits::default().window_ms();
        assert_eq!(
            engine.touch(&touch("a", cutoff, 2, false), None),
            Ok(Touched::OutsideWindow)
        );
        let answer = engine.realtime(&site("a"), now, true).unwrap();
        assert_eq!((answer.active_visitors, answer.total_in_window), (1, 1));
    }

    #[test]
    fn a_bot_touch_counts_only_when_bots_are_included() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let now = 1_700_000_000_000;
        engine.touch(&touch("a", now, 7, true), None).unwrap();
        let humans = engine.realtime(&site("a"), now, false).unwrap();
        assert_eq!(humans.active_visitors, 0);
        let all = engine.realtime(&site("a"), now, true).unwrap();
        assert_eq!((all.active_visitors, all.total_in_window), (1, 0));
        assert_eq!(
            engine.touch(&touch("nope", now, 7, true), None),
            Err(EngineError::UnknownWebsite)
        );
    }

    #[test]
    fn touches_count_in_an_approximate_website_and_are_charged_to_the_budget() {
        let limits = EngineLimits {
            visitor_memory_bytes: 512 * 1024,
            ..EngineLimits::default()
        };
        let engine = Engine::new(limits).unwrap();
        engine.add_website(site("big")).unwrap();
        let now = 1_700_000_000_000;
        let before = engine.budget().used_bytes();
        for v in 0..1_000 {
            engine.touch(&touch("big", now, v, false), None).unwrap();
        }
        assert!(
            engine.budget().used_bytes() > before,
            "an exact window grown by touches is charged"
        );
        for v in 1_000..60_000 {
            engine
                .touch(&touch("big", now + (v % 1000) as i64, v, false), None)
                .unwrap();
        }
        engine.advance_to(now + 1000);
        assert!(engine.budget().used_bytes() <= engine.budget().limit_bytes());
        let answer = engine.realtime(&site("big"), now + 1000, false).unwrap();
        assert!(answer.approximate);
        let error = (answer.active_visitors as f64 - 60_000.0).abs() / 60_000.0;
        assert!(error <= 0.02, "estimate {}", answer.active_visitors);
        // Once approximate, touches of new visitors still reach the estimate.
        for v in 60_000..90_000 {
            engine
                .touch(&touch("big", now + 1000, v, false), None)
                .unwrap();
        }
        let answer = engine.realtime(&site("big"), now + 1000, false).unwrap();
        let error = (answer.active_visitors as f64 - 90_000.0).abs() / 90_000.0;
        assert!(error <= 0.02, "estimate {}", answer.active_visitors);
        assert_eq!(answer.total_in_window, 0);
    }

    #[test]
    fn advance_to_frees_an_idle_websites_visitors() {
        let engine = Engine::new(EngineLimits::default()).unwrap();
        engine.add_website(site("a")).unwrap();
        let now = 1_700_000_000_000;
        for v in 0..1000 {
            engine.ingest(event("a", now, v, false, "/"), None).unwrap();
        }
        engine.advance_to(now + 2 * 3_600_000);
        let answer = engine
            .realtime(&site("a"), now + 2 * 3_600_000, false)
            .unwrap();
        assert_eq!(answer.active_visitors, 0);
        assert!(answer.recent_events.is_empty());
    }
}
