//! `Metrics`: the server's counters and latency histograms in a `prometheus-client` registry,
//! their typed label sets, and the encoding of one scrape — the registry plus the gauges read
//! at scrape time (`Readings`) — as Prometheus text (0.0.4) or OpenMetrics text.
//!
//! This module owns the exposition contract the README documents: every metric name, help
//! text, unit, label name and label value is spelled out here, once. It reads no server state
//! and knows no HTTP: what is measured is recorded where it happens (the router's request
//! layer, collect, the event log), and `routes::scrape` reads the gauges and picks the format.
//! Recording is a relaxed atomic add, plus a read-locked map lookup for labelled counters and
//! a short uncontended mutex for histograms; nothing allocates on the hot path after warm-up.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue,
    EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::checkpoints::CheckpointReading;

/// Every metric name starts `pulse_`.
const PREFIX: &str = "pulse";

/// Latency bucket upper bounds in seconds: 50 µs to 2.5 s, roughly ×2–2.5 apart.
const BUCKETS_SECS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// The `route` label of `pulse_http_requests_total` and `pulse_http_request_duration_seconds`.
/// `routes` maps each path pattern it serves to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Collect,
    Realtime,
    /// The realtime stream (`/api/websites/{id}/realtime/stream`): counted, not timed (a stream
    /// lasts as long as its client, and its first message is the same rendering as `Realtime`'s).
    RealtimeStream,
    /// The realtime breakdown (`/api/websites/{id}/realtime/breakdown`).
    Breakdown,
    /// The website list and single websites (`/api/websites`, `/api/websites/{id}`).
    Websites,
    Healthz,
    Readyz,
    Metrics,
    /// The dashboard and the tracker script.
    Assets,
    /// No route matched (a 404 or 405 fallback).
    Unmatched,
}

impl Route {
    /// The label value; dashboards select on it, so each is written out.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Collect => "collect",
            Self::Realtime => "realtime",
            Self::RealtimeStream => "realtime_stream",
            Self::Breakdown => "breakdown",
            Self::Websites => "websites",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Assets => "assets",
            Self::Unmatched => "unmatched",
        }
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

/// Why events answered 202 were not stored: the `reason` label of
/// `pulse_events_not_recorded_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotRecorded {
    /// `DNT: 1` or `Sec-GPC: 1` to a website that respects them.
    Dnt,
}

impl NotRecorded {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dnt => "dnt",
        }
    }
}

impl EncodeLabelValue for NotRecorded {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

/// What holds memory: the `component` label of `pulse_memory_bytes` and
/// `pulse_memory_budget_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    VisitorWindows,
    Rings,
    WriteQueue,
    RequestBodies,
    /// What the open live streams hold against their share (`STREAM_BYTES` each).
    LiveStreams,
}

impl Component {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::VisitorWindows => "visitor_windows",
            Self::Rings => "rings",
            Self::WriteQueue => "write_queue",
            Self::RequestBodies => "request_bodies",
            Self::LiveStreams => "live_streams",
        }
    }
}

impl EncodeLabelValue for Component {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

/// `reason` is the `ApiError` code, which `error.rs` and each route already spell out once.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    reason: &'static str,
    status: u16,
}

/// `reason` is a `ConnectionsShed` field's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotRecordedLabels {
    reason: NotRecorded,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: Component,
}

/// The text format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    PrometheusText,
    /// OpenMetrics 1.0 text: counter families are typed without `_total`, units get `# UNIT`
    /// lines, and the body ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::PrometheusText => prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The counters and histograms that handlers and the event log update.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events_accepted: Counter,
    segments_restored: Counter,
    events_not_recorded: Family<NotRecordedLabels, Counter>,
    collect_rejected: Family<RejectionLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    /// The `route="collect",status="202"` series of `http_requests`, held once it exists (it is
    /// created by the first accepted collect, so a scrape shows it only from then, as for every
    /// other series): counting the hottest answer skips the family's lock and map lookup.
    collect_accepted_requests: OnceLock<Counter>,
    /// The `route="collect"` and `route="realtime"` series of the request-duration family,
    /// created up front (so both are scraped from the start) and held so that timing a request
    /// skips the family's map lookup.
    collect_latency: Histogram,
    realtime_latency: Histogram,
    log_flush: Histogram,
    log_fsync: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS_SECS)
}

fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.observe(elapsed.as_secs_f64());
}

impl Metrics {
    /// Registers every counter and histogram under its documented name. `prometheus-client`
    /// appends `_total` to counters and the unit to names registered with one.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let events_accepted = Counter::default();
        registry.register(
            "events_accepted",
            "Events answered 202 and recorded",
            events_accepted.clone(),
        );
        let segments_restored = Counter::default();
        registry.register(
            "log_segments_restored",
            "Segment files deleted under the running server and written back from open handles",
            segments_restored.clone(),
        );
        let events_not_recorded = Family::default();
        registry.register(
            "events_not_recorded",
            "Events answered 202 but deliberately not stored (privacy signals)",
            events_not_recorded.clone(),
        );
        let collect_rejected = Family::default();
        registry.register(
            "collect_rejected",
            "Collect requests refused, by error code",
            collect_rejected.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let request_duration: Family<RouteLabels, Histogram> =
            Family::new_with_constructor(latency_histogram);
        let route_latency = |route| {
            request_duration
                .get_or_create(&RouteLabels { route })
                .clone()
        };
        let collect_latency = route_latency(Route::Collect);
        let realtime_latency = route_latency(Route::Realtime);
        registry.register_with_unit(
            "http_request_duration",
            "Latency of collect and realtime requests",
            Unit::Seconds,
            request_duration,
        );
        let log_flush = latency_histogram();
        registry.register_with_unit(
            "log_flush_duration",
            "Time to write a batch of records to the segment",
            Unit::Seconds,
            log_flush.clone(),
        );
        let log_fsync = latency_histogram();
        registry.register_with_unit(
            "log_fsync_duration",
            "Time of one fsync of the segment",
            Unit::Seconds,
            log_fsync.clone(),
        );
        Self {
            registry,
            events_accepted,
            segments_restored,
            events_not_recorded,
            collect_rejected,
            http_requests,
            collect_accepted_requests: OnceLock::new(),
            collect_latency,
            realtime_latency,
            log_flush,
            log_fsync,
        }
    }

    /// Counts one answered request; times it when it is collect or realtime.
    pub fn record_request(&self, route: Route, status: u16, elapsed: Duration) {
        let labels = RequestLabels { route, status };
        if (route, status) == (Route::Collect, 202) {
            self.collect_accepted_requests
                .get_or_init(|| self.http_requests.get_or_create(&labels).clone())
                .inc();
        } else {
            self.http_requests.get_or_create(&labels).inc();
        }
        match route {
            Route::Collect => observe(&self.collect_latency, elapsed),
            Route::Realtime => observe(&self.realtime_latency, elapsed),
            _ => {}
        }
    }

    /// Events answered 202 and recorded.
    pub fn record_accepted(&self, events: u64) {
        self.events_accepted.inc_by(events);
    }

    /// Events answered 202 but not stored, and why.
    pub fn record_not_recorded(&self, reason: NotRecorded, events: u64) {
        self.events_not_recorded
            .get_or_create(&NotRecordedLabels { reason })
            .inc_by(events);
    }

    /// A collect request refused with the error `code` and HTTP `status`.
    pub fn record_rejection(&self, code: &'static str, status: u16) {
        self.collect_rejected
            .get_or_create(&RejectionLabels {
                reason: code,
                status,
            })
            .inc();
    }

    /// Segment files that were deleted under the server and written back.
    pub fn record_segments_restored(&self, segments: u64) {
        self.segments_restored.inc_by(segments);
    }

    /// One write of a batch to the segment.
    pub fn record_log_flush(&self, elapsed: Duration) {
        observe(&self.log_flush, elapsed);
    }

    /// One fsync of the segment.
    pub fn record_log_fsync(&self, elapsed: Duration) {
        observe(&self.log_fsync, elapsed);
    }

    /// One scrape in `format`: the counters and histograms, then `readings`.
    pub fn encode(&self, readings: Readings, format: Format) -> Result<String, fmt::Error> {
        // The gauges go through a registry of their own, made per scrape: a `Collector` is the
        // library's way to emit values read on demand, and handing it plain numbers keeps this
        // module free of server state (a collector holding the state would make an `Arc` cycle
        // through the event log, which holds `Metrics`). Unlike gauges stored here and set
        // before encoding, two concurrent scrapes cannot interleave their values, and a reading
        // that does not exist yet (the replay, RSS off Linux) is left out rather than shown as 0.
        let mut scraped = Registry::with_prefix(PREFIX);
        scraped.register_collector(Box::new(readings));
        let mut out = String::with_capacity(16 * 1024);
        match format {
            Format::PrometheusText => {
                prometheus_text::encode(&mut out, &self.registry)?;
                prometheus_text::encode(&mut out, &scraped)?;
            }
            Format::OpenMetrics => {
                text::encode_registry(&mut out, &self.registry)?;
                text::encode_registry(&mut out, &scraped)?;
                text::encode_eof(&mut out)?;
            }
        }
        Ok(out)
    }
}

/// Bytes held by one component and the most it may hold.
#[derive(Clone, Copy, Debug)]
pub struct MemoryReading {
    pub component: Component,
    pub used_bytes: usize,
    pub budget_bytes: usize,
}

/// What the start-up replay did.
#[derive(Clone, Copy, Debug)]
pub struct ReplayReading {
    pub duration: Duration,
    pub events: u64,
    pub corrupt_segments: usize,
    /// Events stamped in the future, counted as of now (see `event_log`).
    pub future_events: u64,
    pub torn_tail_bytes: u64,
}

/// Gauges read from the server at scrape time; `routes::scrape` fills them in.
#[derive(Clone, Debug)]
pub struct Readings {
    pub write_queue_depth: usize,
    pub memory: Vec<MemoryReading>,
    pub memory_limit_bytes: u64,
    /// `None` where /proc is not readable.
    pub resident_bytes: Option<u64>,
    pub websites: usize,
    pub approximate_websites: usize,
    pub connections: usize,
    pub connections_max: usize,
    /// Connections the pool refused or closed, since start (`connections::ShedCounts`).
    pub connections_shed: ConnectionsShed,
    /// Live streams open now, and most that may be (`LiveHub`).
    pub live_streams: usize,
    pub live_streams_max: usize,
    pub log_segments: usize,
    pub log_segment_bytes: u64,
    /// `None` until the replay has finished.
    pub replay: Option<ReplayReading>,
    /// Whether the event log refuses new events (full or failing disk, deleted segments).
    pub log_stalled: bool,
    /// Bytes free for the event log on its file system, when they can be read.
    pub log_disk_available_bytes: Option<u64>,
    /// How far the server's clock runs ahead of the system clock after it stepped back.
    pub clock_ahead: Duration,
    /// The newest checkpoint, loaded or written; `None` while there is none.
    pub checkpoint: Option<CheckpointReading>,
    /// Cluster mode only.
    pub cluster: Option<ClusterReading>,
}

/// Connections the pool refused or closed to stay within its bounds, since start, by reason.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionsShed {
    /// Refused: the address was at its cap with every connection busy.
    pub refused_per_address: u64,
    /// Idle ones closed to admit a new one from the same address at its cap.
    pub evicted_per_address: u64,
    /// Idle ones closed to admit a new one into a full pool.
    pub evicted_pool_full: u64,
    /// Idle ones closed while the pool was under pressure.
    pub reaped_under_pressure: u64,
    /// Ones without a request in flight closed by shutdown.
    pub closed_at_shutdown: u64,
}

impl ConnectionsShed {
    /// `(reason label, count)` pairs, in a fixed order.
    fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("refused_per_address", self.refused_per_address),
            ("evicted_per_address", self.evicted_per_address),
            ("evicted_pool_full", self.evicted_pool_full),
            ("reaped_under_pressure", self.reaped_under_pressure),
            ("closed_at_shutdown", self.closed_at_shutdown),
        ]
    }
}

/// The cluster's state at scrape time (`cluster::ClusterStatus`).
#[derive(Clone, Copy, Debug)]
pub struct ClusterReading {
    pub connected: bool,
    pub caught_up: bool,
    pub consumed_events: u64,
    pub publish_failures: u64,
    pub disconnects: u64,
}

/// Writes one unlabelled gauge. Help texts here end with a period: the registry adds one to
/// registered metrics, but not to what a collector writes.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for Readings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let bytes = Unit::Bytes;
        let seconds = Unit::Seconds;
        let e = &mut encoder;
        gauge(
            e,
            "write_queue_depth",
            "Batches waiting for the log writer.",
            None,
            self.write_queue_depth,
        )?;
        // Each family's samples must form one group, so used and allowed are two passes.
        let mut family = e.encode_descriptor(
            "memory",
            "Bytes held, by component.",
            Some(&bytes),
            MetricType::Gauge,
        )?;
        for m in &self.memory {
            let labels = ComponentLabels {
                component: m.component,
            };
            ConstGauge::new(m.used_bytes).encode(family.encode_family(&labels)?)?;
        }
        let mut family = e.encode_descriptor(
            "memory_budget",
            "Bytes allowed, by component.",
            Some(&bytes),
            MetricType::Gauge,
        )?;
        for m in &self.memory {
            let labels = ComponentLabels {
                component: m.component,
            };
            ConstGauge::new(m.budget_bytes).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            e,
            "memory_limit",
            "The --memory-limit in force.",
            Some(&bytes),
            self.memory_limit_bytes,
        )?;
        if let Some(rss) = self.resident_bytes {
            gauge(
                e,
                "process_resident_memory",
                "Resident set size.",
                Some(&bytes),
                rss,
            )?;
        }
        gauge(e, "websites", "Websites held.", None, self.websites)?;
        gauge(
            e,
            "approximate_websites",
            "Websites whose visitor count is approximate because it did not fit the budget.",
            None,
            self.approximate_websites,
        )?;
        gauge(
            e,
            "connections",
            "Open client connections.",
            None,
            self.connections,
        )?;
        gauge(
            e,
            "connections_max",
            "Most client connections served at once.",
            None,
            self.connections_max,
        )?;
        let mut family = e.encode_descriptor(
            "connections_shed",
            "Client connections refused or closed to keep the pool's bounds, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in self.connections_shed.by_reason() {
            ConstCounter::new(count).encode(family.encode_family(&ShedLabels { reason })?)?;
        }
        gauge(
            e,
            "live_streams",
            "Open realtime streams (each also holds a connection).",
            None,
            self.live_streams,
        )?;
        gauge(
            e,
            "live_streams_max",
            "Most realtime streams open at once (from the memory limit).",
            None,
            self.live_streams_max,
        )?;
        gauge(
            e,
            "log_segments",
            "Segment files of the event log.",
            None,
            self.log_segments,
        )?;
        gauge(
            e,
            "log_segment",
            "Bytes in segment files.",
            Some(&bytes),
            self.log_segment_bytes,
        )?;
        gauge(
            e,
            "log_stalled",
            "1 while the event log refuses new events (disk full or failing, below the reserve, deleted segments not yet written back).",
            None,
            u32::from(self.log_stalled),
        )?;
        if let Some(available) = self.log_disk_available_bytes {
            gauge(
                e,
                "log_disk_available",
                "Bytes free for the event log on its file system.",
                Some(&bytes),
                available,
            )?;
        }
        gauge(
            e,
            "clock_ahead_of_system",
            "How far the server's clock runs ahead of the system clock, which stepped back since start-up.",
            Some(&seconds),
            self.clock_ahead.as_secs_f64(),
        )?;
        if let Some(checkpoint) = &self.checkpoint {
            gauge(
                e,
                "checkpoint_age",
                "Time since the newest checkpoint was made.",
                Some(&seconds),
                checkpoint.age.as_secs_f64(),
            )?;
            gauge(
                e,
                "checkpoint",
                "Size of the newest checkpoint file.",
                Some(&bytes),
                checkpoint.bytes,
            )?;
            gauge(
                e,
                "checkpoint_write_duration",
                "Time the last checkpoint written took, from the first copy to the file being durable (0 for one loaded at start-up).",
                Some(&seconds),
                checkpoint.write_duration.as_secs_f64(),
            )?;
            gauge(
                e,
                "checkpoint_longest_pause",
                "Longest time ingest waited while the last checkpoint copied one website.",
                Some(&seconds),
                checkpoint.longest_pause.as_secs_f64(),
            )?;
        }
        if let Some(cluster) = &self.cluster {
            gauge(
                e,
                "cluster_connected",
                "1 while this node is connected to NATS (cluster mode); 0 means collect answers 503 and realtime is stale.",
                None,
                u32::from(cluster.connected),
            )?;
            gauge(
                e,
                "cluster_stale",
                "1 while realtime answers from memory without the cluster's new events (\"stale\": true).",
                None,
                u32::from(!cluster.connected),
            )?;
            gauge(
                e,
                "cluster_caught_up",
                "1 once this node has read the event stream up to its head as of start-up.",
                None,
                u32::from(cluster.caught_up),
            )?;
            let metric = e.encode_descriptor(
                "cluster_events_consumed",
                "Events this node read from the cluster's stream and counted.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cluster.consumed_events).encode(metric)?;
            let metric = e.encode_descriptor(
                "cluster_publish_failures",
                "Collect requests answered 503 because JetStream did not acknowledge their events.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cluster.publish_failures).encode(metric)?;
            let metric = e.encode_descriptor(
                "cluster_disconnects",
                "Times this node lost its connection to NATS.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cluster.disconnects).encode(metric)?;
        }
        if let Some(replay) = &self.replay {
            gauge(
                e,
                "replay_duration",
                "Start-up replay time.",
                Some(&seconds),
                replay.duration.as_secs_f64(),
            )?;
            gauge(
                e,
                "replay_events",
                "Events replayed at start-up.",
                None,
                replay.events,
            )?;
            gauge(
                e,
                "replay_corrupt_segments",
                "Damaged segments kept aside in the log directory (*.seg.broken), found at this start-up or an earlier one.",
                None,
                replay.corrupt_segments,
            )?;
            gauge(
                e,
                "replay_future_events",
                "Events stamped more than 60 s in the future at start-up, counted as of now.",
                None,
                replay.future_events,
            )?;
            gauge(
                e,
                "replay_torn_tail",
                "Bytes cut from a torn tail at start-up.",
                Some(&bytes),
                replay.torn_tail_bytes,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Readings {
        Readings {
            write_queue_depth: 2,
            memory: vec![
                MemoryReading {
                    component: Component::VisitorWindows,
                    used_bytes: 10,
                    budget_bytes: 100,
                },
                MemoryReading {
                    component: Component::RequestBodies,
                    used_bytes: 0,
                    budget_bytes: 50,
                },
            ],
            memory_limit_bytes: 1 << 20,
            resident_bytes: Some(4096),
            websites: 3,
            approximate_websites: 1,
            connections: 5,
            connections_max: 64,
            connections_shed: ConnectionsShed {
                refused_per_address: 4,
                evicted_pool_full: 1,
                ..ConnectionsShed::default()
            },
            live_streams: 7,
            live_streams_max: 500,
            log_segments: 2,
            log_segment_bytes: 1234,
            replay: Some(ReplayReading {
                duration: Duration::from_millis(1500),
                events: 42,
                corrupt_segments: 0,
                future_events: 3,
                torn_tail_bytes: 7,
            }),
            log_stalled: true,
            log_disk_available_bytes: Some(1 << 30),
            clock_ahead: Duration::from_secs(10_800),
            checkpoint: Some(CheckpointReading {
                age: Duration::from_secs(12),
                bytes: 2048,
                write_duration: Duration::from_millis(250),
                longest_pause: Duration::from_micros(1500),
            }),
            cluster: Some(ClusterReading {
                connected: false,
                caught_up: true,
                consumed_events: 9,
                publish_failures: 2,
                disconnects: 1,
            }),
        }
    }

    fn encode(metrics: &Metrics, readings: Readings, format: Format) -> String {
        match metrics.encode(readings, format) {
            Ok(text) => text,
            Err(e) => panic!("encoding failed: {e}"),
        }
    }

    #[track_caller]
    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "no line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn counters_keep_their_documented_names_and_labels() {
        let m = Metrics::new();
        m.record_accepted(3);
        m.record_accepted(1);
        m.record_not_recorded(NotRecorded::Dnt, 2);
        m.record_rejection("rate_limited", 429);
        m.record_rejection("rate_limited", 429);
        m.record_rejection("invalid_json", 400);
        m.record_request(Route::Collect, 202, Duration::from_micros(80));
        m.record_request(Route::Unmatched, 404, Duration::ZERO);
        let text = encode(&m, readings(), Format::PrometheusText);
        assert_lines(
            &text,
            &[
                "# TYPE pulse_events_accepted_total counter",
                "pulse_events_accepted_total 4",
                "pulse_events_not_recorded_total{reason=\"dnt\"} 2",
                "pulse_collect_rejected_total{reason=\"rate_limited\",status=\"429\"} 2",
                "pulse_collect_rejected_total{reason=\"invalid_json\",status=\"400\"} 1",
                "pulse_http_requests_total{route=\"collect\",status=\"202\"} 1",
                "pulse_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
            ],
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let m = Metrics::new();
        for elapsed in [
            Duration::from_micros(30),
            Duration::from_millis(3),
            Duration::from_secs(10),
        ] {
            m.record_request(Route::Realtime, 200, elapsed);
        }
        m.record_log_flush(Duration::from_millis(1));
        let text = encode(&m, readings(), Format::PrometheusText);
        let name = "pulse_http_request_duration_seconds";
        assert_lines(
            &text,
            &[
                &format!("# TYPE {name} histogram"),
                &format!("{name}_bucket{{route=\"realtime\",le=\"5e-05\"}} 1"),
                &format!("{name}_bucket{{route=\"realtime\",le=\"0.005\"}} 2"),
                &format!("{name}_bucket{{route=\"realtime\",le=\"2.5\"}} 2"),
                &format!("{name}_bucket{{route=\"realtime\",le=\"+Inf\"}} 3"),
                &format!("{name}_count{{route=\"realtime\"}} 3"),
                // Collect is scraped before its first request.
                &format!("{name}_count{{route=\"collect\"}} 0"),
                "pulse_log_flush_duration_seconds_count 1",
                "pulse_log_fsync_duration_seconds_count 0",
            ],
        );
        // Other routes are counted but not timed.
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{route=\"realtime\"")))
            .count();
        assert_eq!(buckets, BUCKETS_SECS.len() + 1, "{text}");
    }

    #[test]
    fn scrape_time_gauges_keep_their_documented_names() {
        let text = encode(&Metrics::new(), readings(), Format::PrometheusText);
        assert_lines(
            &text,
            &[
                "pulse_write_queue_depth 2",
                "pulse_memory_bytes{component=\"visitor_windows\"} 10",
                "pulse_memory_bytes{component=\"request_bodies\"} 0",
                "pulse_memory_budget_bytes{component=\"visitor_windows\"} 100",
                "pulse_memory_limit_bytes 1048576",
                "pulse_process_resident_memory_bytes 4096",
                "pulse_websites 3",
                "pulse_approximate_websites 1",
                "pulse_connections 5",
                "pulse_connections_max 64",
                "pulse_connections_shed_total{reason=\"refused_per_address\"} 4",
                "pulse_connections_shed_total{reason=\"evicted_pool_full\"} 1",
                "pulse_connections_shed_total{reason=\"closed_at_shutdown\"} 0",
                "pulse_live_streams 7",
                "pulse_live_streams_max 500",
                "pulse_log_segments 2",
                "pulse_log_segment_bytes 1234",
                "pulse_replay_duration_seconds 1.5",
                "pulse_replay_events 42",
                "pulse_replay_corrupt_segments 0",
                "pulse_replay_future_events 3",
                "pulse_log_stalled 1",
                "pulse_log_disk_available_bytes 1073741824",
                "pulse_clock_ahead_of_system_seconds 10800.0",
                "pulse_replay_torn_tail_bytes 7",
                "pulse_checkpoint_age_seconds 12.0",
                "pulse_checkpoint_bytes 2048",
                "pulse_checkpoint_write_duration_seconds 0.25",
                "pulse_checkpoint_longest_pause_seconds 0.0015",
                "pulse_cluster_connected 0",
                "pulse_cluster_stale 1",
                "pulse_cluster_caught_up 1",
                "pulse_cluster_events_consumed_total 9",
                "pulse_cluster_publish_failures_total 2",
                "pulse_cluster_disconnects_total 1",
                "# HELP pulse_websites Websites held.",
            ],
        );
        // One group per family: every memory_bytes sample comes before the budget's header.
        let last_used = text.rfind("pulse_memory_bytes{");
        let budget_header = text.find("# TYPE pulse_memory_budget_bytes");
        assert!(last_used < budget_header, "{text}");
    }

    #[test]
    fn readings_not_yet_known_are_left_out() {
        let mut readings = readings();
        readings.replay = None;
        readings.resident_bytes = None;
        readings.checkpoint = None;
        readings.cluster = None;
        let text = encode(&Metrics::new(), readings, Format::PrometheusText);
        assert!(!text.contains("pulse_replay"), "{text}");
        assert!(!text.contains("pulse_checkpoint"), "{text}");
        assert!(!text.contains("pulse_cluster"), "{text}");
        assert!(!text.contains("pulse_process_resident"), "{text}");
        assert_lines(&text, &["pulse_websites 3"]);
    }

    #[test]
    fn openmetrics_scrapes_type_counters_without_total_and_end_with_eof() {
        let m = Metrics::new();
        m.record_accepted(1);
        let text = encode(&m, readings(), Format::OpenMetrics);
        assert_lines(
            &text,
            &[
                "# TYPE pulse_events_accepted counter",
                "pulse_events_accepted_total 1",
                "# UNIT pulse_memory_bytes bytes",
                "pulse_memory_bytes{component=\"visitor_windows\"} 10",
                "pulse_websites 3",
            ],
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }
}
