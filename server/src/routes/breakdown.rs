//! `GET /api/websites/{id}/realtime/breakdown`: the ranked pages, referrers, custom events,
//! browsers, devices and countries of one website's window, and its per-minute series of
//! visitors and pageviews, straight from the engine. Knows the JSON shape and the query
//! parameters (`limit`, `include_bots`); not how the counts are kept.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use pulse_engine::{BreakdownList, BreakdownRow};
use serde::Serialize;

use crate::catalog::BotPolicy;
use crate::clock;
use crate::error::ApiError;
use crate::routes::realtime::include_bots_param;
use crate::state::AppState;

/// Rows per list when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 10;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 100;

#[derive(Debug, Serialize)]
pub struct BreakdownBody {
    data: BreakdownData,
}

#[derive(Debug, Serialize)]
struct BreakdownData {
    pages: Vec<Row>,
    referrers: Vec<Row>,
    events: Vec<Row>,
    browsers: Vec<Row>,
    devices: Vec<Row>,
    countries: Vec<Row>,
    series: Vec<Point>,
    approximate: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    value: Arc<str>,
    visitors: u64,
    events: u64,
}

#[derive(Debug, Serialize)]
struct Point {
    minute: String,
    visitors: u64,
    pageviews: u64,
}

/// `limit` from the query string: 1 to `MAX_LIMIT`, `DEFAULT_LIMIT` when absent.
fn limit_param(query: Option<&str>) -> Result<usize, ApiError> {
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "limit" {
            continue;
        }
        limit = Some(raw)
            .filter(|raw| raw.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|raw| raw.parse::<usize>().ok())
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_parameter(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}"
                ))
            })?;
    }
    Ok(limit)
}

fn rows(rows: &[BreakdownRow]) -> Vec<Row> {
    rows.iter()
        .map(|row| Row {
            value: Arc::clone(&row.value),
            visitors: row.visitors,
            events: row.events,
        })
        .collect()
}

pub async fn breakdown(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<BreakdownBody>, ApiError> {
    let limit = limit_param(query.as_deref())?;
    let include_bots = include_bots_param(query.as_deref())?;
    let website = state
        .websites
        .get(&id)
        .ok_or_else(ApiError::unknown_website)?;
    let include_bots = include_bots.unwrap_or(website.website.bot_policy == BotPolicy::Include);
    let answer = state
        .engine
        .breakdown(&website.id, clock::now_ms(), include_bots, limit)
        .map_err(|_| ApiError::unknown_website())?;
    let list = |list| rows(answer.list(list));
    Ok(Json(BreakdownBody {
        data: BreakdownData {
            pages: list(BreakdownList::Pages),
            referrers: list(BreakdownList::Referrers),
            events: list(BreakdownList::Events),
            browsers: list(BreakdownList::Browsers),
            devices: list(BreakdownList::Devices),
            countries: list(BreakdownList::Countries),
            series: answer
                .series
                .iter()
                .map(|point| Point {
                    minute: clock::format_rfc3339(point.minute_ms),
                    visitors: point.visitors,
                    pageviews: point.pageviews,
                })
                .collect(),
            approximate: answer.approximate,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_accepts_only_1_to_100() {
        let check = |q: Option<&str>, expected: Result<usize, ()>| {
            assert_eq!(limit_param(q).map_err(|_| ()), expected, "{q:?}");
        };
        check(None, Ok(10));
        check(Some("include_bots=true"), Ok(10));
        check(Some("limit=1"), Ok(1));
        check(Some("limit=100&x=y"), Ok(100));
        check(Some("limit=0"), Err(()));
        check(Some("limit=101"), Err(()));
        check(Some("limit=-1"), Err(()));
        check(Some("limit=+5"), Err(()));
        check(Some("limit=ten"), Err(()));
        check(Some("limit="), Err(()));
        check(Some("limit"), Err(()));
        check(Some("limit=99999999999999999999999"), Err(()));
    }
}
