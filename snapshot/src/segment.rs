//! Segment files: naming (`{first_seq:020}.seg`), the fixed 32-byte header, and listing a
//! directory's segments in order. Pure apart from `list_segments`; no records here.
//!
//! ```text
//! [u8; 8]  magic "PULSESEG"
//! u16      format version (1)
//! u16      reserved, zero
//! u64      first sequence number (equal to the file name's)
//! i64      creation time, unix ms
//! u32      crc32c of the 28 bytes above
//! ```

use std::path::{Path, PathBuf};

use crate::error::SnapshotError;

/// The first 8 bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"PULSESEG";
/// The segment format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header.
pub const HEADER_BYTES: usize = 32;
/// Extension of live segments.
pub const SEGMENT_EXT: &str = "seg";
/// Suffix appended to a segment moved aside after corruption.
pub const BROKEN_SUFFIX: &str = ".broken";

/// The header fields a segment carries besides magic, version and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment's first event (also its file name).
    pub first_seq: u64,
    /// When the segment was created, in Unix milliseconds.
    pub created_ms: i64,
}

impl SegmentHeader {
    /// The 32 header bytes, checksum included.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.first_seq.to_le_bytes());
        out[20..28].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a header from the start of `bytes`; the error says which check failed.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let Some(h) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Err("shorter than a header");
        };
        if h[..8] != MAGIC {
            return Err("bad magic");
        }
        let field = |range: std::ops::Range<usize>| -> [u8; 8] {
            let mut out = [0u8; 8];
            out.copy_from_slice(&h[range]);
            out
        };
        let stored_crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
        if crc32c::crc32c(&h[..28]) != stored_crc {
            return Err("header checksum mismatch");
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err("unsupported format version");
        }
        Ok(Self {
            first_seq: u64::from_le_bytes(field(12..20)),
            created_ms: i64::from_le_bytes(field(20..28)),
        })
    }
}

/// The file name of the segment starting at `first_seq`: 20 digits and `.seg`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

/// The first sequence number a segment file name encodes, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, oldest first. A missing directory has none.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let mut segments: Vec<(u64, PathBuf)> = dir_entries(dir)?
        .into_iter()
        .filter_map(|(name, path)| parse_segment_file_name(&name).map(|seq| (seq, path)))
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// Every entry of `dir` as (file name, path), names read lossily; a missing directory has none.
pub fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, SnapshotError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io("read directory", dir, e)),
    };
    entries
        .map(|entry| {
            let entry = entry.map_err(|e| SnapshotError::io("read directory", dir, e))?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            first_seq: 42,
            created_ms: 1_772_534_723_000,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..HEADER_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped).is_err(), "bit {bit}");
        }
        assert!(SegmentHeader::decode(&bytes[..31]).is_err());
    }

    #[test]
    fn file_names_encode_the_first_sequence_number() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name("00000000000000000007.seg"), Some(7));
        assert_eq!(parse_segment_file_name("7.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000007.seg.broken"),
            None
        );
        assert_eq!(parse_segment_file_name("0000000000000000000x.seg"), None);
    }
}
