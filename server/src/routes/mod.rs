//! The HTTP routes and the router that joins them: which paths exist, which need the admin
//! token, and the JSON 404/405 answers. Each route's logic lives in its own module.

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::auth::require_admin;
use crate::error::ApiError;
use crate::state::AppState;

pub mod assets;
pub mod collect;
pub mod health;
pub mod metrics;
pub mod realtime;
pub mod websites;

/// The full application router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/websites", get(websites::list).post(websites::create))
        .route(
            "/api/websites/{id}",
            get(websites::get)
                .patch(websites::update)
                .delete(websites::delete),
        )
        .route("/api/websites/{id}/realtime", get(realtime::realtime))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    let public = Router::new()
        .route(
            "/api/collect",
            post(collect::collect).options(collect::preflight),
        )
        .layer(middleware::map_response(collect::allow_any_origin))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(assets::router());
    admin
        .merge(public)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::track,
        ))
        .with_state(state)
}
