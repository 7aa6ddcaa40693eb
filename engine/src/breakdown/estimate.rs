//! `EstimatedBreakdown`: one class's breakdown when the exact one does not fit the memory
//! budget. Its memory depends on the distinct values and minutes, never on the traffic.
//!
//! - Events per value: one small table of `(value id, events)` per minute of the window, summed
//!   into a running total. A minute leaves as a whole once its last millisecond is at or before
//!   the window's cutoff, so an event may stay counted up to a minute after it left the window,
//!   never before. The counts are otherwise exact.
//! - Visitors per value: no per-visitor state is kept, so they are estimated by scaling the
//!   value's events by the class's visitors-per-event ratio (`visitors in window / events in
//!   window`), at least 1 and at most the value's events.
//! - Series: pageviews per minute are exact; distinct visitors per minute come from a
//!   256-register HyperLogLog per minute (about 6.5% standard error).
//!
//! The midnight carry-over cannot be applied here (nothing remembers ids), so a visitor active
//! across midnight may count twice in the lists for up to one window.

use hashbrown::HashTable;

use super::exact::{MINUTE_MS, MINUTE_SLOTS};
use super::values::{EventValues, ValueTable};
use crate::event::VisitorId;

const REGISTERS: usize = 256;

#[derive(Debug)]
struct EstimateMinute {
    minute: i64,
    events: u32,
    pageviews: u32,
    registers: [u8; REGISTERS],
    /// `(value id, events)` of this minute.
    values: HashTable<(u32, u32)>,
}

impl EstimateMinute {
    fn empty() -> Self {
        Self {
            minute: i64::MIN,
            events: 0,
            pageviews: 0,
            registers: [0; REGISTERS],
            values: HashTable::new(),
        }
    }

    fn add_visitor(&mut self, id: VisitorId) {
        let hash = mix(id.0);
        let register = (hash >> 56) as usize;
        let rank = ((hash << 8) | 0x80).leading_zeros() as u8 + 1;
        let slot = &mut self.registers[register];
        *slot = (*slot).max(rank);
    }

    /// The HyperLogLog estimate, with linear counting for small cardinalities.
    fn visitors(&self) -> u32 {
        let m = REGISTERS as f64;
        let mut sum = 0.0;
        let mut zeros = 0;
        for &rank in &self.registers {
            sum += 1.0 / f64::from(1_u32 << rank.min(31));
            zeros += usize::from(rank == 0);
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u32
    }
}

/// A 64-bit finaliser (splitmix64's), so small test ids spread over the registers too.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_id(id: u32) -> u64 {
    mix(u64::from(id))
}

/// A class's breakdown as per-minute value counts and per-minute visitor sketches.
#[derive(Debug)]
pub(crate) struct EstimatedBreakdown {
    minutes: Vec<EstimateMinute>,
    /// Events per value id over the minutes held.
    events: Vec<u32>,
    total_events: u64,
}

impl EstimatedBreakdown {
    pub fn new() -> Self {
        Self {
            minutes: (0..MINUTE_SLOTS).map(|_| EstimateMinute::empty()).collect(),
            events: Vec::new(),
            total_events: 0,
        }
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.minutes.capacity() * std::mem::size_of::<EstimateMinute>()
            + self
                .minutes
                .iter()
                .map(|m| m.values.allocation_size())
                .sum::<usize>()
            + self.events.capacity() * std::mem::size_of::<u32>()
    }

    /// Events held.
    pub fn total_events(&self) -> u64 {
        self.total_events
    }

    /// Counts an event at `ts_ms` (inside the window), whose references the caller took.
    pub fn record(
        &mut self,
        visitor: VisitorId,
        ts_ms: i64,
        values: &EventValues,
        table: &mut ValueTable,
    ) {
        let minute = ts_ms.div_euclid(MINUTE_MS);
        let at = minute.rem_euclid(MINUTE_SLOTS as i64) as usize;
        if self.minutes[at].minute < minute {
            self.drop_minute(at, table);
            self.minutes[at].minute = minute;
        }
        let bound = values.iter().max().map_or(0, |id| id as usize + 1);
        if self.events.len() < bound {
            self.events.resize(bound, 0);
        }
        let slot = &mut self.minutes[at];
        if slot.minute != minute {
            // Older than a minute this slot moved past: never for an event inside the window.
            table.release(values);
            return;
        }
        slot.add_visitor(visitor);
        slot.events += 1;
        slot.pageviews += u32::from(values.is_pageview);
        for id in values.iter() {
            self.events[id as usize] += 1;
            match slot.values.find_mut(hash_id(id), |&(value, _)| value == id) {
                Some((_, events)) => *events += 1,
                None => {
                    slot.values
                        .insert_unique(hash_id(id), (id, 1), |&(value, _)| hash_id(value));
                }
            }
        }
        self.total_events += 1;
    }

    /// Drops every minute whose last millisecond is at or before `cutoff_ms`.
    pub fn expire_through(&mut self, cutoff_ms: i64, table: &mut ValueTable) {
        for at in 0..self.minutes.len() {
            let minute = self.minutes[at].minute;
            if minute != i64::MIN && (minute + 1) * MINUTE_MS - 1 <= cutoff_ms {
                self.drop_minute(at, table);
            }
        }
    }

    /// Gives back every reference held (before this state is dropped).
    pub fn release_all(&mut self, table: &mut ValueTable) {
        for at in 0..self.minutes.len() {
            self.drop_minute(at, table);
        }
    }

    fn drop_minute(&mut self, at: usize, table: &mut ValueTable) {
        let slot = &mut self.minutes[at];
        for (id, events) in slot.values.drain() {
            if let Some(total) = self.events.get_mut(id as usize) {
                *total -= events;
            }
            table.release_id(id, events);
        }
        self.total_events -= u64::from(slot.events);
        *slot = EstimateMinute::empty();
    }

    /// Events of value `id`.
    pub fn events_of(&self, id: u32) -> u32 {
        self.events.get(id as usize).copied().unwrap_or(0)
    }

    /// `(visitors estimate, pageviews)` of `minute`.
    pub fn minute(&self, minute: i64) -> (u32, u32) {
        let slot = &self.minutes[minute.rem_euclid(MINUTE_SLOTS as i64) as usize];
        if slot.minute == minute {
            (slot.visitors(), slot.pageviews)
        } else {
            (0, 0)
        }
    }
}

// Checkpoints: the estimate as plain data and back. The per-value totals are rebuilt from the
// minutes.

use super::values::claim_id_capacity;
use crate::error::EngineError;
use crate::export::EstimateMinuteExport;

impl EstimatedBreakdown {
    /// The minutes as plain data, value ids as they are (the caller describes their layout),
    /// and the capacity of the per-value totals.
    pub fn export(&self) -> (Vec<EstimateMinuteExport>, u64) {
        let minutes = self
            .minutes
            .iter()
            .map(|slot| {
                let mut values: Vec<(u32, u32)> = slot.values.iter().copied().collect();
                values.sort_unstable();
                EstimateMinuteExport {
                    minute: slot.minute,
                    events: slot.events,
                    pageviews: slot.pageviews,
                    registers: slot.registers.to_vec(),
                    values,
                    values_capacity: slot.values.capacity() as u64,
                }
            })
            .collect();
        (minutes, self.events.capacity() as u64)
    }

    /// Rebuilds an estimate from `minutes`, whose value ids the caller already translated to
    /// this build's and counted as references, with a clock at `clock_ms`.
    pub fn import(
        minutes: Vec<EstimateMinuteExport>,
        events_capacity: u64,
        clock_ms: i64,
    ) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        let too_many = |n: u64| n >= u64::from(u32::MAX);
        if minutes.len() != MINUTE_SLOTS || too_many(events_capacity) {
            return Err(invalid("estimated breakdown of the wrong shape"));
        }
        let clock_minute = clock_ms.div_euclid(MINUTE_MS);
        let mut estimate = Self {
            minutes: Vec::with_capacity(MINUTE_SLOTS),
            events: Vec::with_capacity(claim_id_capacity(events_capacity)?),
            total_events: 0,
        };
        for (at, minute) in minutes.into_iter().enumerate() {
            let empty = minute.minute == i64::MIN;
            // A minute of a timestamp: from 0 (no earlier timestamp) to the clock's.
            let placed = (0..=clock_minute).contains(&minute.minute)
                && minute.minute.rem_euclid(MINUTE_SLOTS as i64) as usize == at;
            let registers: [u8; REGISTERS] = minute
                .registers
                .as_slice()
                .try_into()
                .map_err(|_| invalid("estimated breakdown sketch of the wrong size"))?;
            let blank = minute.events == 0
                && minute.pageviews == 0
                && minute.values.is_empty()
                && registers.iter().all(|&r| r == 0);
            if !(placed || (empty && blank))
                || minute.pageviews > minute.events
                || too_many(minute.values_capacity)
                || minute.values.len() as u64 > minute.values_capacity
                || registers.iter().any(|&r| r > 64)
            {
                return Err(invalid("estimated breakdown minute out of place"));
            }
            let mut values = HashTable::with_capacity(claim_id_capacity(minute.values_capacity)?);
            for (id, events) in minute.values {
                let hash = hash_id(id);
                let listed = values.find(hash, |&(value, _)| value == id).is_some();
                if events == 0 || events > minute.events || listed {
                    return Err(invalid("estimated breakdown value empty or listed twice"));
                }
                values.insert_unique(hash, (id, events), |&(value, _)| hash_id(value));
                if estimate.events.len() <= id as usize {
                    estimate.events.resize(id as usize + 1, 0);
                }
                let total = &mut estimate.events[id as usize];
                *total = total
                    .checked_add(events)
                    .ok_or(invalid("estimated breakdown value counts overflow"))?;
            }
            estimate.total_events += u64::from(minute.events);
            estimate.minutes.push(EstimateMinute {
                minute: minute.minute,
                events: minute.events,
                pageviews: minute.pageviews,
                registers,
                values,
            });
        }
        Ok(estimate)
    }
}
