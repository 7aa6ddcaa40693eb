//! `GET /metrics`: every counter and histogram of `Metrics`, plus gauges read at scrape time
//! (queue, memory by component and budget, websites, approximate counts, segment files, replay,
//! connections, RSS), in the Prometheus text format. Also the middleware that counts requests by
//! route and status and times collect and realtime.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::metrics::{header as help, sample};
use crate::state::AppState;

/// The metrics label of a matched route pattern.
fn route_name(pattern: Option<&str>) -> &'static str {
    match pattern {
        Some("/api/collect") => "collect",
        Some("/api/websites/{id}/realtime") => "realtime",
        Some("/api/websites") | Some("/api/websites/{id}") => "websites",
        Some("/healthz") => "healthz",
        Some("/readyz") => "readyz",
        Some("/metrics") => "metrics",
        Some(_) => "assets",
        None => "unmatched",
    }
}

/// Counts every request by route and status, and times collect and realtime.
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = route_name(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .http_requests
        .add(route, response.status().as_u16(), 1);
    match route {
        "collect" => metrics.collect_latency.observe(started.elapsed()),
        "realtime" => metrics.realtime_latency.observe(started.elapsed()),
        _ => {}
    }
    response
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

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    state.metrics.render(&mut out);

    let (queued_bytes, queue_budget) = state.log.queue_bytes();
    help(
        &mut out,
        "pulse_write_queue_depth",
        "gauge",
        "Batches waiting for the log writer.",
    );
    sample(
        &mut out,
        "pulse_write_queue_depth",
        "",
        state.log.queue_depth(),
    );

    let budget = state.engine.budget();
    let window_bytes = budget.used_bytes();
    let ring_bytes = state.engine.memory_bytes().saturating_sub(window_bytes);
    let (body_bytes, body_budget) = state.bodies.in_use_bytes();
    let plan = &state.memory;
    let components = [
        ("visitor_windows", window_bytes, budget.limit_bytes()),
        ("rings", ring_bytes, plan.ring_bytes),
        ("write_queue", queued_bytes, queue_budget),
        ("request_bodies", body_bytes, body_budget),
    ];
    // Each metric family's samples must form one group in the text format.
    help(
        &mut out,
        "pulse_memory_bytes",
        "gauge",
        "Bytes held, by component.",
    );
    for (component, used, _) in components {
        let labels = format!("component=\"{component}\"");
        sample(&mut out, "pulse_memory_bytes", &labels, used);
    }
    help(
        &mut out,
        "pulse_memory_budget_bytes",
        "gauge",
        "Bytes allowed, by component.",
    );
    for (component, _, allowed) in components {
        let labels = format!("component=\"{component}\"");
        sample(&mut out, "pulse_memory_budget_bytes", &labels, allowed);
    }
    help(
        &mut out,
        "pulse_memory_limit_bytes",
        "gauge",
        "The --memory-limit in force.",
    );
    sample(&mut out, "pulse_memory_limit_bytes", "", plan.limit_bytes);
    if let Some(rss) = rss_bytes() {
        help(
            &mut out,
            "pulse_process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
        );
        sample(&mut out, "pulse_process_resident_memory_bytes", "", rss);
    }

    help(&mut out, "pulse_websites", "gauge", "Websites held.");
    sample(&mut out, "pulse_websites", "", state.engine.website_count());
    help(
        &mut out,
        "pulse_approximate_websites",
        "gauge",
        "Websites whose visitor count is approximate because it did not fit the budget.",
    );
    sample(
        &mut out,
        "pulse_approximate_websites",
        "",
        state.engine.approximate_websites(),
    );

    help(
        &mut out,
        "pulse_connections",
        "gauge",
        "Open client connections.",
    );
    sample(
        &mut out,
        "pulse_connections",
        "",
        state.open_connections.load(Ordering::Relaxed),
    );
    help(
        &mut out,
        "pulse_connections_max",
        "gauge",
        "Most client connections served at once.",
    );
    sample(
        &mut out,
        "pulse_connections_max",
        "",
        state.http.max_connections,
    );

    let (segments, segment_bytes) = state.log.segment_files();
    help(
        &mut out,
        "pulse_log_segments",
        "gauge",
        "Segment files of the event log.",
    );
    sample(&mut out, "pulse_log_segments", "", segments);
    help(
        &mut out,
        "pulse_log_segment_bytes",
        "gauge",
        "Bytes in segment files.",
    );
    sample(&mut out, "pulse_log_segment_bytes", "", segment_bytes);

    if let Some(report) = state.log.status().replay_report() {
        help(
            &mut out,
            "pulse_replay_duration_seconds",
            "gauge",
            "Start-up replay time.",
        );
        sample(
            &mut out,
            "pulse_replay_duration_seconds",
            "",
            report.duration.as_secs_f64(),
        );
        help(
            &mut out,
            "pulse_replay_events",
            "gauge",
            "Events replayed at start-up.",
        );
        sample(&mut out, "pulse_replay_events", "", report.events);
        help(
            &mut out,
            "pulse_replay_corrupt_segments",
            "gauge",
            "Damaged segments kept aside in the log directory (*.seg.broken), found at this start-up or an earlier one.",
        );
        sample(
            &mut out,
            "pulse_replay_corrupt_segments",
            "",
            report.set_aside.len(),
        );
        help(
            &mut out,
            "pulse_replay_torn_tail_bytes",
            "gauge",
            "Bytes cut from a torn tail at start-up.",
        );
        let torn = report.torn_tail.as_ref().map_or(0, |t| t.bytes_removed);
        sample(&mut out, "pulse_replay_torn_tail_bytes", "", torn);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_map_to_fixed_labels() {
        assert_eq!(route_name(Some("/api/collect")), "collect");
        assert_eq!(route_name(Some("/api/websites/{id}/realtime")), "realtime");
        assert_eq!(route_name(Some("/api/websites/{id}")), "websites");
        assert_eq!(route_name(Some("/s.js")), "assets");
        assert_eq!(route_name(None), "unmatched");
    }
}
