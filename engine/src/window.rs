//! `VisitorWindow`: the exact set of visitors seen in the last `window_ms`, with amortised O(1)
//! updates and eviction, and about 35 bytes per active visitor.
//!
//! Layout: one 24-byte `Node` per visitor (id, last timestamp, two links) in a slab, found through
//! a `hashbrown::HashTable` that stores only the 4-byte slab index. Nodes are threaded on doubly
//! linked lists, one per second of the window (a timing wheel), each kept in timestamp order. An
//! in-order event appends at a list's tail in O(1); a late event walks back only within its own
//! second. Eviction drops whole seconds and then trims the boundary second up to the exact
//! millisecond, so the count is exact without scanning.
//!
//! The window owns its clock: it only moves forward, to the largest timestamp recorded or the
//! latest `advance_to`. It knows nothing about events, rings or websites.

use hashbrown::HashTable;

use crate::budget::claim_capacity;
use crate::error::EngineError;
use crate::event::VisitorId;
use crate::export::WindowExport;

const NIL: u32 = u32::MAX;
/// The timestamp of a slab node on the free list: no live node has it (every live timestamp is
/// after the cutoff, which starts at `i64::MIN`), so an export finds the live nodes in one pass
/// over the slab.
const FREE_TS: i64 = i64::MIN;

/// One active visitor. 24 bytes: the window's per-visitor cost besides the table slot.
#[derive(Debug, Clone, Copy)]
struct Node {
    id: u64,
    ts: i64,
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    head: u32,
    tail: u32,
}

const EMPTY_BUCKET: Bucket = Bucket {
    head: NIL,
    tail: NIL,
};

/// What `record` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The visitor was not in the window and now is.
    Added,
    /// The visitor was in the window; its last timestamp is now later.
    Moved,
    /// The visitor was in the window with a later or equal timestamp; nothing changed.
    Unchanged,
    /// The timestamp is at or before the window's cutoff; nothing changed.
    TooOld,
    /// The window already holds `u32::MAX - 1` visitors; nothing changed.
    Full,
}

/// The exact set of visitor ids with a timestamp in `(clock - window, clock]`, each with its
/// latest timestamp.
#[derive(Debug)]
pub struct VisitorWindow {
    window_ms: i64,
    /// Every live node has `cutoff_ms < ts <= clock_ms`.
    cutoff_ms: i64,
    nodes: Vec<Node>,
    /// Head of the free-node list, threaded through `Node::next`.
    free: u32,
    live: usize,
    table: HashTable<u32>,
    /// One list per second, indexed by `second % buckets.len()`; allocated on first use so an
    /// idle website costs nothing.
    buckets: Box<[Bucket]>,
    /// Every second before this one has an empty bucket.
    swept_sec: i64,
}

/// Spreads a visitor id over all 64 bits. Ids are already sha256 output, but tests and callers
/// may use small integers, and hashbrown reads both the low and the top bits.
fn spread(id: u64) -> u64 {
    let product = u128::from(id) * 0x9E37_79B9_7F4A_7C15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

impl VisitorWindow {
    /// An empty window of `window_secs` seconds (at least one).
    pub fn new(window_secs: u32) -> Self {
        Self {
            window_ms: i64::from(window_secs.max(1)) * 1000,
            cutoff_ms: i64::MIN,
            nodes: Vec::new(),
            free: NIL,
            live: 0,
            table: HashTable::new(),
            buckets: Box::new([]),
            swept_sec: i64::MIN,
        }
    }

    /// Active visitors: those with a timestamp in `(clock - window, clock]`.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no visitor is active.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The last timestamp of `id`, if it is active.
    pub fn last_seen(&self, id: VisitorId) -> Option<i64> {
        self.find(id).map(|idx| self.nodes[idx as usize].ts)
    }

    /// Records that `id` was seen at `ts_ms`, moving the clock forward to `ts_ms` first.
    ///
    /// When `carried_from` names another id that is active, that visitor is folded into `id`
    /// (the midnight carry-over): it stops counting separately, and `id` keeps the later of the
    /// two timestamps.
    #[inline]
    pub fn record(
        &mut self,
        id: VisitorId,
        ts_ms: i64,
        carried_from: Option<VisitorId>,
    ) -> Recorded {
        self.advance_to(ts_ms);
        if ts_ms <= self.cutoff_ms {
            return Recorded::TooOld;
        }
        let mut ts_ms = ts_ms;
        if let Some(from) = carried_from.filter(|from| *from != id) {
            if let Some(from_ts) = self.take(from) {
                ts_ms = ts_ms.max(from_ts);
            }
        }
        self.touch(id, ts_ms)
    }

    /// Removes `id`, returning its last timestamp if it was active.
    pub fn take(&mut self, id: VisitorId) -> Option<i64> {
        let hash = spread(id.0);
        let nodes = &self.nodes;
        let entry = self
            .table
            .find_entry(hash, |&idx| nodes[idx as usize].id == id.0)
            .ok()?;
        let (idx, _) = entry.remove();
        let ts = self.nodes[idx as usize].ts;
        self.unlink(idx);
        self.release(idx);
        Some(ts)
    }

    /// Moves the clock to `now_ms` (never backwards) and evicts every visitor whose last
    /// timestamp is at or before `now_ms - window`. Amortised O(1) per recorded event plus
    /// O(1) per elapsed second.
    pub fn advance_to(&mut self, now_ms: i64) {
        let cutoff_ms = now_ms.saturating_sub(self.window_ms);
        if cutoff_ms <= self.cutoff_ms {
            return;
        }
        self.cutoff_ms = cutoff_ms;
        let cutoff_sec = cutoff_ms.div_euclid(1000);
        if self.live == 0 {
            self.swept_sec = cutoff_sec;
            return;
        }
        let span = self.buckets.len() as i64;
        if cutoff_sec.saturating_sub(self.swept_sec) >= span {
            // Every live timestamp is at most one window past the old cutoff, so a jump of a
            // whole wheel expires them all.
            self.clear();
            self.swept_sec = cutoff_sec;
            return;
        }
        for sec in self.swept_sec..cutoff_sec {
            self.evict_bucket_through(sec, i64::MAX);
        }
        self.evict_bucket_through(cutoff_sec, cutoff_ms);
        self.swept_sec = cutoff_sec;
    }

    /// Bytes the next new visitor would add by making the slab, the table or the wheel grow
    /// (0 when there is room), so a caller can refuse the growth before it happens.
    #[inline]
    pub fn growth_bytes_on_insert(&self) -> usize {
        let mut growth = 0;
        if self.free == NIL && self.nodes.len() == self.nodes.capacity() {
            growth += self.nodes.capacity().max(4) * std::mem::size_of::<Node>();
        }
        if self.table.len() == self.table.capacity() {
            growth += self.table.allocation_size().max(64);
        }
        if self.buckets.is_empty() {
            growth += (self.window_ms / 1000 + 2) as usize * std::mem::size_of::<Bucket>();
        }
        growth
    }

    /// Calls `f(id, last_ts_ms)` for every active visitor, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(VisitorId, i64)) {
        for bucket in self.buckets.iter() {
            let mut idx = bucket.head;
            while idx != NIL {
                let node = &self.nodes[idx as usize];
                f(VisitorId(node.id), node.ts);
                idx = node.next;
            }
        }
    }

    /// Bytes allocated by the window: slab, table and wheel.
    #[inline]
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.table.allocation_size()
            + self.buckets.len() * std::mem::size_of::<Bucket>()
    }

    #[inline]
    fn find(&self, id: VisitorId) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(spread(id.0), |&idx| nodes[idx as usize].id == id.0)
            .copied()
    }

    #[inline]
    fn touch(&mut self, id: VisitorId, ts_ms: i64) -> Recorded {
        if self.buckets.is_empty() {
            let span = (self.window_ms / 1000 + 2) as usize;
            self.buckets = vec![EMPTY_BUCKET; span].into_boxed_slice();
        }
        if let Some(idx) = self.find(id) {
            if self.nodes[idx as usize].ts >= ts_ms {
                return Recorded::Unchanged;
            }
            self.unlink(idx);
            self.nodes[idx as usize].ts = ts_ms;
            self.link(idx);
            return Recorded::Moved;
        }
        let Some(idx) = self.allocate(id.0, ts_ms) else {
            return Recorded::Full;
        };
        let nodes = &self.nodes;
        self.table
            .insert_unique(spread(id.0), idx, |&i| spread(nodes[i as usize].id));
        self.link(idx);
        self.live += 1;
        Recorded::Added
    }

    fn bucket_index(&self, ts_ms: i64) -> usize {
        ts_ms.div_euclid(1000).rem_euclid(self.buckets.len() as i64) as usize
    }

    /// Inserts node `idx` into its second's list, keeping the list in timestamp order.
    #[inline]
    fn link(&mut self, idx: u32) {
        let ts = self.nodes[idx as usize].ts;
        let b = self.bucket_index(ts);
        let mut after = self.buckets[b].tail;
        while after != NIL && self.nodes[after as usize].ts > ts {
            after = self.nodes[after as usize].prev;
        }
        let next = if after == NIL {
            self.buckets[b].head
        } else {
            self.nodes[after as usize].next
        };
        let node = &mut self.nodes[idx as usize];
        node.prev = after;
        node.next = next;
        if after == NIL {
            self.buckets[b].head = idx;
        } else {
            self.nodes[after as usize].next = idx;
        }
        if next == NIL {
            self.buckets[b].tail = idx;
        } else {
            self.nodes[next as usize].prev = idx;
        }
    }

    #[inline]
    fn unlink(&mut self, idx: u32) {
        let Node { ts, prev, next, .. } = self.nodes[idx as usize];
        let b = self.bucket_index(ts);
        if prev == NIL {
            self.buckets[b].head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.buckets[b].tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn allocate(&mut self, id: u64, ts: i64) -> Option<u32> {
        let node = Node {
            id,
            ts,
            prev: NIL,
            next: NIL,
        };
        if self.free != NIL {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            return Some(idx);
        }
        let idx = u32::try_from(self.nodes.len()).ok().filter(|&i| i != NIL)?;
        self.nodes.push(node);
        Some(idx)
    }

    /// Returns node `idx` to the free list; the caller has unlinked it and removed it from the
    /// table.
    fn release(&mut self, idx: u32) {
        self.nodes[idx as usize].ts = FREE_TS;
        self.nodes[idx as usize].next = self.free;
        self.free = idx;
        self.live -= 1;
    }

    /// Evicts, from the list of second `sec`, every node with `ts <= through_ms`.
    fn evict_bucket_through(&mut self, sec: i64, through_ms: i64) {
        let b = sec.rem_euclid(self.buckets.len() as i64) as usize;
        let mut idx = self.buckets[b].head;
        while idx != NIL {
            let Node { id, ts, next, .. } = self.nodes[idx as usize];
            if ts > through_ms {
                break;
            }
            debug_assert_eq!(
                ts.div_euclid(1000),
                sec,
                "wheel bucket holds another second"
            );
            let nodes = &self.nodes;
            if let Ok(entry) = self
                .table
                .find_entry(spread(id), |&i| nodes[i as usize].id == id)
            {
                entry.remove();
            }
            self.release(idx);
            idx = next;
        }
        self.buckets[b].head = idx;
        if idx == NIL {
            self.buckets[b].tail = NIL;
        } else {
            self.nodes[idx as usize].prev = NIL;
        }
    }

    /// The window as plain data: one linear pass over the slab, so a caller holding a lock for it
    /// holds it about as long as copying the slab takes.
    pub fn export(&self) -> WindowExport {
        let mut visitors = Vec::with_capacity(self.live);
        visitors.extend(
            self.nodes
                .iter()
                .filter(|node| node.ts != FREE_TS)
                .map(|node| (node.id, node.ts)),
        );
        WindowExport {
            cutoff_ms: self.cutoff_ms,
            wheel_allocated: !self.buckets.is_empty(),
            slab_capacity: self.nodes.capacity() as u64,
            table_capacity: self.table.capacity() as u64,
            visitors,
        }
    }

    /// Rebuilds a window of `window_secs` seconds from `export`, with the allocations it had
    /// (hash-table tombstones aside), or says which value is out of place; no allocation may
    /// claim more than `limit_bytes` (`claim_capacity`).
    pub fn import(
        window_secs: u32,
        export: WindowExport,
        limit_bytes: usize,
    ) -> Result<Self, EngineError> {
        let mut window = Self::new(window_secs);
        let invalid = EngineError::InvalidExport;
        let too_many = |n: u64| n >= u64::from(NIL);
        if too_many(export.slab_capacity)
            || too_many(export.table_capacity)
            || export.visitors.len() as u64 > export.slab_capacity
            || export.visitors.len() as u64 > export.table_capacity
        {
            return Err(invalid(
                "visitor window larger than its slab or the window's limit",
            ));
        }
        if !export.wheel_allocated && !export.visitors.is_empty() {
            return Err(invalid("visitor window holds visitors without a wheel"));
        }
        let newest_ms = export.cutoff_ms.saturating_add(window.window_ms);
        let mut visitors = export.visitors;
        if visitors
            .iter()
            .any(|&(_, ts)| ts <= export.cutoff_ms || ts > newest_ms)
        {
            return Err(invalid("visitor timestamp outside the window"));
        }
        window.cutoff_ms = export.cutoff_ms;
        window.swept_sec = if export.cutoff_ms == i64::MIN {
            i64::MIN
        } else {
            export.cutoff_ms.div_euclid(1000)
        };
        let slab = claim_capacity(export.slab_capacity, size_of::<Node>(), limit_bytes)?;
        let table = claim_capacity(export.table_capacity, size_of::<u32>() + 1, limit_bytes)?;
        window.nodes = Vec::with_capacity(slab);
        window.table = HashTable::with_capacity(table);
        if export.wheel_allocated {
            let span = (window.window_ms / 1000 + 2) as usize;
            window.buckets = vec![EMPTY_BUCKET; span].into_boxed_slice();
        }
        // In timestamp order every link is an O(1) append at its second's tail.
        visitors.sort_unstable_by_key(|&(_, ts)| ts);
        for (id, ts) in visitors {
            if window.find(VisitorId(id)).is_some() {
                return Err(invalid("visitor listed twice"));
            }
            if window.touch(VisitorId(id), ts) != Recorded::Added {
                return Err(invalid("visitor window cannot hold its visitors"));
            }
        }
        Ok(window)
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.free = NIL;
        self.live = 0;
        self.table.clear();
        self.buckets.fill(EMPTY_BUCKET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 60;
    const W_MS: i64 = 60_000;

    fn v(n: u64) -> VisitorId {
        VisitorId(n)
    }

    #[test]
    fn window_boundary_is_exact_to_the_millisecond() {
        let mut window = VisitorWindow::new(W);
        let t0 = 1_000_000_123;
        window.record(v(1), t0, None);
        window.advance_to(t0 + W_MS - 1);
        assert_eq!(
            window.len(),
            1,
            "still active one ms before the cutoff reaches it"
        );
        window.advance_to(t0 + W_MS);
        assert_eq!(window.len(), 0, "expired when now - window == ts");
    }

    #[test]
    fn later_timestamp_wins_and_late_events_do_not_shorten_a_visit() {
        let mut window = VisitorWindow::new(W);
        let t0 = 5_000_000;
        assert_eq!(window.record(v(1), t0 + 10_000, None), Recorded::Added);
        assert_eq!(window.record(v(1), t0, None), Recorded::Unchanged);
        assert_eq!(window.record(v(1), t0 + 20_000, None), Recorded::Moved);
        assert_eq!(window.last_seen(v(1)), Some(t0 + 20_000));
        window.advance_to(t0 + 20_000 + W_MS - 1);
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn too_old_events_change_nothing() {
        let mut window = VisitorWindow::new(W);
        window.record(v(1), 10 * W_MS, None);
        assert_eq!(window.record(v(2), 9 * W_MS, None), Recorded::TooOld);
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn out_of_order_within_a_second_evicts_in_timestamp_order() {
        let mut window = VisitorWindow::new(W);
        let base = 7_000_000;
        for (id, offset) in [(1, 900), (2, 100), (3, 500), (4, 100)] {
            window.record(v(id), base + offset, None);
        }
        window.advance_to(base + 100 + W_MS);
        assert_eq!(window.len(), 2);
        assert_eq!(window.last_seen(v(3)), Some(base + 500));
        window.advance_to(base + 500 + W_MS);
        assert_eq!(window.len(), 1);
        assert_eq!(window.last_seen(v(1)), Some(base + 900));
    }

    #[test]
    fn carried_visitor_is_folded_into_the_new_id() {
        let mut window = VisitorWindow::new(W);
        window.record(v(1), 1_000_000, None);
        window.record(v(2), 1_000_500, Some(v(1)));
        assert_eq!(window.len(), 1);
        assert_eq!(window.last_seen(v(1)), None);
        assert_eq!(window.last_seen(v(2)), Some(1_000_500));
        // The folded visitor keeps the later timestamp even if the carried id was seen later.
        window.record(v(10), 1_002_000, None);
        window.record(v(11), 1_001_500, Some(v(10)));
        assert_eq!(window.last_seen(v(11)), Some(1_002_000));
        // Carry from an id that is not active adds the new id only.
        window.record(v(3), 1_001_000, Some(v(99)));
        assert_eq!(window.len(), 3);
    }

    #[test]
    fn a_jump_of_more_than_a_window_clears_everything_and_reuses_memory() {
        let mut window = VisitorWindow::new(W);
        for id in 0..1000 {
            window.record(v(id), 1_000_000 + id as i64, None);
        }
        window.advance_to(1_000_000 + 100 * W_MS);
        assert!(window.is_empty());
        window.record(v(5), 1_000_000 + 100 * W_MS, None);
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn growth_is_announced_before_it_happens_and_for_each_sees_every_visitor() {
        let mut window = VisitorWindow::new(W);
        let mut seen_growth = 0;
        for id in 0..10_000 {
            let before = window.memory_bytes();
            let announced = window.growth_bytes_on_insert();
            window.record(v(id), 1_000_000 + id as i64, None);
            let grew = window.memory_bytes() - before;
            assert!(
                grew <= announced,
                "grew {grew} after announcing {announced}"
            );
            seen_growth += grew;
        }
        assert!(seen_growth > 0);
        let mut ids = Vec::new();
        window.for_each(|id, _| ids.push(id.0));
        ids.sort_unstable();
        assert_eq!(ids, (0..10_000).collect::<Vec<u64>>());
    }

    #[test]
    fn slots_are_reused_after_eviction() {
        let mut window = VisitorWindow::new(W);
        // Rounds 61 s apart: each round's first record evicts the previous round through the
        // wheel (not the whole-window jump), so the slab must be reused, not grown.
        for round in 0..10_i64 {
            for id in 0..100 {
                let ts = round * (W_MS + 1000) + id as i64;
                window.record(v(round as u64 * 1000 + id), ts, None);
            }
        }
        assert_eq!(window.len(), 100);
        assert_eq!(
            window.nodes.len(),
            100,
            "slab grew instead of reusing freed nodes"
        );
    }
}
