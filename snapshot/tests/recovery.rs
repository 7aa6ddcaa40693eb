//! Recovery tests for the event log: each one damages real segment files the way a crash or a
//! failing disk would, replays them, and checks that exactly the right events come back and the
//! damage is repaired (torn tail) or isolated and reported (corruption) — never skipped silently.

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pulse_engine::{Browser, DeviceType, Event, EventKind, Timestamp, Touch, VisitorId, WebsiteId};
use pulse_snapshot::{
    replay, LogEntry, LoggedEvent, ReplayOptions, ReplayReport, SegmentLimits, SegmentWriter,
};

const T0: i64 = 1_780_000_000_000;

fn entry(n: u64) -> LogEntry {
    LogEntry::Event {
        event: Arc::new(Event {
            website: WebsiteId::new("site").unwrap(),
            ts: Timestamp::from_unix_ms(T0 + n as i64).unwrap(),
            visitor: VisitorId(n % 7),
            kind: if n % 5 == 0 {
                EventKind::Custom
            } else {
                EventKind::Pageview
            },
            target: Arc::from(format!("/e/{n}")),
            referrer_domain: (n % 3 == 0).then(|| Arc::from("t.co")),
            is_bot: n % 11 == 0,
            browser: Browser::Firefox,
            device: DeviceType::Mobile,
            country: None,
        }),
        carried_from: (n % 13 == 0).then_some(VisitorId(99)),
    }
}

/// Writes one record per element of `records` (that many events each) into one segment and
/// returns the segment's path and the offset where each record starts, plus the end offset.
fn write_segment(dir: &Path, records: &[u64]) -> (PathBuf, Vec<u64>) {
    let mut writer = SegmentWriter::create(dir, 0, T0, SegmentLimits::default()).unwrap();
    let mut offsets = vec![fs::metadata(writer.path()).unwrap().len()];
    let mut n = 0;
    for &count in records {
        let entries: Vec<LogEntry> = (n..n + count).map(entry).collect();
        writer.append(&entries, T0).unwrap();
        n += count;
        writer.sync().unwrap();
        offsets.push(fs::metadata(writer.path()).unwrap().len());
    }
    (writer.path().to_owned(), offsets)
}

fn replay_all(dir: &Path) -> (Vec<LoggedEvent>, ReplayReport) {
    let mut events = Vec::new();
    let report = replay(dir, ReplayOptions::default(), |e| events.push(e)).unwrap();
    (events, report)
}

/// Checks `events` are exactly events `expected` in order, with matching sequence numbers.
fn check_events(events: &[LoggedEvent], expected: impl IntoIterator<Item = u64>) {
    let expected: Vec<u64> = expected.into_iter().collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, expected, "replayed sequence numbers");
    for event in events {
        assert_eq!(event.entry, entry(event.seq), "event {} differs", event.seq);
    }
}

/// Entry `n` as a touch (a visitor seen without an event).
fn touch_entry(n: u64) -> LogEntry {
    LogEntry::Touch {
        touch: Touch {
            website: WebsiteId::new(if n % 2 == 0 { "site" } else { "other" }).unwrap(),
            ts: Timestamp::from_unix_ms(T0 + n as i64).unwrap(),
            visitor: VisitorId(n % 7),
            is_bot: n % 3 == 0,
        },
        carried_from: (n % 4 == 0).then_some(VisitorId(99)),
    }
}

#[test]
fn touches_and_events_appended_together_replay_in_order_under_one_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(dir.path(), 0, T0, SegmentLimits::default()).unwrap();
    // Runs of each kind: event, 2 touches, 3 events, touch, then a second append.
    let mixed = |n: u64| {
        if [1, 2, 6, 8].contains(&n) {
            touch_entry(n)
        } else {
            entry(n)
        }
    };
    let first: Vec<LogEntry> = (0..7).map(mixed).collect();
    assert_eq!(writer.append(&first, T0).unwrap(), 0);
    let second: Vec<LogEntry> = (7..10).map(mixed).collect();
    assert_eq!(writer.append(&second, T0).unwrap(), 7);
    writer.sync().unwrap();
    assert_eq!(writer.next_seq(), 10);
    drop(writer);
    let (logged, report) = replay_all(dir.path());
    let got: Vec<(u64, LogEntry)> = logged.into_iter().map(|l| (l.seq, l.entry)).collect();
    let want: Vec<(u64, LogEntry)> = (0..10).map(|n| (n, mixed(n))).collect();
    assert_eq!(got, want);
    assert_eq!((report.events, report.next_seq), (10, 10));
    // One record per run of one kind: [e][t t][e e e][t] and [e][t][e].
    assert_eq!(report.records, 7);
    assert!(report.broken.is_empty() && report.torn_tail.is_none());
}

#[test]
fn replay_returns_every_event_in_order_and_the_next_sequence() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), &[5, 1, 20]);
    let (events, report) = replay_all(dir.path());
    check_events(&events, 0..26);
    assert_eq!(report.next_seq, 26);
    assert_eq!((report.records, report.events), (3, 26));
    assert!(report.torn_tail.is_none() && report.broken.is_empty() && report.gaps.is_empty());
}

#[test]
fn every_truncation_length_of_the_last_record_recovers_the_exact_prefix() {
    let source = tempfile::tempdir().unwrap();
    let (path, offsets) = write_segment(source.path(), &[5, 5, 5]);
    let bytes = fs::read(&path).unwrap();
    let last_start = offsets[2];
    for cut in last_start..bytes.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join(path.file_name().unwrap());
        fs::write(&segment, &bytes[..cut as usize]).unwrap();
        let (events, report) = replay_all(dir.path());
        check_events(&events, 0..10);
        assert!(report.broken.is_empty(), "cut {cut} was called corruption");
        assert_eq!(report.next_seq, 10);
        if cut > last_start {
            let torn = report.torn_tail.expect("a torn tail is reported");
            assert_eq!(
                (torn.offset, torn.bytes_removed),
                (last_start, cut - last_start)
            );
        } else {
            assert!(report.torn_tail.is_none());
        }
        assert_eq!(
            fs::metadata(&segment).unwrap().len(),
            last_start,
            "cut {cut}"
        );
        // The repaired log replays clean, and writing resumes at the right sequence number.
        let (again, second) = replay_all(dir.path());
        check_events(&again, 0..10);
        assert!(second.torn_tail.is_none());
    }
}

#[test]
fn a_single_bit_flip_in_any_non_tail_record_is_detected() {
    let source = tempfile::tempdir().unwrap();
    let (path, offsets) = write_segment(source.path(), &[3, 3, 3]);
    let bytes = fs::read(&path).unwrap();
    let name = path.file_name().unwrap().to_owned();
    // Every bit of the first two records (the third is the tail).
    for bit in offsets[0] * 8..offsets[2] * 8 {
        let dir = tempfile::tempdir().unwrap();
        let mut flipped = bytes.clone();
        flipped[(bit / 8) as usize] ^= 1 << (bit % 8);
        fs::write(dir.path().join(&name), &flipped).unwrap();
        let (events, report) = replay_all(dir.path());
        assert_eq!(
            report.broken.len(),
            1,
            "bit {bit}: corruption went unreported"
        );
        assert!(
            report.torn_tail.is_none(),
            "bit {bit}: corruption was truncated as a tail"
        );
        assert!(report.broken[0]
            .path
            .to_string_lossy()
            .ends_with(".seg.broken"));
        // Only intact events come back: the damaged record's events are missing, none altered.
        let damaged = if bit < offsets[1] * 8 { 0..3 } else { 3..6 };
        let expected: Vec<u64> = (0..9).filter(|s| !damaged.contains(s)).collect();
        check_events(&events, expected.clone());
        assert_eq!(report.next_seq, 9);
        // The intact records now live under the segment's name, the damaged bytes beside it.
        assert_eq!(fs::read(&report.broken[0].path).unwrap(), flipped);
        if bit % 97 == 0 {
            let (again, report) = replay_all(dir.path());
            check_events(&again, expected);
            assert!(report.broken.is_empty(), "bit {bit}: salvage is not clean");
            assert_eq!(
                report.set_aside.len(),
                1,
                "bit {bit}: damage no longer visible"
            );
        }
    }
}

#[test]
fn a_length_of_0xffffffff_is_a_torn_tail_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = write_segment(dir.path(), &[4]);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6]);
    fs::write(&path, &bytes).unwrap();
    let (events, report) = replay_all(dir.path());
    check_events(&events, 0..4);
    assert_eq!(report.torn_tail.unwrap().offset, offsets[1]);
}

#[test]
fn a_zero_filled_tail_is_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = write_segment(dir.path(), &[4, 2]);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&path, &bytes).unwrap();
    let (events, report) = replay_all(dir.path());
    check_events(&events, 0..6);
    assert!(report.broken.is_empty());
    assert_eq!(report.torn_tail.unwrap().bytes_removed, 4096);
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[2]);
}

/// Writes `segments` sealed segments of 3 events each, created one minute apart.
fn write_segments(dir: &Path, segments: u64) -> Vec<PathBuf> {
    let limits = SegmentLimits {
        max_segment_bytes: 1,
        ..SegmentLimits::default()
    };
    let mut writer = SegmentWriter::create(dir, 0, T0, limits).unwrap();
    let mut paths = Vec::new();
    for s in 0..segments {
        let entries: Vec<LogEntry> = (s * 3..s * 3 + 3).map(entry).collect();
        writer.append(&entries, T0 + s as i64 * 60_000).unwrap();
        writer.sync().unwrap();
        paths.push(writer.path().to_owned());
    }
    paths
}

#[test]
fn corruption_in_a_sealed_segment_moves_it_aside_and_replays_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_segments(dir.path(), 3);
    // Damage the tail record of the middle (sealed) segment: sealed means no tail repair.
    let mut bytes = fs::read(&paths[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&paths[1], &bytes).unwrap();
    let (events, report) = replay_all(dir.path());
    check_events(&events, (0..3).chain(6..9));
    assert_eq!(report.broken.len(), 1);
    assert!(!paths[1].exists());
    assert!(report.torn_tail.is_none());
    assert_eq!(report.next_seq, 9);
}

#[test]
fn events_salvaged_around_a_corrupt_segment_come_back_on_every_restart() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_segments(dir.path(), 3);
    // Damage the first record of the middle segment: its other records are still good.
    let mut entries = record_ranges(&paths[1]);
    let first_record = entries.remove(0);
    let mut bytes = fs::read(&paths[1]).unwrap();
    bytes[first_record.start + 9] ^= 0x01;
    fs::write(&paths[1], &bytes).unwrap();
    let (first, report) = replay_all(dir.path());
    assert_eq!(report.broken.len(), 1);
    assert_eq!(report.set_aside.len(), 1);
    for restart in 0..3 {
        let (events, report) = replay_all(dir.path());
        let seqs = |events: &[LoggedEvent]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&events), seqs(&first), "restart {restart}");
        assert!(report.broken.is_empty(), "restart {restart}");
        assert_eq!(
            report.set_aside,
            vec![with_broken_suffix(&paths[1])],
            "restart {restart}: the damage must stay visible"
        );
    }
}

#[test]
fn a_crash_during_salvage_loses_nothing_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_segments(dir.path(), 3);
    let mut bytes = fs::read(&paths[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&paths[1], &bytes).unwrap();
    // A crash after the salvage was written and the damaged file linked aside, before the rename.
    let temp = dir.path().join(format!(
        "{}.salvage",
        paths[1].file_name().unwrap().to_string_lossy()
    ));
    fs::write(&temp, b"half a salvage").unwrap();
    fs::hard_link(&paths[1], with_broken_suffix(&paths[1])).unwrap();
    let (events, report) = replay_all(dir.path());
    check_events(&events, (0..3).chain(6..9));
    assert!(!temp.exists(), "the stale salvage file is still there");
    assert_eq!(report.set_aside.len(), 2, "{:?}", report.set_aside);
    let (again, _) = replay_all(dir.path());
    check_events(&again, (0..3).chain(6..9));
}

fn with_broken_suffix(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.broken", path.display()))
}

/// The byte ranges of the records in the segment at `path`.
fn record_ranges(path: &Path) -> Vec<std::ops::Range<usize>> {
    let bytes = fs::read(path).unwrap();
    let mut pos = pulse_snapshot::segment::HEADER_BYTES;
    let mut records = Vec::new();
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let end = pos + pulse_snapshot::record::FRAME_BYTES + len;
        records.push(pos..end);
        pos = end;
    }
    records
}

/// Appends events `range` one per append (each append rolls with `max_segment_bytes: 1`).
fn append_each(writer: &mut SegmentWriter, range: std::ops::Range<u64>) {
    for n in range {
        writer.append(&[entry(n)], T0 + n as i64).unwrap();
        writer.sync().unwrap();
    }
}

#[test]
fn segments_deleted_under_a_running_writer_are_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let limits = SegmentLimits {
        max_segment_bytes: 1,
        ..SegmentLimits::default()
    };
    let mut writer = SegmentWriter::create(dir.path(), 0, T0, limits).unwrap();
    writer.hold_sealed(T0 - 1).unwrap();
    append_each(&mut writer, 0..5);
    assert!(writer.restore_unlinked(T0 - 1).unwrap().is_empty());
    for (_, path) in pulse_snapshot::segment::list_segments(dir.path()).unwrap() {
        fs::remove_file(path).unwrap();
    }
    let restored = writer.restore_unlinked(T0 - 1).unwrap();
    assert_eq!(restored.len(), 5, "{restored:?}");
    append_each(&mut writer, 5..8);
    drop(writer);
    let (events, report) = replay_all(dir.path());
    check_events(&events, 0..8);
    assert!(
        report.broken.is_empty() && report.gaps.is_empty(),
        "{report:?}"
    );
}

#[test]
fn a_removed_log_directory_is_recreated_with_every_held_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("segments");
    let mut writer = SegmentWriter::create(&log, 0, T0, SegmentLimits::default()).unwrap();
    append_each(&mut writer, 0..4);
    fs::remove_dir_all(&log).unwrap();
    assert_eq!(writer.restore_unlinked(T0 - 1).unwrap().len(), 1);
    append_each(&mut writer, 4..6);
    drop(writer);
    let (events, _) = replay_all(&log);
    check_events(&events, 0..6);
}

#[test]
fn sealed_segments_older_than_the_cutoff_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write_segments(dir.path(), 4);
    let mut events = Vec::new();
    // Segment k is sealed when segment k+1 is created at T0 + (k+1) minutes.
    let options = ReplayOptions {
        skip_before_ms: T0 + 2 * 60_000,
        ..ReplayOptions::default()
    };
    let report = replay(dir.path(), options, |e| events.push(e)).unwrap();
    assert_eq!(report.segments_skipped, 2);
    check_events(&events, 6..12);
    assert_eq!(report.next_seq, 12);
}

#[test]
fn events_a_checkpoint_holds_are_skipped_by_segment_and_by_record() {
    let dir = tempfile::tempdir().unwrap();
    write_segments(dir.path(), 4);
    let mut events = Vec::new();
    // Four segments of one 3-event record each: the first two are wholly below 6.
    let options = ReplayOptions {
        skip_below_seq: 6,
        ..ReplayOptions::default()
    };
    let report = replay(dir.path(), options, |e| events.push(e)).unwrap();
    assert_eq!(report.segments_skipped, 2);
    check_events(&events, 6..12);
    assert_eq!(report.next_seq, 12);
    // One segment of one-event records: those below 4 are checked but not handed out.
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SegmentWriter::create(dir.path(), 0, T0, SegmentLimits::default()).unwrap();
    append_each(&mut writer, 0..10);
    drop(writer);
    let mut events = Vec::new();
    let options = ReplayOptions {
        skip_below_seq: 4,
        ..ReplayOptions::default()
    };
    let report = replay(dir.path(), options, |e| events.push(e)).unwrap();
    check_events(&events, 4..10);
    assert_eq!(
        (report.records, report.events, report.next_seq),
        (10, 6, 10)
    );
    assert!(
        report.gaps.is_empty() && report.broken.is_empty(),
        "{report:?}"
    );
}

#[test]
fn a_newest_segment_without_a_complete_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_segments(dir.path(), 2);
    let torn = dir.path().join("00000000000000000006.seg");
    fs::write(&torn, b"PULSE").unwrap();
    let (events, report) = replay_all(dir.path());
    check_events(&events, 0..6);
    assert!(!torn.exists());
    assert!(paths.iter().all(|p| p.exists()));
    assert_eq!(report.next_seq, 6);
}

#[test]
fn writing_continues_after_replay_without_gaps_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), &[4]);
    let (_, report) = replay_all(dir.path());
    let mut writer = SegmentWriter::create(
        dir.path(),
        report.next_seq,
        T0 + 1,
        SegmentLimits::default(),
    )
    .unwrap();
    let entries: Vec<LogEntry> = (4..7).map(entry).collect();
    assert_eq!(writer.append(&entries, T0 + 1).unwrap(), 4);
    writer.sync().unwrap();
    let (events, report) = replay_all(dir.path());
    check_events(&events, 0..7);
    assert!(report.gaps.is_empty());
}

#[test]
fn a_restart_without_new_events_reuses_the_empty_segment_name() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), &[2]);
    let (_, first) = replay_all(dir.path());
    drop(
        SegmentWriter::create(dir.path(), first.next_seq, T0 + 1, SegmentLimits::default())
            .unwrap(),
    );
    let (_, second) = replay_all(dir.path());
    assert_eq!(second.next_seq, 2);
    let mut writer = SegmentWriter::create(
        dir.path(),
        second.next_seq,
        T0 + 2,
        SegmentLimits::default(),
    )
    .unwrap();
    writer.append(&[entry(2)], T0 + 2).unwrap();
    writer.sync().unwrap();
    let (events, _) = replay_all(dir.path());
    check_events(&events, 0..3);
}

#[test]
fn retention_deletes_only_segments_wholly_older_than_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let limits = SegmentLimits {
        max_segment_bytes: 1,
        max_segment_age_ms: i64::MAX,
        retention_ms: 90_000,
    };
    let mut writer = SegmentWriter::create(dir.path(), 0, T0, limits).unwrap();
    for s in 0..4 {
        let entries: Vec<LogEntry> = (s * 3..s * 3 + 3).map(entry).collect();
        writer.append(&entries, T0 + s as i64 * 60_000).unwrap();
    }
    writer.sync().unwrap();
    // Segments created at T0, +1, +2, +3 min; at +3 min the cutoff is +1.5 min, so only the
    // first segment (sealed at +1 min) is wholly older.
    let remaining: Vec<u64> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            pulse_snapshot::segment::parse_segment_file_name(e.unwrap().file_name().to_str()?)
        })
        .collect();
    assert_eq!(remaining.len(), 3, "{remaining:?}");
    assert!(!remaining.contains(&0));
}

#[test]
fn retention_keeps_segments_the_newest_checkpoint_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let limits = SegmentLimits {
        max_segment_bytes: 1,
        max_segment_age_ms: i64::MAX,
        retention_ms: 1,
    };
    let mut writer = SegmentWriter::create(dir.path(), 0, T0, limits).unwrap();
    // A checkpoint at sequence 4: segment 0 (events 0..3) is covered, segment 3 (3..6) is not.
    writer.keep_from(4);
    for s in 0..4 {
        let entries: Vec<LogEntry> = (s * 3..s * 3 + 3).map(entry).collect();
        writer.append(&entries, T0 + s as i64 * 60_000).unwrap();
    }
    writer.sync().unwrap();
    let remaining: Vec<u64> = pulse_snapshot::segment::list_segments(dir.path())
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(remaining, [3, 6, 9]);
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// The committed v1 segment must stay readable, byte for byte, by every later version. It was
/// written once by the v1 `SegmentWriter` from `entry(0..12)` in two appends (5 and 7 events);
/// a new format version gets a new `vN` directory, and this one is never rewritten.
#[test]
fn fixture_v1_segment_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut count = 0;
    for file in fs::read_dir(fixture_dir()).expect("tests/fixtures/v1 exists") {
        let file = file.unwrap();
        if file.file_name().to_string_lossy().ends_with(".seg") {
            fs::copy(file.path(), dir.path().join(file.file_name())).unwrap();
            count += 1;
        }
    }
    assert_eq!(count, 1, "the fixture directory holds one segment");
    let (events, report) = replay_all(dir.path());
    assert!(report.broken.is_empty() && report.torn_tail.is_none());
    check_events(&events, 0..12);
}

#[test]
fn the_log_directory_and_segments_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("segments");
    // A directory left world-readable by an older version is tightened.
    fs::create_dir(&log).unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o755)).unwrap();
    let mut writer = SegmentWriter::create(&log, 0, T0, SegmentLimits::default()).unwrap();
    writer.append(&[entry(0)], T0).unwrap();
    assert_eq!(mode(&log), 0o700, "segments directory");
    assert_eq!(mode(writer.path()), 0o600, "segment file");
}
