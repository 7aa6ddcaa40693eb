//! What a load run reports: `Report` (serialised as the `--json` file) and its one-line human
//! summary. Counts are the harness's own: every request it completed is in exactly one outcome
//! bucket (202, 429, 503, other status, connection error), and a request it started but never
//! saw finish is `unfinished`.

use serde::Serialize;

use crate::load::histogram::{LatencyHistogram, RELATIVE_RESOLUTION};
use crate::load::realtime::PollStats;

/// Request and event counts, summed over connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests written (or attempted) to the server.
    pub requests_started: u64,
    /// Requests with an outcome: a status or a connection error.
    pub requests: u64,
    /// Events in `requests` (any outcome).
    pub events_sent: u64,
    /// Events in requests answered 202.
    pub events_accepted: u64,
    pub status_202: u64,
    pub status_429: u64,
    pub status_503: u64,
    pub status_other: u64,
    /// Requests that failed at the connection level; the server may or may not have kept them.
    pub connection_errors: u64,
    /// Failed attempts to open a connection (no request was sent on them).
    pub connect_failures: u64,
    /// Events sent by visitors the harness labelled bots (bot User-Agents), any outcome.
    pub bot_events_sent: u64,
    pub bot_events_accepted: u64,
    pub custom_events_accepted: u64,
    /// Distinct visitors (IP and User-Agent pairs) with at least one 202.
    pub distinct_human_visitors: u64,
    pub distinct_bot_visitors: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests_started += other.requests_started;
        self.requests += other.requests;
        self.events_sent += other.events_sent;
        self.events_accepted += other.events_accepted;
        self.status_202 += other.status_202;
        self.status_429 += other.status_429;
        self.status_503 += other.status_503;
        self.status_other += other.status_other;
        self.connection_errors += other.connection_errors;
        self.connect_failures += other.connect_failures;
        self.bot_events_sent += other.bot_events_sent;
        self.bot_events_accepted += other.bot_events_accepted;
        self.custom_events_accepted += other.custom_events_accepted;
        self.distinct_human_visitors += other.distinct_human_visitors;
        self.distinct_bot_visitors += other.distinct_bot_visitors;
    }

    pub fn distinct_visitors(&self) -> u64 {
        self.distinct_human_visitors + self.distinct_bot_visitors
    }

    /// Requests started whose outcome was never seen (cut off by the stop's grace period).
    pub fn unfinished(&self) -> u64 {
        self.requests_started.saturating_sub(self.requests)
    }

    /// Requests not answered 202, connection errors included.
    pub fn failed_requests(&self) -> u64 {
        self.requests - self.status_202
    }
}

/// Realtime latency percentiles, in microseconds, nearest-rank over the 200 answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RealtimeReport {
    pub polls_ok: u64,
    pub polls_non_200: u64,
    pub poll_errors: u64,
    pub last_error: Option<String>,
    pub min_us: Option<f64>,
    pub mean_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Percentiles are bucket upper edges: at most this fraction above the true value.
    pub resolution: f64,
}

impl RealtimeReport {
    pub fn from_stats(stats: &PollStats) -> Self {
        let h: &LatencyHistogram = &stats.latency;
        let us = |ns: Option<u64>| ns.map(|n| n as f64 / 1000.0);
        Self {
            polls_ok: stats.ok,
            polls_non_200: stats.non_200,
            poll_errors: stats.errors,
            last_error: stats.last_error.clone(),
            min_us: us(h.min_ns()),
            mean_us: h.mean_ns().map(|n| n / 1000.0),
            p50_us: us(h.percentile_ns(0.5)),
            p90_us: us(h.percentile_ns(0.9)),
            p99_us: us(h.percentile_ns(0.99)),
            p999_us: us(h.percentile_ns(0.999)),
            max_us: us(h.max_ns()),
            resolution: RELATIVE_RESOLUTION,
        }
    }
}

/// Collect latency percentiles, in microseconds: from writing a request to its complete answer
/// (any status; connection errors are counted, not timed). In rate mode it is measured from the
/// send, not from when the request was due.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CollectLatency {
    pub answered: u64,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Percentiles are bucket upper edges: at most this fraction above the true value.
    pub resolution: f64,
}

impl CollectLatency {
    pub fn from_histogram(h: &LatencyHistogram) -> Self {
        let us = |ns: Option<u64>| ns.map(|n| n as f64 / 1000.0);
        Self {
            answered: h.count(),
            p50_us: us(h.percentile_ns(0.5)),
            p90_us: us(h.percentile_ns(0.9)),
            p99_us: us(h.percentile_ns(0.99)),
            p999_us: us(h.percentile_ns(0.999)),
            max_us: us(h.max_ns()),
            resolution: RELATIVE_RESOLUTION,
        }
    }
}

/// CPU and memory of a process over the run (from /proc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub rss_kib_start: Option<u64>,
    pub rss_kib_end: Option<u64>,
    pub rss_kib_peak: Option<u64>,
    /// CPU seconds used during the run divided by its wall time: 1.0 is one core busy.
    pub cpu_cores: Option<f64>,
}

/// The server's own realtime figures for the website, read once the run is over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerRealtime {
    /// With `include_bots=true`.
    pub active_visitors: u64,
    pub events_in_window: u64,
    /// With `include_bots=false`.
    pub human_active_visitors: u64,
    pub human_events_in_window: u64,
    /// The server said its visitor count is an estimate (`"approximate": true`, its memory
    /// budget for exact windows is used up); absent in the answer means exact.
    pub approximate: bool,
}

/// Everything one run measured, with the settings that produced it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub target: String,
    pub website: String,
    /// `max`, `rate` or `poll-only`.
    pub mode: String,
    pub rate: Option<f64>,
    pub connections: usize,
    pub batch: usize,
    pub threads: Option<usize>,
    pub bot_share: f64,
    pub custom_share: f64,
    pub visitors: u64,
    pub user_agents: String,
    /// Wall time from the start signal until every connection finished.
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    pub requests_per_sec: f64,
    pub counts: Counts,
    pub distinct_visitors: u64,
    pub unfinished_requests: u64,
    pub realtime: Option<RealtimeReport>,
    /// `None` when no collect was sent (poll-only).
    pub collect_latency: Option<CollectLatency>,
    pub server: Option<ProcessReport>,
    pub client: Option<ProcessReport>,
    /// What the server's realtime API said after the run (`None` if it could not be read).
    pub server_realtime: Option<ServerRealtime>,
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(us) if us >= 10_000.0 => format!("{:.1}ms", us / 1000.0),
        Some(us) if us >= 1000.0 => format!("{:.2}ms", us / 1000.0),
        Some(us) => format!("{us:.0}µs"),
    }
}

fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "-".to_owned(),
        |k| format!("{:.1}MiB", k as f64 / 1024.0),
    )
}

impl Report {
    /// One line: throughput, outcomes, realtime percentiles, server memory and CPU.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        let mut line = format!(
            "{}{:.0} events/s {:.0} req/s over {:.1}s | 202 {} 429 {} 503 {} other {} conn-err {}",
            self.label
                .as_deref()
                .map_or_else(String::new, |l| format!("[{l}] ")),
            self.events_per_sec,
            self.requests_per_sec,
            self.elapsed_secs,
            c.status_202,
            c.status_429,
            c.status_503,
            c.status_other,
            c.connection_errors,
        );
        if self.unfinished_requests > 0 {
            line.push_str(&format!(" unfinished {}", self.unfinished_requests));
        }
        line.push_str(&format!(
            " | accepted {} events ({} bot, {} custom), {} visitors",
            c.events_accepted,
            c.bot_events_accepted,
            c.custom_events_accepted,
            c.distinct_visitors()
        ));
        if let Some(cl) = self.collect_latency.as_ref().filter(|cl| cl.answered > 0) {
            line.push_str(&format!(
                " | collect p50 {} p99 {} p999 {} max {}",
                fmt_us(cl.p50_us),
                fmt_us(cl.p99_us),
                fmt_us(cl.p999_us),
                fmt_us(cl.max_us)
            ));
        }
        if let Some(rt) = &self.realtime {
            line.push_str(&format!(
                " | realtime n={} p50 {} p99 {} p999 {} max {}",
                rt.polls_ok,
                fmt_us(rt.p50_us),
                fmt_us(rt.p99_us),
                fmt_us(rt.p999_us),
                fmt_us(rt.max_us)
            ));
            if rt.polls_non_200 + rt.poll_errors > 0 {
                line.push_str(&format!(" (failed {})", rt.polls_non_200 + rt.poll_errors));
            }
        }
        if let Some(server) = &self.server {
            line.push_str(&format!(
                " | server rss {} cpu {}",
                fmt_kib(server.rss_kib_end),
                server
                    .cpu_cores
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.2} cores"))
            ));
        }
        if let Some(sr) = &self.server_realtime {
            line.push_str(&format!(
                " | server window {} events, {}{} visitors",
                sr.events_in_window,
                if sr.approximate { "≈" } else { "" },
                sr.active_visitors
            ));
        }
        if let Some(client) = &self.client {
            if let Some(cores) = client.cpu_cores {
                line.push_str(&format!(" | client cpu {cores:.2} cores"));
            }
        }
        line
    }
}
