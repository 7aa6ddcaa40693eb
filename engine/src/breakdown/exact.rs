//! `ExactBreakdown`: one class's exact breakdown counts, moved incrementally as events enter and
//! leave the window.
//!
//! - A queue of 24-byte records `(ts, visitor slot, packed value ids)`, sorted by timestamp: an
//!   in-order event appends, a late one is inserted at its place (the distance from the back),
//!   and expiry pops from the front, so each event is touched twice in all.
//! - One node per active visitor (found through a `hashbrown::HashTable` of slot indices),
//!   holding the visitor's first `(value id, events)` pairs inline — a human visitor usually has
//!   a handful — and a bitmask of the minutes it was seen in. Pairs past the inline ones (a
//!   crawler's hundreds of pages) go to one shared table keyed by `(visitor slot, value id)`,
//!   so no visitor's pairs are ever scanned. A value's `visitors` is the number of visitors
//!   holding a pair for it, kept as pairs appear and disappear.
//! - One slot per minute for the series: distinct visitors (counted when a node's minute bit
//!   is first set) and pageviews. Every minute the series shows lies wholly inside the window, so a slot
//!   only ever grows until its minute leaves the series.
//!
//! The midnight carry-over follows `VisitorWindow`: an event whose `carried_from` id is active
//! takes that visitor's node over, so yesterday's and today's ids count as one visitor. The
//! rare case where both ids already have a node (yesterday's id came back with a late event)
//! merges the two and re-points the merged records by scanning the queue once.
//!
//! This module does not decide when to be exact; `ClassBreakdown` does.

use std::collections::VecDeque;

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::values::{EventValues, PackedValues, ValueTable};
use crate::event::VisitorId;

pub(crate) const MINUTE_MS: i64 = 60_000;
/// Minute slots kept: more than the 31 minutes a 30-minute window can touch.
pub(crate) const MINUTE_SLOTS: usize = 32;

/// One event in the window.
#[derive(Debug, Clone, Copy)]
struct Record {
    ts_ms: i64,
    visitor: u32,
    values: PackedValues,
}

/// Pairs a visitor keeps in its node; the rest go to the shared spill table.
const INLINE_PAIRS: usize = 8;

/// A pair that did not fit in its visitor's node.
#[derive(Debug, Clone, Copy)]
struct SpilledPair {
    slot: u32,
    value: u32,
    events: u32,
}

fn pair_hash(slot: u32, value: u32) -> u64 {
    spread((u64::from(slot) << 32) | u64::from(value))
}

/// Adds `events` to the pair `(slot, id)`, returning whether the pair is new.
fn add_pair(
    node: &mut VisitorNode,
    slot: u32,
    spilled: &mut HashTable<SpilledPair>,
    id: u32,
    events: u32,
) -> bool {
    if let Some((_, held)) = node.pairs.iter_mut().find(|(value, _)| *value == id) {
        *held += events;
        return false;
    }
    let hash = pair_hash(slot, id);
    if node.spilled > 0 {
        if let Some(pair) = spilled.find_mut(hash, |p| p.slot == slot && p.value == id) {
            pair.events += events;
            return false;
        }
    }
    if node.pairs.len() < INLINE_PAIRS {
        node.pairs.push((id, events));
    } else {
        let pair = SpilledPair {
            slot,
            value: id,
            events,
        };
        spilled.insert_unique(hash, pair, |p| pair_hash(p.slot, p.value));
        node.spilled += 1;
    }
    true
}

/// Takes one event from the pair `(slot, id)`, returning whether the pair is gone.
fn remove_one(
    node: &mut VisitorNode,
    slot: u32,
    spilled: &mut HashTable<SpilledPair>,
    id: u32,
) -> bool {
    if let Some(at) = node.pairs.iter().position(|(value, _)| *value == id) {
        node.pairs[at].1 -= 1;
        if node.pairs[at].1 == 0 {
            node.pairs.swap_remove(at);
            return true;
        }
        return false;
    }
    if node.spilled == 0 {
        return false;
    }
    match spilled.find_entry(pair_hash(slot, id), |p| p.slot == slot && p.value == id) {
        Ok(entry) if entry.get().events <= 1 => {
            entry.remove();
            node.spilled -= 1;
            true
        }
        Ok(entry) => {
            entry.into_mut().events -= 1;
            false
        }
        Err(_) => false,
    }
}

#[derive(Debug)]
struct VisitorNode {
    id: u64,
    /// Bit `d` set: the visitor has an event in minute `newest_minute - d`.
    minutes: u64,
    newest_minute: i64,
    /// Records in the queue that count for this visitor; the node is freed at 0.
    live: u32,
    /// `(value id, events)` for the first values this visitor's events carry (never more
    /// than `INLINE_PAIRS`, so it never allocates).
    pairs: SmallVec<[(u32, u32); INLINE_PAIRS]>,
    /// Pairs of this visitor in the spill table.
    spilled: u32,
}

impl VisitorNode {
    /// Sets the bit of `minute`, returning whether it was clear.
    fn mark_minute(&mut self, minute: i64) -> bool {
        if minute > self.newest_minute {
            let shift = minute - self.newest_minute;
            self.minutes = if shift >= 64 {
                0
            } else {
                self.minutes << shift
            };
            self.minutes |= 1;
            self.newest_minute = minute;
            return true;
        }
        let back = self.newest_minute - minute;
        if back >= 64 {
            // Never within a window of at most 31 minutes.
            return false;
        }
        let bit = 1_u64 << back;
        let fresh = self.minutes & bit == 0;
        self.minutes |= bit;
        fresh
    }

    /// The mask aligned so that bit `d` means minute `newest - d`.
    fn minutes_as_of(&self, newest: i64) -> u64 {
        let shift = newest - self.newest_minute;
        if shift >= 64 {
            0
        } else {
            self.minutes << shift
        }
    }
}

/// A value's counts within one class.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ValueCounts {
    pub visitors: u32,
    pub events: u32,
}

/// One minute of the series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinuteCounts {
    pub minute: i64,
    pub visitors: u32,
    pub pageviews: u32,
}

const NO_MINUTE: MinuteCounts = MinuteCounts {
    minute: i64::MIN,
    visitors: 0,
    pageviews: 0,
};

/// Spreads a visitor id over all 64 bits (see `window.rs`): tests and callers use small ids.
fn spread(id: u64) -> u64 {
    let product = u128::from(id) * 0x9E37_79B9_7F4A_7C15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

/// A class's exact breakdown over the events it was given (the caller keeps the window's edge).
#[derive(Debug)]
pub(crate) struct ExactBreakdown {
    queue: VecDeque<Record>,
    nodes: Vec<VisitorNode>,
    free_nodes: Vec<u32>,
    table: HashTable<u32>,
    counts: Vec<ValueCounts>,
    minutes: [MinuteCounts; MINUTE_SLOTS],
    spilled: HashTable<SpilledPair>,
}

impl ExactBreakdown {
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            table: HashTable::new(),
            counts: Vec::new(),
            minutes: [NO_MINUTE; MINUTE_SLOTS],
            spilled: HashTable::new(),
        }
    }

    /// Events held.
    pub fn events(&self) -> usize {
        self.queue.len()
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.queue.capacity() * std::mem::size_of::<Record>()
            + self.nodes.capacity() * std::mem::size_of::<VisitorNode>()
            + self.free_nodes.capacity() * std::mem::size_of::<u32>()
            + self.table.allocation_size()
            + self.counts.capacity() * std::mem::size_of::<ValueCounts>()
            + self.spilled.allocation_size()
    }

    /// Bytes the next event could add by making the queue, the nodes or the table grow (0 when
    /// each has room), so a caller can refuse the growth before it happens.
    pub fn growth_bytes_on_insert(&self) -> usize {
        let mut growth = 0;
        if self.queue.len() == self.queue.capacity() {
            growth += self.queue.capacity().max(4) * std::mem::size_of::<Record>();
        }
        if self.free_nodes.is_empty() && self.nodes.len() == self.nodes.capacity() {
            growth += self.nodes.capacity().max(4) * std::mem::size_of::<VisitorNode>();
        }
        if self.table.len() == self.table.capacity() {
            growth += self.table.allocation_size().max(64);
        }
        if self.spilled.len() == self.spilled.capacity() {
            growth += self.spilled.allocation_size().max(64);
        }
        growth
    }

    /// The counts of value `id`.
    pub fn counts(&self, id: u32) -> ValueCounts {
        self.counts.get(id as usize).copied().unwrap_or_default()
    }

    /// The series slot of `minute`, zero when nothing was seen in it.
    pub fn minute(&self, minute: i64) -> (u32, u32) {
        let slot = &self.minutes[minute.rem_euclid(MINUTE_SLOTS as i64) as usize];
        if slot.minute == minute {
            (slot.visitors, slot.pageviews)
        } else {
            (0, 0)
        }
    }

    /// Calls `f(ts, visitor, values)` for every event held, oldest first.
    pub fn for_each_event(&self, mut f: impl FnMut(i64, VisitorId, EventValues)) {
        for record in &self.queue {
            let id = self.nodes[record.visitor as usize].id;
            f(record.ts_ms, VisitorId(id), record.values.unpack());
        }
    }

    /// Gives back every reference this state holds in `table` (before it is dropped).
    pub fn release_all(&mut self, table: &mut ValueTable) {
        for record in &self.queue {
            table.release(&record.values.unpack());
        }
        self.queue.clear();
    }

    fn find(&self, id: u64) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(spread(id), |&i| nodes[i as usize].id == id)
            .copied()
    }

    /// Counts an event of `visitor` at `ts_ms` (inside the window) carrying `values`, whose
    /// references the caller already took for this state.
    pub fn record(
        &mut self,
        visitor: VisitorId,
        ts_ms: i64,
        carried_from: Option<VisitorId>,
        values: EventValues,
    ) {
        if let Some(from) = carried_from.filter(|from| *from != visitor) {
            self.carry(from.0, visitor.0);
        }
        let slot = match self.find(visitor.0) {
            Some(slot) => slot,
            None => self.allocate(visitor.0),
        };
        let minute = ts_ms.div_euclid(MINUTE_MS);
        let node = &mut self.nodes[slot as usize];
        let first_record = node.live == 0;
        if first_record {
            node.newest_minute = minute;
            node.minutes = 0;
        }
        let fresh_minute = node.mark_minute(minute) || first_record;
        node.live += 1;
        let bound = values.iter().max().map_or(0, |id| id as usize + 1);
        if self.counts.len() < bound {
            self.counts.resize(bound, ValueCounts::default());
        }
        for id in values.iter() {
            let counts = &mut self.counts[id as usize];
            counts.events += 1;
            if add_pair(node, slot, &mut self.spilled, id, 1) {
                counts.visitors += 1;
            }
        }
        let minute_slot = &mut self.minutes[minute.rem_euclid(MINUTE_SLOTS as i64) as usize];
        if minute_slot.minute < minute {
            *minute_slot = MinuteCounts {
                minute,
                ..NO_MINUTE
            };
        }
        if minute_slot.minute == minute {
            minute_slot.visitors += u32::from(fresh_minute);
            minute_slot.pageviews += u32::from(values.is_pageview);
        }
        let record = Record {
            ts_ms,
            visitor: slot,
            values: values.pack(),
        };
        match self.queue.back() {
            Some(last) if last.ts_ms > ts_ms => {
                let at = self.queue.partition_point(|r| r.ts_ms <= ts_ms);
                self.queue.insert(at, record);
            }
            _ => self.queue.push_back(record),
        }
    }

    /// Removes every event at or before `cutoff_ms`, giving its references back to `table`.
    pub fn expire_through(&mut self, cutoff_ms: i64, table: &mut ValueTable) {
        while let Some(record) = self.queue.front().copied() {
            if record.ts_ms > cutoff_ms {
                break;
            }
            self.queue.pop_front();
            let values = record.values.unpack();
            table.release(&values);
            let slot = record.visitor;
            let node = &mut self.nodes[slot as usize];
            for id in values.iter() {
                let counts = &mut self.counts[id as usize];
                counts.events -= 1;
                if remove_one(node, slot, &mut self.spilled, id) {
                    counts.visitors -= 1;
                }
            }
            node.live -= 1;
            if node.live == 0 {
                self.release_node(record.visitor);
            }
        }
    }

    fn allocate(&mut self, id: u64) -> u32 {
        let node = VisitorNode {
            id,
            minutes: 0,
            newest_minute: i64::MIN,
            live: 0,
            pairs: SmallVec::new(),
            spilled: 0,
        };
        let slot = match self.free_nodes.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() as u32 - 1
            }
        };
        let nodes = &self.nodes;
        self.table
            .insert_unique(spread(id), slot, |&i| spread(nodes[i as usize].id));
        slot
    }

    fn release_node(&mut self, slot: u32) {
        let id = self.nodes[slot as usize].id;
        if let Ok(entry) = self.table.find_entry(spread(id), |&i| i == slot) {
            entry.remove();
        }
        self.free_nodes.push(slot);
    }

    /// The midnight carry-over: `from` (yesterday's id), when active, becomes `to`.
    fn carry(&mut self, from: u64, to: u64) {
        let Some(from_slot) = self.find(from) else {
            return;
        };
        let nodes = &self.nodes;
        if let Ok(entry) = self
            .table
            .find_entry(spread(from), |&i| nodes[i as usize].id == from)
        {
            entry.remove();
        }
        match self.find(to) {
            None => {
                self.nodes[from_slot as usize].id = to;
                let nodes = &self.nodes;
                self.table
                    .insert_unique(spread(to), from_slot, |&i| spread(nodes[i as usize].id));
            }
            Some(to_slot) => self.merge(from_slot, to_slot),
        }
    }

    /// Folds node `from` (already out of the table) into node `to`.
    fn merge(&mut self, from: u32, to: u32) {
        let mut moved: Vec<(u32, u32)> = std::mem::take(&mut self.nodes[from as usize].pairs)
            .into_iter()
            .collect();
        if self.nodes[from as usize].spilled > 0 {
            self.spilled.retain(|p| {
                let mine = p.slot == from;
                if mine {
                    moved.push((p.value, p.events));
                }
                !mine
            });
        }
        let (from_minutes, from_newest, from_live) = {
            let node = &self.nodes[from as usize];
            (node.minutes, node.newest_minute, node.live)
        };
        let node = &mut self.nodes[to as usize];
        for (id, events) in moved {
            if !add_pair(node, to, &mut self.spilled, id, events) {
                self.counts[id as usize].visitors -= 1;
            }
        }
        let newest = node.newest_minute.max(from_newest);
        let shift = newest - from_newest;
        let from_aligned = if shift >= 64 {
            0
        } else {
            from_minutes << shift
        };
        let to_aligned = node.minutes_as_of(newest);
        let both = from_aligned & to_aligned;
        node.minutes = from_aligned | to_aligned;
        node.newest_minute = newest;
        node.live += from_live;
        for back in 0..64_i64 {
            if both & (1 << back) != 0 {
                let minute = newest - back;
                let slot = &mut self.minutes[minute.rem_euclid(MINUTE_SLOTS as i64) as usize];
                if slot.minute == minute {
                    slot.visitors -= 1;
                }
            }
        }
        for record in self.queue.iter_mut().filter(|r| r.visitor == from) {
            record.visitor = to;
        }
        let from_node = &mut self.nodes[from as usize];
        from_node.live = 0;
        from_node.spilled = 0;
        self.free_nodes.push(from);
    }
}

// Checkpoints: the state as plain data and back. Only the events, the visitors' minute masks
// and the series are written; the nodes' pairs and the per-value counts are rebuilt by
// counting the events again (so the spill of a visitor past `INLINE_PAIRS` values may land
// on other values than before; the counts are the same).

use crate::error::EngineError;
use crate::export::{BreakdownEventExport, BreakdownVisitorExport, ExactBreakdownExport};

impl ExactBreakdown {
    /// The state as plain data: value ids are written as they are (the caller describes their
    /// layout), visitors by id.
    pub fn export(&self) -> ExactBreakdownExport {
        let events = self
            .queue
            .iter()
            .map(|record| {
                let values = record.values.unpack();
                BreakdownEventExport {
                    ts_ms: record.ts_ms,
                    visitor: self.nodes[record.visitor as usize].id,
                    values: values.ids,
                    pageview: values.is_pageview,
                }
            })
            .collect();
        let mut visitors: Vec<BreakdownVisitorExport> = self
            .table
            .iter()
            .map(|&slot| {
                let node = &self.nodes[slot as usize];
                BreakdownVisitorExport {
                    id: node.id,
                    slot,
                    newest_minute: node.newest_minute,
                    minutes: node.minutes,
                }
            })
            .collect();
        visitors.sort_unstable_by_key(|v| v.slot);
        ExactBreakdownExport {
            events,
            visitors,
            visitor_slots: self.nodes.len() as u64,
            free_slots: self.free_nodes.clone(),
            series: self
                .minutes
                .iter()
                .map(|m| (m.minute, m.visitors, m.pageviews))
                .collect(),
            capacities: [
                self.queue.capacity() as u64,
                self.nodes.capacity() as u64,
                self.free_nodes.capacity() as u64,
                self.table.capacity() as u64,
                self.counts.capacity() as u64,
                self.spilled.capacity() as u64,
            ],
        }
    }

    /// Rebuilds the state of `export`, whose events' values (already checked and translated to
    /// this build's ids, in the same order) are `values`, with a clock at `clock_ms`. The
    /// caller checked the events' timestamps (in order, inside the window).
    pub fn import(
        export: &ExactBreakdownExport,
        values: Vec<EventValues>,
        clock_ms: i64,
    ) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        let [queue, nodes, free_nodes, table, counts, spilled] = export.capacities;
        let too_many = |n: u64| n >= u64::from(u32::MAX);
        let slots = export.visitor_slots;
        if export.capacities.iter().any(|&n| too_many(n))
            || export.events.len() as u64 > queue
            || slots > nodes
            || export.visitors.len() as u64 > table
            || export.free_slots.len() as u64 > free_nodes
            || export.visitors.len() + export.free_slots.len() != slots as usize
            || values.len() != export.events.len()
            || export.series.len() != MINUTE_SLOTS
        {
            return Err(invalid("exact breakdown larger than its allocations"));
        }
        let mut state = Self {
            queue: VecDeque::with_capacity(queue as usize),
            nodes: Vec::with_capacity(nodes as usize),
            free_nodes: Vec::with_capacity(free_nodes as usize),
            table: HashTable::with_capacity(table as usize),
            counts: Vec::with_capacity(counts as usize),
            minutes: [NO_MINUTE; MINUTE_SLOTS],
            spilled: HashTable::with_capacity(spilled as usize),
        };
        // Every slot where it was, so the slots fill and grow as the original's would.
        let mut placed = vec![false; slots as usize];
        let mut take = |slot: u32| match placed.get_mut(slot as usize) {
            Some(used) if !*used => {
                *used = true;
                Ok(())
            }
            _ => Err(invalid(
                "exact breakdown visitor slot out of range or used twice",
            )),
        };
        state.nodes.resize_with(slots as usize, || VisitorNode {
            id: 0,
            minutes: 0,
            newest_minute: i64::MIN,
            live: 0,
            pairs: SmallVec::new(),
            spilled: 0,
        });
        for &slot in &export.free_slots {
            take(slot)?;
            state.free_nodes.push(slot);
        }
        for visitor in &export.visitors {
            take(visitor.slot)?;
            if state.find(visitor.id).is_some() {
                return Err(invalid("exact breakdown visitor listed twice"));
            }
            state.nodes[visitor.slot as usize].id = visitor.id;
            let nodes = &state.nodes;
            state
                .table
                .insert_unique(spread(visitor.id), visitor.slot, |&i| {
                    spread(nodes[i as usize].id)
                });
        }
        for (event, values) in export.events.iter().zip(values) {
            if state.find(event.visitor).is_none() {
                return Err(invalid("exact breakdown event of no active visitor"));
            }
            state.record(VisitorId(event.visitor), event.ts_ms, None, values);
        }
        let clock_minute = clock_ms.div_euclid(MINUTE_MS);
        for visitor in &export.visitors {
            let node = &mut state.nodes[visitor.slot as usize];
            // Every minute the visitor's events are in must be marked, and nothing after the
            // clock (so minute arithmetic stays in range).
            let newest = visitor.newest_minute;
            let shift = newest.checked_sub(node.newest_minute).unwrap_or(-1);
            let covered = node.live > 0
                && (0..64).contains(&shift)
                && (node.minutes << shift) & !visitor.minutes == 0;
            if !covered || newest > clock_minute {
                return Err(invalid("exact breakdown visitor without events or minutes"));
            }
            node.newest_minute = newest;
            node.minutes = visitor.minutes;
        }
        let mut marked = [0_u32; MINUTE_SLOTS];
        for (at, &(minute, visitors, pageviews)) in export.series.iter().enumerate() {
            let empty = minute == i64::MIN && visitors == 0 && pageviews == 0;
            let placed = minute != i64::MIN
                && minute <= clock_minute
                && minute.rem_euclid(MINUTE_SLOTS as i64) as usize == at;
            if !empty && !placed {
                return Err(invalid("exact breakdown series slot out of place"));
            }
            state.minutes[at] = MinuteCounts {
                minute,
                visitors,
                pageviews,
            };
        }
        // A merge of two visitors takes one visitor off each minute both were seen in: each
        // slot must count at least the visitors marking it.
        for &slot in state.table.iter() {
            let node = &state.nodes[slot as usize];
            let mut mask = node.minutes;
            while mask != 0 {
                let back = i64::from(mask.trailing_zeros());
                mask &= mask - 1;
                let minute = node.newest_minute - back;
                let at = minute.rem_euclid(MINUTE_SLOTS as i64) as usize;
                if state.minutes[at].minute == minute {
                    marked[at] += 1;
                }
            }
        }
        if state
            .minutes
            .iter()
            .zip(marked)
            .any(|(slot, marked)| slot.visitors < marked)
        {
            return Err(invalid(
                "exact breakdown series counts fewer visitors than marked",
            ));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_nodes_keep_their_documented_sizes() {
        assert_eq!(std::mem::size_of::<Record>(), 24);
        assert_eq!(std::mem::size_of::<VisitorNode>(), 112);
    }
}
