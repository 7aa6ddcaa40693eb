//! The admin token check: `Authorization: Bearer <token>`, compared in constant time. Without a
//! configured token (only allowed on loopback) a request passes when `admin_access` finds it
//! addressed to loopback from no foreign origin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::admin_access::check_loopback_request;
use crate::error::ApiError;
use crate::state::AppState;

/// Middleware for routes that need the admin token.
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(error) = check_admin(&state, request.headers(), request.uri()) {
        return error.into_response();
    }
    next.run(request).await
}

/// Whether a request may use the admin routes: it presents the token when one is configured;
/// without one, it is addressed to loopback from no foreign origin.
pub fn check_admin(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return check_loopback_request(headers, uri);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes()))) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 7235), so `bearer x` and `BEARER x` present `x`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer x",
            "bearer x",
            "BEARER x",
            "bEaReR   x ",
            " Bearer x",
        ] {
            assert_eq!(bearer_token(value), Some("x"), "{value:?}");
        }
        for value in ["Basic x", "Bearer", "Bearer ", "Bearerx", "x"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
