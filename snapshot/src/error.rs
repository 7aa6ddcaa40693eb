//! `SnapshotError` (IO and format failures of the log as a whole) and `RecordError` (why one
//! record could not be read). Recovery decisions are made in `replay` from these kinds.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An fsync (of a segment or of the directory) failed. Unlike a failed write this is never
    /// retried: the kernel may have dropped the dirty pages, so a retry could report success for
    /// data that is gone.
    #[error("fsync {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    #[error("segment {path} has an invalid header: {reason}")]
    BadHeader { path: PathBuf, reason: &'static str },
}

impl SnapshotError {
    /// Whether this is a failed fsync, after which nothing written since the last good one can be
    /// trusted to be on disk.
    pub fn is_sync_failure(&self) -> bool {
        matches!(self, Self::Sync { .. })
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    #[error("fewer bytes than a record frame")]
    Truncated,
    #[error("record length {len} exceeds the {max}-byte limit or the bytes left")]
    BadLength { len: u32, max: usize },
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record payload is malformed: {0}")]
    Payload(&'static str),
}
