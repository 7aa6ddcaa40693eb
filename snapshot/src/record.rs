//! Record framing, pure: `[len u32 LE][crc32c(len ‖ payload) u32 LE][payload]`.
//!
//! The length is checked against both `MAX_RECORD_BYTES` and the bytes actually left before
//! anything is sliced or allocated, so a corrupt length can never cause a large allocation. The
//! checksum covers the length too, so a flipped length bit is caught even when it still fits.
//! This module knows nothing about what a payload means (see `batch`).

use crate::error::RecordError;

/// Bytes of the frame before the payload.
pub const FRAME_BYTES: usize = 8;
/// Largest payload a record may carry (4 MiB). Writers split batches below it.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

fn checksum(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends one framed record holding `payload` to `out`.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    if payload.len() > MAX_RECORD_BYTES {
        return Err(RecordError::BadLength {
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            max: MAX_RECORD_BYTES,
        });
    }
    // Fits: at most MAX_RECORD_BYTES, checked above.
    let len_bytes = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&checksum(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads the record at the start of `bytes`: its payload and the total bytes it spans.
pub fn read(bytes: &[u8]) -> Result<(&[u8], usize), RecordError> {
    let Some((head, rest)) = bytes.split_first_chunk::<FRAME_BYTES>() else {
        return Err(RecordError::Truncated);
    };
    let len_bytes = [head[0], head[1], head[2], head[3]];
    let stored = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let len = u32::from_le_bytes(len_bytes);
    let len_usize = len as usize;
    if len_usize > MAX_RECORD_BYTES || len_usize > rest.len() {
        return Err(RecordError::BadLength {
            len,
            max: MAX_RECORD_BYTES,
        });
    }
    let payload = &rest[..len_usize];
    if checksum(len_bytes, payload) != stored {
        return Err(RecordError::Checksum);
    }
    Ok((payload, FRAME_BYTES + len_usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn frame_then_read_round_trips() {
        let bytes = framed(b"hello");
        assert_eq!(read(&bytes), Ok((&b"hello"[..], FRAME_BYTES + 5)));
        let empty = framed(b"");
        assert_eq!(read(&empty), Ok((&b""[..], FRAME_BYTES)));
    }

    #[test]
    fn huge_length_is_rejected_before_any_allocation() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 64]);
        assert!(matches!(read(&bytes), Err(RecordError::BadLength { .. })));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = framed(b"some payload bytes");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(read(&flipped).is_err(), "bit {bit} flip went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = framed(b"payload");
        for cut in 0..bytes.len() {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_payloads_are_refused_when_framing() {
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(frame(&big, &mut Vec::new()).is_err());
    }
}
