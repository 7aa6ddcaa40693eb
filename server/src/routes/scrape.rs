//! `GET /metrics`: one Prometheus scrape. Reads the gauges that are cheap to read on demand
//! (queue, memory by component and budget, websites, approximate counts, connections, segment
//! files, replay, RSS) from the server state, picks the text format from `Accept`, and has
//! `crate::metrics` encode them after its counters and histograms.
//!
//! Counting and timing requests is the router's request layer (`routes::track_request`); the
//! metric names and labels are `crate::metrics`'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::clock;
use crate::error::ApiError;
use crate::metrics::{
    ClusterReading, Component, ConnectionsShed, Format, MemoryReading, Readings, ReplayReading,
};
use crate::state::AppState;

/// OpenMetrics when the scraper asks for it (Prometheus does, in its `Accept`), else the
/// classic text format, which every scraper and `curl` reads. The names and values are the
/// same in both; only the typing lines and the `# EOF` trailer differ.
fn negotiate(headers: &HeaderMap) -> Format {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    }
}

/// Resident set size of this process, from /proc/self/status.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The gauges of one scrape, read now.
fn read(state: &AppState) -> Readings {
    let (queued_bytes, queue_budget) = state.log.queue_bytes();
    let budget = state.engine.budget();
    let window_bytes = budget.used_bytes();
    let ring_bytes = state.engine.memory_bytes().saturating_sub(window_bytes);
    let (body_bytes, body_budget) = state.bodies.in_use_bytes();
    let plan = &state.memory;
    let memory = [
        (
            Component::VisitorWindows,
            window_bytes,
            budget.limit_bytes(),
        ),
        (Component::Rings, ring_bytes, plan.ring_bytes),
        (Component::WriteQueue, queued_bytes, queue_budget),
        (Component::RequestBodies, body_bytes, body_budget),
        (
            Component::LiveStreams,
            state.live.open_streams() * crate::memory::STREAM_BYTES,
            plan.stream_bytes,
        ),
    ]
    .into_iter()
    .map(|(component, used_bytes, budget_bytes)| MemoryReading {
        component,
        used_bytes,
        budget_bytes,
    })
    .collect();
    let (log_segments, log_segment_bytes) = state.log.segment_files();
    let replay = state
        .log
        .status()
        .replay_report()
        .map(|report| ReplayReading {
            duration: report.duration,
            events: report.events,
            corrupt_segments: report.set_aside.len(),
            future_events: state.log.status().future_events(),
            torn_tail_bytes: report.torn_tail.as_ref().map_or(0, |t| t.bytes_removed),
        });
    Readings {
        write_queue_depth: state.log.queue_depth(),
        memory,
        memory_limit_bytes: plan.limit_bytes,
        resident_bytes: rss_bytes(),
        websites: state.engine.website_count(),
        approximate_websites: state.engine.approximate_websites(),
        connections: state.open_connections.load(Ordering::Relaxed),
        connections_max: state.http.max_connections,
        connections_shed: {
            let shed = state.connections.counts();
            let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
            ConnectionsShed {
                refused_per_address: read(&shed.refused_per_address),
                evicted_per_address: read(&shed.evicted_per_address),
                evicted_pool_full: read(&shed.evicted_pool_full),
                reaped_under_pressure: read(&shed.reaped_under_pressure),
                closed_at_shutdown: read(&shed.closed_at_shutdown),
            }
        },
        live_streams: state.live.open_streams(),
        live_streams_max: state.live.max_streams(),
        log_segments,
        log_segment_bytes,
        replay,
        log_stalled: state.log.status().is_stalled(),
        log_disk_available_bytes: state.log.disk_available_bytes(),
        clock_ahead: Duration::from_millis(u64::try_from(clock::ahead_of_wall_ms()).unwrap_or(0)),
        checkpoint: state.log.status().checkpoints.reading(clock::now_ms()),
        cluster: state.cluster.as_ref().map(|cluster| {
            let status = cluster.status();
            ClusterReading {
                connected: status.is_connected(),
                caught_up: status.is_caught_up(),
                consumed_events: status.consumed_events(),
                publish_failures: status.publish_failures(),
                disconnects: status.disconnects(),
            }
        }),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let format = negotiate(&headers);
    match state.metrics.encode(read(&state), format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => ApiError::internal(format!("encoding metrics: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accepting(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn prometheus_accept_header_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.6,\
                          application/openmetrics-text;version=0.0.1;q=0.5,\
                          text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(negotiate(&accepting(&[prometheus])), Format::OpenMetrics);
        assert_eq!(
            negotiate(&accepting(&["text/html", "application/openmetrics-text"])),
            Format::OpenMetrics
        );
    }

    #[test]
    fn scrapers_that_do_not_ask_get_classic_text() {
        assert_eq!(negotiate(&HeaderMap::new()), Format::PrometheusText);
        assert_eq!(negotiate(&accepting(&["*/*"])), Format::PrometheusText);
        assert_eq!(
            negotiate(&accepting(&["text/plain"])),
            Format::PrometheusText
        );
    }
}
