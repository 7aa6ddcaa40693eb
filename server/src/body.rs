//! Reading a request body under the server's limits: refused at once when `Content-Length`
//! announces more than the limit, cut off as soon as a streamed (or chunked) body passes it, and
//! abandoned when it arrives slower than the body timeout. Never buffers more than the limit,
//! and all requests together never buffer more than the `BodyBudget` (503 when it is spent).

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use tokio::sync::Semaphore;

use crate::config::HttpLimits;
use crate::error::ApiError;

/// Request-body bytes all requests may buffer at once, in KiB permits.
#[derive(Debug)]
pub struct BodyBudget {
    kib: Semaphore,
    total_kib: usize,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_kib = (bytes / 1024).max(1);
        Self {
            kib: Semaphore::new(total_kib),
            total_kib,
        }
    }

    /// Bytes currently reserved by bodies being read, and the total.
    pub fn in_use_bytes(&self) -> (usize, usize) {
        let free = self.kib.available_permits();
        (
            (self.total_kib - free.min(self.total_kib)) * 1024,
            self.total_kib * 1024,
        )
    }
}

pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &HttpLimits,
    budget: &BodyBudget,
) -> Result<Bytes, ApiError> {
    let max = limits.max_body_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(ApiError::payload_too_large(max));
    }
    // Reserve what this body may take (all of the limit when the length is not announced)
    // before reading a byte of it.
    let reserve = announced
        .map_or(max, |len| len as usize)
        .div_ceil(1024)
        .max(1);
    let _reserved = budget
        .kib
        .try_acquire_many(u32::try_from(reserve).unwrap_or(u32::MAX))
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many request bodies are being received; retry shortly",
            )
            .retry_after(1)
        })?;
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
