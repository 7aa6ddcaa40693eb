//! Fuzz target `segment_decode`: arbitrary bytes as a segment file. Scanning must never panic,
//! never allocate beyond one record (`MAX_RECORD_BYTES`, enforced with `-malloc_limit_mb`), and
//! its verdicts must be consistent: the prefix before a torn tail scans clean with the same
//! events, and sequence numbers only go forward.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_snapshot::segment::{SegmentHeader, HEADER_BYTES};
use pulse_snapshot::{scan_segment, ScanEnd};

fuzz_target!(|data: &[u8]| {
    // Half the inputs get a valid header so the fuzzer spends its time on records.
    let mut bytes = Vec::with_capacity(data.len() + HEADER_BYTES);
    if data.first().is_some_and(|b| b & 1 == 0) {
        let header = SegmentHeader {
            first_seq: 0,
            created_ms: 0,
        };
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(&data[1..]);
    } else {
        bytes.extend_from_slice(data);
    }
    let mut seqs = Vec::new();
    let scan = scan_segment(&bytes, 0, |e| seqs.push(e.seq));
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers went back"
    );
    assert_eq!(seqs.len() as u64, scan.events);
    if let Some(&last) = seqs.last() {
        assert!(scan.next_seq > last);
    }
    let clean_prefix = match scan.end {
        ScanEnd::Torn { offset, .. } | ScanEnd::ZeroTail { offset } if offset >= HEADER_BYTES => {
            Some(offset)
        }
        _ => None,
    };
    if let Some(offset) = clean_prefix {
        let mut again = 0_u64;
        let prefix = scan_segment(&bytes[..offset], 0, |_| again += 1);
        assert_eq!(prefix.end, ScanEnd::Clean);
        assert_eq!(again, scan.events);
    }
});
