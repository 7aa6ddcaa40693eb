//! `EngineError`: every way an engine call can refuse its input. The engine never panics on
//! input; it answers with one of these.

use thiserror::Error;

/// Why the engine refused a call; each variant names the input at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The website id is not registered with the engine.
    #[error("unknown website")]
    UnknownWebsite,
    /// A website with this id is already registered.
    #[error("website already exists")]
    WebsiteExists,
    /// Adding the website would exceed `EngineLimits::max_websites`.
    #[error("too many websites (limit {limit})")]
    TooManyWebsites {
        /// The configured maximum number of websites.
        limit: usize,
    },
    /// The website id is empty, longer than 64 bytes or uses a character outside
    /// `[A-Za-z0-9_-]`.
    #[error("invalid website id: use 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_'")]
    InvalidWebsiteId,
    /// The timestamp is negative or past `Timestamp::MAX_MS`.
    #[error("timestamp {unix_ms} ms is outside the supported range")]
    TimestampOutOfRange {
        /// The rejected value, in Unix milliseconds.
        unix_ms: i64,
    },
    /// The timestamp falls on a UTC day the schedule holds no salt for (neither the current
    /// day nor the previous one).
    #[error("no salt is held for UTC day {day}")]
    NoSaltForDay {
        /// The UTC day asked for, in days since 1970-01-01.
        day: i64,
    },
    /// An exported state (`WebsiteExport`) breaks an invariant of the structure it would
    /// rebuild; the text names it.
    #[error("invalid exported state: {0}")]
    InvalidExport(&'static str),
    /// An `EngineLimits` field is out of range; the text names it.
    #[error("invalid engine config: {0}")]
    InvalidConfig(&'static str),
}
