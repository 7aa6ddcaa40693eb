//! `GET /healthz` (the process answers) and `GET /readyz` (start-up is done and answers are
//! complete). Neither needs a token; neither says anything about traffic.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let status = state.log.status();
    if let Some(error) = status.fatal_error() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_failed",
            format!("the event log failed: {error}"),
        )
        .into_response();
    }
    if let Some(stall) = status.stall() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_stalled",
            stall.to_string(),
        )
        .retry_after(5)
        .into_response();
    }
    if let (true, Some(report)) = (status.is_ready(), status.replay_report()) {
        Json(json!({
            "status": "ready",
            "replay": {
                "events": report.events,
                "segments_read": report.segments_read,
                "segments_skipped": report.segments_skipped,
                "duration_ms": report.duration.as_millis() as u64,
                "torn_tail_bytes": report.torn_tail.as_ref().map_or(0, |t| t.bytes_removed),
                "corrupt_segments": report.set_aside.len(),
                "sequence_gaps": report.gaps.len(),
                "future_events": status.future_events(),
            }
        }))
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is still starting",
        )
        .into_response()
    }
}
