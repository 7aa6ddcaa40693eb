//! Checkpoints: the engine's state at a point of the log, in one file, so a restart reads the
//! state and replays only the log after it — `write_checkpoint`, `load_newest`, and the pure
//! `encode` / `decode` they use.
//!
//! A checkpoint is a cache of the log, never a source of truth: any checkpoint that is damaged,
//! from another format version or made under other engine limits is refused (`Refusal`) and the
//! caller replays the whole log, which gives the same answers. That is why its body may use a
//! generic encoder (serde + bincode 2) while the log keeps its hand-specified layout; the recent
//! events inside it still use the log's own batch layout (`batch`, `codes`), so no byte here
//! depends on the engine's declaration order.
//!
//! ```text
//! [u8; 8]  magic "PULSECKP"
//! u16      format version (2: the breakdowns joined the body; 3: their per-list cap joined
//!          the limits)
//! u16      reserved, zero
//! u64      sequence number: every website's state holds all its events below it (at least)
//! i64      creation time, unix ms
//! u64 × 6  engine limits: window_secs, ring_capacity, recent_limit, max_websites,
//!          visitor_memory_bytes, breakdown_values_per_list
//! u64      body length
//! u32      crc32c of the body
//! u32      crc32c of the 88 bytes above
//! body     bincode 2 (standard configuration) of `Body`
//! ```
//! All integers little-endian. Each website carries its own sequence number (`WebsiteCheckpoint::
//! seq`): the events of that website below it are in its state, none from it on.
//!
//! Files are `{seq:020}.ckpt` in their own directory, written to a `.tmp` file, fsynced, renamed
//! into place and followed by a directory fsync; then older checkpoints are deleted. A crash at
//! any step leaves the previous checkpoint or the new one, and perhaps a `.tmp` file that the
//! next `load_newest` removes. A new component of the engine's state adds a field to the body:
//! bump `FORMAT_VERSION` with it, so older files are refused rather than misread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pulse_engine::{
    Engine, EngineError, EngineLimits, Event, RecentExport, RingExport, RingSlot, WebsiteCounts,
    WebsiteExport, WebsiteId,
};
use serde::{Deserialize, Serialize};

use crate::batch::{self, LogEntry};
use crate::error::SnapshotError;
use crate::segment::dir_entries;
use crate::writer::{create_private_dir, private_file};

/// The first 8 bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"PULSECKP";
/// The checkpoint format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 3;
/// Engine limits in the header: each one that shapes the state (a cap a full replay would
/// apply differently) must be here, or a checkpoint made under another value could change an
/// answer.
const LIMIT_FIELDS: usize = 6;
const SEQ_AT: usize = 12;
const CREATED_AT: usize = SEQ_AT + 8;
const LIMITS_AT: usize = CREATED_AT + 8;
const BODY_LEN_AT: usize = LIMITS_AT + 8 * LIMIT_FIELDS;
const BODY_CRC_AT: usize = BODY_LEN_AT + 8;
/// Offset of the header's own checksum, which covers every byte before it.
pub const HEADER_CRC_AT: usize = BODY_CRC_AT + 4;
/// Bytes of the fixed header.
pub const HEADER_BYTES: usize = HEADER_CRC_AT + 4;
/// Largest body decoded (16 GiB): bincode refuses any length that claims more.
pub const MAX_BODY_BYTES: usize = 16 << 30;
/// Extension of checkpoint files.
pub const CHECKPOINT_EXT: &str = "ckpt";
/// Suffix of a checkpoint being written.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Bytes written per `write` call, so a pacing pause (tests) falls between them.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// The engine's state at a point of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The smallest of the websites' sequence numbers: the log is needed from here on.
    pub seq: u64,
    /// When it was made (unix ms, the server's event clock).
    pub created_ms: i64,
    /// The engine limits it was made under; it is refused under any others.
    pub limits: EngineLimits,
    /// Every website's state.
    pub websites: Vec<WebsiteCheckpoint>,
}

/// One website's state and the point of the log it stands at.
#[derive(Debug, Clone, PartialEq)]
pub struct WebsiteCheckpoint {
    /// The website.
    pub id: WebsiteId,
    /// Its events below this sequence number are in `state`; none from it on.
    pub seq: u64,
    /// Its state.
    pub state: WebsiteExport,
}

/// What `Checkpoint::restore` put in the engine, and where replay must take over.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Websites whose state came from the checkpoint.
    pub websites: usize,
    /// Websites of the checkpoint left out: deleted since, or deleted and created again.
    pub left_out: usize,
    /// Per website, the first sequence number replay must count: its `log_start` or, for a
    /// restored website, the checkpoint's sequence number for it if that is later.
    pub starts: HashMap<WebsiteId, u64>,
    /// Replay need not hand out events below this (`ReplayOptions::skip_below_seq`): the
    /// smallest of `starts`.
    pub replay_from_seq: u64,
    /// The largest sequence number a restored website stands at: the log must continue at or
    /// after it, or a new event could be numbered as one the checkpoint already holds.
    pub max_seq: u64,
}

impl Checkpoint {
    /// Puts each website's state into `engine`, whose websites are registered already (empty),
    /// and says from which sequence number replay must count each website's events.
    /// `log_starts` holds every registered website's first sequence number
    /// (events below it belong to a deleted website of the same id).
    ///
    /// A website is restored only if it is registered and its state was taken after its
    /// `log_start`: otherwise it was deleted since (and perhaps created again), and its events are
    /// the log's to replay from its start. A state taken exactly at `log_start` may be the
    /// deleted website's (nothing was logged between the copy and the new website's creation),
    /// and the new one held no event then, so it is left out too. On an error nothing stays restored (every website the
    /// call touched is empty again), so the caller can fall back to a full replay.
    pub fn restore(
        self,
        engine: &Engine,
        log_starts: &HashMap<WebsiteId, u64>,
    ) -> Result<Restored, EngineError> {
        let mut restored = Restored {
            starts: log_starts.clone(),
            ..Restored::default()
        };
        let mut touched: Vec<WebsiteId> = Vec::new();
        for website in self.websites {
            let usable = log_starts
                .get(&website.id)
                .is_some_and(|&start| website.seq > start);
            if !usable {
                restored.left_out += 1;
                continue;
            }
            if let Err(error) = engine.import_website(&website.id, website.state) {
                for id in touched.iter().chain([&website.id]) {
                    // Emptied again: removing and adding back a registered website cannot fail
                    // for want of room, and one that is gone has nothing to empty.
                    if engine.remove_website(id).is_ok() {
                        let _ = engine.add_website(id.clone());
                    }
                }
                return Err(error);
            }
            touched.push(website.id.clone());
            restored.websites += 1;
            restored.max_seq = restored.max_seq.max(website.seq);
            if let Some(start) = restored.starts.get_mut(&website.id) {
                *start = (*start).max(website.seq);
            }
        }
        restored.replay_from_seq = restored.starts.values().copied().min().unwrap_or(self.seq);
        Ok(restored)
    }
}

/// Why a checkpoint file was not used. The caller logs it and replays the whole log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The bytes are not a complete, intact checkpoint.
    #[error("damaged: {0}")]
    Damaged(String),
    /// Written by another format version.
    #[error("format version {found}, this server reads {FORMAT_VERSION}")]
    Version {
        /// The version in the file.
        found: u16,
    },
    /// Made under other engine limits (window, ring, memory or website limits).
    #[error("made under other engine limits ({found}), this server runs with {expected}")]
    Limits {
        /// The file's limits, as text.
        found: String,
        /// The running limits, as text.
        expected: String,
    },
}

/// The body as bincode stores it.
#[derive(Serialize, Deserialize)]
struct Body {
    websites: Vec<WebsiteBody>,
}

#[derive(Serialize, Deserialize)]
struct WebsiteBody {
    id: String,
    seq: u64,
    counts: WebsiteCounts,
    human_ring: RingBody,
    bot_ring: RingBody,
}

/// A ring: its bound, and its events as one log batch payload with their arrival numbers and
/// bounds alongside.
#[derive(Serialize, Deserialize)]
struct RingBody {
    max_ts: i64,
    arrivals: Vec<u64>,
    bounds: Vec<i64>,
    events: Vec<u8>,
}

impl RingBody {
    fn from_ring(ring: &RingExport) -> Self {
        let entries: Vec<LogEntry> = ring
            .slots
            .iter()
            .map(|slot| LogEntry::Event {
                event: Arc::clone(&slot.event),
                carried_from: None,
            })
            .collect();
        let mut events = Vec::new();
        // All of one kind (events), so one payload takes them all.
        let taken = batch::encode(0, &entries, &mut events);
        debug_assert_eq!(taken, entries.len());
        Self {
            max_ts: ring.max_ts,
            arrivals: ring.slots.iter().map(|s| s.arrival).collect(),
            bounds: ring.slots.iter().map(|s| s.bound_ts).collect(),
            events,
        }
    }

    fn into_ring(self) -> Result<RingExport, Refusal> {
        let mut events: Vec<Arc<Event>> = Vec::with_capacity(self.arrivals.len());
        let mut touches = 0;
        let mut website_cache = None;
        batch::decode(&self.events, &mut website_cache, |logged| {
            match logged.entry {
                LogEntry::Event { event, .. } => events.push(event),
                LogEntry::Touch { .. } => touches += 1,
            }
        })
        .map_err(|e| Refusal::Damaged(format!("recent events: {e}")))?;
        if touches > 0 {
            return Err(Refusal::Damaged("recent events hold touches".into()));
        }
        if events.len() != self.arrivals.len() || events.len() != self.bounds.len() {
            return Err(Refusal::Damaged(
                "recent events and their arrivals differ in number".into(),
            ));
        }
        let slots = events
            .into_iter()
            .zip(self.arrivals)
            .zip(self.bounds)
            .map(|((event, arrival), bound_ts)| RingSlot {
                arrival,
                bound_ts,
                event,
            })
            .collect();
        Ok(RingExport {
            max_ts: self.max_ts,
            slots,
        })
    }
}

fn limits_fields(limits: &EngineLimits) -> [u64; LIMIT_FIELDS] {
    [
        u64::from(limits.window_secs),
        limits.ring_capacity as u64,
        limits.recent_limit as u64,
        limits.max_websites as u64,
        limits.visitor_memory_bytes as u64,
        limits.breakdown_values_per_list as u64,
    ]
}

fn describe_limits(fields: &[u64; LIMIT_FIELDS]) -> String {
    format!(
        "window {} s, ring {}, recent {}, websites {}, visitor memory {} bytes, \
         breakdown values {} per list",
        fields[0], fields[1], fields[2], fields[3], fields[4], fields[5]
    )
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY_BYTES>()
}

/// The file's bytes: header and body.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, SnapshotError> {
    let body = Body {
        websites: checkpoint
            .websites
            .iter()
            .map(|w| WebsiteBody {
                id: w.id.as_str().to_owned(),
                seq: w.seq,
                counts: w.state.counts.clone(),
                human_ring: RingBody::from_ring(&w.state.recent.humans),
                bot_ring: RingBody::from_ring(&w.state.recent.bots),
            })
            .collect(),
    };
    let body = bincode::serde::encode_to_vec(&body, bincode_config())
        .map_err(|e| SnapshotError::CheckpointEncode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&checkpoint.seq.to_le_bytes());
    out.extend_from_slice(&checkpoint.created_ms.to_le_bytes());
    for field in limits_fields(&checkpoint.limits) {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_BYTES);
    out.extend_from_slice(&body);
    Ok(out)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(field)
}

/// Reads a checkpoint made under `limits` from `bytes`, or says why it cannot be used. Never
/// panics, and allocates no more than the body's own length suggests, whatever the bytes.
pub fn decode(bytes: &[u8], limits: &EngineLimits) -> Result<Checkpoint, Refusal> {
    let damaged = |reason: &str| Refusal::Damaged(reason.to_owned());
    let Some(header) = bytes.first_chunk::<HEADER_BYTES>() else {
        return Err(damaged("shorter than a header"));
    };
    if header[..8] != MAGIC {
        return Err(damaged("bad magic"));
    }
    // The version first: another version's header may have another length, so its checksum
    // would not be where this one's is.
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
        return Err(Refusal::Version { found: version });
    }
    let stored_crc = u32_at(header, HEADER_CRC_AT);
    if crc32c::crc32c(&header[..HEADER_CRC_AT]) != stored_crc {
        return Err(damaged("header checksum mismatch"));
    }
    let seq = u64_at(header, SEQ_AT);
    let created_ms = u64_at(header, CREATED_AT) as i64;
    let mut found = [0u64; LIMIT_FIELDS];
    for (i, field) in found.iter_mut().enumerate() {
        *field = u64_at(header, LIMITS_AT + 8 * i);
    }
    let expected = limits_fields(limits);
    if found != expected {
        return Err(Refusal::Limits {
            found: describe_limits(&found),
            expected: describe_limits(&expected),
        });
    }
    let body_len = u64_at(header, BODY_LEN_AT);
    let body_crc = u32_at(header, BODY_CRC_AT);
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != body_len {
        return Err(damaged("body length differs from the header's"));
    }
    if crc32c::crc32c(body) != body_crc {
        return Err(damaged("body checksum mismatch"));
    }
    let (decoded, read): (Body, usize) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|e| Refusal::Damaged(format!("body: {e}")))?;
    if read != body.len() {
        return Err(damaged("trailing bytes after the body"));
    }
    let mut websites = Vec::with_capacity(decoded.websites.len());
    for website in decoded.websites {
        let id = WebsiteId::new(&website.id).map_err(|_| damaged("invalid website id"))?;
        if website.seq < seq {
            return Err(damaged("a website stands before the checkpoint's sequence"));
        }
        websites.push(WebsiteCheckpoint {
            id,
            seq: website.seq,
            state: WebsiteExport {
                counts: website.counts,
                recent: RecentExport {
                    humans: website.human_ring.into_ring()?,
                    bots: website.bot_ring.into_ring()?,
                },
            },
        });
    }
    Ok(Checkpoint {
        seq,
        created_ms,
        limits: *limits,
        websites,
    })
}

/// The file name of the checkpoint at `seq`.
pub fn checkpoint_file_name(seq: u64) -> String {
    format!("{seq:020}.{CHECKPOINT_EXT}")
}

fn parse_checkpoint_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".ckpt")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checkpoints in `dir`, newest (highest sequence) first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let mut found: Vec<(u64, PathBuf)> = dir_entries(dir)?
        .into_iter()
        .filter_map(|(name, path)| parse_checkpoint_file_name(&name).map(|seq| (seq, path)))
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SnapshotError::Sync {
            path: dir.to_owned(),
            source,
        })
}

/// A checkpoint made durable.
#[derive(Debug, Clone)]
pub struct WrittenCheckpoint {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Older checkpoints deleted after it became durable.
    pub deleted: usize,
}

/// Writes `bytes` (from `encode`) as the checkpoint at `seq` in `dir`: temp file, fsync, rename,
/// directory fsync; then deletes every older checkpoint. `pace` is slept between 64 KiB writes
/// (zero outside tests, which use it to stop the server mid-write).
pub fn write_checkpoint(
    dir: &Path,
    seq: u64,
    bytes: &[u8],
    pace: Duration,
) -> Result<WrittenCheckpoint, SnapshotError> {
    create_private_dir(dir)?;
    let path = dir.join(checkpoint_file_name(seq));
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(TEMP_SUFFIX);
    let temp = PathBuf::from(temp_name);
    let mut file = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| SnapshotError::io("create checkpoint", &temp, e))?;
    for chunk in bytes.chunks(WRITE_CHUNK_BYTES) {
        file.write_all(chunk)
            .map_err(|e| SnapshotError::io("write checkpoint", &temp, e))?;
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    file.sync_all().map_err(|source| SnapshotError::Sync {
        path: temp.clone(),
        source,
    })?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(|e| SnapshotError::io("install checkpoint", &path, e))?;
    sync_dir(dir)?;
    let mut deleted = 0;
    for (old_seq, old_path) in list_checkpoints(dir)? {
        if old_seq < seq {
            std::fs::remove_file(&old_path)
                .map_err(|e| SnapshotError::io("delete old checkpoint", &old_path, e))?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        sync_dir(dir)?;
    }
    Ok(WrittenCheckpoint {
        path,
        bytes: bytes.len() as u64,
        deleted,
    })
}

/// What `load_newest` found.
#[derive(Debug, Default)]
pub struct LoadedCheckpoints {
    /// The newest usable checkpoint and its file, if any.
    pub checkpoint: Option<(Checkpoint, PathBuf)>,
    /// Newer files that were refused, and why.
    pub refused: Vec<(PathBuf, Refusal)>,
}

/// Reads the newest checkpoint in `dir` made under `limits`, trying older ones when a newer one
/// is refused, and removes `.tmp` files a crash left behind. IO errors on the directory are
/// errors; a file that cannot be read is refused like a damaged one.
pub fn load_newest(dir: &Path, limits: &EngineLimits) -> Result<LoadedCheckpoints, SnapshotError> {
    for (name, path) in dir_entries(dir)? {
        if name.ends_with(TEMP_SUFFIX) {
            std::fs::remove_file(&path)
                .map_err(|e| SnapshotError::io("remove unfinished checkpoint", &path, e))?;
        }
    }
    let mut loaded = LoadedCheckpoints::default();
    for (_, path) in list_checkpoints(dir)? {
        let read = File::open(&path).and_then(|mut file| {
            let len = file.metadata()?.len();
            if len > (HEADER_BYTES + MAX_BODY_BYTES) as u64 {
                return Ok(None);
            }
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        });
        let outcome = match read {
            Ok(Some(bytes)) => decode(&bytes, limits),
            Ok(None) => Err(Refusal::Damaged("larger than any checkpoint".into())),
            Err(e) => Err(Refusal::Damaged(format!("cannot be read: {e}"))),
        };
        match outcome {
            Ok(checkpoint) => {
                loaded.checkpoint = Some((checkpoint, path));
                break;
            }
            Err(refusal) => loaded.refused.push((path, refusal)),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            created_ms: 1_700_000_000_000,
            limits: EngineLimits::default(),
            websites: Vec::new(),
        }
    }

    #[test]
    fn every_flipped_header_or_body_bit_is_refused() {
        let bytes = encode(&empty(7)).unwrap();
        assert_eq!(decode(&bytes, &EngineLimits::default()), Ok(empty(7)));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&flipped, &EngineLimits::default()).is_err(),
                "bit {bit}"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &EngineLimits::default()).is_err());
        }
    }

    #[test]
    fn other_limits_and_versions_are_refused_by_name() {
        let bytes = encode(&empty(7)).unwrap();
        let window = EngineLimits {
            window_secs: 60,
            ..EngineLimits::default()
        };
        // A larger per-list cap would keep the `(other)` rows a full replay no longer makes.
        let values_cap = EngineLimits {
            breakdown_values_per_list: EngineLimits::DEFAULT_BREAKDOWN_VALUES_PER_LIST * 2,
            ..EngineLimits::default()
        };
        for other in [window, values_cap] {
            assert!(
                matches!(decode(&bytes, &other), Err(Refusal::Limits { .. })),
                "{other:?}"
            );
        }
        // A newer format, version 2 (before the breakdowns' cap was in the header) and version
        // 1 (before the breakdowns were in the body).
        for version in [FORMAT_VERSION + 1, 2, 1] {
            let mut other = bytes.clone();
            other[8..10].copy_from_slice(&version.to_le_bytes());
            let crc = crc32c::crc32c(&other[..HEADER_CRC_AT]);
            other[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                decode(&other, &EngineLimits::default()),
                Err(Refusal::Version { found: version })
            );
        }
    }

    #[test]
    fn a_newer_checkpoint_replaces_the_older_and_a_damaged_newest_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let limits = EngineLimits::default();
        write_checkpoint(dir.path(), 5, &encode(&empty(5)).unwrap(), Duration::ZERO).unwrap();
        let written =
            write_checkpoint(dir.path(), 9, &encode(&empty(9)).unwrap(), Duration::ZERO).unwrap();
        assert_eq!(written.deleted, 1);
        assert_eq!(list_checkpoints(dir.path()).unwrap().len(), 1);
        let loaded = load_newest(dir.path(), &limits).unwrap();
        assert_eq!(loaded.checkpoint.map(|(c, _)| c.seq), Some(9));
        // A crash mid-write leaves a temp file, which is removed; a damaged newest file is
        // refused and the older one used.
        std::fs::write(dir.path().join("00000000000000000012.ckpt.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join(checkpoint_file_name(11)), b"PULSECKP junk").unwrap();
        let loaded = load_newest(dir.path(), &limits).unwrap();
        assert_eq!(loaded.checkpoint.map(|(c, _)| c.seq), Some(9));
        assert_eq!(loaded.refused.len(), 1);
        assert!(!dir.path().join("00000000000000000012.ckpt.tmp").exists());
    }
}
