//! The admin token check: `Authorization: Bearer <token>`, compared in constant time. Without a
//! configured token (only allowed on loopback) every request passes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Middleware for routes that need the admin token.
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.admin_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())));
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}
