//! `RateLimiter`: a per-client-IP token bucket for collect, in fixed memory.
//!
//! Buckets live in a fixed array of packed atomics (refill time and milli-tokens in one `u64`),
//! indexed by a keyed hash of the address, so memory never grows with the number of clients
//! and an attacker cannot choose addresses that collide. Two addresses that do share a slot share
//! a budget, which with the generous defaults only matters under abuse.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table (a power of two): 64k × 8 bytes = 512 KiB.
const SLOTS: usize = 1 << 16;
const MILLI: u64 = 1000;

#[derive(Debug)]
pub struct RateLimiter {
    /// Requests per second per address; 0 disables the limiter.
    rate_per_sec: u64,
    /// Burst size in requests.
    burst: u64,
    hasher: RandomState,
    /// Per slot: high 32 bits = last refill (ms since `epoch_ms`), low 32 = milli-tokens.
    slots: Box<[AtomicU64]>,
    epoch_ms: i64,
}

impl RateLimiter {
    /// A limiter allowing `rate_per_sec` requests per second per address with bursts of twice
    /// that; `rate_per_sec = 0` allows everything and allocates nothing.
    pub fn new(rate_per_sec: u32, now_ms: i64) -> Self {
        let slots = if rate_per_sec == 0 { 0 } else { SLOTS };
        Self {
            rate_per_sec: u64::from(rate_per_sec),
            burst: u64::from(rate_per_sec) * 2,
            hasher: RandomState::new(),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            epoch_ms: now_ms,
        }
    }

    /// Takes one token for `ip` at `now_ms`, or returns the seconds to wait.
    pub fn check(&self, ip: IpAddr, now_ms: i64) -> Result<(), u32> {
        if self.rate_per_sec == 0 {
            return Ok(());
        }
        let slot = &self.slots[(self.hasher.hash_one(ip) as usize) & (SLOTS - 1)];
        let now = u64::try_from(now_ms - self.epoch_ms).unwrap_or(0) & 0xFFFF_FFFF;
        let capacity = self.burst.max(1) * MILLI;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (last, tokens) = if current == 0 {
                // Never used: a full bucket.
                (now, capacity)
            } else {
                (current >> 32, current & 0xFFFF_FFFF)
            };
            // A clock that went back (or wrapped after 49 days) simply refills nothing.
            let elapsed = now.saturating_sub(last);
            let refilled = (tokens + elapsed * self.rate_per_sec).min(capacity);
            if refilled < MILLI {
                let missing = MILLI - refilled;
                let wait_secs = missing.div_ceil(self.rate_per_sec * MILLI).max(1);
                return Err(u32::try_from(wait_secs).unwrap_or(u32::MAX));
            }
            // Keep the slot non-zero so "never used" stays distinguishable.
            let next = ((now.max(1)) << 32) | (refilled - MILLI);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate_per_address() {
        let limiter = RateLimiter::new(10, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..100).filter(|_| limiter.check(a, 1).is_ok()).count();
        assert_eq!(allowed, 20, "burst is twice the rate");
        assert_eq!(limiter.check(a, 1), Err(1));
        assert!(
            limiter.check(b, 1).is_ok(),
            "other addresses are not affected"
        );
        // 10 per second: after 500 ms, 5 more.
        let refilled = (0..100).filter(|_| limiter.check(a, 501).is_ok()).count();
        assert_eq!(refilled, 5);
    }

    #[test]
    fn zero_disables_the_limiter() {
        let limiter = RateLimiter::new(0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..10_000).all(|_| limiter.check(a, 0).is_ok()));
        assert_eq!(limiter.memory_bytes(), 0);
    }
}
