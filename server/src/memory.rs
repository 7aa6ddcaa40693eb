//! `MemoryPlan`: how `--memory-limit` is divided among everything that grows with traffic, in
//! one place. The engine enforces its part (visitor windows and tallies) by accounting as it
//! goes; the server turns the other parts into hard caps — websites (rings), write-queue bytes,
//! request-body bytes in flight, and connections.
//!
//! | part | share | enforced by |
//! |---|---|---|
//! | visitor windows + event tallies | 50% | `MemoryBudget`: approximate counting past it |
//! | event rings | 20% | fewer websites: `max_websites` is lowered to fit full rings |
//! | write queue | 10% | `EventLog`: collect answers 503 when the queued bytes would pass it |
//! | request bodies in flight | 10% | `BodyBudget`: bytes as received, ⅛ per client address; 503 past either |
//! | connections (buffers) | 10% | `max_connections` defaults to this share / 32 KiB |
//!
//! Not counted: the binary, the runtime, thread stacks and the allocator's own overhead — the
//! fixed overhead that README documents next to `--memory-limit`.

use pulse_engine::EngineLimits;

/// Estimated bytes one event holds in a ring: the slot, the `Event`, its `Arc` headers and a
/// typical path and referrer.
pub const RING_EVENT_BYTES: usize = 320;
/// Estimated bytes per open connection: hyper's read and write buffers and the task.
pub const CONNECTION_BYTES: usize = 32 * 1024;
/// Upper bound on connections when nothing else limits them.
pub const MAX_CONNECTIONS_CAP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub limit_bytes: u64,
    pub visitor_bytes: usize,
    pub ring_bytes: usize,
    pub queue_bytes: usize,
    pub body_bytes: usize,
    pub connection_bytes: usize,
    /// Websites whose full rings fit `ring_bytes` (at most the configured maximum).
    pub max_websites: usize,
    pub max_connections: usize,
}

impl MemoryPlan {
    pub fn new(
        limit_bytes: u64,
        ring_capacity: usize,
        max_websites: usize,
        max_connections: Option<usize>,
    ) -> Self {
        let limit = usize::try_from(limit_bytes).unwrap_or(usize::MAX);
        let part = |percent: usize| limit / 100 * percent;
        let ring_bytes = part(20);
        let per_website = ring_capacity.max(1) * 2 * RING_EVENT_BYTES;
        let connection_bytes = part(10);
        Self {
            limit_bytes,
            visitor_bytes: part(50),
            ring_bytes,
            queue_bytes: part(10),
            body_bytes: part(10),
            connection_bytes,
            max_websites: max_websites.min(ring_bytes / per_website).max(1),
            max_connections: max_connections.unwrap_or_else(|| {
                (connection_bytes / CONNECTION_BYTES).clamp(16, MAX_CONNECTIONS_CAP)
            }),
        }
    }

    /// The engine's limits under this plan.
    pub fn engine_limits(&self, base: EngineLimits) -> EngineLimits {
        EngineLimits {
            max_websites: self.max_websites,
            visitor_memory_bytes: self.visitor_bytes,
            ..base
        }
    }
}

/// A quarter of the machine's memory (from /proc/meminfo), or 1 GiB when it cannot be read.
pub fn default_memory_limit() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        });
    total_kib.map_or(1 << 30, |kib| kib * 1024 / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_divides_the_limit_and_caps_websites_and_connections() {
        let plan = MemoryPlan::new(512 << 20, 256, 1000, None);
        assert_eq!(plan.visitor_bytes, (512 << 20) / 100 * 50);
        let parts = plan.visitor_bytes
            + plan.ring_bytes
            + plan.queue_bytes
            + plan.body_bytes
            + plan.connection_bytes;
        assert!(parts as u64 <= plan.limit_bytes);
        // 20% of 512 MiB holds ~655 websites with full rings of 2 × 256 events.
        assert_eq!(
            plan.max_websites,
            plan.ring_bytes / (256 * 2 * RING_EVENT_BYTES)
        );
        assert!(plan.max_websites < 1000);
        assert_eq!(
            plan.max_connections,
            plan.connection_bytes / CONNECTION_BYTES
        );
        let tiny = MemoryPlan::new(1 << 20, 256, 1000, Some(7));
        assert_eq!((tiny.max_websites, tiny.max_connections), (1, 7));
    }

    #[test]
    fn the_default_limit_is_a_quarter_of_the_machine() {
        let limit = default_memory_limit();
        assert!(limit >= 64 << 20, "{limit}");
    }
}
