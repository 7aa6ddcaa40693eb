//! `SegmentWriter`: appends batches of events to the newest segment, rolls to a new segment by
//! size and age, fsyncs on request, and deletes whole segments past retention.
//!
//! Every new file is created with its header, fsynced, and followed by an fsync of the directory,
//! so a crash never leaves a segment that the directory does not know about. A sealed segment is
//! never written again. When to sync is the caller's policy (the server's durability mode); this
//! type only does what it is told, and reports every IO error rather than retrying.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::batch::{self, LogEntry, BATCH_HEADER_BYTES};
use crate::error::SnapshotError;
use crate::record::{self, FRAME_BYTES, MAX_RECORD_BYTES};
use crate::segment::{list_segments, segment_file_name, SegmentHeader, HEADER_BYTES};

/// When segments roll over and how long they are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// Roll to a new segment once the current one reaches this size.
    pub max_segment_bytes: u64,
    /// Roll to a new segment once the current one is this old (and not empty), so old data can
    /// be skipped at replay and deleted at retention a whole file at a time.
    pub max_segment_age_ms: i64,
    /// Delete segments whose every event is older than this.
    pub retention_ms: i64,
}

impl SegmentLimits {
    /// Default `max_segment_bytes`: 64 MiB.
    pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    /// Default `max_segment_age_ms`: 10 minutes.
    pub const DEFAULT_MAX_SEGMENT_AGE_MS: i64 = 10 * 60 * 1000;
    /// Default `retention_ms`: 30 days.
    pub const DEFAULT_RETENTION_MS: i64 = 30 * 24 * 3_600_000;
}

impl Default for SegmentLimits {
    fn default() -> Self {
        Self {
            max_segment_bytes: Self::DEFAULT_MAX_SEGMENT_BYTES,
            max_segment_age_ms: Self::DEFAULT_MAX_SEGMENT_AGE_MS,
            retention_ms: Self::DEFAULT_RETENTION_MS,
        }
    }
}

/// Appends batches to the newest segment of a directory, rolls to a new one by size and age,
/// fsyncs on request and deletes segments past retention.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    limits: SegmentLimits,
    file: File,
    path: PathBuf,
    header: SegmentHeader,
    len: u64,
    next_seq: u64,
    unsynced: bool,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("fsync directory", dir, e))
}

impl SegmentWriter {
    /// Starts a new segment in `dir` whose first event will be `next_seq`. Existing segments are
    /// left as they are: from now on they are sealed.
    pub fn create(
        dir: &Path,
        next_seq: u64,
        now_ms: i64,
        limits: SegmentLimits,
    ) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|e| SnapshotError::io("create directory", dir, e))?;
        let (file, path, header) = Self::new_segment(dir, next_seq, now_ms)?;
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            file,
            path,
            header,
            len: HEADER_BYTES as u64,
            next_seq,
            unsynced: false,
            buf: Vec::new(),
            payload: Vec::new(),
        })
    }

    fn new_segment(
        dir: &Path,
        first_seq: u64,
        now_ms: i64,
    ) -> Result<(File, PathBuf, SegmentHeader), SnapshotError> {
        let path = dir.join(segment_file_name(first_seq));
        // A segment that never got a record (the server stopped right after starting it) has the
        // name the new one needs; it holds nothing, so it is replaced.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() <= HEADER_BYTES as u64) {
            std::fs::remove_file(&path)
                .map_err(|e| SnapshotError::io("replace empty segment", &path, e))?;
        }
        let header = SegmentHeader {
            first_seq,
            created_ms: now_ms,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SnapshotError::io("create segment", &path, e))?;
        file.write_all(&header.encode())
            .and_then(|()| file.sync_all())
            .map_err(|e| SnapshotError::io("write segment header", &path, e))?;
        sync_dir(dir)?;
        Ok((file, path, header))
    }

    /// The sequence number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The segment currently written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether appended bytes are waiting for `sync`.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Appends `entries` as one or more records (split below `MAX_RECORD_BYTES`) with one write
    /// call, rolling to a new segment first if the current one is full or old. Returns the first
    /// sequence number given. Not durable until `sync`.
    pub fn append(&mut self, entries: &[LogEntry], now_ms: i64) -> Result<u64, SnapshotError> {
        let first = self.next_seq;
        if entries.is_empty() {
            return Ok(first);
        }
        let too_old =
            now_ms.saturating_sub(self.header.created_ms) >= self.limits.max_segment_age_ms;
        let has_records = self.len > HEADER_BYTES as u64;
        if has_records && (self.len >= self.limits.max_segment_bytes || too_old) {
            self.roll(now_ms)?;
        }
        self.buf.clear();
        let mut start = 0;
        let mut seq = self.next_seq;
        while start < entries.len() {
            // Take as many entries as fit one record.
            let mut end = start;
            let mut size = BATCH_HEADER_BYTES;
            while end < entries.len() {
                let next = batch::encoded_len(&entries[end]);
                if end > start && size + next > MAX_RECORD_BYTES {
                    break;
                }
                size += next;
                end += 1;
            }
            self.payload.clear();
            batch::encode(seq, &entries[start..end], &mut self.payload);
            record::frame(&self.payload, &mut self.buf).map_err(|_| {
                SnapshotError::RecordTooLarge {
                    len: self.payload.len(),
                    max: MAX_RECORD_BYTES,
                }
            })?;
            seq += (end - start) as u64;
            start = end;
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| SnapshotError::io("append to segment", &self.path, e))?;
        self.len += self.buf.len() as u64;
        self.next_seq = seq;
        self.unsynced = true;
        debug_assert!(self.buf.len() >= FRAME_BYTES);
        Ok(first)
    }

    /// Makes everything appended so far durable (fdatasync). An error here is fatal for the
    /// caller: after a failed fsync the kernel may have dropped the dirty pages, so retrying
    /// could report success for data that is gone.
    pub fn sync(&mut self) -> Result<(), SnapshotError> {
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| SnapshotError::io("fsync segment", &self.path, e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Seals the current segment (fsynced) and starts a new one.
    fn roll(&mut self, now_ms: i64) -> Result<(), SnapshotError> {
        self.sync()?;
        let (file, path, header) = Self::new_segment(&self.dir, self.next_seq, now_ms)?;
        self.file = file;
        self.path = path;
        self.header = header;
        self.len = HEADER_BYTES as u64;
        self.enforce_retention(now_ms)?;
        Ok(())
    }

    /// Deletes sealed segments whose every event is older than the retention period: a segment's
    /// events are all older than the next segment's creation time. Returns how many were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, SnapshotError> {
        let cutoff = now_ms.saturating_sub(self.limits.retention_ms);
        let segments = list_segments(&self.dir)?;
        let mut deleted = 0;
        for pair in segments.windows(2) {
            let (_, path) = &pair[0];
            let (_, next_path) = &pair[1];
            if *path == self.path {
                break;
            }
            let next_created = read_header(next_path).map(|h| h.created_ms);
            if next_created.is_some_and(|created| created <= cutoff) {
                std::fs::remove_file(path)
                    .map_err(|e| SnapshotError::io("delete old segment", path, e))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}

/// The header of the segment at `path`, if it can be read.
pub fn read_header(path: &Path) -> Option<SegmentHeader> {
    let mut bytes = [0u8; HEADER_BYTES];
    let mut file = File::open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut bytes).ok()?;
    SegmentHeader::decode(&bytes).ok()
}
