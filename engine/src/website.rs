//! `WebsiteState`: everything the engine holds for one website — two event rings (humans, bots),
//! and per class a `VisitorCount`, an `EventTally` and a `ClassBreakdown` — and the one lock
//! that orders its writes.
//! It reports every change of its memory to the shared `MemoryBudget`.
//!
//! Two writes: `ingest` (an event: ring, tally and visitor count) and `touch` (a visitor seen
//! without an event: the visitor count only).
//!
//! Writers (ingest, and queries advancing the clock) take the website's writer lock for a few
//! hundred nanoseconds; ring readers take no lock at all. Websites share nothing, so traffic on one
//! never waits for another. This module does not know how websites are found or created.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::breakdown::{Breakdown, ClassBreakdown, Gathered};
use crate::budget::MemoryBudget;
use crate::error::EngineError;
use crate::event::{Event, Timestamp, VisitorId};
use crate::export::{ClassExport, RecentExport, WebsiteCounts, WebsiteExport};
use crate::limits::EngineLimits;
use crate::ring::{EventRing, RecentEvent};
use crate::tally::EventTally;
use crate::visitors::VisitorCount;
use crate::window::Recorded;

/// What happened to an ingested event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The event is in the window, the counts and the ring; `arrival` numbers it within its
    /// website.
    Windowed {
        /// The event's arrival number within its website.
        arrival: u64,
    },
    /// The event is at or before the window's cutoff: it belongs in the log, but changes nothing
    /// in memory.
    OutsideWindow,
    /// The visitor window is at its hard size limit; the event is in the ring and the event
    /// count but its visitor is not counted.
    VisitorWindowFull {
        /// The event's arrival number within its website.
        arrival: u64,
    },
}

/// What happened to a touch (a visitor seen without an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    /// The visitor is counted as active at the touch's timestamp: added when it was not in the
    /// window, its last-seen time moved forward when it was (never backwards).
    Counted,
    /// The touch is at or before the window's cutoff: nothing changed.
    OutsideWindow,
    /// The visitor window is at its hard size limit; the visitor is not counted.
    VisitorWindowFull,
}

/// A realtime answer for one website.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realtime {
    /// The instant the answer is for: the query's `now`, or the newest event's timestamp if
    /// that is later.
    pub as_of_ms: i64,
    /// Distinct visitors with an event or a touch in the window ending at `as_of_ms` (humans
    /// only unless bots were included).
    pub active_visitors: u64,
    /// True when `active_visitors` is an estimate (the website's exact window did not fit the
    /// memory budget); the events and their count stay exact.
    pub approximate: bool,
    /// Events in the window (humans only unless bots were included).
    pub total_in_window: u64,
    /// At most `recent_limit` events of the window, newest first.
    pub recent_events: Vec<RecentEvent>,
}

/// Counts of one class of traffic.
#[derive(Debug)]
struct ClassWindow {
    visitors: VisitorCount,
    events: EventTally,
    breakdown: ClassBreakdown,
}

impl ClassWindow {
    fn new(limits: &EngineLimits) -> Self {
        Self {
            visitors: VisitorCount::new(limits.window_secs),
            events: EventTally::new(limits.window_secs),
            breakdown: ClassBreakdown::new(limits.window_secs, limits.breakdown_values_per_list),
        }
    }

    fn advance_to(&mut self, now_ms: i64, budget: &MemoryBudget) {
        self.visitors.advance_to(now_ms, budget);
        self.events.advance_to(now_ms);
        self.breakdown
            .advance_to(now_ms, self.visitors.count(), budget);
    }

    fn memory_bytes(&self) -> usize {
        self.visitors.memory_bytes() + self.events.memory_bytes() + self.breakdown.memory_bytes()
    }

    fn export(&self) -> ClassExport {
        ClassExport {
            visitors: self.visitors.export(),
            events: self.events.export(),
            breakdown: self.breakdown.export(),
        }
    }

    fn import(limits: &EngineLimits, export: ClassExport) -> Result<Self, EngineError> {
        Ok(Self {
            visitors: VisitorCount::import(
                limits.window_secs,
                export.visitors,
                limits.visitor_memory_bytes,
            )?,
            events: EventTally::import(limits.window_secs, export.events)?,
            breakdown: ClassBreakdown::import(
                limits.window_secs,
                limits.breakdown_values_per_list,
                export.breakdown,
                limits.visitor_memory_bytes,
            )?,
        })
    }
}

/// Whether every clock and cutoff in `counts` is one a live website can hold: unset
/// (`i64::MIN`) or in the range of timestamps (a cutoff up to `window_ms` before it), since every
/// clock comes from an event's timestamp or a `now`. The arithmetic on clocks (minutes, window
/// edges, offsets) relies on it, so an export outside it is refused rather than overflowing.
fn clocks_in_range(counts: &WebsiteCounts, window_ms: i64) -> bool {
    let clock = |ms: i64| ms == i64::MIN || (0..=Timestamp::MAX_MS).contains(&ms);
    let cutoff = |ms: i64| ms == i64::MIN || (-window_ms..=Timestamp::MAX_MS).contains(&ms);
    let class_ok = |class: &ClassExport| {
        let visitors = &class.visitors;
        let windows = visitors.exact.iter().chain(
            visitors
                .approximate
                .iter()
                .filter_map(|a| a.shadow.as_ref().map(|s| &s.window)),
        );
        let breakdown = &class.breakdown;
        clock(visitors.clock_ms)
            && windows.into_iter().all(|w| cutoff(w.cutoff_ms))
            && visitors.approximate.iter().all(|a| clock(a.hll.clock_ms))
            && cutoff(class.events.cutoff_ms)
            && clock(breakdown.clock_ms)
            && cutoff(breakdown.cutoff_ms)
    };
    clock(counts.clock_ms) && class_ok(&counts.humans) && class_ok(&counts.bots)
}

#[derive(Debug)]
struct Writer {
    clock_ms: i64,
    next_arrival: u64,
    humans: ClassWindow,
    bots: ClassWindow,
    /// Bytes last reported to the budget for both classes.
    held_bytes: usize,
}

impl Writer {
    fn advance_to(&mut self, now_ms: i64, budget: &MemoryBudget) {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.humans.advance_to(self.clock_ms, budget);
        self.bots.advance_to(self.clock_ms, budget);
    }

    fn memory_bytes(&self) -> usize {
        self.humans.memory_bytes() + self.bots.memory_bytes()
    }

    /// Reports the change in held bytes since the last report.
    fn report(&mut self, budget: &MemoryBudget) {
        let now = self.memory_bytes();
        budget.update(self.held_bytes, now);
        self.held_bytes = now;
    }
}

/// One website's rings, visitor counts and tallies, and the writer lock that orders its
/// updates.
#[derive(Debug)]
pub struct WebsiteState {
    limits: EngineLimits,
    budget: Arc<MemoryBudget>,
    writer: Mutex<Writer>,
    human_ring: EventRing,
    bot_ring: EventRing,
}

impl WebsiteState {
    /// An empty website under `limits`, reporting its memory to `budget`.
    pub fn new(limits: EngineLimits, budget: Arc<MemoryBudget>) -> Self {
        Self {
            limits,
            budget,
            writer: Mutex::new(Writer {
                clock_ms: i64::MIN,
                next_arrival: 0,
                humans: ClassWindow::new(&limits),
                bots: ClassWindow::new(&limits),
                held_bytes: 0,
            }),
            human_ring: EventRing::new(limits.ring_capacity),
            bot_ring: EventRing::new(limits.ring_capacity),
        }
    }

    /// Copies the whole state out under the writer lock, so it is one consistent instant of the
    /// website: the lock is held for one pass over each visitor window's slab and a copy of
    /// the rest (estimates, tallies, the rings' pointers).
    pub fn export(&self) -> WebsiteExport {
        let writer = self.lock();
        WebsiteExport {
            counts: WebsiteCounts {
                clock_ms: writer.clock_ms,
                next_arrival: writer.next_arrival,
                humans: writer.humans.export(),
                bots: writer.bots.export(),
            },
            recent: RecentExport {
                humans: self.human_ring.export(),
                bots: self.bot_ring.export(),
            },
        }
    }

    /// A website rebuilt from `export` under `limits`, its bytes reported to `budget`; or an
    /// error naming what is out of place (nothing is reported then).
    pub fn import(
        limits: EngineLimits,
        budget: Arc<MemoryBudget>,
        export: WebsiteExport,
    ) -> Result<Self, EngineError> {
        let WebsiteExport { counts, recent } = export;
        if !clocks_in_range(&counts, limits.window_ms()) {
            return Err(EngineError::InvalidExport(
                "a clock or cutoff outside the range of timestamps",
            ));
        }
        let classes_ok = recent.humans.slots.iter().all(|s| !s.event.is_bot)
            && recent.bots.slots.iter().all(|s| s.event.is_bot);
        if !classes_ok {
            return Err(EngineError::InvalidExport(
                "a recent event is in the wrong ring",
            ));
        }
        let mut writer = Writer {
            clock_ms: counts.clock_ms,
            next_arrival: counts.next_arrival,
            humans: ClassWindow::import(&limits, counts.humans)?,
            bots: ClassWindow::import(&limits, counts.bots)?,
            held_bytes: 0,
        };
        let human_ring = EventRing::import(limits.ring_capacity, recent.humans)?;
        let bot_ring = EventRing::import(limits.ring_capacity, recent.bots)?;
        writer.report(&budget);
        Ok(Self {
            limits,
            budget,
            writer: Mutex::new(writer),
            human_ring,
            bot_ring,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // The engine never panics while holding the lock, so a poisoned lock can only come from
        // an allocation failure mid-update; the structures are still memory-safe, so go on.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `event`. `carried_from` is the visitor's id under yesterday's salt during the
    /// carry-over after midnight (see `SaltSchedule::identify`).
    pub fn ingest(&self, event: Arc<Event>, carried_from: Option<VisitorId>) -> Ingested {
        let ts = event.ts.unix_ms();
        let window_ms = self.limits.window_ms();
        let mut writer = self.lock();
        writer.advance_to(ts, &self.budget);
        if ts <= writer.clock_ms - window_ms {
            writer.report(&self.budget);
            return Ingested::OutsideWindow;
        }
        let class = if event.is_bot {
            &mut writer.bots
        } else {
            &mut writer.humans
        };
        class.events.record(ts);
        let recorded = class
            .visitors
            .record(event.visitor, ts, carried_from, &self.budget);
        class.breakdown.record(&event, carried_from, &self.budget);
        writer.report(&self.budget);
        let arrival = writer.next_arrival;
        writer.next_arrival += 1;
        let cutoff_ms = writer.clock_ms - window_ms;
        let ring = if event.is_bot {
            &self.bot_ring
        } else {
            &self.human_ring
        };
        ring.push(arrival, event);
        ring.evict_expired(cutoff_ms);
        if recorded == Recorded::Full {
            Ingested::VisitorWindowFull { arrival }
        } else {
            Ingested::Windowed { arrival }
        }
    }

    /// Counts `visitor` (of the bot class when `is_bot`) as seen at `ts_ms`, as an event of it
    /// would, and changes nothing else: no ring entry, no event count, no arrival number.
    /// `carried_from` is the midnight carry-over, as for `ingest`.
    ///
    /// A visitor not in the window is added: a touch says it is on the site right now, and the
    /// active-visitor count answers exactly that. Everything else follows `ingest`: the clock
    /// moves to `ts_ms` (a future stamp included), a stamp at or before the cutoff changes
    /// nothing, and the memory budget is charged and may turn the count approximate.
    pub fn touch(
        &self,
        visitor: VisitorId,
        is_bot: bool,
        ts_ms: i64,
        carried_from: Option<VisitorId>,
    ) -> Touched {
        let window_ms = self.limits.window_ms();
        let mut writer = self.lock();
        writer.advance_to(ts_ms, &self.budget);
        if ts_ms <= writer.clock_ms - window_ms {
            writer.report(&self.budget);
            return Touched::OutsideWindow;
        }
        let class = if is_bot {
            &mut writer.bots
        } else {
            &mut writer.humans
        };
        let recorded = class
            .visitors
            .record(visitor, ts_ms, carried_from, &self.budget);
        writer.report(&self.budget);
        let cutoff_ms = writer.clock_ms - window_ms;
        drop(writer);
        // The clock may have moved: the rings give up what left the window, as on `ingest`.
        self.human_ring.evict_expired(cutoff_ms);
        self.bot_ring.evict_expired(cutoff_ms);
        if recorded == Recorded::Full {
            Touched::VisitorWindowFull
        } else {
            Touched::Counted
        }
    }

    /// Moves the website's clock to `now_ms` and evicts what expired, so an idle website's
    /// memory shrinks without traffic.
    pub fn advance_to(&self, now_ms: i64) {
        let mut writer = self.lock();
        writer.advance_to(now_ms, &self.budget);
        writer.report(&self.budget);
        let cutoff_ms = writer.clock_ms - self.limits.window_ms();
        drop(writer);
        self.human_ring.evict_expired(cutoff_ms);
        self.bot_ring.evict_expired(cutoff_ms);
    }

    /// The realtime answer at `now_ms`; bots are counted and listed only when `include_bots`.
    pub fn realtime(&self, now_ms: i64, include_bots: bool) -> Realtime {
        let (as_of_ms, active_visitors, approximate, total_in_window) = {
            let mut writer = self.lock();
            writer.advance_to(now_ms, &self.budget);
            writer.report(&self.budget);
            let mut active = writer.humans.visitors.count();
            let mut approximate = writer.humans.visitors.is_approximate();
            let mut total = writer.humans.events.count();
            if include_bots {
                active += writer.bots.visitors.count();
                approximate |= writer.bots.visitors.is_approximate();
                total += writer.bots.events.count();
            }
            (writer.clock_ms, active, approximate, total)
        };
        let cutoff_ms = as_of_ms - self.limits.window_ms();
        let limit = self.limits.recent_limit;
        let mut recent_events = self.human_ring.recent(cutoff_ms, as_of_ms, limit);
        if include_bots {
            recent_events.extend(self.bot_ring.recent(cutoff_ms, as_of_ms, limit));
            recent_events.sort_unstable_by(|a, b| b.cmp(a));
            recent_events.truncate(limit);
        }
        Realtime {
            as_of_ms,
            active_visitors,
            approximate,
            total_in_window,
            recent_events,
        }
    }

    /// The breakdown at `now_ms`, each list cut to `limit` rows; bots are counted only when
    /// `include_bots`.
    pub fn breakdown(&self, now_ms: i64, include_bots: bool, limit: usize) -> Breakdown {
        let mut writer = self.lock();
        writer.advance_to(now_ms, &self.budget);
        writer.report(&self.budget);
        let as_of_ms = writer.clock_ms;
        let mut gathered = Gathered::new(as_of_ms);
        let humans = &writer.humans;
        humans
            .breakdown
            .gather(humans.visitors.count(), &mut gathered);
        if include_bots {
            let bots = &writer.bots;
            bots.breakdown.gather(bots.visitors.count(), &mut gathered);
        }
        gathered.rank(as_of_ms, limit)
    }

    /// Bytes this website holds in windows, tallies and rings.
    pub fn memory_bytes(&self) -> usize {
        self.window_bytes() + self.human_ring.memory_bytes() + self.bot_ring.memory_bytes()
    }

    /// Bytes this website holds in visitor counts and tallies (what the budget accounts).
    pub fn window_bytes(&self) -> usize {
        self.lock().held_bytes
    }

    /// Whether either class counts approximately.
    pub fn is_approximate(&self) -> bool {
        let writer = self.lock();
        writer.humans.visitors.is_approximate() || writer.bots.visitors.is_approximate()
    }

    /// Gives memory back from the class holding the most that can still give some: its exact
    /// breakdown turns estimated first (it holds the most per visitor), then its visitor count
    /// sheds (see `VisitorCount::shed_memory`). Returns false when neither class can.
    pub fn shed_memory(&self) -> bool {
        let mut writer = self.lock();
        let writer = &mut *writer;
        let mut classes = [&mut writer.humans, &mut writer.bots];
        classes.sort_by_key(|c| std::cmp::Reverse(c.memory_bytes()));
        let share_bytes = self.budget.share_bytes();
        let shed = classes
            .into_iter()
            .any(|class| class.breakdown.shed_memory() || class.visitors.shed_memory(share_bytes));
        let now = writer.humans.memory_bytes() + writer.bots.memory_bytes();
        self.budget.update(writer.held_bytes, now);
        writer.held_bytes = now;
        shed
    }
}
