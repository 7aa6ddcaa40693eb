//! The load harness behind `pulse-load`: simulated visitors sending collect requests over
//! keep-alive HTTP/1.1 connections at a steady rate or as fast as the connections allow, a
//! realtime poller measuring read latency meanwhile, and a `Report` of what the server answered.
//!
//! `run(&config, agents, stop)` is the whole API; the binary only parses flags and prints.
//!
//! # Layout
//! - this file: `LoadConfig`, `Mode`, `LoadError`.
//! - `driver`: `run` — connection tasks, pacing, per-connection counters, progress lines.
//! - `traffic`: user agents, the visitor model, paths, referrers, request formatting.
//! - `realtime`: the realtime poller thread. `histogram`: `LatencyHistogram`.
//! - `rng`: `SplitMix64` and the `Zipf` sampler.
//! - `report`: `Report`, `Counts` and the summary line.
//!
//! The HTTP/1.1 client (async for load, blocking for the poller) and the `/proc` readers are the
//! test kit's (`pulse_testkit::http`, `pulse_testkit::procfs`), shared with the tests.

use std::net::SocketAddr;
use std::time::Duration;

pub mod driver;
pub mod histogram;
pub mod realtime;
pub mod report;
pub mod rng;
pub mod traffic;

pub use driver::run;
pub use report::{Counts, Report};
pub use traffic::UserAgents;

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous one is answered.
    Max,
    /// A steady rate of events per second, spread over the connections. 0 sends nothing (only
    /// the realtime poller runs).
    Rate(f64),
}

impl Mode {
    /// A rate of 0: no events, only the realtime poller.
    pub fn is_poll_only(&self) -> bool {
        matches!(self, Mode::Rate(rate) if *rate <= 0.0)
    }
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server.
    pub target: SocketAddr,
    pub website: String,
    /// Create the website first (POST /api/websites; 409 means it exists, which is fine).
    pub create_website: bool,
    /// Bearer token for the API calls (not needed by collect).
    pub token: Option<String>,
    pub mode: Mode,
    /// Stop after this long; `None` runs until `stop` completes or `max_events` are sent.
    pub duration: Option<Duration>,
    /// Stop after sending this many events.
    pub max_events: Option<u64>,
    pub connections: usize,
    /// Events per request: 1 sends single event objects, 2..=50 arrays.
    pub batch: usize,
    /// Share of visitors that are bots (bot User-Agents), 0..=1.
    pub bot_share: f64,
    /// Share of events that are custom events rather than pageviews, 0..=1.
    pub custom_share: f64,
    /// Size of the visitor population; request `k` comes from visitor `first_visitor + k % visitors`.
    pub visitors: u64,
    pub first_visitor: u64,
    /// Distinct page paths, ranked by a Zipf law with this exponent.
    pub paths: usize,
    pub zipf_exponent: f64,
    pub seed: u64,
    /// Poll realtime this often; `None` does not poll.
    pub realtime_poll: Option<Duration>,
    pub realtime_include_bots: bool,
    /// The server's process id, for RSS and CPU from /proc.
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr this often.
    pub progress_every: Option<Duration>,
    /// How long in-flight requests get to finish once the run stops.
    pub grace: Duration,
    /// Free-form name carried into the report (a run.sh scenario).
    pub label: Option<String>,
    /// Worker threads of the runtime driving the load, for the report only.
    pub threads: Option<usize>,
}

impl LoadConfig {
    /// Defaults for a server at `target`: 100 events/s for 10 s on 8 connections, 10 % bots.
    pub fn new(target: SocketAddr, website: &str) -> Self {
        Self {
            target,
            website: website.to_owned(),
            create_website: true,
            token: None,
            mode: Mode::Rate(100.0),
            duration: Some(Duration::from_secs(10)),
            max_events: None,
            connections: 8,
            batch: 1,
            bot_share: 0.1,
            custom_share: 0.1,
            visitors: 100_000,
            first_visitor: 0,
            paths: 200,
            zipf_exponent: 1.0,
            seed: 1,
            realtime_poll: Some(Duration::from_millis(100)),
            realtime_include_bots: false,
            server_pid: None,
            progress_every: None,
            grace: Duration::from_secs(5),
            label: None,
            threads: None,
        }
    }

    /// Checks the settings against the server's and the harness's limits.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        if self.connections == 0 {
            return bad("--connections must be at least 1".to_owned());
        }
        if !(1..=traffic::MAX_BATCH).contains(&self.batch) {
            return bad(format!("--batch must be 1 to {}", traffic::MAX_BATCH));
        }
        for (name, share) in [
            ("--bot-share", self.bot_share),
            ("--custom-share", self.custom_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return bad(format!("{name} must be between 0 and 1, not {share}"));
            }
        }
        if self.visitors == 0 || self.first_visitor + self.visitors > traffic::MAX_VISITORS {
            return bad(format!(
                "visitors {}..{} do not fit in 10.0.0.0/8 ({} addresses)",
                self.first_visitor,
                self.first_visitor + self.visitors,
                traffic::MAX_VISITORS
            ));
        }
        if self.paths == 0 {
            return bad("--paths must be at least 1".to_owned());
        }
        if let Mode::Rate(rate) = self.mode {
            if !(rate.is_finite() && rate >= 0.0) {
                return bad(format!("--rate must be a number >= 0, not {rate}"));
            }
        }
        if self.realtime_poll.is_some_and(|p| p.is_zero()) {
            return bad("--realtime-poll-ms must be at least 1".to_owned());
        }
        if self.website.is_empty() || self.website.len() > 64 {
            return bad("--website must be 1 to 64 characters".to_owned());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("cannot set up the run: {0}")]
    Setup(String),
}
