//! `SnapshotError` (IO and format failures of the log as a whole) and `RecordError` (why one
//! record could not be read). Recovery decisions are made in `replay` from these kinds.

use std::path::PathBuf;

use thiserror::Error;

/// Why an operation on the log as a whole (open, append, sync, replay) failed.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// A file-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "open" or "fsync".
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An fsync (of a segment or of the directory) failed. Unlike a failed write this is never
    /// retried: the kernel may have dropped the dirty pages, so a retry could report success for
    /// data that is gone.
    #[error("fsync {path}: {source}")]
    Sync {
        /// The file or directory whose fsync failed.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A checkpoint could not be encoded (the text says why).
    #[error("cannot encode a checkpoint: {0}")]
    CheckpointEncode(String),
    /// A single entry encodes to a record payload larger than `MAX_RECORD_BYTES`.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The record's size, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
}

impl SnapshotError {
    /// Whether this is a failed fsync, after which nothing written since the last good one can be
    /// trusted to be on disk.
    pub fn is_sync_failure(&self) -> bool {
        matches!(self, Self::Sync { .. })
    }

    /// An `Io` error for `op` on `path`.
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
    /// Fewer bytes are left than a frame's 8-byte length and checksum.
    #[error("fewer bytes than a record frame")]
    Truncated,
    /// The frame's length is past `MAX_RECORD_BYTES` or past the bytes left.
    #[error("record length {len} exceeds the {max}-byte limit or the bytes left")]
    BadLength {
        /// The length the frame claims, in bytes.
        len: u32,
        /// The most it could be here, in bytes.
        max: usize,
    },
    /// The crc32c of length and payload does not match the stored one.
    #[error("record checksum mismatch")]
    Checksum,
    /// The frame is sound but the payload breaks the batch format; the text says how.
    #[error("record payload is malformed: {0}")]
    Payload(&'static str),
}
