//! `SegmentWriter`: appends batches of log entries (events and touches) to the newest segment,
//! rolls to a new segment by size and age, fsyncs on request, and deletes whole segments past
//! retention.
//!
//! Every new file is created with its header, fsynced, and followed by an fsync of the directory,
//! so a crash never leaves a segment that the directory does not know about. A sealed segment is
//! never written again. When to sync is the caller's policy (the server's durability mode); this
//! type only does what it is told, and reports every IO error rather than retrying.
//!
//! A failed write (a full or read-only disk, EIO) can be retried: the writer cuts the file back to
//! its last complete record before the next append, so a partial write never becomes a damaged
//! record in the middle of a segment, and sequence numbers only advance once a write succeeded. A
//! failed fsync is reported as `SnapshotError::Sync`, which callers must treat as fatal.
//!
//! Segment files deleted under the running writer (`rm segments/*.seg`, the directory removed or
//! replaced) would otherwise take acknowledged events with them at the next start while appends
//! go on into an unlinked file. The writer keeps an open handle on every segment that may still
//! hold events of the live window (up to `MAX_HELD_SEGMENTS`), and `restore_unlinked` notices a
//! segment whose link count fell to zero or a directory that is no longer the one it opened, and
//! writes each such segment back under its name from the open handle.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// Most sealed segments kept open against deletion. Each costs one file descriptor; beyond this
/// the oldest are let go (a deleted one of those is lost, and says so at the next replay as a
/// sequence gap).
pub const MAX_HELD_SEGMENTS: usize = 512;

/// A sealed segment kept open so it can be written back if its file is deleted.
#[derive(Debug)]
struct HeldSegment {
    path: PathBuf,
    file: File,
    /// When the next segment was created: every event here is older.
    sealed_ms: i64,
}

/// Which directory the writer opened, so a removed or replaced one is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirIdentity {
    dev: u64,
    ino: u64,
}

impl DirIdentity {
    fn of(dir: &Path) -> Option<Self> {
        std::fs::metadata(dir).ok().map(|m| Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Appends batches to the newest segment of a directory, rolls to a new one by size and age,
/// fsyncs on request and deletes segments past retention.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    dir_identity: Option<DirIdentity>,
    held: std::collections::VecDeque<HeldSegment>,
    limits: SegmentLimits,
    file: File,
    path: PathBuf,
    header: SegmentHeader,
    len: u64,
    next_seq: u64,
    unsynced: bool,
    /// A write failed, so bytes past `len` may be a partial record: cut them before the next one.
    tail_dirty: bool,
    buf: Vec<u8>,
    payload: Vec<u8>,
    /// Retention keeps every segment holding an event at or after this sequence number (the
    /// newest checkpoint needs them); `u64::MAX` when no checkpoint constrains it.
    keep_from_seq: u64,
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    let handle = File::open(dir).map_err(|e| SnapshotError::io("open directory", dir, e))?;
    handle.sync_all().map_err(|source| SnapshotError::Sync {
        path: dir.to_owned(),
        source,
    })
}

/// Mode of the log's directory and files: segments hold visitor ids, paths and referrers, which
/// other local users have no business reading.
const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) readable by the owner only, and tightens it if it already
/// exists with a looser mode.
pub fn create_private_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| SnapshotError::io("create directory", dir, e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| SnapshotError::io("stat directory", dir, e))?
        .permissions()
        .mode();
    if mode & 0o777 != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(|e| SnapshotError::io("restrict directory", dir, e))?;
    }
    Ok(())
}

/// Options for a new log file, readable and writable by the owner only.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(PRIVATE_FILE_MODE);
    options
}

/// Bytes an unprivileged writer can still put on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> Result<u64, SnapshotError> {
    let stats =
        rustix::fs::statvfs(dir).map_err(|e| SnapshotError::io("statvfs", dir, e.into()))?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
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
        create_private_dir(dir)?;
        let (file, path, header) = Self::new_segment(dir, next_seq, now_ms)?;
        Ok(Self {
            dir: dir.to_owned(),
            dir_identity: DirIdentity::of(dir),
            held: std::collections::VecDeque::new(),
            limits,
            file,
            path,
            header,
            len: HEADER_BYTES as u64,
            next_seq,
            unsynced: false,
            tail_dirty: false,
            buf: Vec::new(),
            payload: Vec::new(),
            keep_from_seq: u64::MAX,
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
        // Readable too, so the segment can be written back from this handle if it is deleted.
        let mut file = private_file()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SnapshotError::io("create segment", &path, e))?;
        // A failed header write leaves a file of at most a header, which the next attempt replaces.
        file.write_all(&header.encode())
            .map_err(|e| SnapshotError::io("write segment header", &path, e))?;
        file.sync_all().map_err(|source| SnapshotError::Sync {
            path: path.clone(),
            source,
        })?;
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
        if self.tail_dirty {
            self.cut_partial_tail()?;
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
            // Take as many entries of one kind (events or touches) as fit one record.
            let kind = entries[start].record_kind();
            let mut end = start;
            let mut size = BATCH_HEADER_BYTES;
            while end < entries.len() && entries[end].record_kind() == kind {
                let next = batch::encoded_len(&entries[end]);
                if end > start && size + next > MAX_RECORD_BYTES {
                    break;
                }
                size += next;
                end += 1;
            }
            self.payload.clear();
            // Every entry in `start..end` has one kind, so `encode` takes them all.
            let end = start + batch::encode(seq, &entries[start..end], &mut self.payload);
            record::frame(&self.payload, &mut self.buf).map_err(|_| {
                SnapshotError::RecordTooLarge {
                    len: self.payload.len(),
                    max: MAX_RECORD_BYTES,
                }
            })?;
            seq += (end - start) as u64;
            start = end;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // Part of the buffer may be on disk: cut it now if the disk lets us, else next time.
            self.tail_dirty = true;
            let _ = self.cut_partial_tail();
            return Err(SnapshotError::io("append to segment", &self.path, e));
        }
        self.len += self.buf.len() as u64;
        self.next_seq = seq;
        self.unsynced = true;
        debug_assert!(self.buf.len() >= FRAME_BYTES);
        Ok(first)
    }

    /// Cuts the segment back to its last complete record and puts the write position there.
    fn cut_partial_tail(&mut self) -> Result<(), SnapshotError> {
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.len)))
            .map_err(|e| SnapshotError::io("cut a partial write", &self.path, e))?;
        self.tail_dirty = false;
        Ok(())
    }

    /// Bytes still free for the log on its file system.
    pub fn available_bytes(&self) -> Result<u64, SnapshotError> {
        available_bytes(&self.dir)
    }

    /// Makes everything appended so far durable (fdatasync). An error here
    /// (`SnapshotError::Sync`) is fatal for the caller: after a failed fsync the kernel may have
    /// dropped the dirty pages, so retrying could report success for data that is gone.
    pub fn sync(&mut self) -> Result<(), SnapshotError> {
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|source| SnapshotError::Sync {
                    path: self.path.clone(),
                    source,
                })?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Seals the current segment (fsynced) and starts a new one.
    fn roll(&mut self, now_ms: i64) -> Result<(), SnapshotError> {
        self.sync()?;
        let (file, path, header) = Self::new_segment(&self.dir, self.next_seq, now_ms)?;
        let sealed_file = std::mem::replace(&mut self.file, file);
        let sealed_path = std::mem::replace(&mut self.path, path);
        self.hold(HeldSegment {
            path: sealed_path,
            file: sealed_file,
            sealed_ms: now_ms,
        });
        self.header = header;
        self.len = HEADER_BYTES as u64;
        self.tail_dirty = false;
        // Retention is housekeeping: failing to delete an old file must not fail the append.
        if let Err(error) = self.enforce_retention(now_ms) {
            tracing::warn!(%error, "retention could not delete old segments");
        }
        Ok(())
    }

    fn hold(&mut self, segment: HeldSegment) {
        if self.held.len() == MAX_HELD_SEGMENTS {
            self.held.pop_front();
        }
        self.held.push_back(segment);
    }

    /// Keeps open handles on the sealed segments already in the directory that may hold events
    /// after `window_start_ms` (call once after replay, before appending).
    pub fn hold_sealed(&mut self, window_start_ms: i64) -> Result<(), SnapshotError> {
        let segments = list_segments(&self.dir)?;
        for pair in segments.windows(2) {
            let (path, next_path) = (&pair[0].1, &pair[1].1);
            if *path == self.path {
                break;
            }
            let Some(sealed_ms) = read_header(next_path).map(|h| h.created_ms) else {
                continue;
            };
            if sealed_ms > window_start_ms {
                let file =
                    File::open(path).map_err(|e| SnapshotError::io("open segment", path, e))?;
                self.hold(HeldSegment {
                    path: path.clone(),
                    file,
                    sealed_ms,
                });
            }
        }
        Ok(())
    }

    /// Writes back, under their own names, the segments deleted since the last call: any whose
    /// link count fell to zero, or all of them when the directory was removed or replaced. Lets go
    /// of sealed segments wholly before `window_start_ms` first. Returns the paths written back.
    pub fn restore_unlinked(
        &mut self,
        window_start_ms: i64,
    ) -> Result<Vec<PathBuf>, SnapshotError> {
        while self
            .held
            .front()
            .is_some_and(|held| held.sealed_ms <= window_start_ms)
        {
            self.held.pop_front();
        }
        let dir_replaced = DirIdentity::of(&self.dir) != self.dir_identity;
        let unlinked = |file: &File| dir_replaced || file.metadata().is_ok_and(|m| m.nlink() == 0);
        let mut restored = Vec::new();
        if dir_replaced {
            create_private_dir(&self.dir)?;
        }
        for held in &mut self.held {
            if unlinked(&held.file) {
                let len = held
                    .file
                    .metadata()
                    .map_err(|e| SnapshotError::io("stat segment", &held.path, e))?
                    .len();
                write_back(&held.file, len, &held.path)?;
                held.file = File::open(&held.path)
                    .map_err(|e| SnapshotError::io("open restored segment", &held.path, e))?;
                restored.push(held.path.clone());
            }
        }
        if unlinked(&self.file) {
            // Only complete records are copied; a partial write past `len` is left behind.
            write_back(&self.file, self.len, &self.path)?;
            self.file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .and_then(|mut f| f.seek(SeekFrom::Start(self.len)).map(|_| f))
                .map_err(|e| SnapshotError::io("reopen restored segment", &self.path, e))?;
            self.tail_dirty = false;
            restored.push(self.path.clone());
        }
        if !restored.is_empty() {
            sync_dir(&self.dir)?;
        }
        self.dir_identity = DirIdentity::of(&self.dir);
        Ok(restored)
    }

    /// Keeps, from now on, every segment holding an event at or after `seq` whatever its age: the
    /// newest checkpoint stands at `seq` and a restart replays the log from there.
    pub fn keep_from(&mut self, seq: u64) {
        self.keep_from_seq = seq;
    }

    /// Deletes sealed segments whose every event is older than the retention period: a segment's
    /// events are all older than the next segment's creation time (and all below the next one's
    /// first sequence number, which must be at most `keep_from`'s). Returns how many were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, SnapshotError> {
        let cutoff = now_ms.saturating_sub(self.limits.retention_ms);
        let segments = list_segments(&self.dir)?;
        let mut deleted = 0;
        for pair in segments.windows(2) {
            let (_, path) = &pair[0];
            let (next_seq, next_path) = &pair[1];
            if *path == self.path || *next_seq > self.keep_from_seq {
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

/// Suffix of the file a deleted segment is copied to before it takes its name back. One left
/// over by a crash is removed at the next replay.
pub const RESTORE_SUFFIX: &str = ".restore";

/// Copies the first `len` bytes of the open (deleted) `source` to a new file at `path`, durably.
fn write_back(source: &File, len: u64, path: &Path) -> Result<(), SnapshotError> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(RESTORE_SUFFIX);
    let temp = PathBuf::from(temp_name);
    let mut target = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| SnapshotError::io("create", &temp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let want = usize::try_from((len - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        let read = source
            .read_at(&mut buf[..want], offset)
            .map_err(|e| SnapshotError::io("read deleted segment", path, e))?;
        if read == 0 {
            break;
        }
        target
            .write_all(&buf[..read])
            .map_err(|e| SnapshotError::io("write restored segment", &temp, e))?;
        offset += read as u64;
    }
    target.sync_all().map_err(|source| SnapshotError::Sync {
        path: temp.clone(),
        source,
    })?;
    std::fs::rename(&temp, path).map_err(|e| SnapshotError::io("install restored segment", path, e))
}

/// The header of the segment at `path`, if it can be read.
pub fn read_header(path: &Path) -> Option<SegmentHeader> {
    let mut bytes = [0u8; HEADER_BYTES];
    let mut file = File::open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut bytes).ok()?;
    SegmentHeader::decode(&bytes).ok()
}
