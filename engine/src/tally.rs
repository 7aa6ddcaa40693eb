//! `EventTally`: the exact number of events with a timestamp in the sliding window.
//!
//! Events are kept as runs of `(timestamp, count)` packed into one `u64` (44 bits of unix ms, 20
//! bits of count) in a deque sorted by timestamp. In-order events bump or append the last run in
//! O(1); eviction pops runs from the front, amortised O(1). A late event is inserted at its place,
//! which costs the distance from the back. Memory is 8 bytes per distinct millisecond that holds
//! events, at most `8 × window_ms` bytes however busy the site. The tally does not know who the
//! events belong to.

use std::collections::VecDeque;

use crate::event::Timestamp;

const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn run_ts(run: u64) -> i64 {
    (run >> COUNT_BITS) as i64
}

fn run_count(run: u64) -> u64 {
    run & COUNT_MASK
}

fn new_run(ts_ms: i64) -> u64 {
    ((ts_ms as u64) << COUNT_BITS) | 1
}

/// The exact count of events with a timestamp in `(clock - window, clock]`, as packed
/// `(ms, count)` runs.
#[derive(Debug)]
pub struct EventTally {
    window_ms: i64,
    cutoff_ms: i64,
    runs: VecDeque<u64>,
    total: u64,
}

impl EventTally {
    /// An empty tally over a window of `window_secs` seconds (at least one).
    pub fn new(window_secs: u32) -> Self {
        Self {
            window_ms: i64::from(window_secs.max(1)) * 1000,
            cutoff_ms: i64::MIN,
            runs: VecDeque::new(),
            total: 0,
        }
    }

    /// Events with `cutoff < ts <= clock`.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Counts one event at `ts_ms`, moving the clock forward to it first. Returns false, and
    /// counts nothing, when the event is at or before the cutoff or outside `Timestamp`'s range.
    #[inline]
    pub fn record(&mut self, ts_ms: i64) -> bool {
        self.advance_to(ts_ms);
        if ts_ms <= self.cutoff_ms || !(0..=Timestamp::MAX_MS).contains(&ts_ms) {
            return false;
        }
        // Most events are the newest so far: bump or append at the back.
        let pos = match self.runs.back() {
            Some(&last) if run_ts(last) < ts_ms => self.runs.len(),
            Some(_) => self.runs.partition_point(|&run| run_ts(run) <= ts_ms),
            None => 0,
        };
        let bumped = pos
            .checked_sub(1)
            .and_then(|prev| self.runs.get_mut(prev))
            .filter(|run| run_ts(**run) == ts_ms && run_count(**run) < COUNT_MASK)
            .map(|run| *run += 1)
            .is_some();
        if !bumped {
            self.runs.insert(pos, new_run(ts_ms));
        }
        self.total += 1;
        true
    }

    /// Moves the clock to `now_ms` (never backwards) and forgets events at or before
    /// `now_ms - window`.
    pub fn advance_to(&mut self, now_ms: i64) {
        let cutoff_ms = now_ms.saturating_sub(self.window_ms);
        if cutoff_ms <= self.cutoff_ms {
            return;
        }
        self.cutoff_ms = cutoff_ms;
        while let Some(&front) = self.runs.front() {
            if run_ts(front) > cutoff_ms {
                break;
            }
            self.total -= run_count(front);
            self.runs.pop_front();
        }
    }

    /// Bytes the runs hold (their allocated capacity, 8 bytes a run).
    #[inline]
    pub fn memory_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_in_the_window_exactly_to_the_millisecond() {
        let mut tally = EventTally::new(10);
        for ts in [1_000, 1_000, 1_001, 5_000] {
            assert!(tally.record(ts));
        }
        assert_eq!(tally.count(), 4);
        tally.advance_to(10_999);
        assert_eq!(tally.count(), 4);
        tally.advance_to(11_000);
        assert_eq!(tally.count(), 2);
        tally.advance_to(11_001);
        assert_eq!(tally.count(), 1);
    }

    #[test]
    fn late_events_are_placed_in_order_and_expire_on_time() {
        let mut tally = EventTally::new(10);
        for ts in [5_000, 9_000, 6_000, 5_000, 8_000] {
            assert!(tally.record(ts));
        }
        assert!(!tally.record(-1 + 9_000 - 10_000), "older than the window");
        assert_eq!(tally.count(), 5);
        tally.advance_to(16_000);
        assert_eq!(tally.count(), 2);
        tally.advance_to(18_000);
        assert_eq!(tally.count(), 1);
    }

    #[test]
    fn a_full_run_spills_into_a_second_run_with_the_same_timestamp() {
        let mut tally = EventTally::new(10);
        let n = COUNT_MASK + 3;
        for _ in 0..n {
            tally.record(42);
        }
        assert_eq!(tally.count(), n);
        assert_eq!(tally.runs.len(), 2);
        tally.advance_to(10_042);
        assert_eq!(tally.count(), 0);
    }
}
