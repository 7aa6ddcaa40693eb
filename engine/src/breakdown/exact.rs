//! `ExactBreakdown`: one class's exact breakdown counts, moved incrementally as events enter and
//! leave the window.
//!
//! - A queue of 16-byte records `(ts, visitor slot, packed value ids)`, sorted by timestamp: an
//!   in-order event appends, a late one is inserted at its place (the distance from the back),
//!   and expiry pops from the front. A value's `events` moves with the queue alone: expiring an
//!   event never visits its visitor.
//! - One 64-byte node per active visitor (found through a `hashbrown::HashTable` of slot
//!   indices), holding, for each value the visitor's events carry, the timestamp of its latest
//!   such event: the browser, device and country together (they come from the visitor's
//!   address and User-Agent, so they rarely change), and the first five texts (page, referrer,
//!   event name) inline. Texts past those (a crawler's hundreds of pages) go to one shared table
//!   keyed by `(visitor slot, value id)`, so no visitor's values are ever scanned. A value's
//!   `visitors` is the number of visitors holding it, kept as pairs appear and leave.
//! - A pair leaves when the window's edge passes its latest timestamp. Rather than visit a node
//!   at every expiring event, each node has one pending *check* at or before its earliest
//!   pair's timestamp (and each spilled pair its own), kept in a wheel of 64 buckets over the
//!   window; the bucket the edge is in is a heap, so checks run at the exact millisecond. A check
//!   that finds its pairs refreshed moves to the new earliest one: a visitor who keeps browsing
//!   is checked about once per window, one who leaves once per distinct latest timestamp.
//! - One slot per minute for the series: distinct visitors (counted when a node's minute bit
//!   is first set) and pageviews. Every minute the series shows lies wholly inside the window,
//!   so a slot only ever grows until its minute leaves the series.
//!
//! The midnight carry-over follows `VisitorWindow`: an event whose `carried_from` id is active
//! takes that visitor's node over, so yesterday's and today's ids count as one visitor. The
//! rare case where both ids already have a node (yesterday's id came back with a late event)
//! merges the two and re-points the merged records by scanning the queue once.
//!
//! This module does not decide when to be exact; `ClassBreakdown` does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hashbrown::HashTable;

use super::values::{EventValues, PackedValues, Trio, ValueTable};
use crate::event::VisitorId;

pub(crate) const MINUTE_MS: i64 = 60_000;
/// Minute slots kept: more than the 31 minutes a 30-minute window can touch.
pub(crate) const MINUTE_SLOTS: usize = 32;

/// One event in the window, in 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// The low 32 bits of its timestamp: every record is after the edge and at most a window
    /// (at most 24 days) past it, so `ExactBreakdown::time_of` recovers the rest.
    ts: u32,
    visitor: u32,
    values: PackedValues,
}

/// Text pairs a visitor keeps in its node; the rest go to the shared spill table.
const TEXT_PAIRS: usize = 5;
/// "No time" in a node's offsets (no pending check).
const NO_TIME: u32 = u32::MAX;
/// The node holds a trio (browser, device, country) with its latest timestamp.
const HAS_TRIO: u8 = 1;
/// The visitor's events carried two different trios: its browser, device and country are held
/// as separate pairs from then on (`HAS_TRIO` is clear).
const SPLIT_TRIO: u8 = 2;
/// `Check::value` of a node's own check (a spilled pair's check names its value).
const NODE_CHECK: u32 = u32::MAX;
/// Buckets of the check wheel; the window spans at most `CHECK_BUCKETS - 2` of them.
const CHECK_BUCKETS: usize = 64;

/// A pair that did not fit in its visitor's node.
#[derive(Debug, Clone, Copy)]
struct SpilledPair {
    slot: u32,
    value: u32,
    latest_ms: i64,
    /// Its pending check.
    due_ms: i64,
}

fn pair_hash(slot: u32, value: u32) -> u64 {
    spread((u64::from(slot) << 32) | u64::from(value))
}

/// A pending look at a node (or at one spilled pair) once the window's edge reaches `due_ms`.
/// Stale when the node or pair has since moved its check or gone: the check is then skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Check {
    due_ms: i64,
    slot: u32,
    value: u32,
}

/// Milliseconds in a unit of `VisitorNode::base` (so that 32 bits reach `Timestamp::MAX_MS`).
const BASE_UNIT_MS: i64 = 1 << 12;

/// One active visitor: 64 bytes, one cache line. Times are offsets in milliseconds after the
/// node's base, which moves forward only when an offset would not fit (a visitor active for 49
/// days without a break).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct VisitorNode {
    id: u64,
    /// In `BASE_UNIT_MS`: the base is `base * BASE_UNIT_MS` milliseconds.
    base: u32,
    /// The pending check, at or before the earliest pair's latest time; `NO_TIME` for none.
    due: u32,
    /// Bit `d` set: the visitor has an event in minute `newest - d`, `newest` being the minute
    /// of `latest_event`.
    minutes: u32,
    /// The visitor's latest event; also its trio's while `HAS_TRIO` (every event carries a
    /// trio, and one that differs splits it).
    latest_event: u32,
    trio: Trio,
    /// Pairs of this visitor in the spill table.
    spilled: u16,
    /// Text pairs held inline.
    len: u8,
    flags: u8,
    values: [u16; TEXT_PAIRS],
    latest: [u32; TEXT_PAIRS],
}

/// The largest base at or before `ms` (0 for instants before the epoch: no event is).
fn base_at_or_before(ms: i64) -> u32 {
    u32::try_from(ms.max(0) / BASE_UNIT_MS).unwrap_or(u32::MAX)
}

impl VisitorNode {
    /// An empty node of visitor `id`, whose times will all be after `floor_ms`.
    fn new(id: u64, floor_ms: i64) -> Self {
        Self {
            id,
            base: base_at_or_before(floor_ms),
            due: NO_TIME,
            minutes: 0,
            latest_event: 0,
            trio: Trio::NONE,
            len: 0,
            flags: 0,
            spilled: 0,
            values: [0; TEXT_PAIRS],
            latest: [0; TEXT_PAIRS],
        }
    }

    fn is_empty(&self) -> bool {
        self.flags & HAS_TRIO == 0 && self.len == 0 && self.spilled == 0
    }

    fn base_ms(&self) -> i64 {
        i64::from(self.base) * BASE_UNIT_MS
    }

    fn at(&self, offset: u32) -> i64 {
        self.base_ms() + i64::from(offset)
    }

    /// The minute of the visitor's latest event.
    fn newest_minute(&self) -> i64 {
        self.at(self.latest_event).div_euclid(MINUTE_MS)
    }

    /// The offset of `ts_ms`, moving the base to `floor_ms` first when it would not fit. Every
    /// time the node holds, and `ts_ms`, is after `floor_ms`, and at most a window past it.
    fn offset_of(&mut self, ts_ms: i64, floor_ms: i64) -> u32 {
        if let Some(offset) = ts_ms
            .checked_sub(self.base_ms())
            .and_then(|d| u32::try_from(d).ok())
            .filter(|&d| d != NO_TIME)
        {
            return offset;
        }
        let base = base_at_or_before(floor_ms.max(ts_ms.saturating_sub(i64::from(i32::MAX))));
        let floor_ms = i64::from(base) * BASE_UNIT_MS;
        let shift = |offset: u32, base_ms: i64| {
            u32::try_from(base_ms + i64::from(offset) - floor_ms).unwrap_or(0)
        };
        let base_ms = self.base_ms();
        if self.due != NO_TIME {
            self.due = shift(self.due, base_ms);
        }
        self.latest_event = shift(self.latest_event, base_ms);
        for latest in &mut self.latest[..usize::from(self.len)] {
            *latest = shift(*latest, base_ms);
        }
        self.base = base;
        u32::try_from(ts_ms - floor_ms).unwrap_or(NO_TIME - 1)
    }

    /// Records an event at `ts_ms` (offset `offset`): sets the bit of its minute, returning
    /// whether it was clear, and moves `latest_event`.
    fn mark(&mut self, ts_ms: i64, offset: u32) -> bool {
        let minute = ts_ms.div_euclid(MINUTE_MS);
        let newest = self.newest_minute();
        let fresh = if minute > newest {
            let shift = u32::try_from(minute - newest).unwrap_or(u32::MAX);
            self.minutes = self.minutes.checked_shl(shift).unwrap_or(0) | 1;
            true
        } else {
            match u32::try_from(newest - minute)
                .ok()
                .and_then(|back| 1_u32.checked_shl(back))
            {
                Some(bit) => {
                    let fresh = self.minutes & bit == 0;
                    self.minutes |= bit;
                    fresh
                }
                // More than 31 minutes back: never a minute the series shows.
                None => false,
            }
        };
        self.latest_event = self.latest_event.max(offset);
        fresh
    }

    /// The earliest latest time of the trio and the inline pairs, as an offset.
    fn earliest(&self) -> Option<u32> {
        let inline = self.latest[..usize::from(self.len)].iter().copied().min();
        let trio = (self.flags & HAS_TRIO != 0).then_some(self.latest_event);
        match (inline, trio) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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

/// The pending checks: a wheel of unsorted buckets, each `width_ms` wide, and the bucket the
/// window's edge is in as a min-heap, so the edge takes exactly the checks it passed.
#[derive(Debug)]
struct CheckWheel {
    width_ms: i64,
    /// Allocated on the first check, so an idle class costs nothing.
    buckets: Vec<Vec<Check>>,
    /// The bucket number the edge is in; every earlier bucket is empty.
    edge: i64,
    heap: BinaryHeap<Reverse<Check>>,
    len: usize,
}

impl CheckWheel {
    fn new(window_ms: i64, cutoff_ms: i64) -> Self {
        let width_ms = (window_ms.max(1) + CHECK_BUCKETS as i64 - 3) / (CHECK_BUCKETS as i64 - 2);
        Self {
            width_ms,
            buckets: Vec::new(),
            edge: cutoff_ms.div_euclid(width_ms),
            heap: BinaryHeap::new(),
            len: 0,
        }
    }

    fn bucket_of(&self, due_ms: i64) -> i64 {
        due_ms.div_euclid(self.width_ms)
    }

    /// Adds a check, due after the edge (every pair's time is).
    fn push(&mut self, check: Check) {
        self.len += 1;
        let bucket = self.bucket_of(check.due_ms);
        if bucket <= self.edge {
            self.heap.push(Reverse(check));
            return;
        }
        if self.buckets.is_empty() {
            self.buckets = vec![Vec::new(); CHECK_BUCKETS];
        }
        self.buckets[bucket.rem_euclid(CHECK_BUCKETS as i64) as usize].push(check);
    }

    /// Moves the edge to the bucket of `cutoff_ms`, turning that bucket into the heap (the
    /// checks of the buckets passed whole go into the heap too: all of them are due).
    fn move_edge(&mut self, cutoff_ms: i64) {
        let target = self.bucket_of(cutoff_ms);
        if target <= self.edge {
            return;
        }
        if self.len == self.heap.len() || self.buckets.is_empty() {
            // Nothing waits outside the heap.
            self.edge = target;
            return;
        }
        let passed = (target - self.edge).min(CHECK_BUCKETS as i64);
        for bucket in self.edge + 1..=self.edge + passed {
            let at = bucket.rem_euclid(CHECK_BUCKETS as i64) as usize;
            // Drained, not dropped: the bucket keeps its allocation for its next turn.
            self.heap.extend(self.buckets[at].drain(..).map(Reverse));
        }
        self.edge = target;
    }

    /// Takes the next check due at or before `cutoff_ms`.
    fn pop_due(&mut self, cutoff_ms: i64) -> Option<Check> {
        match self.heap.peek() {
            Some(Reverse(check)) if check.due_ms <= cutoff_ms => {
                self.len -= 1;
                self.heap.pop().map(|Reverse(check)| check)
            }
            _ => None,
        }
    }
}

/// A class's exact breakdown over the events it was given (the caller keeps the window's edge).
#[derive(Debug)]
pub(crate) struct ExactBreakdown {
    /// The last edge expired through: every pair and pending check is after it.
    cutoff_ms: i64,
    queue: VecDeque<Record>,
    nodes: Vec<VisitorNode>,
    free_nodes: Vec<u32>,
    table: HashTable<u32>,
    counts: Vec<ValueCounts>,
    minutes: [MinuteCounts; MINUTE_SLOTS],
    spilled: HashTable<SpilledPair>,
    checks: CheckWheel,
}

impl ExactBreakdown {
    /// An empty state for a window of `window_ms` whose edge is at `cutoff_ms`.
    pub fn new(window_ms: i64, cutoff_ms: i64) -> Self {
        Self {
            cutoff_ms,
            queue: VecDeque::new(),
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            table: HashTable::new(),
            counts: Vec::new(),
            minutes: [NO_MINUTE; MINUTE_SLOTS],
            spilled: HashTable::new(),
            checks: CheckWheel::new(window_ms, cutoff_ms),
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
            + self.checks_charge_bytes()
    }

    /// What the pending checks are charged: two per node and per spill-table slot (each holds
    /// at most one live check; the second covers the buckets' growth headroom and checks gone
    /// stale, which only late events and merges leave, each also holding a record), plus the
    /// wheel's buckets. Charged from the capacities a checkpoint restores rather than from the
    /// wheel itself, so a restored state accounts exactly what the original did.
    fn checks_charge_bytes(&self) -> usize {
        if self.nodes.capacity() == 0 {
            return 0;
        }
        (self.nodes.capacity() + self.spilled.capacity()) * 2 * std::mem::size_of::<Check>()
            + CHECK_BUCKETS * std::mem::size_of::<Vec<Check>>()
    }

    /// Bytes the next event could add by making the queue, the nodes, the tables or the checks
    /// grow (0 when each has room), so a caller can refuse the growth before it happens.
    pub fn growth_bytes_on_insert(&self) -> usize {
        let mut growth = 0;
        if self.queue.len() == self.queue.capacity() {
            growth += self.queue.capacity().max(4) * std::mem::size_of::<Record>();
        }
        // Each node and spill slot also carries its checks' charge (`checks_charge_bytes`).
        let check_pair = 2 * std::mem::size_of::<Check>();
        if self.free_nodes.is_empty() && self.nodes.len() == self.nodes.capacity() {
            let added = self.nodes.capacity().max(4);
            growth += added * (std::mem::size_of::<VisitorNode>() + check_pair);
            if self.nodes.capacity() == 0 {
                growth += CHECK_BUCKETS * std::mem::size_of::<Vec<Check>>();
            }
        }
        if self.table.len() == self.table.capacity() {
            growth += self.table.allocation_size().max(64);
        }
        if self.spilled.len() == self.spilled.capacity() {
            growth += self.spilled.allocation_size().max(64)
                + self.spilled.capacity().max(4) * check_pair;
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
            f(self.time_of(record), VisitorId(id), record.values.unpack());
        }
    }

    /// Gives back every reference this state holds in `table` (before it is dropped).
    pub fn release_all(&mut self, table: &mut ValueTable) {
        for record in &self.queue {
            table.release(&record.values.unpack());
        }
        self.queue.clear();
    }

    /// A record's timestamp: the one after the edge whose low 32 bits it keeps.
    fn time_of(&self, record: &Record) -> i64 {
        self.cutoff_ms + i64::from(record.ts.wrapping_sub(self.cutoff_ms as u32))
    }

    fn find(&self, id: u64) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(spread(id), |&i| nodes[i as usize].id == id)
            .copied()
    }

    /// Gives node `slot` to visitor `id` and enters it in the table.
    fn insert_entry(&mut self, id: u64, slot: u32) {
        self.nodes[slot as usize].id = id;
        let nodes = &self.nodes;
        self.table
            .insert_unique(spread(id), slot, |&i| spread(nodes[i as usize].id));
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
        let trio = values.trio();
        let node = &self.nodes[slot as usize];
        if node.flags & HAS_TRIO != 0 && node.trio != trio {
            // Before the event moves the visitor's latest time: the old trio's is the one
            // before it.
            self.split_trio(slot);
        }
        let floor_ms = self.cutoff_ms;
        let node = &mut self.nodes[slot as usize];
        let offset = node.offset_of(ts_ms, floor_ms);
        let fresh_minute = node.mark(ts_ms, offset);
        let bound = values.iter().max().map_or(0, |id| id as usize + 1);
        if self.counts.len() < bound {
            self.counts.resize(bound, ValueCounts::default());
        }
        for id in values.iter() {
            self.counts[id as usize].events += 1;
        }
        let node = &mut self.nodes[slot as usize];
        if node.flags & HAS_TRIO != 0 {
            // The same trio: `mark` moved its time.
        } else if node.flags & SPLIT_TRIO == 0 {
            node.trio = trio;
            node.flags |= HAS_TRIO;
            for id in trio.ids() {
                self.counts[id as usize].visitors += 1;
            }
        } else {
            for id in trio.ids() {
                self.add_pair(slot, id, ts_ms);
            }
        }
        for id in values.texts() {
            self.add_pair(slot, id, ts_ms);
        }
        self.schedule(slot, ts_ms);
        let minute = ts_ms.div_euclid(MINUTE_MS);
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
            ts: ts_ms as u32,
            visitor: slot,
            values: values.pack(),
        };
        match self.queue.back() {
            Some(last) if self.time_of(last) > ts_ms => {
                let at = self.queue.partition_point(|r| self.time_of(r) <= ts_ms);
                self.queue.insert(at, record);
            }
            _ => self.queue.push_back(record),
        }
    }

    /// Moves the node's check to `ts_ms` when it has none or a later one (a late event).
    fn schedule(&mut self, slot: u32, ts_ms: i64) {
        let floor_ms = self.cutoff_ms;
        let node = &mut self.nodes[slot as usize];
        if node.due != NO_TIME && node.at(node.due) <= ts_ms {
            return;
        }
        if node.flags & HAS_TRIO == 0 && node.len == 0 {
            // Only spilled pairs, which have checks of their own.
            return;
        }
        node.due = node.offset_of(ts_ms, floor_ms);
        self.checks.push(Check {
            due_ms: ts_ms,
            slot,
            value: NODE_CHECK,
        });
    }

    /// Counts value `id` for the visitor in `slot` as seen at `ts_ms`: refreshes its pair, or
    /// adds one (and a visitor to the value).
    fn add_pair(&mut self, slot: u32, id: u32, ts_ms: i64) {
        if !self.refresh_pair(slot, id, ts_ms) {
            self.counts[id as usize].visitors += 1;
        }
    }

    /// Moves the pair `(slot, id)` to `ts_ms` if later, creating it when absent; returns
    /// whether it existed.
    fn refresh_pair(&mut self, slot: u32, id: u32, ts_ms: i64) -> bool {
        let floor_ms = self.cutoff_ms;
        let node = &mut self.nodes[slot as usize];
        let offset = node.offset_of(ts_ms, floor_ms);
        let len = usize::from(node.len);
        if let Ok(short) = u16::try_from(id) {
            if let Some(at) = node.values[..len].iter().position(|&v| v == short) {
                node.latest[at] = node.latest[at].max(offset);
                return true;
            }
        }
        let hash = pair_hash(slot, id);
        if node.spilled > 0 {
            if let Some(pair) = self
                .spilled
                .find_mut(hash, |p| p.slot == slot && p.value == id)
            {
                pair.latest_ms = pair.latest_ms.max(ts_ms);
                return true;
            }
        }
        match u16::try_from(id) {
            Ok(short) if len < TEXT_PAIRS => {
                node.values[len] = short;
                node.latest[len] = offset;
                node.len += 1;
            }
            _ => {
                node.spilled += 1;
                let pair = SpilledPair {
                    slot,
                    value: id,
                    latest_ms: ts_ms,
                    due_ms: ts_ms,
                };
                self.spilled
                    .insert_unique(hash, pair, |p| pair_hash(p.slot, p.value));
                self.checks.push(Check {
                    due_ms: ts_ms,
                    slot,
                    value: id,
                });
            }
        }
        false
    }

    /// Turns the node's trio into three separate pairs (its visitor's events carry another
    /// browser, device or country), keeping its time and its visitors' counts.
    fn split_trio(&mut self, slot: u32) {
        let node = &mut self.nodes[slot as usize];
        node.flags |= SPLIT_TRIO;
        if node.flags & HAS_TRIO == 0 {
            return;
        }
        node.flags &= !HAS_TRIO;
        let (trio, latest_ms) = (node.trio, node.at(node.latest_event));
        for id in trio.ids() {
            // Each value already counts this visitor.
            self.refresh_pair(slot, id, latest_ms);
        }
        self.schedule(slot, latest_ms);
    }

    /// Removes every event at or before `cutoff_ms`, giving its references back to `table`,
    /// and every pair whose latest time is at or before it.
    pub fn expire_through(&mut self, cutoff_ms: i64, table: &mut ValueTable) {
        let cutoff_ms = self.cutoff_ms.max(cutoff_ms);
        // Records are read against the old edge, which they are all after.
        while let Some(record) = self.queue.front() {
            if self.time_of(record) > cutoff_ms {
                break;
            }
            let values = record.values.unpack();
            self.queue.pop_front();
            table.release(&values);
            for id in values.iter() {
                self.counts[id as usize].events -= 1;
            }
        }
        self.cutoff_ms = cutoff_ms;
        self.checks.move_edge(cutoff_ms);
        while let Some(check) = self.checks.pop_due(cutoff_ms) {
            if check.value == NODE_CHECK {
                self.check_node(check);
            } else {
                self.check_spilled(check);
            }
        }
    }

    /// Takes the pairs of a node that left the window, and moves its check to the earliest of
    /// the rest; frees the node when nothing is left.
    fn check_node(&mut self, check: Check) {
        let cutoff_ms = self.cutoff_ms;
        let node = &mut self.nodes[check.slot as usize];
        if node.due == NO_TIME || node.at(node.due) != check.due_ms {
            return;
        }
        node.due = NO_TIME;
        if node.flags & HAS_TRIO != 0 && node.at(node.latest_event) <= cutoff_ms {
            node.flags &= !HAS_TRIO;
            for id in node.trio.ids() {
                self.counts[id as usize].visitors -= 1;
            }
        }
        let mut at = 0;
        while at < usize::from(node.len) {
            if node.at(node.latest[at]) <= cutoff_ms {
                self.counts[usize::from(node.values[at])].visitors -= 1;
                let last = usize::from(node.len) - 1;
                node.values[at] = node.values[last];
                node.latest[at] = node.latest[last];
                node.len -= 1;
            } else {
                at += 1;
            }
        }
        match node.earliest() {
            Some(offset) => {
                node.due = offset;
                let due_ms = node.at(offset);
                self.checks.push(Check {
                    due_ms,
                    slot: check.slot,
                    value: NODE_CHECK,
                });
            }
            None if node.spilled == 0 => self.release_node(check.slot),
            None => {}
        }
    }

    /// Takes a spilled pair that left the window, or moves its check to its latest time.
    fn check_spilled(&mut self, check: Check) {
        let hash = pair_hash(check.slot, check.value);
        let Ok(entry) = self.spilled.find_entry(hash, |p| {
            p.slot == check.slot && p.value == check.value && p.due_ms == check.due_ms
        }) else {
            return;
        };
        if entry.get().latest_ms > self.cutoff_ms {
            let pair = entry.into_mut();
            pair.due_ms = pair.latest_ms;
            let due_ms = pair.latest_ms;
            self.checks.push(Check { due_ms, ..check });
            return;
        }
        entry.remove();
        self.counts[check.value as usize].visitors -= 1;
        let node = &mut self.nodes[check.slot as usize];
        node.spilled -= 1;
        if node.is_empty() {
            self.release_node(check.slot);
        }
    }

    fn allocate(&mut self, id: u64) -> u32 {
        let node = VisitorNode::new(id, self.cutoff_ms);
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
        self.insert_entry(id, slot);
        slot
    }

    fn release_node(&mut self, slot: u32) {
        let node = &mut self.nodes[slot as usize];
        node.due = NO_TIME;
        let hash = spread(node.id);
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == slot) {
            entry.remove();
        }
        self.free_nodes.push(slot);
    }

    /// The midnight carry-over: `from` (yesterday's id), when active, becomes `to`.
    fn carry(&mut self, from: u64, to: u64) {
        let nodes = &self.nodes;
        let Ok(entry) = self
            .table
            .find_entry(spread(from), |&i| nodes[i as usize].id == from)
        else {
            return;
        };
        let (from_slot, _) = entry.remove();
        match self.find(to) {
            None => self.insert_entry(to, from_slot),
            Some(to_slot) => self.merge(from_slot, to_slot),
        }
    }

    /// Folds node `from` (already out of the table) into node `to`: each of its pairs joins
    /// `to`'s (a value both hold counts one visitor less), and the records of `from` are
    /// re-pointed.
    fn merge(&mut self, from: u32, to: u32) {
        let source = self.nodes[from as usize];
        let mut moved: Vec<(u32, i64)> = (0..usize::from(source.len))
            .map(|at| (u32::from(source.values[at]), source.at(source.latest[at])))
            .collect();
        if source.spilled > 0 {
            self.spilled.retain(|p| {
                let mine = p.slot == from;
                if mine {
                    moved.push((p.value, p.latest_ms));
                }
                !mine
            });
        }
        // The checks of `from` go stale: its slot is freed below (a reused slot has its own
        // `due`, and a spilled pair's check names a pair that is gone).
        if source.flags & SPLIT_TRIO != 0 {
            // The source's browser, device and country are among `moved`: the target must hold
            // its own as pairs too, or a value could count this visitor twice.
            self.split_trio(to);
        }
        let target = self.nodes[to as usize];
        let same_trio = source.flags & HAS_TRIO != 0
            && target.flags & HAS_TRIO != 0
            && source.trio == target.trio;
        if same_trio {
            // One visitor now: its trio's time becomes the later of the two (below).
            for id in source.trio.ids() {
                self.counts[id as usize].visitors -= 1;
            }
        } else if source.flags & HAS_TRIO != 0 {
            self.split_trio(to);
            let latest_ms = source.at(source.latest_event);
            moved.extend(source.trio.ids().map(|id| (id, latest_ms)));
        }
        for (id, latest_ms) in moved {
            if self.refresh_pair(to, id, latest_ms) {
                self.counts[id as usize].visitors -= 1;
            }
            self.schedule(to, latest_ms);
        }
        let newest = target.newest_minute().max(source.newest_minute());
        let align = |node: &VisitorNode| {
            let shift = u32::try_from(newest - node.newest_minute()).unwrap_or(u32::MAX);
            node.minutes.checked_shl(shift).unwrap_or(0)
        };
        let from_aligned = align(&source);
        let to_aligned = align(&target);
        let both = from_aligned & to_aligned;
        let floor_ms = self.cutoff_ms;
        let node = &mut self.nodes[to as usize];
        node.minutes = from_aligned | to_aligned;
        let offset = node.offset_of(source.at(source.latest_event), floor_ms);
        node.latest_event = node.latest_event.max(offset);
        for back in 0..32_i64 {
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
        from_node.due = NO_TIME;
        from_node.len = 0;
        from_node.spilled = 0;
        from_node.flags = 0;
        self.free_nodes.push(from);
    }
}

// Checkpoints: the state as plain data and back. Only the events, the visitors' minute masks
// and the series are written; the nodes' pairs and the per-value counts are rebuilt by
// counting the events again (so the spill of a visitor past `INLINE_PAIRS` values may land
// on other values than before; the counts are the same).

use super::values::claim_id_capacity;
use crate::budget::claim_capacity;
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
                    ts_ms: self.time_of(record),
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
                    newest_minute: node.newest_minute(),
                    minutes: u64::from(node.minutes),
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
    /// this build's ids, in the same order) are `values`, for a window of `window_ms` with a
    /// clock at `clock_ms`. The caller checked the events' timestamps (in order, inside the
    /// window).
    pub fn import(
        export: &ExactBreakdownExport,
        values: Vec<EventValues>,
        window_ms: i64,
        clock_ms: i64,
        limit_bytes: usize,
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
        // Hash tables claim one control byte per element besides the element.
        let claim = |capacity, element_bytes| claim_capacity(capacity, element_bytes, limit_bytes);
        let cutoff_ms = clock_ms.saturating_sub(window_ms);
        let mut state = Self {
            cutoff_ms,
            checks: CheckWheel::new(window_ms, cutoff_ms),
            queue: VecDeque::with_capacity(claim(queue, size_of::<Record>())?),
            nodes: Vec::with_capacity(claim(nodes, size_of::<VisitorNode>())?),
            free_nodes: Vec::with_capacity(claim(free_nodes, size_of::<u32>())?),
            table: HashTable::with_capacity(claim(table, size_of::<u32>() + 1)?),
            counts: Vec::with_capacity(claim_id_capacity(counts)?),
            minutes: [NO_MINUTE; MINUTE_SLOTS],
            spilled: HashTable::with_capacity(claim(spilled, size_of::<SpilledPair>() + 1)?),
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
        state
            .nodes
            .resize(slots as usize, VisitorNode::new(0, cutoff_ms));
        for &slot in &export.free_slots {
            take(slot)?;
            state.free_nodes.push(slot);
        }
        for visitor in &export.visitors {
            take(visitor.slot)?;
            if state.find(visitor.id).is_some() {
                return Err(invalid("exact breakdown visitor listed twice"));
            }
            state.insert_entry(visitor.id, visitor.slot);
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
            // The newest minute is its latest event's, and every minute the visitor's events
            // are in must be marked.
            let covered = !node.is_empty()
                && visitor.newest_minute == node.newest_minute()
                && u64::from(node.minutes) & !visitor.minutes == 0;
            if !covered || visitor.newest_minute > clock_minute {
                return Err(invalid("exact breakdown visitor without events or minutes"));
            }
            // Bits past 31 minutes name minutes the series never shows.
            node.minutes = visitor.minutes as u32;
        }
        let mut marked = [0_u32; MINUTE_SLOTS];
        for (at, &(minute, visitors, pageviews)) in export.series.iter().enumerate() {
            let empty = minute == i64::MIN && visitors == 0 && pageviews == 0;
            // A minute of a timestamp: from 0 (no earlier timestamp) to the clock's.
            let placed = (0..=clock_minute).contains(&minute)
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
                let minute = node.newest_minute() - back;
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
        assert_eq!(std::mem::size_of::<Record>(), 16);
        assert_eq!(std::mem::size_of::<VisitorNode>(), 64);
        assert_eq!(std::mem::align_of::<VisitorNode>(), 64);
    }
}
