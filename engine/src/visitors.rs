//! `VisitorCount`: one class's active-visitor count, exact while it fits the memory budget and
//! approximate when it does not.
//!
//! - Exact: a `VisitorWindow`. Before an insert that would make it allocate, the count checks
//!   the budget: when the budget is full and this window is past its share, it converts itself
//!   into a `SlidingHll` (every active visitor is carried over with its last timestamp) and frees
//!   the exact state. The estimate gets half the website's share (a website has two classes),
//!   so its memory, fixed from then on, is always less than the window it replaces.
//! - Under further pressure (`shed_memory`), the approximate count gives memory back by dropping
//!   its shadow window, then by halving its precision: the error grows, the bytes never do.
//! - Approximate: the `SlidingHll`. Once the estimate would fit comfortably (half the share, and
//!   room in the budget), a fresh exact window starts in the shadow; after one full window it
//!   holds every active visitor, and the count becomes exact again. If the shadow outgrows the
//!   share first, it is dropped and retried a window later.
//!
//! The midnight carry-over is exact only in exact mode: a HyperLogLog cannot forget an id, so in
//! approximate mode a visitor active across midnight may count twice for up to 30 minutes.

use crate::approx::SlidingHll;
use crate::budget::MemoryBudget;
use crate::error::EngineError;
use crate::event::VisitorId;
use crate::export::{ApproximateExport, ShadowExport, VisitorCountExport};
use crate::window::{Recorded, VisitorWindow};

/// Bytes an exact window needs per visitor, used to decide when an approximate count fits
/// again (measured ≈ 36; rounded up for the slab's and table's growth headroom).
const EXACT_BYTES_PER_VISITOR: usize = 48;

#[derive(Debug)]
struct Shadow {
    window: VisitorWindow,
    since_ms: i64,
}

#[derive(Debug)]
enum Mode {
    Exact(VisitorWindow),
    Approximate {
        hll: Box<SlidingHll>,
        shadow: Option<Shadow>,
        /// No new shadow before this instant (after one was dropped).
        retry_at_ms: i64,
    },
}

/// One class's active-visitor count: an exact `VisitorWindow` while it fits the memory budget,
/// a `SlidingHll` estimate while it does not.
#[derive(Debug)]
pub struct VisitorCount {
    window_secs: u32,
    clock_ms: i64,
    mode: Mode,
}

impl VisitorCount {
    /// An empty, exact count over a window of `window_secs` seconds.
    pub fn new(window_secs: u32) -> Self {
        Self {
            window_secs,
            clock_ms: i64::MIN,
            mode: Mode::Exact(VisitorWindow::new(window_secs)),
        }
    }

    fn window_ms(&self) -> i64 {
        i64::from(self.window_secs.max(1)) * 1000
    }

    /// Whether `count` is an estimate now.
    #[inline]
    pub fn is_approximate(&self) -> bool {
        matches!(self.mode, Mode::Approximate { .. })
    }

    /// Active visitors: exact, or the estimate in approximate mode.
    #[inline]
    pub fn count(&self) -> u64 {
        match &self.mode {
            Mode::Exact(window) => window.len() as u64,
            Mode::Approximate { hll, .. } => hll.estimate(),
        }
    }

    /// Bytes held: the exact window, or the estimate and its shadow window.
    #[inline]
    pub fn memory_bytes(&self) -> usize {
        match &self.mode {
            Mode::Exact(window) => window.memory_bytes(),
            Mode::Approximate { hll, shadow, .. } => {
                hll.memory_bytes() + shadow.as_ref().map_or(0, |s| s.window.memory_bytes())
            }
        }
    }

    /// Records `id` at `ts_ms` (see `VisitorWindow::record`), switching mode when `budget` says
    /// so. The caller reports the change in `memory_bytes` to the budget.
    #[inline]
    pub fn record(
        &mut self,
        id: VisitorId,
        ts_ms: i64,
        carried_from: Option<VisitorId>,
        budget: &MemoryBudget,
    ) -> Recorded {
        self.clock_ms = self.clock_ms.max(ts_ms);
        if let Mode::Exact(window) = &self.mode {
            let growth = window.growth_bytes_on_insert();
            if growth > 0
                && !budget.fits(growth)
                && window.memory_bytes() + growth > budget.share_bytes()
            {
                self.switch_to_approximate(budget.share_bytes() / 2);
            }
        }
        let window_ms = self.window_ms();
        let clock_ms = self.clock_ms;
        match &mut self.mode {
            Mode::Exact(window) => window.record(id, ts_ms, carried_from),
            Mode::Approximate {
                hll,
                shadow,
                retry_at_ms,
            } => {
                hll.record(id.0, ts_ms);
                if let Some(s) = shadow {
                    let growth = s.window.growth_bytes_on_insert();
                    let too_big = growth > 0
                        && (!budget.fits(growth)
                            || s.window.memory_bytes() + growth > budget.share_bytes());
                    if too_big {
                        *shadow = None;
                        *retry_at_ms = clock_ms.saturating_add(window_ms);
                    } else {
                        s.window.record(id, ts_ms, carried_from);
                    }
                }
                if ts_ms <= clock_ms.saturating_sub(window_ms) {
                    Recorded::TooOld
                } else {
                    Recorded::Added
                }
            }
        }
    }

    /// Moves the clock to `now_ms`, evicts, and moves between modes when the budget allows.
    pub fn advance_to(&mut self, now_ms: i64, budget: &MemoryBudget) {
        self.clock_ms = self.clock_ms.max(now_ms);
        let clock_ms = self.clock_ms;
        let window_ms = self.window_ms();
        let window_secs = self.window_secs;
        let promote = match &mut self.mode {
            Mode::Exact(window) => {
                window.advance_to(clock_ms);
                false
            }
            Mode::Approximate {
                hll,
                shadow,
                retry_at_ms,
            } => {
                hll.advance_to(clock_ms);
                if let Some(s) = shadow.as_mut() {
                    s.window.advance_to(clock_ms);
                }
                let needed = (hll.estimate() as usize).saturating_mul(EXACT_BYTES_PER_VISITOR);
                if shadow.is_none()
                    && clock_ms >= *retry_at_ms
                    && needed.saturating_mul(2) <= budget.share_bytes()
                    && budget.fits(needed.saturating_mul(2))
                {
                    *shadow = Some(Shadow {
                        window: VisitorWindow::new(window_secs),
                        since_ms: clock_ms,
                    });
                }
                shadow
                    .as_ref()
                    .is_some_and(|s| clock_ms.saturating_sub(s.since_ms) >= window_ms)
            }
        };
        if promote {
            let old =
                std::mem::replace(&mut self.mode, Mode::Exact(VisitorWindow::new(window_secs)));
            if let Mode::Approximate {
                shadow: Some(shadow),
                ..
            } = old
            {
                self.mode = Mode::Exact(shadow.window);
            }
        }
    }

    /// Converts an exact count into an approximate one holding at most `max_bytes` (or the
    /// lowest precision when even that does not fit); every active visitor is carried over.
    pub fn switch_to_approximate(&mut self, max_bytes: usize) {
        if let Mode::Exact(window) = &self.mode {
            let mut hll = Box::new(SlidingHll::with_max_bytes(self.window_secs, max_bytes));
            window.for_each(|id, ts| hll.record(id.0, ts));
            hll.advance_to(self.clock_ms);
            self.mode = Mode::Approximate {
                hll,
                shadow: None,
                retry_at_ms: self.clock_ms.saturating_add(self.window_ms()),
            };
        }
    }

    /// The count as plain data: the exact window or the estimate with its shadow.
    pub fn export(&self) -> VisitorCountExport {
        let (exact, approximate) = match &self.mode {
            Mode::Exact(window) => (Some(window.export()), None),
            Mode::Approximate {
                hll,
                shadow,
                retry_at_ms,
            } => {
                let approximate = ApproximateExport {
                    hll: hll.export(),
                    shadow: shadow.as_ref().map(|s| ShadowExport {
                        window: s.window.export(),
                        since_ms: s.since_ms,
                    }),
                    retry_at_ms: *retry_at_ms,
                };
                (None, Some(approximate))
            }
        };
        VisitorCountExport {
            clock_ms: self.clock_ms,
            exact,
            approximate,
        }
    }

    /// Rebuilds a count over `window_secs` seconds from `export`, or says which value is out of
    /// place; no allocation may claim more than `limit_bytes`, the budget's limit.
    pub fn import(
        window_secs: u32,
        export: VisitorCountExport,
        limit_bytes: usize,
    ) -> Result<Self, EngineError> {
        let mode = match (export.exact, export.approximate) {
            (Some(window), None) => {
                Mode::Exact(VisitorWindow::import(window_secs, window, limit_bytes)?)
            }
            (None, Some(approximate)) => Mode::Approximate {
                hll: Box::new(SlidingHll::import(window_secs, approximate.hll)?),
                shadow: approximate
                    .shadow
                    .map(|s| {
                        VisitorWindow::import(window_secs, s.window, limit_bytes).map(|window| {
                            Shadow {
                                window,
                                since_ms: s.since_ms,
                            }
                        })
                    })
                    .transpose()?,
                retry_at_ms: approximate.retry_at_ms,
            },
            _ => {
                return Err(EngineError::InvalidExport(
                    "a visitor count is either exact or approximate",
                ))
            }
        };
        Ok(Self {
            window_secs,
            clock_ms: export.clock_ms,
            mode,
        })
    }

    /// Gives memory back when the budget is exceeded (the engine's rebalancing calls this on the
    /// largest holders): an exact count turns approximate, in at most half `share_bytes` and
    /// never more than its window held; an approximate one drops its shadow window, or else
    /// halves its precision. Returns false when there is nothing left to give.
    pub fn shed_memory(&mut self, share_bytes: usize) -> bool {
        let window_ms = self.window_ms();
        match &mut self.mode {
            Mode::Exact(window) => {
                let max_bytes = (share_bytes / 2).min(window.memory_bytes());
                if SlidingHll::bytes_within(max_bytes) >= window.memory_bytes() {
                    return false;
                }
                self.switch_to_approximate(max_bytes);
                true
            }
            Mode::Approximate {
                shadow,
                retry_at_ms,
                ..
            } if shadow.is_some() => {
                *shadow = None;
                *retry_at_ms = self.clock_ms.saturating_add(window_ms);
                true
            }
            Mode::Approximate { hll, .. } => hll.halve_precision(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_000_000_000;

    #[test]
    fn an_unlimited_budget_stays_exact() {
        let budget = MemoryBudget::new(usize::MAX);
        let mut count = VisitorCount::new(1800);
        for id in 0..50_000 {
            count.record(VisitorId(id), T0 + id as i64, None, &budget);
        }
        assert!(!count.is_approximate());
        assert_eq!(count.count(), 50_000);
    }

    #[test]
    fn past_its_share_of_a_full_budget_the_count_turns_approximate_then_exact_again() {
        let budget = MemoryBudget::new(1024 * 1024);
        budget.website_added();
        let mut count = VisitorCount::new(60);
        let mut held = 0;
        for id in 0..100_000_u64 {
            count.record(VisitorId(id), T0 + (id as i64 % 50_000), None, &budget);
            let now = count.memory_bytes();
            budget.update(held, now);
            held = now;
        }
        assert!(count.is_approximate());
        let estimate = count.count() as f64;
        assert!(
            (estimate - 100_000.0).abs() / 100_000.0 <= 0.02,
            "{estimate}"
        );
        // Traffic drops to 100 visitors: after a window the shadow starts, after another it
        // holds the whole window and the count is exact again.
        let mut now = T0 + 50_000;
        for _ in 0..400 {
            now += 1_000;
            count.advance_to(now, &budget);
            for v in 0..100 {
                count.record(VisitorId(1_000_000 + v), now, None, &budget);
            }
            let bytes = count.memory_bytes();
            budget.update(held, bytes);
            held = bytes;
        }
        assert!(!count.is_approximate(), "still approximate");
        assert_eq!(count.count(), 100);
    }

    #[test]
    fn shedding_gives_memory_back_step_by_step_and_never_grows() {
        let budget = MemoryBudget::new(usize::MAX);
        let mut count = VisitorCount::new(1800);
        for id in 0..20_000_u64 {
            count.record(VisitorId(id), T0 + id as i64, None, &budget);
        }
        let exact = count.memory_bytes();
        // An exact window turns into an estimate no larger than half the share or the window.
        assert!(count.shed_memory(1 << 20));
        assert!(count.is_approximate());
        let mut held = count.memory_bytes();
        assert!(held <= exact.min(1 << 19), "{held} after {exact}");
        // Then the precision halves, each step freeing memory, down to the lowest.
        let mut steps = 0;
        while count.shed_memory(1 << 20) {
            assert!(count.memory_bytes() < held);
            held = count.memory_bytes();
            steps += 1;
        }
        assert!(steps >= 1);
        assert_eq!(
            count.memory_bytes(),
            16 * 8 + 2,
            "16 registers of 4 two-byte slots, one block summary"
        );
        assert!(count.count() > 0);
        // An empty exact window has nothing to give.
        assert!(!VisitorCount::new(1800).shed_memory(1 << 20));
    }
}
