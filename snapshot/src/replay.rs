//! Replay: read every segment at start-up, hand each event to the caller, and repair or isolate
//! damage — `replay(dir, options, visit) → ReplayReport`. "Event" here is any log entry: an
//! event or a touch (`LogEntry`); both take sequence numbers and are replayed in order.
//!
//! The rules (after etcd's WAL, and unlike journals that treat any decode error as "the tail"):
//! - A bad record at the end of the newest segment, with nothing valid after it, is a torn write
//!   from a crash: the file is truncated to the last good record and fsynced, and the report says
//!   where and how many bytes went. An all-zero tail is the same thing.
//! - A bad record with valid records after it, or any damage in a sealed segment, is corruption:
//!   the records that can be read are still replayed and salvaged — copied, byte for byte, into a
//!   fresh file under the segment's own name — while the damaged file is kept aside as
//!   `*.broken` (never deleted), and the report and the log say so loudly. Nothing is skipped
//!   silently, and every later start replays exactly the same events.
//! - Damage stays visible until an operator acts: every start reports every `*.broken` file still
//!   in the directory (`ReplayReport::set_aside`), not only the ones it found itself.
//! - Whole sealed segments whose events are all older than `skip_before_ms` are not read, nor
//!   those whose events all have sequence numbers below `skip_below_seq` (a checkpoint holds
//!   them); records below it in the first segment read are checked but not decoded.
//!
//! `scan_segment` is the pure part (bytes in, events and a verdict out) that the fuzzer drives.

// Mapping the segment files needs `unsafe`: see the comment at the one call.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::batch::{self, LoggedEvent};
use crate::error::{RecordError, SnapshotError};
use crate::record::{self, FRAME_BYTES, MAX_RECORD_BYTES};
use crate::segment::{dir_entries, list_segments, SegmentHeader, BROKEN_SUFFIX, HEADER_BYTES};
use crate::writer::{private_file, read_header, RESTORE_SUFFIX};

/// What `replay` may skip.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Sealed segments whose events are all at or before this instant (unix ms) are skipped.
    pub skip_before_ms: i64,
    /// Events with a lower sequence number are not handed to `visit` (a checkpoint holds them):
    /// sealed segments wholly below it are skipped, records wholly below it are checksummed
    /// but not decoded.
    pub skip_below_seq: u64,
}

/// A torn tail that replay cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that was truncated.
    pub path: PathBuf,
    /// Its new length: the byte offset where the torn record started.
    pub offset: u64,
    /// Bytes cut off the end.
    pub bytes_removed: u64,
}

/// A segment moved aside because it is corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenSegment {
    /// Where the segment is now (`….seg.broken`).
    pub path: PathBuf,
    /// Byte offset of the first damage in the file.
    pub offset: u64,
    /// What the damage is, for the log and `/readyz`.
    pub reason: String,
}

/// Sequence numbers that are missing between two records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqGap {
    /// The sequence number that should have come next.
    pub expected: u64,
    /// The sequence number that came instead.
    pub found: u64,
}

/// What `replay` read, repaired and isolated.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Segments whose records were read.
    pub segments_read: usize,
    /// Sealed segments not read because all their events are at or before `skip_before_ms`.
    pub segments_skipped: usize,
    /// Valid records replayed.
    pub records: u64,
    /// Entries (events and touches) replayed (handed to `visit`).
    pub events: u64,
    /// The sequence number the next event written must get.
    pub next_seq: u64,
    /// The torn tail cut off the newest segment, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Segments this replay found damaged and moved aside (after salvaging their good records).
    pub broken: Vec<BrokenSegment>,
    /// Every damaged segment kept aside in the directory, by this replay or an earlier one: the
    /// damage an operator has not dealt with yet.
    pub set_aside: Vec<PathBuf>,
    /// Places where sequence numbers jumped forward, within or between segments.
    pub gaps: Vec<SeqGap>,
    /// Wall-clock time the replay took.
    pub duration: Duration,
}

/// How a segment's bytes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// Valid records, then only zero bytes from `offset` on.
    ZeroTail {
        /// Byte offset where the zeros start.
        offset: usize,
    },
    /// Valid records, then a bad one at `offset` with nothing valid after it.
    Torn {
        /// Byte offset of the bad record.
        offset: usize,
        /// Why it could not be read.
        error: RecordError,
    },
    /// A bad header or a bad record at `offset` followed by valid data.
    Corrupt {
        /// Byte offset of the first damage.
        offset: usize,
        /// What the damage is.
        reason: String,
    },
}

/// What `scan_segment` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// How the bytes ended.
    pub end: ScanEnd,
    /// The sequence number after the last event read (the header's first one if none).
    pub next_seq: u64,
    /// Valid records read.
    pub records: u64,
    /// Events in those records.
    pub events: u64,
    /// Sequence jumps between consecutive records.
    pub gaps: Vec<SeqGap>,
}

/// The offset of the first valid record after `from` whose sequence numbers do not go back
/// before `expected_seq`. A cheap prefix check (record kind, plausible sequence) runs before the
/// checksum, so scanning a damaged region stays linear in practice.
fn resync(bytes: &[u8], from: usize, expected_seq: u64) -> Option<usize> {
    let plausible = |seq: u64| seq >= expected_seq && seq - expected_seq < 1 << 40;
    (from..bytes.len().saturating_sub(FRAME_BYTES)).find(|&pos| {
        let rest = &bytes[pos..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_RECORD_BYTES || len + FRAME_BYTES > rest.len() {
            return false;
        }
        let payload = &rest[FRAME_BYTES..FRAME_BYTES + len];
        batch::peek_first_seq(payload).is_some_and(plausible) && record::read(rest).is_ok()
    })
}

/// Reads a whole segment held in `bytes`, whose file name says it starts at `name_seq`, and
/// calls `visit` for every event of every valid record, in order. Never panics and never
/// allocates more than one record's events at a time, whatever the bytes.
pub fn scan_segment(bytes: &[u8], name_seq: u64, visit: impl FnMut(LoggedEvent)) -> SegmentScan {
    scan_records(bytes, name_seq, 0, visit, |_| {})
}

/// `scan_segment`, also handing `keep` the byte range of every record whose events were visited.
fn scan_records(
    bytes: &[u8],
    name_seq: u64,
    skip_below_seq: u64,
    mut visit: impl FnMut(LoggedEvent),
    mut keep: impl FnMut(Range<usize>),
) -> SegmentScan {
    let mut scan = SegmentScan {
        end: ScanEnd::Clean,
        next_seq: name_seq,
        records: 0,
        events: 0,
        gaps: Vec::new(),
    };
    let header = match SegmentHeader::decode(bytes) {
        Ok(header) => header,
        Err(reason) => {
            scan.end = if bytes.len() < HEADER_BYTES {
                ScanEnd::Torn {
                    offset: 0,
                    error: RecordError::Truncated,
                }
            } else {
                ScanEnd::Corrupt {
                    offset: 0,
                    reason: reason.to_owned(),
                }
            };
            return scan;
        }
    };
    if header.first_seq != name_seq {
        scan.end = ScanEnd::Corrupt {
            offset: 0,
            reason: format!(
                "header says first sequence {}, file name says {name_seq}",
                header.first_seq
            ),
        };
        return scan;
    }
    let mut corruption: Option<(usize, String)> = None;
    let mut pos = HEADER_BYTES;
    let mut website_cache = None;
    let mut pending: Vec<LoggedEvent> = Vec::new();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let failure = match record::read(rest) {
            Ok((payload, span)) => {
                let covered = batch::peek_header(payload).filter(|&(first_seq, count)| {
                    first_seq >= scan.next_seq
                        && first_seq.saturating_add(u64::from(count)) <= skip_below_seq
                });
                if let Some((first_seq, count)) = covered {
                    if first_seq > scan.next_seq {
                        scan.gaps.push(SeqGap {
                            expected: scan.next_seq,
                            found: first_seq,
                        });
                    }
                    scan.next_seq = first_seq + u64::from(count);
                    scan.records += 1;
                    keep(pos..pos + span);
                    pos += span;
                    continue;
                }
                pending.clear();
                match batch::decode(payload, &mut website_cache, |e| pending.push(e)) {
                    Ok((first_seq, count)) if first_seq >= scan.next_seq => {
                        if first_seq > scan.next_seq {
                            scan.gaps.push(SeqGap {
                                expected: scan.next_seq,
                                found: first_seq,
                            });
                        }
                        scan.next_seq = first_seq + u64::from(count);
                        scan.records += 1;
                        scan.events += u64::from(count);
                        pending.drain(..).for_each(&mut visit);
                        keep(pos..pos + span);
                        pos += span;
                        continue;
                    }
                    Ok(_) => RecordError::Payload("sequence numbers go backwards"),
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        if rest.iter().all(|b| *b == 0) {
            scan.end = ScanEnd::ZeroTail { offset: pos };
            break;
        }
        match resync(bytes, pos + 1, scan.next_seq) {
            Some(next) => {
                corruption.get_or_insert((pos, failure.to_string()));
                pos = next;
            }
            None => {
                scan.end = ScanEnd::Torn {
                    offset: pos,
                    error: failure,
                };
                break;
            }
        }
    }
    if let Some((offset, reason)) = corruption {
        scan.end = ScanEnd::Corrupt { offset, reason };
    }
    scan
}

fn broken_path(path: &Path) -> PathBuf {
    let name = with_suffix(path, BROKEN_SUFFIX).into_os_string();
    let mut candidate = PathBuf::from(&name);
    let mut n = 1;
    while candidate.exists() {
        let mut numbered = name.clone();
        numbered.push(format!(".{n}"));
        candidate = PathBuf::from(numbered);
        n += 1;
    }
    candidate
}

fn sync_parent(path: &Path) -> Result<(), SnapshotError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("fsync directory", dir, e))
}

/// Suffix of the file a salvage is written to before it takes the segment's name. One left over
/// by a crash holds nothing the segment does not, and is removed at the next replay.
const SALVAGE_SUFFIX: &str = ".salvage";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A damaged segment's header and every record `scan_segment` could read, byte for byte.
fn salvaged_bytes(bytes: &[u8], name_seq: u64) -> Vec<u8> {
    let mut good = bytes[..HEADER_BYTES.min(bytes.len())].to_vec();
    scan_records(
        bytes,
        name_seq,
        0,
        |_| {},
        |record| {
            good.extend_from_slice(&bytes[record]);
        },
    );
    good
}

/// Whether a scan's ending means the file must be set aside (anything but a clean end, or a torn
/// or zeroed tail of the newest segment, which is repaired in place).
fn is_damaged(end: &ScanEnd, newest: bool) -> bool {
    match end {
        ScanEnd::Clean => false,
        ScanEnd::ZeroTail { .. } | ScanEnd::Torn { .. } => !newest,
        ScanEnd::Corrupt { .. } => true,
    }
}

/// Keeps a damaged segment aside as `*.broken` and, when `salvage` holds its readable records,
/// puts them under the segment's own name so every later replay reads exactly them again. The
/// order survives a crash at any step: the salvage is durable before the damaged file gets its
/// second name (a hard link), and the rename over the segment's name comes last, so the name
/// always holds either the damaged file (salvaged again next time) or the complete salvage.
fn set_aside(
    path: &Path,
    salvage: Option<&[u8]>,
    offset: usize,
    reason: String,
) -> Result<BrokenSegment, SnapshotError> {
    let Some(good) = salvage else {
        return move_aside(path, offset, reason);
    };
    let temp = with_suffix(path, SALVAGE_SUFFIX);
    private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(good)?;
            file.sync_all()
        })
        .map_err(|e| SnapshotError::io("write salvaged segment", &temp, e))?;
    let target = broken_path(path);
    std::fs::hard_link(path, &target)
        .map_err(|e| SnapshotError::io("keep corrupt segment aside", path, e))?;
    sync_parent(&target)?;
    std::fs::rename(&temp, path)
        .map_err(|e| SnapshotError::io("install salvaged segment", path, e))?;
    sync_parent(path)?;
    tracing::error!(
        segment = %path.display(),
        kept_at = %target.display(),
        offset,
        %reason,
        "CORRUPT SEGMENT: readable records were replayed and salvaged under the segment's name; \
         the damaged file was kept aside"
    );
    Ok(BrokenSegment {
        path: target,
        offset: offset as u64,
        reason,
    })
}

/// Damaged segments kept aside in `dir` (`*.seg.broken`, `*.seg.broken.N`), in name order.
fn list_set_aside(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut found: Vec<PathBuf> = dir_entries(dir)?
        .into_iter()
        .filter(|(name, _)| name.contains(".seg.broken"))
        .map(|(_, path)| path)
        .collect();
    found.sort();
    Ok(found)
}

/// Removes salvage and restore files a crash left behind (see `SALVAGE_SUFFIX`,
/// `RESTORE_SUFFIX`). A salvage is a copy of records the damaged file still holds; a restore is
/// an unfinished copy of a segment an operator deleted, which the crash lost as the deletion
/// would have.
fn remove_stale_salvages(dir: &Path) -> Result<(), SnapshotError> {
    for (name, path) in dir_entries(dir)? {
        if name.ends_with(SALVAGE_SUFFIX) || name.ends_with(RESTORE_SUFFIX) {
            std::fs::remove_file(&path)
                .map_err(|e| SnapshotError::io("remove stale salvage", &path, e))?;
        }
    }
    Ok(())
}

fn move_aside(path: &Path, offset: usize, reason: String) -> Result<BrokenSegment, SnapshotError> {
    let target = broken_path(path);
    std::fs::rename(path, &target)
        .map_err(|e| SnapshotError::io("rename corrupt segment", path, e))?;
    sync_parent(&target)?;
    tracing::error!(
        segment = %path.display(),
        moved_to = %target.display(),
        offset,
        %reason,
        "CORRUPT SEGMENT: readable records were replayed, the file was moved aside"
    );
    Ok(BrokenSegment {
        path: target,
        offset: offset as u64,
        reason,
    })
}

fn truncate(path: &Path, offset: usize, file_len: u64) -> Result<TornTail, SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| SnapshotError::io("open torn segment", path, e))?;
    file.set_len(offset as u64)
        .and_then(|()| file.sync_all())
        .map_err(|e| SnapshotError::io("truncate torn segment", path, e))?;
    let bytes_removed = file_len - offset as u64;
    tracing::warn!(
        segment = %path.display(),
        offset,
        bytes_removed,
        "torn tail truncated to the last good record"
    );
    Ok(TornTail {
        path: path.to_owned(),
        offset: offset as u64,
        bytes_removed,
    })
}

/// Replays every segment in `dir`, oldest first, calling `visit` for each event; repairs a torn
/// tail of the newest segment and moves corrupt segments aside (see the module comment).
pub fn replay(
    dir: &Path,
    options: ReplayOptions,
    mut visit: impl FnMut(LoggedEvent),
) -> Result<ReplayReport, SnapshotError> {
    let started = Instant::now();
    remove_stale_salvages(dir)?;
    let segments = list_segments(dir)?;
    let mut report = ReplayReport::default();
    let mut expected: Option<u64> = None;
    for (i, (name_seq, path)) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        // Every event of a sealed segment was written before the next segment was created.
        // Every event of a sealed segment has a sequence number below the next one's first.
        let skippable = !newest
            && (segments[i + 1].0 <= options.skip_below_seq
                || read_header(&segments[i + 1].1)
                    .is_some_and(|next| next.created_ms <= options.skip_before_ms));
        if skippable {
            report.segments_skipped += 1;
            expected = None;
            report.next_seq = report.next_seq.max(segments[i + 1].0);
            continue;
        }
        if let Some(expected_seq) = expected {
            if *name_seq < expected_seq {
                let reason = format!(
                    "starts at sequence {name_seq}, before {expected_seq} where the previous ended"
                );
                report.broken.push(move_aside(path, 0, reason)?);
                continue;
            }
            if *name_seq > expected_seq {
                report.gaps.push(SeqGap {
                    expected: expected_seq,
                    found: *name_seq,
                });
            }
        }
        let file = File::open(path).map_err(|e| SnapshotError::io("open segment", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| SnapshotError::io("stat segment", path, e))?
            .len();
        let (scan, salvage) = if file_len == 0 {
            (scan_records(&[], *name_seq, 0, &mut visit, |_| {}), None)
        } else {
            // SAFETY: the map is read-only and dropped before this function touches the file
            // again. Pulse never modifies a segment while replaying it (the writer starts after
            // replay, in a new file); another process truncating it meanwhile would be outside
            // the supported model and could fault the read.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| SnapshotError::io("map segment", path, e))?;
            let scan = scan_records(&map, *name_seq, options.skip_below_seq, &mut visit, |_| {});
            // Readable records of a damaged file are copied out while its bytes are mapped.
            let salvage = (is_damaged(&scan.end, newest) && scan.records > 0)
                .then(|| salvaged_bytes(&map, *name_seq));
            (scan, salvage)
        };
        drop(file);
        report.segments_read += 1;
        report.records += scan.records;
        report.events += scan.events;
        report.gaps.extend(scan.gaps.iter().copied());
        report.next_seq = report.next_seq.max(scan.next_seq);
        expected = Some(scan.next_seq);
        match scan.end {
            ScanEnd::Clean => {}
            ScanEnd::ZeroTail { offset } | ScanEnd::Torn { offset, .. } if newest => {
                if offset < HEADER_BYTES {
                    // Crashed while creating the segment: it never held a record.
                    std::fs::remove_file(path)
                        .map_err(|e| SnapshotError::io("remove empty segment", path, e))?;
                    sync_parent(path)?;
                    tracing::warn!(segment = %path.display(), "removed a segment with no complete header");
                } else {
                    report.torn_tail = Some(truncate(path, offset, file_len)?);
                }
            }
            ScanEnd::ZeroTail { offset } => {
                let reason = "sealed segment ends in zero bytes".to_owned();
                report
                    .broken
                    .push(set_aside(path, salvage.as_deref(), offset, reason)?);
            }
            ScanEnd::Torn { offset, error } => {
                let reason = format!("sealed segment ends in a bad record: {error}");
                report
                    .broken
                    .push(set_aside(path, salvage.as_deref(), offset, reason)?);
            }
            ScanEnd::Corrupt { offset, reason } => {
                report
                    .broken
                    .push(set_aside(path, salvage.as_deref(), offset, reason)?);
            }
        }
    }
    report.set_aside = list_set_aside(dir)?;
    if !report.set_aside.is_empty() {
        tracing::error!(
            files = report.set_aside.len(),
            "damaged segments are kept aside in the log directory: see README, Operating Pulse"
        );
    }
    for gap in &report.gaps {
        tracing::error!(
            expected = gap.expected,
            found = gap.found,
            "sequence gap in the event log"
        );
    }
    report.duration = started.elapsed();
    Ok(report)
}
