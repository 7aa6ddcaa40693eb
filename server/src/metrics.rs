//! `Metrics`: the server's counters, gauges and latency histograms, rendered in the Prometheus
//! text format for `GET /metrics`. Updating a metric is a relaxed atomic add (a map lookup under
//! a read lock for labelled counters); nothing here allocates on the hot path after warm-up.
//!
//! What is measured lives where it happens (routes, the event log); this module only stores and
//! renders. Gauges that are cheap to read on demand (queue depth, budget use, segment files) are
//! read at scrape time by `routes::metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::PoisonError;
use std::sync::RwLock;
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket upper bounds in seconds: 50 µs to 2.5 s, roughly ×2–2.5 apart.
const BUCKETS_SECS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_SECS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS_SECS.iter().position(|le| secs <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, bucket) in BUCKETS_SECS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Counters keyed by a small, closed set of label values (routes, status codes, reasons).
#[derive(Debug, Default)]
pub struct LabeledCounter(RwLock<BTreeMap<(&'static str, u16), Counter>>);

impl LabeledCounter {
    pub fn add(&self, label: &'static str, code: u16, n: u64) {
        {
            let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = map.get(&(label, code)) {
                counter.add(n);
                return;
            }
        }
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.entry((label, code)).or_default().add(n);
    }

    pub fn get(&self, label: &'static str, code: u16) -> u64 {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&(label, code)).map_or(0, Counter::get)
    }

    fn for_each(&self, mut f: impl FnMut(&'static str, u16, u64)) {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        for ((label, code), counter) in map.iter() {
            f(label, *code, counter.get());
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub events_accepted: Counter,
    /// Events answered 202 but neither stored nor counted, by reason (`dnt`).
    pub events_not_recorded: LabeledCounter,
    /// Collect requests refused, by error code (the `u16` is the HTTP status).
    pub collect_rejected: LabeledCounter,
    /// HTTP requests by route and status.
    pub http_requests: LabeledCounter,
    pub collect_latency: Histogram,
    pub realtime_latency: Histogram,
    /// Time to write one batch of records to the segment (the `write` call).
    pub log_flush: Histogram,
    /// Time of one fsync of the segment.
    pub log_fsync: Histogram,
}

/// Writes `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line; `labels` is `key="value",...` or empty.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

impl Metrics {
    /// Renders the counters and histograms this struct holds.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "pulse_events_accepted_total",
            "counter",
            "Events answered 202 and recorded.",
        );
        sample(
            out,
            "pulse_events_accepted_total",
            "",
            self.events_accepted.get(),
        );

        header(
            out,
            "pulse_events_not_recorded_total",
            "counter",
            "Events answered 202 but deliberately not stored (privacy signals).",
        );
        self.events_not_recorded.for_each(|reason, _, n| {
            sample(
                out,
                "pulse_events_not_recorded_total",
                &format!("reason=\"{reason}\""),
                n,
            );
        });

        header(
            out,
            "pulse_collect_rejected_total",
            "counter",
            "Collect requests refused, by error code.",
        );
        self.collect_rejected.for_each(|reason, status, n| {
            let labels = format!("reason=\"{reason}\",status=\"{status}\"");
            sample(out, "pulse_collect_rejected_total", &labels, n);
        });

        header(
            out,
            "pulse_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        self.http_requests.for_each(|route, status, n| {
            let labels = format!("route=\"{route}\",status=\"{status}\"");
            sample(out, "pulse_http_requests_total", &labels, n);
        });

        let name = "pulse_http_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Latency of collect and realtime requests.",
        );
        self.collect_latency.render(out, name, "route=\"collect\"");
        self.realtime_latency
            .render(out, name, "route=\"realtime\"");

        let name = "pulse_log_flush_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Time to write a batch of records to the segment.",
        );
        self.log_flush.render(out, name, "");
        let name = "pulse_log_fsync_duration_seconds";
        header(out, name, "histogram", "Time of one fsync of the segment.");
        self.log_fsync.render(out, name, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"a\"");
        assert!(
            out.contains("x_bucket{route=\"a\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{route=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"a\",le=\"2.5\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{route=\"a\"} 3\n"));
    }

    #[test]
    fn labeled_counters_add_per_label() {
        let c = LabeledCounter::default();
        c.add("collect", 202, 2);
        c.add("collect", 202, 1);
        c.add("collect", 400, 1);
        assert_eq!(
            (c.get("collect", 202), c.get("collect", 400), c.get("x", 1)),
            (3, 1, 0)
        );
    }
}
