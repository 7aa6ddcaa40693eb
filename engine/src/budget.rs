//! `MemoryBudget`: the bytes all websites' visitor windows and event tallies may hold together,
//! and what is held now. Each website reports its own growth as it happens (no sampling of the
//! process's memory); a website whose exact window would grow past its share while the budget is
//! full switches to an approximate count (`SlidingHll`) until it fits again.
//!
//! The budget only accounts; deciding what to degrade is `WebsiteState`'s and `Engine`'s job.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The byte limit shared by all websites' visitor counts and tallies, the bytes they hold now,
/// and how many websites share it. Updated with relaxed atomics: it steers, it does not lock.
#[derive(Debug)]
pub struct MemoryBudget {
    limit_bytes: usize,
    used_bytes: AtomicUsize,
    websites: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit_bytes`, nothing held yet (`usize::MAX` never fills).
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
            used_bytes: AtomicUsize::new(0),
            websites: AtomicUsize::new(0),
        }
    }

    /// The limit, in bytes.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Bytes the websites report holding now.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Whether `extra` more bytes would still fit.
    #[inline]
    pub fn fits(&self, extra: usize) -> bool {
        self.used_bytes().saturating_add(extra) <= self.limit_bytes
    }

    /// A website's fair share: the limit divided among the websites held.
    #[inline]
    pub fn share_bytes(&self) -> usize {
        self.limit_bytes / self.websites.load(Ordering::Relaxed).max(1)
    }

    /// Records that a website now holds `after` bytes instead of `before`.
    #[inline]
    pub fn update(&self, before: usize, after: usize) {
        if after > before {
            self.used_bytes.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.used_bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    pub(crate) fn website_added(&self) {
        self.websites.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn website_removed(&self, held_bytes: usize) {
        self.websites.fetch_sub(1, Ordering::Relaxed);
        self.update(held_bytes, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_follows_updates_and_shares_divide_the_limit() {
        let budget = MemoryBudget::new(1000);
        budget.website_added();
        budget.website_added();
        assert_eq!(budget.share_bytes(), 500);
        budget.update(0, 700);
        assert!(budget.fits(300) && !budget.fits(301));
        budget.update(700, 200);
        assert_eq!(budget.used_bytes(), 200);
        budget.website_removed(200);
        assert_eq!((budget.used_bytes(), budget.share_bytes()), (0, 1000));
    }
}
