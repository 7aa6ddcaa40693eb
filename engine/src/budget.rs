//! `MemoryBudget`: the bytes all websites' visitor windows and event tallies may hold together,
//! and what is held now. Each website reports its own growth as it happens (no sampling of the
//! process's memory); a website whose exact window would grow past its share while the budget is
//! full switches to an approximate count (`SlidingHll`) until it fits again.
//!
//! The budget only accounts; deciding what to degrade is `WebsiteState`'s and `Engine`'s job.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::EngineError;

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

/// The capacity, as a `usize`, that an import may allocate for one container of
/// `element_bytes`-sized elements under a budget of `limit_bytes`, or an error before anything
/// is allocated.
///
/// A checkpoint names its containers' capacities, so that a restored state holds, and accounts,
/// what the original held. A container that grows with visitors or events in exact mode (the
/// visitor windows' slabs and tables, the exact breakdown's queue, nodes and tables) grows only
/// when the growth is checked against the budget (`fits`, or the website's share), so none is
/// larger than the whole budget. A larger claim therefore comes from a damaged file, and
/// refusing it keeps that file from taking the process's memory. Hash tables pass their element
/// size plus one control byte, a lower bound of their allocation. Containers of one element per
/// value id are not governed by the budget; `breakdown::values::claim_id_capacity` bounds them.
pub(crate) fn claim_capacity(
    capacity: u64,
    element_bytes: usize,
    limit_bytes: usize,
) -> Result<usize, EngineError> {
    let claimed = u128::from(capacity) * element_bytes as u128;
    match usize::try_from(capacity) {
        Ok(capacity) if claimed <= limit_bytes as u128 => Ok(capacity),
        _ => Err(EngineError::InvalidExport(
            "an allocation larger than the memory budget",
        )),
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

    #[test]
    fn an_import_may_claim_up_to_the_whole_budget_and_no_more() {
        assert_eq!(claim_capacity(125, 8, 1000).ok(), Some(125));
        assert!(claim_capacity(126, 8, 1000).is_err());
        assert!(claim_capacity(u64::MAX, 64, usize::MAX).is_err());
        assert_eq!(claim_capacity(0, 64, 0).ok(), Some(0));
    }
}
