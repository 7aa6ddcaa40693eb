//! `GET /api/websites/{id}/realtime/stream`: the realtime answer as Server-Sent Events. Each
//! message is one `data:` line holding the `data` object of `GET …/realtime` (rendered by
//! `realtime::render`, the same code), the first at once, then whenever it changes, at most one
//! a second, with a `: keepalive` comment every heartbeat interval. Knows the HTTP side: the
//! parameters, the 404/503 answers and the response's headers; the pacing and the fan-out are
//! `LiveHub`'s (`live.rs`).
//!
//! The connection stays busy while the stream is open (its response body has not ended), so the
//! pool never sheds it as idle and it counts against its address's connection cap; at shutdown
//! the hub ends the body, and the connection closes with the drain.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::live::{Frame, StreamRefused, TopicKey};
use crate::routes::realtime::{include_bots_param, render};
use crate::state::AppState;

/// What a client refused for too many streams should wait before trying again, in seconds.
const RETRY_AFTER_SECS: u32 = 10;

pub async fn stream(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let include_bots = include_bots_param(query.as_deref())?;
    let frame = render_frame(&state, &id, include_bots)?;
    let slot = state.live.reserve().map_err(|refused| match refused {
        StreamRefused::TooMany { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{refused}; poll GET /api/websites/{{id}}/realtime instead"),
        )
        .retry_after(RETRY_AFTER_SECS),
        StreamRefused::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            refused.to_string(),
        ),
    })?;
    let key = TopicKey {
        website: id,
        include_bots,
    };
    let subscription = state.live.subscribe(key, frame, slot);
    let messages = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let message = subscription.next_message().await?;
        Some((Ok::<Bytes, Infallible>(message), subscription))
    });
    let mut response = Body::from_stream(messages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream and deliver it in lumps.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The current frame of website `id` (`unknown_website` when there is none): what the live
/// hub's ticker publishes, and what a new stream starts with.
pub fn render_frame(
    state: &AppState,
    id: &str,
    include_bots: Option<bool>,
) -> Result<Frame, ApiError> {
    let rendered = render(state, id, include_bots)?;
    Ok(Frame::new(&rendered.to_json()?, rendered.incarnation))
}

/// Renders every watched topic once and publishes what changed, until aborted (the ticker of
/// `LiveHub`; rendering runs on the blocking pool, off the request workers).
pub async fn publish_live(state: Arc<AppState>) {
    let mut ticker = tokio::time::interval(crate::live::TICK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        if state.live.is_idle() {
            continue;
        }
        let state = Arc::clone(&state);
        let ticked = tokio::task::spawn_blocking(move || {
            // Only `unknown_website` can fail a rendering (serialising plain data does not): the
            // website is gone, and its streams end.
            state
                .live
                .tick(|key| render_frame(&state, &key.website, key.include_bots).ok());
        })
        .await;
        if ticked.is_err() {
            tracing::error!("rendering the live streams failed");
        }
    }
}
