//! Pulse's on-disk event log: append-only segment files, their writer and their replay.
//!
//! Knows files and bytes only (std::fs and memmap2): never HTTP, JSON, configuration or clocks —
//! callers pass `now`. The format is versioned and spells out every code (`codes`):
//! `tests/fixtures/v1/` pins a whole segment, `tests/fixtures/golden/` every code of a batch.
//!
//! # Layout
//! - `record`: framing, `[len u32][crc32c u32][payload]`, pure.
//! - `batch`: the payload — a batch of events or of touches with sequence numbers (`LogEntry`,
//!   `LoggedEvent`).
//! - `codes`: the explicit byte of every enum value and flag the payload stores.
//! - `segment`: file naming, the 32-byte header, listing segments.
//! - `writer`: `SegmentWriter` — append, sync, roll, retention.
//! - `checkpoint`: the engine's state at a point of the log in one file — format, atomic write,
//!   loading the newest valid one.
//! - `replay`: `replay()` and the pure `scan_segment()`, torn-tail repair, corruption isolation.
//! - `error`: `SnapshotError`, `RecordError`.

#![deny(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod codes;
pub mod error;
pub mod record;
pub mod replay;
pub mod segment;
pub mod writer;

pub use batch::{LogEntry, LoggedEvent};
pub use checkpoint::{Checkpoint, Refusal, WebsiteCheckpoint};
pub use error::{RecordError, SnapshotError};
pub use replay::{replay, scan_segment, ReplayOptions, ReplayReport, ScanEnd};
pub use segment::SegmentHeader;
pub use writer::{SegmentLimits, SegmentWriter};
