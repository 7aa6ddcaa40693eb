//! `MemoryPlan`: how `--memory-limit` is divided among everything that grows with traffic, in
//! one place. The engine enforces its part (visitor windows and tallies) by accounting as it
//! goes; the server turns the other parts into hard caps — websites (rings), write-queue bytes,
//! request-body bytes in flight, connections and live streams.
//!
//! | part | share | enforced by |
//! |---|---|---|
//! | visitor windows + event tallies | 50% | `MemoryBudget`: approximate counting past it |
//! | event rings | 20% | fewer websites: `max_websites` is lowered to fit full rings |
//! | write queue | 10% | `EventLog`: collect answers 503 when the queued bytes would pass it |
//! | request bodies in flight | 10% | `BodyBudget`: bytes as received, ⅛ per client address; 503 past either |
//! | connections (buffers) | 8% | `max_connections` defaults to this share / 32 KiB |
//! | live streams | 2% | `LiveHub`: `max_streams` = this share / `STREAM_BYTES`; 503 past it |
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
/// Bytes one open live stream may hold beyond its connection's buffers (which `CONNECTION_BYTES`
/// counts): its subscription, timers and body state (under 1 KiB), and, for the case where every
/// stream watches a website of its own, that topic's frame — a realtime answer with its 100
/// recent events: 21.7 KB with 60-character paths and a referrer (BENCHMARKS.md, "Live stream").
pub const STREAM_BYTES: usize = 24 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub limit_bytes: u64,
    pub visitor_bytes: usize,
    pub ring_bytes: usize,
    pub queue_bytes: usize,
    pub body_bytes: usize,
    pub connection_bytes: usize,
    pub stream_bytes: usize,
    /// Websites whose full rings fit `ring_bytes` (at most the configured maximum).
    pub max_websites: usize,
    pub max_connections: usize,
    /// Live streams open at once: what `stream_bytes` holds, and never more than half the
    /// connections, so streams cannot fill the pool (every stream holds a connection).
    pub max_streams: usize,
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
        let connection_bytes = part(8);
        let stream_bytes = part(2);
        let max_connections = max_connections.unwrap_or_else(|| {
            (connection_bytes / CONNECTION_BYTES).clamp(16, MAX_CONNECTIONS_CAP)
        });
        Self {
            limit_bytes,
            visitor_bytes: part(50),
            ring_bytes,
            queue_bytes: part(10),
            body_bytes: part(10),
            connection_bytes,
            stream_bytes,
            max_websites: max_websites.min(ring_bytes / per_website).max(1),
            max_connections,
            max_streams: (stream_bytes / STREAM_BYTES)
                .min(max_connections / 2)
                .max(1),
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
            + plan.connection_bytes
            + plan.stream_bytes;
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
        // 2% of 512 MiB: 436 streams of 24 KiB.
        assert_eq!(plan.max_streams, plan.stream_bytes / STREAM_BYTES);
        assert_eq!(plan.max_streams, 436);
        let tiny = MemoryPlan::new(1 << 20, 256, 1000, Some(7));
        assert_eq!((tiny.max_websites, tiny.max_connections), (1, 7));
        assert_eq!(tiny.max_streams, 1, "one stream, however small the limit");
        // Streams never take more than half the connections.
        let few = MemoryPlan::new(512 << 20, 256, 1000, Some(10));
        assert_eq!(few.max_streams, 5);
    }

    #[test]
    fn the_default_limit_is_a_quarter_of_the_machine() {
        let limit = default_memory_limit();
        assert!(limit >= 64 << 20, "{limit}");
    }
}
