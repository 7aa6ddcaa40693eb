//! The test clock, compiled only with the `test-clock` feature: a "now" that integration tests
//! set, so what needs time to pass — midnight and the salts' carry-over, the end of the window,
//! the way back from approximate counts, segment age and retention — is tested through the real
//! binary in milliseconds instead of hours. It owns the set instant, the hidden flag's start
//! (`--test-clock UNIX_MS`) and the admin route `POST /api/test/clock {"now_ms": …}`; the short
//! window (`--test-window-secs`) is a `Config` field under the same feature.
//!
//! Why it cannot reach production by accident: a default build (`cargo build`, `cargo install`,
//! `cargo build --release`) has no such module, flag or route — the flags are unknown arguments
//! and the route is a 404. Only `cargo test` turns the feature on (the server crate's
//! dev-dependency on itself), and even then the system clock is used unless `--test-clock` is
//! given, which refuses a non-loopback `--listen` and logs a warning at start.
//!
//! With `--test-clock` the clock stands still at the given instant until a test moves it: a
//! frozen clock makes "one millisecond before midnight" exact. It only moves forward, as "now"
//! never runs backwards (ARCHITECTURE.md, Time). Every reader of `clock::now_ms` follows it —
//! collect, realtime, the log (segment age, retention, replay's window) and the maintenance
//! timer, whose 5 s ticks still run in real time and read the set instant.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use crate::body::read_body;
use crate::error::ApiError;
use crate::state::AppState;

/// The route that moves the test clock.
pub const PATH: &str = "/api/test/clock";

/// `NOW_MS` before `--test-clock` set it: the system clock is in use.
const UNSET: i64 = i64::MIN;

static NOW_MS: AtomicI64 = AtomicI64::new(UNSET);

/// The set instant, or `None` when the server runs on the system clock.
pub fn now_ms() -> Option<i64> {
    let now_ms = NOW_MS.load(Ordering::SeqCst);
    (now_ms != UNSET).then_some(now_ms)
}

/// Switches the process to the test clock at `start_ms` (`--test-clock`). Called once, before
/// anything reads the clock.
pub fn start(start_ms: i64) {
    tracing::warn!(
        start_ms,
        "TEST CLOCK: time stands still until POST {PATH} moves it; never run this in production"
    );
    NOW_MS.store(start_ms, Ordering::SeqCst);
}

/// Why the clock was not moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("the server runs on the system clock: start it with --test-clock")]
    NotStarted,
    #[error("now never runs backwards: {requested_ms} is before {current_ms}")]
    Backwards { requested_ms: i64, current_ms: i64 },
}

/// Moves the test clock forward to `now_ms` (or leaves it, when it is already there).
pub fn set(now_ms: i64) -> Result<(), SetError> {
    NOW_MS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current_ms| {
            (current_ms != UNSET && now_ms >= current_ms).then_some(now_ms)
        })
        .map(|_| ())
        .map_err(|current_ms| match current_ms {
            UNSET => SetError::NotStarted,
            current_ms => SetError::Backwards {
                requested_ms: now_ms,
                current_ms,
            },
        })
}

/// `POST /api/test/clock {"now_ms": UNIX_MS}` (admin): moves the test clock; answers
/// `{"data":{"now_ms":…}}`. 409 `clock_backwards` for an earlier instant, 409 `no_test_clock`
/// when the server was started without `--test-clock`.
pub async fn set_route(
    State(state): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, &headers, &state.http, &state.bodies).await?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_json(format!("the body is not valid JSON: {e}")))?;
    let now_ms = match body.get("now_ms") {
        None | Some(Value::Null) => return Err(ApiError::missing_field("now_ms")),
        Some(value) => value
            .as_i64()
            .filter(|ms| pulse_engine::Timestamp::from_unix_ms(*ms).is_ok())
            .ok_or_else(|| ApiError::invalid_field("now_ms", "must be unix milliseconds"))?,
    };
    set(now_ms).map_err(|error| {
        let code = match error {
            SetError::NotStarted => "no_test_clock",
            SetError::Backwards { .. } => "clock_backwards",
        };
        ApiError::new(StatusCode::CONFLICT, code, error.to_string())
    })?;
    Ok(Json(json!({"data": {"now_ms": now_ms}})))
}
