//! `GET /api/websites/{id}/realtime`: active visitors, events in the window and the most recent
//! events of one website, straight from the engine. Knows the JSON shape (`render`, which the
//! live stream shares); not how it is computed, nor how the stream delivers it.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Serialize;

use crate::catalog::BotPolicy;
use crate::clock;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct RealtimeBody {
    data: RealtimeData,
}

#[derive(Debug, Serialize)]
struct RealtimeData {
    active_visitors: u64,
    /// Present (and true) only while the visitor count is an estimate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    approximate: bool,
    /// Present (and true) only in cluster mode while this node has lost NATS: the answer comes
    /// from memory and misses what other nodes accept meanwhile.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
    recent_events: Vec<RecentRow>,
    pagination: Pagination,
}

#[derive(Debug, Serialize)]
struct RecentRow {
    url: Arc<str>,
    referrer_domain: Option<Arc<str>>,
    ts: String,
    event_type: &'static str,
    browser: &'static str,
    device_type: &'static str,
    country: Option<String>,
}

#[derive(Debug, Serialize)]
struct Pagination {
    limit: usize,
    total_in_window: u64,
}

/// `include_bots` from the query string: `Some(true|false)`, `None` when absent.
pub(crate) fn include_bots_param(query: Option<&str>) -> Result<Option<bool>, ApiError> {
    let mut value = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "include_bots" {
            continue;
        }
        value = Some(match raw {
            "true" => true,
            "false" => false,
            _ => {
                return Err(ApiError::invalid_parameter(
                    "include_bots must be true or false",
                ))
            }
        });
    }
    Ok(value)
}

pub async fn realtime(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RealtimeBody>, ApiError> {
    let include_bots = include_bots_param(query.as_deref())?;
    let data = render(&state, &id, include_bots)?.data;
    Ok(Json(RealtimeBody { data }))
}

/// One rendering of a website's realtime answer: the `data` object, and which incarnation of
/// the website it is of (a website deleted and created again under its id has a new one).
#[derive(Debug)]
pub struct Rendered {
    data: RealtimeData,
    pub incarnation: u64,
}

impl Rendered {
    /// The `data` object as compact JSON: one line, as a Server-Sent Events `data:` field needs.
    pub fn to_json(&self) -> Result<Vec<u8>, ApiError> {
        serde_json::to_vec(&self.data)
            .map_err(|e| ApiError::internal(format!("the realtime answer did not serialise: {e}")))
    }
}

/// The realtime answer of website `id` now, with `include_bots` (`None`: the website's own bot
/// policy). The one rendering `GET …/realtime` and its stream share. `unknown_website` when no
/// website has the id (or it was deleted meanwhile).
pub fn render(
    state: &AppState,
    id: &str,
    include_bots: Option<bool>,
) -> Result<Rendered, ApiError> {
    let website = state
        .websites
        .get(id)
        .ok_or_else(ApiError::unknown_website)?;
    let include_bots = include_bots.unwrap_or(website.website.bot_policy == BotPolicy::Include);
    let answer = state
        .engine
        .realtime(&website.id, clock::now_ms(), include_bots)
        .map_err(|_| ApiError::unknown_website())?;
    let recent_events = answer
        .recent_events
        .iter()
        .map(|recent| {
            let event = &recent.event;
            RecentRow {
                url: Arc::clone(&event.target),
                referrer_domain: event.referrer_domain.clone(),
                ts: clock::format_rfc3339(event.ts.unix_ms()),
                event_type: event.kind.as_str(),
                browser: event.browser.as_str(),
                device_type: event.device.as_str(),
                country: event.country.map(|c| c.as_str().to_owned()),
            }
        })
        .collect();
    Ok(Rendered {
        data: RealtimeData {
            active_visitors: answer.active_visitors,
            approximate: answer.approximate,
            stale: state
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.status().is_stale()),
            recent_events,
            pagination: Pagination {
                limit: state.engine.limits().recent_limit,
                total_in_window: answer.total_in_window,
            },
        },
        incarnation: website.log_start_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_bots_accepts_only_true_or_false() {
        let check = |q: Option<&str>, expected: Result<Option<bool>, ()>| {
            assert_eq!(include_bots_param(q).map_err(|_| ()), expected, "{q:?}");
        };
        check(None, Ok(None));
        check(Some("x=1"), Ok(None));
        check(Some("include_bots=true"), Ok(Some(true)));
        check(Some("a=b&include_bots=false"), Ok(Some(false)));
        check(Some("include_bots=1"), Err(()));
        check(Some("include_bots="), Err(()));
        check(Some("include_bots"), Err(()));
    }
}
