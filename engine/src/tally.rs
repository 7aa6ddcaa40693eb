//! `EventTally`: the number of events with a timestamp in the sliding window, in at most
//! `MAX_RUNS` runs (32 KiB) however the events are spread.
//!
//! Events are kept as runs of `(timestamp, count)` packed into one `u64` (44 bits of unix ms, 20
//! bits of count) in a deque sorted by timestamp. A run holds the events of one bucket of
//! `granularity_ms` (1 ms to start with) and carries the newest timestamp among them. In-order
//! events bump or append the last run in O(1); eviction pops runs from the front, amortised
//! O(1). A late event is inserted at its place, which costs the distance from the back.
//!
//! Every event is counted, always; what memory costs is the resolution of the window edge. While
//! fewer than `MAX_RUNS` buckets hold events the count is exact to the millisecond. When the
//! runs would pass `MAX_RUNS` (events in more than 4,096 distinct milliseconds of the window),
//! the granularity doubles and neighbouring runs merge, so an event may stay counted up to one
//! bucket (under 0.9 s for a 30-minute window) after it left the window, never before. The
//! granularity returns to 1 ms once the tally empties. The tally does not know who the events
//! belong to.

use std::collections::VecDeque;

use crate::error::EngineError;
use crate::event::Timestamp;
use crate::export::TallyExport;

/// Most runs a tally holds (8 bytes each).
pub const MAX_RUNS: usize = 4096;
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn run_ts(run: u64) -> i64 {
    (run >> COUNT_BITS) as i64
}

fn run_count(run: u64) -> u64 {
    run & COUNT_MASK
}

fn run(ts_ms: i64, count: u64) -> u64 {
    ((ts_ms as u64) << COUNT_BITS) | count
}

/// The count of events with a timestamp in `(clock - window, clock]`, as packed `(ms, count)`
/// runs, one per bucket of `granularity_ms`.
#[derive(Debug)]
pub struct EventTally {
    window_ms: i64,
    cutoff_ms: i64,
    runs: VecDeque<u64>,
    total: u64,
    granularity_ms: i64,
}

impl EventTally {
    /// An empty tally over a window of `window_secs` seconds (at least one).
    pub fn new(window_secs: u32) -> Self {
        Self {
            window_ms: i64::from(window_secs.max(1)) * 1000,
            cutoff_ms: i64::MIN,
            runs: VecDeque::new(),
            total: 0,
            granularity_ms: 1,
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
        loop {
            let bucket = ts_ms.div_euclid(self.granularity_ms);
            let bucket_of = |run: u64| run_ts(run).div_euclid(self.granularity_ms);
            // Most events are the newest so far, or share the newest bucket: bump or append at
            // the back without a search (the search was 10-19% of ingest with four events per
            // millisecond, BENCHMARKS.md "Breakdowns").
            let pos = match self.runs.back() {
                Some(&last) if bucket_of(last) <= bucket => self.runs.len(),
                Some(_) => self.runs.partition_point(|&run| bucket_of(run) <= bucket),
                None => 0,
            };
            let bumped = pos
                .checked_sub(1)
                .and_then(|prev| self.runs.get_mut(prev))
                .filter(|r| {
                    run_ts(**r).div_euclid(self.granularity_ms) == bucket
                        && run_count(**r) < COUNT_MASK
                })
                .map(|r| *r = run(run_ts(*r).max(ts_ms), run_count(*r) + 1))
                .is_some();
            if bumped {
                break;
            }
            if self.runs.len() < MAX_RUNS || !self.coarsen() {
                self.runs.insert(pos, run(ts_ms, 1));
                break;
            }
        }
        self.total += 1;
        true
    }

    /// Doubles the granularity and merges the runs that now share a bucket. Returns false when
    /// the granularity already spans the window (so merging cannot free anything more).
    fn coarsen(&mut self) -> bool {
        if self.granularity_ms > self.window_ms {
            return false;
        }
        self.granularity_ms *= 2;
        let granularity_ms = self.granularity_ms;
        let mut merged: VecDeque<u64> = VecDeque::with_capacity(MAX_RUNS);
        for next in self.runs.drain(..) {
            match merged.back_mut() {
                Some(last)
                    if run_ts(*last).div_euclid(granularity_ms)
                        == run_ts(next).div_euclid(granularity_ms)
                        && run_count(*last) + run_count(next) <= COUNT_MASK =>
                {
                    *last = run(run_ts(next), run_count(*last) + run_count(next));
                }
                _ => merged.push_back(next),
            }
        }
        self.runs = merged;
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
        if self.runs.is_empty() {
            self.granularity_ms = 1;
        }
    }

    /// The runs as plain data (at most `MAX_RUNS` of them).
    pub fn export(&self) -> TallyExport {
        TallyExport {
            cutoff_ms: self.cutoff_ms,
            granularity_ms: self.granularity_ms,
            capacity: self.runs.capacity() as u64,
            runs: self
                .runs
                .iter()
                .map(|&r| (run_ts(r), run_count(r) as u32))
                .collect(),
        }
    }

    /// Rebuilds a tally over `window_secs` seconds from `export`, or says which value is out of
    /// place.
    pub fn import(window_secs: u32, export: TallyExport) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        let mut tally = Self::new(window_secs);
        let granularity_ok = export.granularity_ms >= 1
            && export.granularity_ms.count_ones() == 1
            && export.granularity_ms <= 4 * tally.window_ms;
        if !granularity_ok {
            return Err(invalid("tally granularity out of range"));
        }
        if export.runs.len() > MAX_RUNS || export.capacity > MAX_RUNS.next_power_of_two() as u64 {
            return Err(invalid("tally holds more runs than its limit"));
        }
        let newest_ms = export.cutoff_ms.saturating_add(tally.window_ms);
        let mut previous = i64::MIN;
        let mut runs = VecDeque::with_capacity(export.capacity as usize);
        for (ts, count) in export.runs {
            let in_range = ts > export.cutoff_ms
                && ts <= newest_ms.saturating_add(export.granularity_ms)
                && (0..=Timestamp::MAX_MS).contains(&ts);
            if !in_range || ts.div_euclid(export.granularity_ms) < previous {
                return Err(invalid("tally run out of order or outside the window"));
            }
            if count == 0 || u64::from(count) > COUNT_MASK {
                return Err(invalid("tally run count out of range"));
            }
            previous = ts.div_euclid(export.granularity_ms);
            tally.total += u64::from(count);
            runs.push_back(run(ts, u64::from(count)));
        }
        tally.cutoff_ms = export.cutoff_ms;
        tally.granularity_ms = export.granularity_ms;
        tally.runs = runs;
        Ok(tally)
    }

    /// Bytes the runs hold (their allocated capacity, 8 bytes a run, at most `MAX_RUNS` runs).
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

    #[test]
    fn events_in_every_millisecond_fit_the_run_limit_and_every_event_counts() {
        let mut tally = EventTally::new(1800);
        let t0 = 1_000_000_i64;
        // One event per millisecond for the whole 30-minute window, some of them late.
        let n = 1_800_000_i64;
        for i in 0..n {
            let ts = if i % 100 == 50 { t0 + i - 40 } else { t0 + i };
            assert!(tally.record(ts));
        }
        assert_eq!(tally.count(), n as u64);
        assert!(tally.runs.len() <= MAX_RUNS);
        assert!(
            tally.memory_bytes() <= MAX_RUNS * 8,
            "{}",
            tally.memory_bytes()
        );
        // Buckets are under 0.9 s: events leave at most that late, never early.
        assert!(tally.granularity_ms <= 1024, "{}", tally.granularity_ms);
        let last = t0 + n - 1;
        tally.advance_to(last + 1_800_000 - 1);
        // The newest event is still in the window, with at most its bucket's older neighbours.
        assert!(
            (1..=tally.granularity_ms as u64).contains(&tally.count()),
            "{}",
            tally.count()
        );
        let half = t0 + n / 2;
        let mut tally_half = EventTally::new(1800);
        for i in 0..n {
            tally_half.record(t0 + i);
        }
        tally_half.advance_to(half + 1_800_000);
        let exact = (t0 + n - 1 - half) as u64;
        let counted = tally_half.count();
        assert!(
            counted >= exact && counted <= exact + tally_half.granularity_ms as u64,
            "{counted} for {exact}"
        );
        // Once empty, the tally is exact to the millisecond again.
        tally.advance_to(last + 1_800_000);
        assert_eq!((tally.count(), tally.granularity_ms), (0, 1));
    }
}
