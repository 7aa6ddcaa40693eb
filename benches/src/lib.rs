//! Shared fixtures for Pulse's benches: realistic events and engines filled to a given size.
//!
//! # Layout
//! - this file: `EventFactory` (events with shared strings, as the server builds them) and
//!   `filled_engine` (one website with N active visitors).
//! - `load`: the HTTP load harness behind the `pulse-load` binary (simulated visitors, realtime
//!   latency, counts and reports); `src/bin/http-ceiling.rs` is its do-nothing baseline server.
//! - `adversary`: idle, slow-header and stalled-body connections from a second loopback address,
//!   behind the `pulse-adversary` binary (the soak in `run.sh`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub mod adversary;
pub mod load;

use pulse_engine::{
    visitor_id, Browser, DeviceType, Engine, EngineLimits, Event, EventKind, Salt, Timestamp,
    VisitorId, WebsiteId,
};

/// 2026-03-03 10:00:00 UTC, the start of every bench's clock.
pub const T0_MS: i64 = 1_772_532_000_000;

/// Builds events for one website the way the server does: interned-looking shared paths.
#[derive(Debug)]
pub struct EventFactory {
    website: WebsiteId,
    paths: Vec<Arc<str>>,
    referrer: Arc<str>,
    salt: Salt,
}

impl EventFactory {
    pub fn new(website: &str) -> Self {
        let paths = ["/", "/pricing", "/blog/launch", "/docs/start", "/about"]
            .into_iter()
            .map(Arc::from)
            .collect();
        Self {
            website: WebsiteId::new(website).unwrap_or_else(|_| unreachable!("valid literal")),
            paths,
            referrer: Arc::from("news.ycombinator.com"),
            salt: Salt::from_bytes([42; 32]),
        }
    }

    pub fn website(&self) -> &WebsiteId {
        &self.website
    }

    /// Event number `n` at `ts_ms` from visitor `visitor`.
    pub fn event(&self, n: u64, ts_ms: i64, visitor: VisitorId) -> Event {
        Event {
            website: self.website.clone(),
            ts: Timestamp::from_unix_ms(ts_ms).unwrap_or_else(|_| unreachable!("bench clock")),
            visitor,
            kind: EventKind::Pageview,
            target: Arc::clone(&self.paths[(n % self.paths.len() as u64) as usize]),
            referrer_domain: (n % 3 == 0).then(|| Arc::clone(&self.referrer)),
            is_bot: n % 10 == 9,
            browser: Browser::Chrome,
            device: DeviceType::Desktop,
            country: None,
        }
    }

    /// The salted id of simulated client `client` (distinct IPv4 per client, one User-Agent).
    pub fn hashed_visitor(&self, client: u64) -> VisitorId {
        let ip = IpAddr::V4(Ipv4Addr::from((client as u32).wrapping_add(0x0a00_0000)));
        visitor_id(
            &self.salt,
            ip,
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
    }
}

/// Spreads small integers into id-like values without hashing cost.
pub fn cheap_visitor(client: u64) -> VisitorId {
    VisitorId(client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555)
}

/// An engine with one website holding `visitors` active human visitors (one event each, spread
/// over the last 29 minutes), and the `now` at which they are all active.
pub fn filled_engine(factory: &EventFactory, visitors: u64) -> (Engine, i64) {
    let engine = Engine::new(EngineLimits::default()).unwrap_or_else(|_| unreachable!("defaults"));
    engine
        .add_website(factory.website().clone())
        .unwrap_or_else(|_| unreachable!("fresh engine"));
    let span_ms = 29 * 60 * 1000;
    for v in 0..visitors {
        let ts = T0_MS + (v as i64 * span_ms) / visitors.max(1) as i64;
        let mut event = factory.event(v, ts, cheap_visitor(v));
        event.is_bot = false;
        let _ = engine.ingest(event, None);
    }
    (engine, T0_MS + span_ms)
}
