//! `GET /healthz` (the process answers) and `GET /readyz` (start-up is done and answers are
//! complete). Neither needs a token. Without one, `/readyz` says ready or not and why in one
//! word (`{"status":"ready"}`, or 503 `not_ready`, `log_stalled`, `log_failed`); the details —
//! the replay report (event counts), whether a checkpoint was loaded, and why the log stalled or
//! failed — go only to a request
//! that could use the admin routes (`auth::check_admin`: the token when one is set, otherwise
//! loopback and same origin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::check_admin;
use crate::error::ApiError;
use crate::event_log::LogStatus;
use crate::state::AppState;

/// Whether start-up loaded a checkpoint (then replay covered only the log after it), which,
/// and how many checkpoint files it ignored.
fn checkpoint_details(status: &LogStatus) -> serde_json::Value {
    let stats = &status.checkpoints;
    match stats.loaded() {
        Some(loaded) => json!({
            "loaded": true,
            "file": loaded.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "seq": loaded.seq,
            "websites": loaded.websites,
            "load_ms": loaded.duration.as_millis() as u64,
            "ignored": stats.refused(),
        }),
        None => json!({ "loaded": false, "ignored": stats.refused() }),
    }
}

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    let detailed = check_admin(&state, &headers, &uri).is_ok();
    let status = state.log.status();
    if let Some(error) = status.fatal_error() {
        let message = if detailed {
            format!("the event log failed: {error}")
        } else {
            "the event log failed".to_owned()
        };
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_failed", message)
            .into_response();
    }
    if let Some(stall) = status.stall() {
        let message = if detailed {
            stall.to_string()
        } else {
            "the event log cannot write".to_owned()
        };
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_stalled", message)
            .retry_after(5)
            .into_response();
    }
    if let (true, Some(report)) = (status.is_ready(), status.replay_report()) {
        if !detailed {
            return Json(json!({"status": "ready"})).into_response();
        }
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
            },
            "checkpoint": checkpoint_details(status),
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
