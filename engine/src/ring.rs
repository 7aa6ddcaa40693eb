//! `EventRing`: a fixed-capacity ring of the most recent events of one website and class, which
//! readers copy without ever blocking the writer.
//!
//! One writer at a time pushes (the website's writer lock serialises them); any number of readers
//! scan concurrently. Each slot is an epoch-managed pointer (crossbeam-epoch): the writer swaps a
//! new slot in and defers freeing the old one until no reader can still hold it, so a reader never
//! waits and never sees a half-written event. The ring does not know about visitors or counts.
//!
//! Every slot also records `bound_ts`, the largest timestamp pushed up to and including it. Since
//! that bound never decreases with position, a newest-first scan can stop as soon as the bound
//! says no older slot can beat what it already holds, even with out-of-order arrivals.

// The ring is the one place in the engine that needs `unsafe`: dereferencing and retiring
// epoch-protected pointers. Each block states the invariant that makes it sound.
#![allow(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Atomic, Owned, Shared};

use crate::error::EngineError;
use crate::event::Event;
use crate::export::{RingExport, RingSlot};

/// An event as read back from a ring, with its arrival number within the website, which breaks
/// ties between equal timestamps (later arrival first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    /// Arrival number within the website: larger means pushed later.
    pub arrival: u64,
    /// The event itself, shared with the ring.
    pub event: Arc<Event>,
}

impl RecentEvent {
    /// Sort key: newest timestamp first, then latest arrival first.
    fn key(&self) -> (i64, u64) {
        (self.event.ts.unix_ms(), self.arrival)
    }
}

impl PartialOrd for RecentEvent {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RecentEvent {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

struct Slot {
    /// Ring position this slot was written at; a reader that finds another position knows the
    /// slot was overwritten after it read `head`.
    pos: u64,
    arrival: u64,
    bound_ts: i64,
    event: Arc<Event>,
}

/// The most recent events of one website and class, at most `capacity`, readable without
/// blocking the single writer.
pub struct EventRing {
    slots: Box<[Atomic<Slot>]>,
    /// Next position to write; positions `head - capacity .. head` may hold events.
    head: AtomicU64,
    /// Oldest position not yet cleared by `evict_expired`.
    tail: AtomicU64,
    /// Largest timestamp ever pushed.
    max_ts: AtomicI64,
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing")
            .field("capacity", &self.slots.len())
            .field("head", &self.head.load(Ordering::Relaxed))
            .finish()
    }
}

impl EventRing {
    /// A ring holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let slots = (0..capacity.max(1)).map(|_| Atomic::null()).collect();
        Self {
            slots,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            max_ts: AtomicI64::new(i64::MIN),
        }
    }

    fn slot(&self, pos: u64) -> &Atomic<Slot> {
        // `pos % len` is below `len`, so the index is in bounds.
        &self.slots[(pos % self.slots.len() as u64) as usize]
    }

    /// Appends an event, overwriting the oldest when full. Callers must not push concurrently
    /// (the website writer lock guarantees it); a racing push would misorder, never corrupt.
    pub fn push(&self, arrival: u64, event: Arc<Event>) {
        let ts = event.ts.unix_ms();
        let bound_ts = self.max_ts.load(Ordering::Relaxed).max(ts);
        self.max_ts.store(bound_ts, Ordering::Relaxed);
        self.push_bounded(arrival, bound_ts, event);
    }

    fn push_bounded(&self, arrival: u64, bound_ts: i64, event: Arc<Event>) {
        let pos = self.head.load(Ordering::Relaxed);
        let guard = epoch::pin();
        let new = Owned::new(Slot {
            pos,
            arrival,
            bound_ts,
            event,
        });
        let old = self.slot(pos).swap(new, Ordering::AcqRel, &guard);
        // Publishing `head` after the slot means a reader that sees the new head also sees the
        // new slot.
        self.head.store(pos + 1, Ordering::Release);
        if !old.is_null() {
            // SAFETY: `old` was unlinked by the swap above, so no new reader can reach it; readers
            // that loaded it earlier are pinned, and the epoch defers the free until they unpin.
            unsafe { guard.defer_destroy(old) };
        }
    }

    /// Clears slots whose events, and all before them, are at or before `cutoff`, so an idle
    /// website does not pin old events in memory. Writer-side, amortised O(1) per push.
    pub fn evict_expired(&self, cutoff_ms: i64) {
        let head = self.head.load(Ordering::Relaxed);
        let oldest_held = head.saturating_sub(self.slots.len() as u64);
        let mut tail = self.tail.load(Ordering::Relaxed).max(oldest_held);
        let guard = epoch::pin();
        while tail < head {
            let slot = self.slot(tail);
            let current = slot.load(Ordering::Acquire, &guard);
            // SAFETY: the pointer was loaded under `guard`, and slots are only freed through
            // `defer_destroy`, which waits for this guard to unpin.
            let expired = unsafe { current.as_ref() }
                .is_none_or(|s| s.pos == tail && s.bound_ts <= cutoff_ms);
            if !expired {
                break;
            }
            let old = slot.swap(Shared::null(), Ordering::AcqRel, &guard);
            if !old.is_null() {
                // SAFETY: unlinked by the swap just above; see `push`.
                unsafe { guard.defer_destroy(old) };
            }
            tail += 1;
        }
        self.tail.store(tail, Ordering::Relaxed);
    }

    /// The `limit` newest events with `cutoff_ms < ts <= upper_ms`, newest first (ties: latest
    /// arrival first). Never blocks the writer.
    pub fn recent(&self, cutoff_ms: i64, upper_ms: i64, limit: usize) -> Vec<RecentEvent> {
        if limit == 0 {
            return Vec::new();
        }
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        // A min-heap of the best `limit` seen so far: its top is the one to beat.
        let mut best: BinaryHeap<Reverse<RecentEvent>> = BinaryHeap::with_capacity(limit + 1);
        for pos in (oldest..head).rev() {
            let shared = self.slot(pos).load(Ordering::Acquire, &guard);
            // SAFETY: loaded under `guard`; slots are freed only via `defer_destroy`.
            let Some(slot) = (unsafe { shared.as_ref() }) else {
                continue;
            };
            if slot.pos != pos {
                // Overwritten by a push that began after we read `head`; it is not part of this
                // read, and the event it replaced is gone.
                continue;
            }
            if slot.bound_ts <= cutoff_ms {
                break;
            }
            if best.len() == limit {
                if let Some(Reverse(worst)) = best.peek() {
                    // Every older slot has ts <= bound_ts and a smaller arrival, so none can beat
                    // `worst` once the bound does not exceed its timestamp.
                    if slot.bound_ts <= worst.event.ts.unix_ms() {
                        break;
                    }
                }
            }
            let ts = slot.event.ts.unix_ms();
            if ts <= cutoff_ms || ts > upper_ms {
                continue;
            }
            let candidate = RecentEvent {
                arrival: slot.arrival,
                event: Arc::clone(&slot.event),
            };
            if best.len() < limit {
                best.push(Reverse(candidate));
            } else if best.peek().is_some_and(|Reverse(worst)| candidate > *worst) {
                best.pop();
                best.push(Reverse(candidate));
            }
        }
        drop(guard);
        // `into_sorted_vec` is ascending by `Reverse`, i.e. newest first.
        best.into_sorted_vec().into_iter().map(|r| r.0).collect()
    }

    /// The events held, oldest first, with their bounds. Writer-side (under the website's writer
    /// lock, so no push races it); readers are not disturbed.
    pub fn export(&self) -> RingExport {
        let head = self.head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        let tail = self.tail.load(Ordering::Relaxed).max(oldest);
        let guard = epoch::pin();
        let slots = (tail..head)
            .filter_map(|pos| {
                let shared = self.slot(pos).load(Ordering::Acquire, &guard);
                // SAFETY: loaded under `guard`; slots are freed only via `defer_destroy`.
                let slot = unsafe { shared.as_ref() }?;
                (slot.pos == pos).then(|| RingSlot {
                    arrival: slot.arrival,
                    bound_ts: slot.bound_ts,
                    event: Arc::clone(&slot.event),
                })
            })
            .collect();
        RingExport {
            max_ts: self.max_ts.load(Ordering::Relaxed),
            slots,
        }
    }

    /// A ring of `capacity` holding `export`'s events with their bounds, or an error when they
    /// do not fit or their bounds would let a reader stop too early.
    pub fn import(capacity: usize, export: RingExport) -> Result<Self, EngineError> {
        let ring = Self::new(capacity);
        if export.slots.len() > ring.slots.len() {
            return Err(EngineError::InvalidExport(
                "more recent events than the ring holds",
            ));
        }
        let mut bound = i64::MIN;
        for slot in &export.slots {
            if slot.bound_ts < bound || slot.bound_ts < slot.event.ts.unix_ms() {
                return Err(EngineError::InvalidExport(
                    "recent event bounds out of order",
                ));
            }
            bound = slot.bound_ts;
        }
        if export.max_ts < bound {
            return Err(EngineError::InvalidExport("ring bound below its events"));
        }
        ring.max_ts.store(export.max_ts, Ordering::Relaxed);
        for slot in export.slots {
            ring.push_bounded(slot.arrival, slot.bound_ts, slot.event);
        }
        Ok(ring)
    }

    /// Heap bytes held by the ring's slot array and the slots currently filled (events' strings
    /// are shared and not counted).
    pub fn memory_bytes(&self) -> usize {
        let filled = self
            .head
            .load(Ordering::Relaxed)
            .saturating_sub(self.tail.load(Ordering::Relaxed))
            .min(self.slots.len() as u64) as usize;
        self.slots.len() * std::mem::size_of::<Atomic<Slot>>()
            + filled * (std::mem::size_of::<Slot>() + std::mem::size_of::<Event>() + 16)
    }
}

impl Drop for EventRing {
    fn drop(&mut self) {
        for slot in self.slots.iter() {
            // SAFETY: `&mut self` means no reader or writer can touch the ring any more, so the
            // unprotected guard is sound and each non-null slot is owned by us alone.
            unsafe {
                let guard = epoch::unprotected();
                let shared = slot.swap(Shared::null(), Ordering::Relaxed, guard);
                if !shared.is_null() {
                    drop(shared.into_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_pageview;

    fn event(ts: i64, target: &str) -> Arc<Event> {
        Arc::new(test_pageview("site", 1, ts, target))
    }

    fn targets(events: &[RecentEvent]) -> Vec<String> {
        events.iter().map(|e| e.event.target.to_string()).collect()
    }

    #[test]
    fn recent_is_newest_first_by_timestamp_even_when_arrivals_are_out_of_order() {
        let ring = EventRing::new(8);
        for (arrival, (ts, name)) in [(10, "a"), (30, "c"), (20, "b"), (40, "d")]
            .into_iter()
            .enumerate()
        {
            ring.push(arrival as u64, event(ts, name));
        }
        assert_eq!(targets(&ring.recent(0, 100, 10)), ["d", "c", "b", "a"]);
        assert_eq!(targets(&ring.recent(0, 100, 2)), ["d", "c"]);
        assert_eq!(targets(&ring.recent(15, 35, 10)), ["c", "b"]);
    }

    #[test]
    fn overwritten_events_are_gone_and_the_ring_keeps_the_last_capacity() {
        let ring = EventRing::new(3);
        for i in 0..5 {
            ring.push(i, event(100 + i as i64, &i.to_string()));
        }
        assert_eq!(targets(&ring.recent(0, 1000, 10)), ["4", "3", "2"]);
    }

    #[test]
    fn equal_timestamps_list_the_later_arrival_first() {
        let ring = EventRing::new(4);
        ring.push(0, event(5, "first"));
        ring.push(1, event(5, "second"));
        assert_eq!(targets(&ring.recent(0, 10, 10)), ["second", "first"]);
    }

    #[test]
    fn evict_expired_clears_only_slots_whose_bound_is_past_the_cutoff() {
        let ring = EventRing::new(8);
        ring.push(0, event(10, "a"));
        ring.push(1, event(50, "late-bound"));
        ring.push(2, event(20, "b"));
        ring.evict_expired(15);
        // "a" is cleared; "late-bound" has ts 50 so it and everything after it stays.
        assert_eq!(targets(&ring.recent(0, 100, 10)), ["late-bound", "b"]);
        ring.evict_expired(60);
        assert!(ring.recent(0, 100, 10).is_empty());
    }
}
