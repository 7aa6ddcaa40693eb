//! `SlidingHll`: an approximate count of distinct visitors in the sliding window, in a fixed
//! amount of memory chosen up front, for websites whose exact `VisitorWindow` would not fit the
//! memory budget.
//!
//! A sliding HyperLogLog (Chabchoub and Hébrail, 2010): each of the 2^p registers keeps, instead
//! of one maximum rank, its list of possible future maxima — the `(time, rank)` pairs not beaten
//! by a later pair with a rank at least as high — so when the oldest pair leaves the window the
//! next one is already there. The list is short (its expected length grows with the log of the
//! ids per register: under 3 entries at 1M ids in 65,536 registers) and is stored inline in
//! `SLOTS` 16-bit entries (10 bits of time, 6 of rank), so the memory is exactly `2^p × 8`
//! bytes, plus 2 per 64 registers for the expiry sweep, from the first id to the millionth,
//! whatever the traffic or how long it lasts. A register whose list would outgrow its slots
//! drops its newest, smallest pair: that pair could only matter after every older one expired.
//!
//! Time is kept in ticks of 1/1000 of the window (1.8 s for 30 minutes); a tick leaves the count
//! once all of it is past the cutoff, so the window edge is one tick wide: a one-sided overcount
//! of at most 0.1% of the window. When a tick passes, a sweep over per-block summaries (the
//! oldest first entry of every 64 registers) visits the blocks where something expired.
//! Recording an id touches one register, and the estimate is kept from a histogram of register
//! values (Ertl's improved raw estimator, unbiased from 0 to billions without switching
//! formulas), so estimating costs a 64-step loop.
//!
//! Precision is what gives way under memory pressure, never the bound: `with_max_bytes` picks
//! the largest precision that fits (16 at most: standard error 1.04/√65536 ≈ 0.41%), and
//! `halve_precision` folds the registers in pairs to give half the memory back later. This
//! module does not decide when to do either; `VisitorCount` and the engine do.

use crate::error::EngineError;
use crate::export::HllExport;

/// Most register-index bits: 65,536 registers, standard error ≈ 0.41%.
pub const MAX_PRECISION: u32 = 16;
/// Fewest register-index bits: 16 registers, standard error ≈ 26%. 6-bit ranks need at least 4.
pub const MIN_PRECISION: u32 = 4;
/// Pairs kept per register.
const SLOTS: usize = 4;
/// Ticks per window: the resolution of the window edge.
const TICKS_PER_WINDOW: i64 = 1000;
/// A stored tick is the tick modulo 1024; every live entry is at most `TICKS_PER_WINDOW + 1`
/// ticks old, so the age read back from 10 bits is never ambiguous.
const TICK_BITS: u32 = 10;
const TICK_MODULUS: u16 = 1 << TICK_BITS;
const RANK_BITS: u32 = 6;
const RANK_MASK: u16 = (1 << RANK_BITS) - 1;
/// Registers per block of the expiry sweep's summary.
const BLOCK: usize = 64;
/// A block summary for "no entry": no stored tick has 16 bits.
const NO_TICK: u16 = u16::MAX;
/// Histogram buckets: ranks 0 (empty) to `65 - MIN_PRECISION`.
const RANKS: usize = 64;

/// Spreads an id over 64 bits (ids are sha256 output already; tests use small integers).
fn mix(id: u64) -> u64 {
    let mut x = id ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The register an id falls in at `precision` and its rank (position of the first set bit of
/// the rest, 1-based, at most `65 - precision`).
fn register_and_rank(id: u64, precision: u32) -> (usize, u8) {
    let hash = mix(id);
    let register = (hash >> (64 - precision)) as usize;
    let rest = hash << precision;
    let rank = (rest.leading_zeros().min(64 - precision) + 1) as u8;
    (register, rank)
}

fn entry(tick: i64, rank: u8) -> u16 {
    (stored_tick(tick) << RANK_BITS) | u16::from(rank)
}

fn entry_rank(entry: u16) -> u8 {
    (entry & RANK_MASK) as u8
}

/// A clock tick as stored in entries: modulo 1024.
fn stored_tick(tick: i64) -> u16 {
    tick.rem_euclid(i64::from(TICK_MODULUS)) as u16
}

/// Ticks between a stored tick and the clock's `stored_tick` (valid while under 1024).
fn tick_age(tick: u16, clock: u16) -> u16 {
    clock.wrapping_sub(tick) & (TICK_MODULUS - 1)
}

/// Ticks between `entry` and the clock's `stored_tick` (valid while the entry is under 1024
/// ticks old).
fn entry_age(entry: u16, clock: u16) -> u16 {
    tick_age(entry >> RANK_BITS, clock)
}

/// Adds `(age, rank)` to one register's list (oldest first; ages and ranks strictly falling),
/// dropping the pairs it beats. Returns false, changing nothing, when a pair at least as new
/// and as high is there already. When the list would outgrow its slots its newest pair goes.
fn insert_pair(list: &mut [u16; SLOTS], clock: u16, age: u16, rank: u8, new: u16) -> bool {
    let ages_ranks = |e: u16| (entry_age(e, clock), entry_rank(e));
    if list.iter().take_while(|e| entry_rank(**e) != 0).any(|e| {
        let (a, r) = ages_ranks(*e);
        a <= age && r >= rank
    }) {
        return false;
    }
    let mut merged = [0_u16; SLOTS + 1];
    let mut len = 0;
    let mut placed = false;
    for &e in list.iter().take_while(|e| entry_rank(**e) != 0) {
        let (a, r) = ages_ranks(e);
        if a >= age && r <= rank {
            continue;
        }
        if !placed && a < age {
            merged[len] = new;
            len += 1;
            placed = true;
        }
        merged[len] = e;
        len += 1;
    }
    if !placed {
        merged[len] = new;
    }
    list.copy_from_slice(&merged[..SLOTS]);
    true
}

/// Ertl's σ(x) (2017, "New cardinality estimation algorithms for HyperLogLog sketches").
fn sigma(mut x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

/// Ertl's τ(x).
fn tau(mut x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

/// An approximate distinct count of visitor ids over a sliding window, in `2^p × 8` bytes plus
/// 2 per 64 registers.
#[derive(Debug)]
pub struct SlidingHll {
    precision: u32,
    window_ms: i64,
    tick_ms: i64,
    clock_ms: i64,
    clock_tick: i64,
    /// The newest tick wholly at or before the cutoff: no entry is at or before it.
    dead_tick: i64,
    /// `SLOTS` entries per register, oldest first (the first has the highest rank: it is what
    /// the estimate reads), 0 for a free slot. One register is 8 bytes: one cache line to read.
    slots: Box<[u16]>,
    /// Per block of `BLOCK` registers, the stored tick of its oldest first entry, or at most
    /// that old (an overwritten first entry leaves it older than needed, never newer); `NO_TICK`
    /// when the block is empty. The expiry sweep reads these and visits only the blocks where
    /// something may have expired.
    oldest: Box<[u16]>,
    /// How many registers have each maximum rank (the first entry's rank; 0 when empty).
    histogram: [u32; RANKS],
}

impl SlidingHll {
    /// An empty count at the highest precision over a window of `window_secs` seconds (at least
    /// one).
    pub fn new(window_secs: u32) -> Self {
        Self::with_precision(window_secs, MAX_PRECISION)
    }

    /// An empty count at the highest precision whose memory fits `max_bytes` (the lowest
    /// precision when none does).
    pub fn with_max_bytes(window_secs: u32, max_bytes: usize) -> Self {
        Self::with_precision(window_secs, Self::precision_within(max_bytes))
    }

    /// Bytes `with_max_bytes(_, max_bytes)` would hold.
    pub fn bytes_within(max_bytes: usize) -> usize {
        Self::bytes_at(Self::precision_within(max_bytes))
    }

    fn precision_within(max_bytes: usize) -> u32 {
        (MIN_PRECISION..=MAX_PRECISION)
            .rev()
            .find(|p| Self::bytes_at(*p) <= max_bytes)
            .unwrap_or(MIN_PRECISION)
    }

    fn with_precision(window_secs: u32, precision: u32) -> Self {
        let precision = precision.clamp(MIN_PRECISION, MAX_PRECISION);
        let window_ms = i64::from(window_secs.max(1)) * 1000;
        let mut histogram = [0; RANKS];
        histogram[0] = 1 << precision;
        Self {
            precision,
            window_ms,
            tick_ms: (window_ms + TICKS_PER_WINDOW - 1) / TICKS_PER_WINDOW,
            clock_ms: i64::MIN,
            clock_tick: i64::MIN,
            dead_tick: i64::MIN,
            slots: vec![0; (1 << precision) * SLOTS].into_boxed_slice(),
            oldest: vec![NO_TICK; Self::blocks_at(precision)].into_boxed_slice(),
            histogram,
        }
    }

    fn blocks_at(precision: u32) -> usize {
        (1_usize << precision).div_ceil(BLOCK)
    }

    /// One register's entries, oldest first.
    fn list(&self, register: usize) -> [u16; SLOTS] {
        let mut list = [0; SLOTS];
        list.copy_from_slice(&self.slots[register * SLOTS..(register + 1) * SLOTS]);
        list
    }

    /// Writes one register's entries, keeping its block's summary at least as old as its first.
    fn store(&mut self, register: usize, list: &[u16; SLOTS]) {
        self.slots[register * SLOTS..(register + 1) * SLOTS].copy_from_slice(list);
        if entry_rank(list[0]) != 0 {
            let clock = stored_tick(self.clock_tick);
            let tick = list[0] >> RANK_BITS;
            let oldest = &mut self.oldest[register / BLOCK];
            if *oldest == NO_TICK || tick_age(tick, clock) > tick_age(*oldest, clock) {
                *oldest = tick;
            }
        }
    }

    /// Sets a block's summary to the exact oldest first entry among its registers.
    fn summarise_block(&mut self, block: usize, clock: u16) {
        let end = ((block + 1) * BLOCK).min(self.registers());
        self.oldest[block] = (block * BLOCK..end)
            .map(|r| self.slots[r * SLOTS])
            .filter(|e| entry_rank(*e) != 0)
            .max_by_key(|e| entry_age(*e, clock))
            .map_or(NO_TICK, |e| e >> RANK_BITS);
    }

    /// Bytes a count at `precision` holds: 8 per register, 2 per block summary.
    fn bytes_at(precision: u32) -> usize {
        ((1 << precision) * SLOTS + Self::blocks_at(precision)) * std::mem::size_of::<u16>()
    }

    fn registers(&self) -> usize {
        1 << self.precision
    }

    /// Register-index bits: the standard error is 1.04/√(2^precision).
    pub fn precision(&self) -> u32 {
        self.precision
    }

    /// Counts `id` as seen at `ts_ms`, moving the clock forward to it first. Timestamps at or
    /// before the cutoff change nothing.
    pub fn record(&mut self, id: u64, ts_ms: i64) {
        self.advance_to(ts_ms);
        if ts_ms <= self.clock_ms.saturating_sub(self.window_ms) {
            return;
        }
        let tick = ts_ms.div_euclid(self.tick_ms);
        let age = (self.clock_tick - tick) as u16;
        let (register, rank) = register_and_rank(id, self.precision);
        let mut list = self.list(register);
        let head = entry_rank(list[0]);
        if insert_pair(
            &mut list,
            stored_tick(self.clock_tick),
            age,
            rank,
            entry(tick, rank),
        ) {
            self.store(register, &list);
            let new_head = entry_rank(list[0]);
            if new_head != head {
                self.histogram[usize::from(head)] -= 1;
                self.histogram[usize::from(new_head)] += 1;
            }
        }
    }

    /// Moves the clock to `now_ms` and drops every tick wholly at or before the cutoff.
    pub fn advance_to(&mut self, now_ms: i64) {
        if now_ms <= self.clock_ms {
            return;
        }
        self.clock_ms = now_ms;
        let cutoff_ms = now_ms.saturating_sub(self.window_ms);
        let dead_tick = cutoff_ms.saturating_add(1).div_euclid(self.tick_ms) - 1;
        let old_clock_tick = self.clock_tick;
        self.clock_tick = now_ms.div_euclid(self.tick_ms);
        if dead_tick <= self.dead_tick {
            return;
        }
        self.dead_tick = dead_tick;
        let registers = self.registers() as u32;
        if self.histogram[0] == registers {
            return;
        }
        if dead_tick >= old_clock_tick {
            self.slots.fill(0);
            self.oldest.fill(NO_TICK);
            self.histogram = [0; RANKS];
            self.histogram[0] = registers;
            return;
        }
        // Ages are read against the clock every stored entry was live at. A first entry expires
        // first in its register, so only blocks whose oldest first entry expired are visited: in
        // steady traffic about one register in a thousand per tick.
        let clock = stored_tick(old_clock_tick);
        let expired_age = (old_clock_tick - dead_tick) as u16;
        let expired = |e: u16| entry_rank(e) != 0 && entry_age(e, clock) >= expired_age;
        for block in 0..self.oldest.len() {
            let oldest = self.oldest[block];
            if oldest == NO_TICK || tick_age(oldest, clock) < expired_age {
                continue;
            }
            let end = ((block + 1) * BLOCK).min(self.registers());
            for register in block * BLOCK..end {
                let mut list = self.list(register);
                let head = list[0];
                if !expired(head) {
                    continue;
                }
                let gone = list.iter().take_while(|e| expired(**e)).count();
                list.copy_within(gone.., 0);
                list[SLOTS - gone..].fill(0);
                self.slots[register * SLOTS..(register + 1) * SLOTS].copy_from_slice(&list);
                self.histogram[usize::from(entry_rank(head))] -= 1;
                self.histogram[usize::from(entry_rank(list[0]))] += 1;
            }
            self.summarise_block(block, clock);
        }
    }

    /// Folds the registers in pairs: half the memory, √2 times the standard error. Returns false
    /// at the lowest precision. The result is what recording every live id at the lower precision
    /// would have given (up to the slots' limit).
    pub fn halve_precision(&mut self) -> bool {
        if self.precision <= MIN_PRECISION {
            return false;
        }
        let precision = self.precision - 1;
        let clock = stored_tick(self.clock_tick);
        let mut folded = Self {
            slots: vec![0; (1 << precision) * SLOTS].into_boxed_slice(),
            oldest: vec![NO_TICK; Self::blocks_at(precision)].into_boxed_slice(),
            histogram: [0; RANKS],
            precision,
            ..*self
        };
        for register in 0..folded.registers() {
            // The dropped index bit becomes the first bit of the rest: where it was 0 every rank
            // grows by one, where it was 1 every rank becomes 1.
            let zero_bit = self.list(2 * register);
            let one_bit = self.list(2 * register + 1);
            let mut list = [0_u16; SLOTS];
            for (out, e) in list.iter_mut().zip(zero_bit) {
                if entry_rank(e) != 0 {
                    *out = e + 1;
                }
            }
            if let Some(newest) = one_bit.iter().rev().find(|e| entry_rank(**e) != 0) {
                let age = entry_age(*newest, clock);
                insert_pair(&mut list, clock, age, 1, (*newest & !RANK_MASK) | 1);
            }
            folded.store(register, &list);
            folded.histogram[usize::from(entry_rank(list[0]))] += 1;
        }
        *self = folded;
        true
    }

    /// The estimated number of distinct ids in the window.
    pub fn estimate(&self) -> u64 {
        let m = self.registers() as f64;
        let max_rank = (65 - self.precision) as usize;
        let mut z = m * tau(1.0 - f64::from(self.histogram[max_rank]) / m);
        for k in (1..max_rank).rev() {
            z = 0.5 * (z + f64::from(self.histogram[k]));
        }
        z += m * sigma(f64::from(self.histogram[0]) / m);
        let alpha_infinity = 0.5 / std::f64::consts::LN_2;
        (alpha_infinity * m * m / z).round() as u64
    }

    /// The registers and clocks as plain data (a copy of at most 514 KiB).
    pub fn export(&self) -> HllExport {
        HllExport {
            precision: self.precision,
            clock_ms: self.clock_ms,
            clock_tick: self.clock_tick,
            dead_tick: self.dead_tick,
            slots: self.slots.to_vec(),
            oldest: self.oldest.to_vec(),
        }
    }

    /// Rebuilds a count over `window_secs` seconds from `export` (the histogram is recounted from
    /// the registers), or says which value is out of place.
    pub fn import(window_secs: u32, export: HllExport) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        if !(MIN_PRECISION..=MAX_PRECISION).contains(&export.precision) {
            return Err(invalid("estimate precision out of range"));
        }
        let mut hll = Self::with_precision(window_secs, export.precision);
        if export.slots.len() != hll.slots.len() || export.oldest.len() != hll.oldest.len() {
            return Err(invalid("estimate registers do not match its precision"));
        }
        let unstarted = export.clock_ms == i64::MIN && export.clock_tick == i64::MIN;
        if !(unstarted || export.clock_tick == export.clock_ms.div_euclid(hll.tick_ms))
            || export.dead_tick > export.clock_tick
        {
            return Err(invalid("estimate clocks disagree"));
        }
        hll.clock_ms = export.clock_ms;
        hll.clock_tick = export.clock_tick;
        hll.dead_tick = export.dead_tick;
        hll.slots = export.slots.into_boxed_slice();
        hll.oldest = export.oldest.into_boxed_slice();
        hll.histogram = [0; RANKS];
        for register in 0..hll.registers() {
            let rank = usize::from(entry_rank(hll.slots[register * SLOTS]));
            hll.histogram[rank] += 1;
        }
        Ok(hll)
    }

    /// Bytes held: the registers' slots, fixed by the precision.
    pub fn memory_bytes(&self) -> usize {
        Self::bytes_at(self.precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_error(estimate: u64, exact: u64) -> f64 {
        (estimate as f64 - exact as f64).abs() / exact as f64
    }

    #[test]
    fn estimates_are_within_two_percent_from_tiny_to_large_counts() {
        for n in [1_u64, 10, 100, 1_000, 10_000, 100_000, 300_000] {
            let mut hll = SlidingHll::new(1800);
            for id in 0..n {
                hll.record(id * 7919, 1_000_000 + (id as i64 % 1_000_000));
            }
            let error = relative_error(hll.estimate(), n);
            assert!(
                error <= 0.02,
                "n = {n}: estimate {} ({error:.4})",
                hll.estimate()
            );
        }
    }

    #[test]
    fn repeated_visitors_are_not_counted_twice() {
        let mut hll = SlidingHll::new(1800);
        for round in 0..5 {
            for id in 0..5_000_u64 {
                hll.record(id, 1_000_000 + round * 1000);
            }
        }
        assert!(relative_error(hll.estimate(), 5_000) <= 0.02);
    }

    #[test]
    fn expired_ticks_leave_the_count() {
        let mut hll = SlidingHll::new(60);
        for id in 0..10_000_u64 {
            hll.record(id, 1_000_000);
        }
        for id in 10_000..12_000_u64 {
            hll.record(id, 1_000_000 + 90_000);
        }
        // Only the second group is inside the 60 s window ending at +90 s.
        assert!(
            relative_error(hll.estimate(), 2_000) <= 0.02,
            "{}",
            hll.estimate()
        );
        // Ticks are 60 ms for a 60 s window: the last event's tick ends at 1_090_019, so it
        // leaves once the cutoff reaches that millisecond.
        hll.advance_to(1_090_018 + 60_000);
        assert_ne!(
            hll.estimate(),
            0,
            "the tick holding the last events is still live"
        );
        hll.advance_to(1_090_019 + 60_000);
        assert_eq!(hll.estimate(), 0);
    }

    #[test]
    fn memory_is_fixed_by_the_byte_limit_however_long_the_traffic_lasts() {
        let mut hll = SlidingHll::with_max_bytes(1800, 1_048_550 / 2);
        assert_eq!(
            hll.precision(),
            15,
            "2^16 registers × 8 bytes would not fit"
        );
        let bytes = hll.memory_bytes();
        assert!(bytes <= 1_048_550 / 2);
        // Two hours of a slow stream of distinct visitors: 360 slices' worth under a design
        // that allocates per slice of time, one fixed allocation here.
        for id in 0..720_000_u64 {
            hll.record(id, 1_000_000 + id as i64 * 10);
            assert_eq!(hll.memory_bytes(), bytes);
        }
        // The last 30 minutes hold 180,000 of them.
        let error = relative_error(hll.estimate(), 180_000);
        assert!(error <= 0.02, "estimate {} ({error:.4})", hll.estimate());
        assert_eq!(
            SlidingHll::with_max_bytes(1800, 0).precision(),
            MIN_PRECISION
        );
        assert_eq!(SlidingHll::with_max_bytes(1800, usize::MAX).precision(), 16);
    }

    #[test]
    fn a_steady_stream_counts_the_window_after_many_windows_have_expired() {
        // 400,000 visitors over two hours, some returning: the last 30 minutes hold 100,000.
        let mut hll = SlidingHll::new(1800);
        let span_ms = 2 * 3_600_000;
        let n = 400_000_u64;
        for v in 0..n {
            let ts = 1_000_000 + (v as i64 * span_ms) / n as i64;
            hll.record(v, ts);
            if v % 7 == 0 {
                // A returning visitor from a few minutes earlier (an out-of-order id).
                hll.record(v.saturating_sub(1_000), ts);
            }
        }
        let error = relative_error(hll.estimate(), n / 4);
        assert!(error <= 0.02, "estimate {} ({error:.4})", hll.estimate());
    }

    #[test]
    fn halving_the_precision_equals_counting_at_the_lower_precision() {
        let mut folded = SlidingHll::new(1800);
        let mut direct = SlidingHll::with_precision(1800, 13);
        // Few enough ids that no register's list outgrows its slots at either precision (the
        // slots' limit is the one place where the two may differ), arriving out of order.
        for id in 0..8_000_u64 {
            let ts = 1_000_000 + (id as i64 * 7_919) % 1_700_000;
            folded.record(id, ts);
            direct.record(id, ts);
        }
        folded.advance_to(3_000_000);
        direct.advance_to(3_000_000);
        for _ in 0..3 {
            assert!(folded.halve_precision());
        }
        assert_eq!(folded.precision(), 13);
        assert_eq!(folded.memory_bytes(), direct.memory_bytes());
        assert_eq!(
            folded.memory_bytes(),
            SlidingHll::new(1800).memory_bytes() / 8
        );
        assert_eq!(folded.estimate(), direct.estimate());
        let differing: Vec<(usize, [u16; SLOTS], [u16; SLOTS])> = (0..direct.registers())
            .map(|r| (r, folded.list(r), direct.list(r)))
            .filter(|(_, a, b)| a != b)
            .collect();
        assert!(
            differing.is_empty(),
            "{} registers differ, e.g. {:?}",
            differing.len(),
            &differing[..differing.len().min(5)]
        );
        while folded.halve_precision() {}
        assert_eq!(folded.precision(), MIN_PRECISION);
        assert!(folded.estimate() > 0);
    }

    /// Ids that fall in distinct registers at `precision`.
    fn ids_in_distinct_registers(precision: u32, count: usize) -> Vec<u64> {
        let mut taken = std::collections::HashSet::new();
        (0_u64..)
            .filter(|id| taken.insert(register_and_rank(*id, precision).0))
            .take(count)
            .collect()
    }

    proptest::proptest! {
        /// With ids in registers of their own, the estimate is the exact number of distinct ids
        /// with an event in a live tick: late events, repeats, idle gaps longer than the window
        /// and clock jumps included.
        #[test]
        fn few_ids_are_counted_exactly_over_the_sliding_window(
            steps in proptest::collection::vec((0..30_usize, -20_000..150_000_i64), 1..200),
        ) {
            let precision = 12;
            let ids = ids_in_distinct_registers(precision, 30);
            let window_ms = 60_000_i64;
            let tick_ms = window_ms / TICKS_PER_WINDOW;
            let mut hll = SlidingHll::with_precision(60, precision);
            let mut clock = 1_000_000_i64;
            let mut seen: Vec<(u64, i64)> = Vec::new();
            for (pick, step) in steps {
                // Mostly small steps forward or back, sometimes a gap of minutes.
                let ts = if step > 100_000 { clock + step * 3 } else { clock + step / 10 };
                hll.record(ids[pick], ts);
                clock = clock.max(ts);
                if ts > clock - window_ms {
                    seen.push((ids[pick], ts));
                }
                let dead_tick = (clock - window_ms + 1).div_euclid(tick_ms) - 1;
                let mut live: Vec<u64> = seen
                    .iter()
                    .filter(|(_, ts)| ts.div_euclid(tick_ms) > dead_tick)
                    .map(|(id, _)| *id)
                    .collect();
                live.sort_unstable();
                live.dedup();
                proptest::prop_assert_eq!(hll.estimate(), live.len() as u64);
            }
        }
    }
}
