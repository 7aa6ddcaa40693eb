//! `EngineLimits`: every size the engine bounds, with its default, in one place.
//!
//! The server maps its flags onto this struct; nothing else in the engine hard-codes a size.

use crate::error::EngineError;

/// Bounds and windows for the engine. `EngineLimits::default()` is what `pulse` runs with when no
/// flag overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Length of the sliding "active" window. A visitor is active at `now` when it has an event
    /// with `now - window_secs < ts <= now`.
    pub window_secs: u32,
    /// Events each website keeps per class (humans, bots) for the recent-events list. Must be at
    /// least `recent_limit`; headroom above it absorbs events that arrive out of order.
    pub ring_capacity: usize,
    /// Most events a realtime answer lists.
    pub recent_limit: usize,
    /// Most websites the engine holds.
    pub max_websites: usize,
    /// Bytes all websites' visitor windows and event tallies may hold together. A website past
    /// its share of a full budget counts visitors approximately until it fits again.
    pub visitor_memory_bytes: usize,
    /// Distinct texts a breakdown list (pages, referrers, custom events) holds per website and
    /// class; further values are counted under `(other)` until some leave the window.
    pub breakdown_values_per_list: usize,
}

impl EngineLimits {
    /// Default `window_secs`: 30 minutes.
    pub const DEFAULT_WINDOW_SECS: u32 = 30 * 60;
    /// Largest `window_secs`: 24 days. Breakdown nodes keep times as 32-bit millisecond
    /// offsets and move their base at most a window back, so a window must stay well under
    /// 2^31 ms; a realtime window is minutes long.
    pub const MAX_WINDOW_SECS: u32 = 24 * 24 * 3600;
    /// Largest `breakdown_values_per_list`: the three text lists' values must fit 16-bit ids.
    pub const MAX_BREAKDOWN_VALUES_PER_LIST: usize = 16_384;
    /// Default `ring_capacity`, in events per website and class.
    pub const DEFAULT_RING_CAPACITY: usize = 256;
    /// Default `recent_limit`, in events.
    pub const DEFAULT_RECENT_LIMIT: usize = 100;
    /// Default `max_websites`.
    pub const DEFAULT_MAX_WEBSITES: usize = 1_000;
    /// No budget: the engine alone never degrades. The server sets one from `--memory-limit`.
    pub const DEFAULT_VISITOR_MEMORY_BYTES: usize = usize::MAX;
    /// Default `breakdown_values_per_list`.
    pub const DEFAULT_BREAKDOWN_VALUES_PER_LIST: usize = 4_096;

    /// The window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        i64::from(self.window_secs) * 1000
    }

    /// Checks the relations between fields; the engine refuses limits that fail this.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.window_secs == 0 {
            return Err(EngineError::InvalidConfig("window_secs must be at least 1"));
        }
        if self.breakdown_values_per_list > Self::MAX_BREAKDOWN_VALUES_PER_LIST {
            return Err(EngineError::InvalidConfig(
                "breakdown_values_per_list must be at most 16384",
            ));
        }
        if self.window_secs > Self::MAX_WINDOW_SECS {
            return Err(EngineError::InvalidConfig(
                "window_secs must be at most 24 days",
            ));
        }
        if self.recent_limit == 0 {
            return Err(EngineError::InvalidConfig(
                "recent_limit must be at least 1",
            ));
        }
        if self.ring_capacity < self.recent_limit {
            return Err(EngineError::InvalidConfig(
                "ring_capacity must be at least recent_limit",
            ));
        }
        if self.max_websites == 0 {
            return Err(EngineError::InvalidConfig(
                "max_websites must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            window_secs: Self::DEFAULT_WINDOW_SECS,
            ring_capacity: Self::DEFAULT_RING_CAPACITY,
            recent_limit: Self::DEFAULT_RECENT_LIMIT,
            max_websites: Self::DEFAULT_MAX_WEBSITES,
            visitor_memory_bytes: Self::DEFAULT_VISITOR_MEMORY_BYTES,
            breakdown_values_per_list: Self::DEFAULT_BREAKDOWN_VALUES_PER_LIST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ring_below_limit_is_refused() {
        assert_eq!(EngineLimits::default().validate(), Ok(()));
        let limits = EngineLimits {
            ring_capacity: 99,
            ..EngineLimits::default()
        };
        assert!(limits.validate().is_err());
    }

    #[test]
    fn a_window_past_24_days_or_too_many_breakdown_values_is_refused() {
        let limits = |window_secs| EngineLimits {
            window_secs,
            ..EngineLimits::default()
        };
        assert_eq!(limits(EngineLimits::MAX_WINDOW_SECS).validate(), Ok(()));
        assert!(limits(EngineLimits::MAX_WINDOW_SECS + 1)
            .validate()
            .is_err());
    }
}
