//! Reading a request body under the server's limits: refused at once when `Content-Length`
//! announces more than the limit, cut off as soon as a streamed (or chunked) body passes it, and
//! abandoned when it arrives slower than the body timeout. Never buffers more than the limit.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::HttpLimits;
use crate::error::ApiError;

pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &HttpLimits,
) -> Result<Bytes, ApiError> {
    let max = limits.max_body_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(ApiError::payload_too_large(max));
    }
    let collected = tokio::time::timeout(limits.body_timeout, Limited::new(body, max).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time",
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(max))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the request body could not be read",
        )),
    }
}
