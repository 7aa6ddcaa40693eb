//! `EngineError`: every way an engine call can refuse its input. The engine never panics on
//! input; it answers with one of these.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("unknown website")]
    UnknownWebsite,
    #[error("website already exists")]
    WebsiteExists,
    #[error("too many websites (limit {limit})")]
    TooManyWebsites { limit: usize },
    #[error("invalid website id: use 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_'")]
    InvalidWebsiteId,
    #[error("timestamp {unix_ms} ms is outside the supported range")]
    TimestampOutOfRange { unix_ms: i64 },
    #[error("no salt is held for UTC day {day}")]
    NoSaltForDay { day: i64 },
    #[error("invalid engine config: {0}")]
    InvalidConfig(&'static str),
}
