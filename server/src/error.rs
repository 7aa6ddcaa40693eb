//! `ApiError`: every error the HTTP API answers with, rendered as
//! `{"error":{"code":"snake_case","message":"human sentence"}}` with its status; and
//! `ServerError`, what can stop the server from starting or running.
//!
//! Handlers return `ApiError`; nothing else in the server builds an error body by hand.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error: status, stable machine-readable code, and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503 and 429 answers).
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// Adds a `Retry-After` header to the answer.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn missing_field(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            format!("the field `{field}` is required"),
        )
    }

    pub fn invalid_field(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("the field `{field}` {why}"),
        )
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    pub fn unknown_website() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_website",
            "no website has this id",
        )
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit_bytes} bytes"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin token as `Authorization: Bearer <token>`",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        // Serialising two strings cannot fail; the fallback keeps the contract regardless.
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"error body"}}"#.to_vec()
        });
        let mut response = (self.status, json).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to listen on {addr} without an admin token: set --admin-token or PULSE_ADMIN_TOKEN, or listen on a loopback address")]
    TokenRequired { addr: std::net::SocketAddr },
    #[cfg(feature = "test-clock")]
    #[error("refusing --test-clock on {addr}: a test clock listens on loopback only")]
    TestClockExposed { addr: std::net::SocketAddr },
    #[error("refusing the admin token: {reason}; set --admin-token (PULSE_ADMIN_TOKEN) to a value without spaces")]
    AdminToken { reason: &'static str },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("websites file {path} {source}")]
    WebsitesFile {
        path: PathBuf,
        source: crate::catalog::CatalogOpenError,
    },
    #[error(
        "{stored} websites are stored, but --memory-limit {memory_limit_bytes} bytes leaves room \
         for the recent-event rings of {fits} (each website's two rings take {per_website_bytes} \
         bytes at --ring-capacity {ring_capacity}, out of the fifth of the limit set aside for \
         rings): raise --memory-limit to at least {needed_bytes} bytes, or lower --ring-capacity"
    )]
    MemoryTooSmallForWebsites {
        stored: usize,
        fits: usize,
        memory_limit_bytes: u64,
        per_website_bytes: usize,
        ring_capacity: usize,
        needed_bytes: u64,
    },
    #[error("salt store {path}: {source}")]
    Salts {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("geoip database {path}: {source}")]
    GeoIp {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("engine limits: {0}")]
    Engine(#[from] pulse_engine::EngineError),
    #[error("event log: {0}")]
    Log(#[source] std::sync::Arc<crate::event_log::LogFailure>),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}
