//! The HTTP routes and the router that joins them: which paths exist, which need the admin
//! token (and, for bodies, JSON), the JSON 404/405 answers, the layer that turns any other
//! non-JSON error (an extractor's rejection) into the JSON shape, and the request layer that
//! counts every request by route and status (the `route` label comes from the same path
//! constants the router is built from). Each route's logic lives in its own module.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::admin_access::require_json_body;
use crate::auth::require_admin;
use crate::error::ApiError;
use crate::metrics::Route;
use crate::state::AppState;

pub mod assets;
pub mod breakdown;
pub mod collect;
pub mod health;
pub mod json_errors;
pub mod plausible;
pub mod realtime;
pub mod scrape;
pub mod stream;
pub mod umami;
pub mod websites;

/// The path patterns of the API, each written once: the router is built from them and
/// `route_label` maps them back to the `route` label of the request metrics.
pub mod path {
    pub const COLLECT: &str = "/api/collect";
    /// Where Sparklytics' `s.js` sends: the same handler as `COLLECT`.
    pub const COLLECT_ALIAS: &str = "/e";
    /// Plausible's event API.
    pub const PLAUSIBLE_EVENT: &str = "/api/event";
    /// Umami's send API.
    pub const UMAMI_SEND: &str = "/api/send";
    pub const WEBSITES: &str = "/api/websites";
    pub const WEBSITE: &str = "/api/websites/{id}";
    pub const REALTIME: &str = "/api/websites/{id}/realtime";
    /// The realtime answer as Server-Sent Events.
    pub const REALTIME_STREAM: &str = "/api/websites/{id}/realtime/stream";
    pub const BREAKDOWN: &str = "/api/websites/{id}/realtime/breakdown";
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const METRICS: &str = "/metrics";
}

/// The full application router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route(path::WEBSITES, get(websites::list).post(websites::create))
        .route(
            path::WEBSITE,
            get(websites::get)
                .patch(websites::update)
                .delete(websites::delete),
        )
        .route(path::REALTIME, get(realtime::realtime))
        .route(path::REALTIME_STREAM, get(stream::stream))
        .route(path::BREAKDOWN, get(breakdown::breakdown))
        .route(path::METRICS, get(scrape::metrics));
    #[cfg(feature = "test-clock")]
    let admin = admin.route(crate::test_clock::PATH, post(crate::test_clock::set_route));
    let admin = admin
        // Route layers run last-added first: the token (or loopback) check comes before the
        // body's type is looked at.
        .route_layer(middleware::from_fn(require_json_body))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    let ingest = Router::new()
        .route(
            path::COLLECT,
            post(collect::collect).options(collect::preflight),
        )
        .route(
            path::COLLECT_ALIAS,
            post(collect::collect).options(collect::preflight),
        )
        .route(
            path::PLAUSIBLE_EVENT,
            post(plausible::event).options(collect::preflight),
        )
        .route(
            path::UMAMI_SEND,
            post(umami::send).options(collect::preflight),
        )
        .layer(middleware::from_fn(collect::allow_ingest_origin));
    let public = ingest
        .route(path::HEALTHZ, get(health::healthz))
        .route(path::READYZ, get(health::readyz))
        .merge(assets::router());
    admin
        .merge(public)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::map_response(json_errors::errors_as_json))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            track_request,
        ))
        .with_state(state)
}

/// The `route` label of a request matched to `pattern` (`None`: nothing matched). Every path
/// not in `path` is one of the assets' (dashboard files and the tracker).
fn route_label(pattern: Option<&str>) -> Route {
    match pattern {
        // Every ingest format is collect, whichever client's wire format it speaks.
        Some(path::COLLECT | path::COLLECT_ALIAS | path::PLAUSIBLE_EVENT | path::UMAMI_SEND) => {
            Route::Collect
        }
        Some(path::REALTIME) => Route::Realtime,
        // Apart from `realtime`, so stream opens do not enter the realtime latency histogram.
        Some(path::REALTIME_STREAM) => Route::RealtimeStream,
        Some(path::BREAKDOWN) => Route::Breakdown,
        Some(path::WEBSITES | path::WEBSITE) => Route::Websites,
        Some(path::HEALTHZ) => Route::Healthz,
        Some(path::READYZ) => Route::Readyz,
        Some(path::METRICS) => Route::Metrics,
        Some(_) => Route::Assets,
        None => Route::Unmatched,
    }
}

/// Counts every request by route and status, and times collect and realtime.
async fn track_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .record_request(route, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_map_to_fixed_labels() {
        assert_eq!(route_label(Some(path::COLLECT)), Route::Collect);
        assert_eq!(route_label(Some("/e")), Route::Collect);
        assert_eq!(route_label(Some("/api/event")), Route::Collect);
        assert_eq!(route_label(Some("/api/send")), Route::Collect);
        assert_eq!(
            route_label(Some("/api/websites/{id}/realtime")),
            Route::Realtime
        );
        assert_eq!(
            route_label(Some("/api/websites/{id}/realtime/stream")),
            Route::RealtimeStream
        );
        assert_eq!(
            route_label(Some("/api/websites/{id}/realtime/breakdown")),
            Route::Breakdown
        );
        assert_eq!(route_label(Some("/api/websites/{id}")), Route::Websites);
        assert_eq!(route_label(Some("/api/websites")), Route::Websites);
        assert_eq!(route_label(Some("/metrics")), Route::Metrics);
        assert_eq!(route_label(Some("/s.js")), Route::Assets);
        assert_eq!(route_label(None), Route::Unmatched);
    }
}
