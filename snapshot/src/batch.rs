//! The record payload, pure: a batch of log entries of one kind — events, or touches (a visitor
//! seen without an event, `pulse_engine::Touch`) — with consecutive sequence numbers, in a
//! hand-written little-endian layout (faster than a generic encoder and as strict). Both kinds
//! share one sequence: the log numbers entries, whatever their kind.
//!
//! The layout below and the code tables in `codes` are the format: every enum and flag is
//! written under the explicit code `codes` gives it, never under the engine's declaration
//! order, and `tests/golden.rs` pins the bytes.
//!
//! ```text
//! u8  kind = KIND_EVENT_BATCH (1) or KIND_TOUCH_BATCH (2)
//! u64 first_seq            entries are numbered first_seq, first_seq + 1, ...
//! u32 count
//! kind 1, count × event:
//!   i64 ts_ms   u64 visitor   u8 flags   u8 browser code   u8 device code
//!   [u8; 2] country          if flags & COUNTRY
//!   u64 carried_from         if flags & CARRIED
//!   u8 len + website id      (1..=64 bytes, [A-Za-z0-9_-])
//!   u16 len + target         (UTF-8, at most MAX_TARGET_BYTES)
//!   u8 len + referrer host   if flags & REFERRER (UTF-8)
//! kind 2, count × touch:
//!   i64 ts_ms   u64 visitor   u8 flags
//!   u64 carried_from         if flags & CARRIED
//!   u8 len + website id      (1..=64 bytes, [A-Za-z0-9_-])
//! ```
//! Event flags (`codes::FLAG_*`): 1 bot, 2 custom event, 4 referrer, 8 country, 16 carried;
//! touch flags: 1 bot, 16 carried (`codes::KNOWN_TOUCH_FLAGS`); other bits must be zero.
//! Decoding checks every length against the bytes left before slicing, validates every value
//! (timestamps in range, enums known, strings UTF-8, ids valid) and rejects trailing bytes.
//! An unknown kind is corruption (a Pulse older than kind 2 reads a touch record that way).

use std::sync::Arc;

use pulse_engine::{
    Browser, CountryCode, DeviceType, Event, Timestamp, Touch, VisitorId, WebsiteId,
};

use crate::codes::{
    kind_flags, kind_from_flags, LogCode, FLAG_BOT, FLAG_CARRIED, FLAG_COUNTRY, FLAG_REFERRER,
    KIND_EVENT_BATCH, KIND_TOUCH_BATCH, KNOWN_FLAGS, KNOWN_TOUCH_FLAGS,
};
use crate::error::RecordError;

/// Longest target (path or event name) the log stores, in bytes.
pub const MAX_TARGET_BYTES: usize = u16::MAX as usize;
/// Bytes of the batch header (kind, first_seq, count).
pub const BATCH_HEADER_BYTES: usize = 13;

/// Bytes of an event besides its optional parts and strings: ts, visitor, flags, browser,
/// device and the two length prefixes of website and target.
const FIXED_EVENT_BYTES: usize = 22;
/// The smallest possible event: the fixed part and a one-byte website id.
const MIN_EVENT_BYTES: usize = FIXED_EVENT_BYTES + 1;
/// Bytes of a touch besides its optional part and website id: ts, visitor, flags and the
/// website's length prefix.
const FIXED_TOUCH_BYTES: usize = 18;
/// The smallest possible touch: the fixed part and a one-byte website id.
const MIN_TOUCH_BYTES: usize = FIXED_TOUCH_BYTES + 1;

/// What the log carries, in the order the engine counted it. Each entry keeps, during the
/// midnight carry-over, the visitor's id under yesterday's salt (replay needs it to rebuild the
/// window exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// An event (`Engine::ingest`).
    Event {
        /// The event as the engine counted it.
        event: Arc<Event>,
        /// The visitor's id under yesterday's salt (`Identity::carried_from`), if any.
        carried_from: Option<VisitorId>,
    },
    /// A visitor seen without an event (`Engine::touch`).
    Touch {
        /// The touch as the engine counted it.
        touch: Touch,
        /// The visitor's id under yesterday's salt (`Identity::carried_from`), if any.
        carried_from: Option<VisitorId>,
    },
}

impl LogEntry {
    /// The website the entry was recorded for.
    pub fn website(&self) -> &WebsiteId {
        match self {
            Self::Event { event, .. } => &event.website,
            Self::Touch { touch, .. } => &touch.website,
        }
    }

    /// The event, or `None` for a touch.
    pub fn event(&self) -> Option<&Arc<Event>> {
        match self {
            Self::Event { event, .. } => Some(event),
            Self::Touch { .. } => None,
        }
    }

    /// The payload kind (`codes::KIND_*`) a record of this entry has.
    pub fn record_kind(&self) -> u8 {
        match self {
            Self::Event { .. } => KIND_EVENT_BATCH,
            Self::Touch { .. } => KIND_TOUCH_BATCH,
        }
    }
}

/// A `LogEntry` read back, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// The entry's sequence number: gap-free and increasing across the whole log.
    pub seq: u64,
    /// The entry as it was appended.
    pub entry: LogEntry,
}

/// Bytes `entry` takes in a payload; used to split batches below the record limit.
pub fn encoded_len(entry: &LogEntry) -> usize {
    match entry {
        LogEntry::Event {
            event,
            carried_from,
        } => {
            FIXED_EVENT_BYTES
                + if event.country.is_some() { 2 } else { 0 }
                + if carried_from.is_some() { 8 } else { 0 }
                + event.website.as_str().len()
                + event.target.len().min(MAX_TARGET_BYTES)
                + event
                    .referrer_domain
                    .as_ref()
                    .map_or(0, |r| 1 + r.len().min(255))
        }
        LogEntry::Touch {
            touch,
            carried_from,
        } => {
            FIXED_TOUCH_BYTES
                + if carried_from.is_some() { 8 } else { 0 }
                + touch.website.as_str().len()
        }
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends one payload to `out`: the leading entries of `entries` that share a record kind
/// (events, or touches), numbered from `first_seq`. Returns how many it took; a caller with
/// entries of both kinds calls again for the rest, numbered on.
#[must_use = "entries after the first change of kind are not encoded"]
pub fn encode(first_seq: u64, entries: &[LogEntry], out: &mut Vec<u8>) -> usize {
    let Some(kind) = entries.first().map(LogEntry::record_kind) else {
        // An empty batch has no entry to take its kind from; events is as good as any.
        out.push(KIND_EVENT_BATCH);
        out.extend_from_slice(&first_seq.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        return 0;
    };
    let run = entries
        .iter()
        .take_while(|e| e.record_kind() == kind)
        .count();
    out.push(kind);
    out.extend_from_slice(&first_seq.to_le_bytes());
    // Callers split batches far below 2^32 entries (the record size limit comes first).
    out.extend_from_slice(&(run as u32).to_le_bytes());
    for entry in &entries[..run] {
        match entry {
            LogEntry::Event {
                event,
                carried_from,
            } => encode_event(event, *carried_from, out),
            LogEntry::Touch {
                touch,
                carried_from,
            } => encode_touch(touch, *carried_from, out),
        }
    }
    run
}

fn encode_event(event: &Event, carried_from: Option<VisitorId>, out: &mut Vec<u8>) {
    let mut flags = kind_flags(event.kind);
    if event.is_bot {
        flags |= FLAG_BOT;
    }
    if event.referrer_domain.is_some() {
        flags |= FLAG_REFERRER;
    }
    if event.country.is_some() {
        flags |= FLAG_COUNTRY;
    }
    if carried_from.is_some() {
        flags |= FLAG_CARRIED;
    }
    out.extend_from_slice(&event.ts.unix_ms().to_le_bytes());
    out.extend_from_slice(&event.visitor.0.to_le_bytes());
    out.extend_from_slice(&[flags, event.browser.to_code(), event.device.to_code()]);
    if let Some(country) = event.country {
        out.extend_from_slice(&country.as_bytes());
    }
    if let Some(carried) = carried_from {
        out.extend_from_slice(&carried.0.to_le_bytes());
    }
    encode_website(&event.website, out);
    let target = clip(&event.target, MAX_TARGET_BYTES);
    out.extend_from_slice(&(target.len() as u16).to_le_bytes());
    out.extend_from_slice(target.as_bytes());
    if let Some(referrer) = &event.referrer_domain {
        let referrer = clip(referrer, 255);
        out.push(referrer.len() as u8);
        out.extend_from_slice(referrer.as_bytes());
    }
}

fn encode_touch(touch: &Touch, carried_from: Option<VisitorId>, out: &mut Vec<u8>) {
    let mut flags = 0;
    if touch.is_bot {
        flags |= FLAG_BOT;
    }
    if carried_from.is_some() {
        flags |= FLAG_CARRIED;
    }
    out.extend_from_slice(&touch.ts.unix_ms().to_le_bytes());
    out.extend_from_slice(&touch.visitor.0.to_le_bytes());
    out.push(flags);
    if let Some(carried) = carried_from {
        out.extend_from_slice(&carried.0.to_le_bytes());
    }
    encode_website(&touch.website, out);
}

fn encode_website(website: &WebsiteId, out: &mut Vec<u8>) {
    // Website ids are at most 64 bytes by construction.
    let website = website.as_str();
    out.push(website.len() as u8);
    out.extend_from_slice(website.as_bytes());
}

/// A bounds-checked cursor over a payload.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.bytes.len() {
            return Err(RecordError::Payload(
                "field runs past the end of the record",
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| RecordError::Payload("string is not UTF-8"))
    }
}

/// The first sequence number of a payload, read without decoding the rest (used to resync after
/// corruption).
pub fn peek_first_seq(payload: &[u8]) -> Option<u64> {
    match payload {
        [KIND_EVENT_BATCH | KIND_TOUCH_BATCH, rest @ ..] => {
            rest.first_chunk::<8>().map(|seq| u64::from_le_bytes(*seq))
        }
        _ => None,
    }
}

/// The first sequence number and entry count of a payload of either kind, read without decoding
/// its entries (replay skips records a checkpoint covers this way).
pub fn peek_header(payload: &[u8]) -> Option<(u64, u32)> {
    match payload {
        [KIND_EVENT_BATCH | KIND_TOUCH_BATCH, rest @ ..] => {
            let seq = rest
                .first_chunk::<8>()
                .map(|seq| u64::from_le_bytes(*seq))?;
            let count = rest.get(8..12)?;
            Some((
                seq,
                u32::from_le_bytes([count[0], count[1], count[2], count[3]]),
            ))
        }
        _ => None,
    }
}

/// Decodes a payload, calling `visit` for each entry in order. `website_cache` keeps the last
/// website id so consecutive entries of one site share one allocation.
pub fn decode(
    payload: &[u8],
    website_cache: &mut Option<WebsiteId>,
    mut visit: impl FnMut(LoggedEvent),
) -> Result<(u64, u32), RecordError> {
    let mut cur = Cursor { bytes: payload };
    let kind = cur.u8()?;
    let min_entry_bytes = match kind {
        KIND_EVENT_BATCH => MIN_EVENT_BYTES,
        KIND_TOUCH_BATCH => MIN_TOUCH_BYTES,
        _ => return Err(RecordError::Payload("unknown record kind")),
    };
    let first_seq = cur.u64()?;
    let count = cur.u32()?;
    // A count the payload cannot hold is rejected before any work is done for it.
    if count as usize > cur.bytes.len() / min_entry_bytes {
        return Err(RecordError::Payload("event count exceeds the record"));
    }
    if first_seq.checked_add(u64::from(count)).is_none() {
        return Err(RecordError::Payload("sequence numbers overflow"));
    }
    for i in 0..count {
        let entry = if kind == KIND_TOUCH_BATCH {
            decode_touch(&mut cur, website_cache)?
        } else {
            decode_event(&mut cur, website_cache)?
        };
        visit(LoggedEvent {
            seq: first_seq + u64::from(i),
            entry,
        });
    }
    if !cur.bytes.is_empty() {
        return Err(RecordError::Payload("trailing bytes after the last event"));
    }
    Ok((first_seq, count))
}

fn decode_ts(cur: &mut Cursor<'_>) -> Result<Timestamp, RecordError> {
    Timestamp::from_unix_ms(cur.u64()? as i64)
        .map_err(|_| RecordError::Payload("timestamp out of range"))
}

fn decode_website(
    cur: &mut Cursor<'_>,
    website_cache: &mut Option<WebsiteId>,
) -> Result<WebsiteId, RecordError> {
    let website_len = usize::from(cur.u8()?);
    let website_str = cur.str(website_len)?;
    Ok(match website_cache {
        Some(cached) if cached.as_str() == website_str => cached.clone(),
        _ => {
            let id = WebsiteId::new(website_str)
                .map_err(|_| RecordError::Payload("invalid website id"))?;
            *website_cache = Some(id.clone());
            id
        }
    })
}

fn decode_event(
    cur: &mut Cursor<'_>,
    website_cache: &mut Option<WebsiteId>,
) -> Result<LogEntry, RecordError> {
    let ts = decode_ts(cur)?;
    let visitor = VisitorId(cur.u64()?);
    let flags = cur.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(RecordError::Payload("unknown event flags"));
    }
    let browser = Browser::from_code(cur.u8()?)?;
    let device = DeviceType::from_code(cur.u8()?)?;
    let country = if flags & FLAG_COUNTRY != 0 {
        let code = cur.array::<2>()?;
        let code = std::str::from_utf8(&code).map_err(|_| RecordError::Payload("bad country"))?;
        Some(CountryCode::new(code).ok_or(RecordError::Payload("bad country"))?)
    } else {
        None
    };
    let carried_from = if flags & FLAG_CARRIED != 0 {
        Some(VisitorId(cur.u64()?))
    } else {
        None
    };
    let website = decode_website(cur, website_cache)?;
    let target_len = usize::from(cur.u16()?);
    let target = cur.str(target_len)?;
    let referrer_domain = if flags & FLAG_REFERRER != 0 {
        let len = usize::from(cur.u8()?);
        Some(Arc::from(cur.str(len)?))
    } else {
        None
    };
    Ok(LogEntry::Event {
        event: Arc::new(Event {
            website,
            ts,
            visitor,
            kind: kind_from_flags(flags),
            target: Arc::from(target),
            referrer_domain,
            is_bot: flags & FLAG_BOT != 0,
            browser,
            device,
            country,
        }),
        carried_from,
    })
}

fn decode_touch(
    cur: &mut Cursor<'_>,
    website_cache: &mut Option<WebsiteId>,
) -> Result<LogEntry, RecordError> {
    let ts = decode_ts(cur)?;
    let visitor = VisitorId(cur.u64()?);
    let flags = cur.u8()?;
    if flags & !KNOWN_TOUCH_FLAGS != 0 {
        return Err(RecordError::Payload("unknown touch flags"));
    }
    let carried_from = if flags & FLAG_CARRIED != 0 {
        Some(VisitorId(cur.u64()?))
    } else {
        None
    };
    let website = decode_website(cur, website_cache)?;
    Ok(LogEntry::Touch {
        touch: Touch {
            website,
            ts,
            visitor,
            is_bot: flags & FLAG_BOT != 0,
        },
        carried_from,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use pulse_engine::EventKind;

    pub fn event_strategy() -> impl Strategy<Value = LogEntry> {
        (
            0..=Timestamp::MAX_MS,
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            0..Browser::ALL.len(),
            0..DeviceType::ALL.len(),
            proptest::option::of("[A-Z]{2}"),
            proptest::option::of(any::<u64>()),
            "[A-Za-z0-9_-]{1,64}",
            ".{0,40}",
            proptest::option::of("[a-z0-9.-]{1,40}"),
        )
            .prop_map(
                |(ts, visitor, is_bot, custom, b, d, country, carried, site, target, referrer)| {
                    LogEntry::Event {
                        event: Arc::new(Event {
                            website: WebsiteId::new(&site).unwrap(),
                            ts: Timestamp::from_unix_ms(ts).unwrap(),
                            visitor: VisitorId(visitor),
                            kind: if custom {
                                EventKind::Custom
                            } else {
                                EventKind::Pageview
                            },
                            target: Arc::from(target),
                            referrer_domain: referrer.map(Arc::from),
                            is_bot,
                            browser: Browser::ALL[b],
                            device: DeviceType::ALL[d],
                            country: country.and_then(|c| CountryCode::new(&c)),
                        }),
                        carried_from: carried.map(VisitorId),
                    }
                },
            )
    }

    pub fn touch_strategy() -> impl Strategy<Value = LogEntry> {
        (
            0..=Timestamp::MAX_MS,
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            "[A-Za-z0-9_-]{1,64}",
        )
            .prop_map(|(ts, visitor, is_bot, carried, site)| LogEntry::Touch {
                touch: Touch {
                    website: WebsiteId::new(&site).unwrap(),
                    ts: Timestamp::from_unix_ms(ts).unwrap(),
                    visitor: VisitorId(visitor),
                    is_bot,
                },
                carried_from: carried.map(VisitorId),
            })
    }

    /// Events and touches, mixed as the server queues them.
    pub fn entry_strategy() -> impl Strategy<Value = LogEntry> {
        prop_oneof![3 => event_strategy(), 1 => touch_strategy()]
    }

    /// Entries of one kind, as one payload holds them.
    fn entries_of_one_kind(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<LogEntry>> {
        prop_oneof![
            prop::collection::vec(event_strategy(), len.clone()),
            prop::collection::vec(touch_strategy(), len),
        ]
    }

    fn decode_all(payload: &[u8]) -> Result<Vec<LoggedEvent>, RecordError> {
        let mut out = Vec::new();
        decode(payload, &mut None, |e| out.push(e))?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            first_seq in 0..u64::MAX / 2,
            entries in prop::collection::vec(entry_strategy(), 0..20),
        ) {
            // One payload per run of one kind, numbered on, as the writer does.
            let mut decoded = Vec::new();
            let mut start = 0;
            while start < entries.len() {
                let mut payload = Vec::new();
                let taken = encode(first_seq + start as u64, &entries[start..], &mut payload);
                let run = &entries[start..start + taken];
                prop_assert!(taken > 0);
                prop_assert!(run.iter().all(|e| e.record_kind() == run[0].record_kind()));
                prop_assert_eq!(payload[0], run[0].record_kind());
                prop_assert_eq!(
                    payload.len(),
                    BATCH_HEADER_BYTES + run.iter().map(encoded_len).sum::<usize>()
                );
                decoded.extend(decode_all(&payload).unwrap());
                start += taken;
            }
            prop_assert_eq!(decoded.len(), entries.len());
            for (i, (got, want)) in decoded.iter().zip(&entries).enumerate() {
                prop_assert_eq!(got.seq, first_seq + i as u64);
                prop_assert_eq!(&got.entry, want);
            }
        }

        #[test]
        fn truncated_or_extended_payloads_are_rejected(
            entries in entries_of_one_kind(1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut payload = Vec::new();
            prop_assert_eq!(encode(7, &entries, &mut payload), entries.len());
            let cut = cut.index(payload.len());
            prop_assert!(decode_all(&payload[..cut]).is_err());
            payload.push(0);
            prop_assert!(decode_all(&payload).is_err());
        }
    }

    fn touch(is_bot: bool, carried: bool) -> LogEntry {
        LogEntry::Touch {
            touch: Touch {
                website: WebsiteId::new("site").unwrap(),
                ts: Timestamp::from_unix_ms(1_780_000_000_000).unwrap(),
                visitor: VisitorId(7),
                is_bot,
            },
            carried_from: carried.then_some(VisitorId(8)),
        }
    }

    #[test]
    fn encode_takes_only_the_leading_run_of_one_kind() {
        let event = LogEntry::Event {
            event: Arc::new(Event {
                website: WebsiteId::new("site").unwrap(),
                ts: Timestamp::from_unix_ms(1_780_000_000_000).unwrap(),
                visitor: VisitorId(7),
                kind: EventKind::Pageview,
                target: Arc::from("/"),
                referrer_domain: None,
                is_bot: false,
                browser: Browser::Chrome,
                device: DeviceType::Desktop,
                country: None,
            }),
            carried_from: None,
        };
        let entries = [
            touch(false, false),
            touch(true, true),
            event.clone(),
            touch(false, false),
        ];
        let mut payload = Vec::new();
        assert_eq!(encode(3, &entries, &mut payload), 2);
        assert_eq!(payload[0], KIND_TOUCH_BATCH);
        let decoded = decode_all(&payload).unwrap();
        assert_eq!(
            decoded
                .iter()
                .map(|e| (e.seq, &e.entry))
                .collect::<Vec<_>>(),
            [(3, &entries[0]), (4, &entries[1])]
        );
        payload.clear();
        assert_eq!(encode(5, &entries[2..], &mut payload), 1);
        assert_eq!(payload[0], KIND_EVENT_BATCH);
    }

    #[test]
    fn an_unknown_record_kind_is_corruption() {
        let mut payload = Vec::new();
        assert_eq!(encode(0, &[touch(false, false)], &mut payload), 1);
        for kind in (0..=u8::MAX).filter(|k| !crate::codes::RECORD_KINDS.contains(k)) {
            payload[0] = kind;
            assert_eq!(
                decode_all(&payload),
                Err(RecordError::Payload("unknown record kind")),
                "kind {kind}"
            );
            assert_eq!(peek_first_seq(&payload), None, "kind {kind}");
        }
    }

    #[test]
    fn a_touch_with_a_flag_touches_do_not_define_is_corruption() {
        let mut payload = Vec::new();
        assert_eq!(encode(0, &[touch(false, false)], &mut payload), 1);
        let flags_at = BATCH_HEADER_BYTES + 16;
        for bit in (0..8).map(|i| 1u8 << i) {
            payload[flags_at] = bit;
            let decoded = decode_all(&payload);
            if bit & KNOWN_TOUCH_FLAGS == 0 {
                assert_eq!(
                    decoded,
                    Err(RecordError::Payload("unknown touch flags")),
                    "{bit:#x}"
                );
            } else {
                // A known bit decodes or runs short (carried wants 8 more bytes), never ignored.
                assert_ne!(decoded.map(|d| d.len()), Ok(0), "{bit:#x}");
            }
        }
    }

    #[test]
    fn a_huge_count_is_rejected_without_work() {
        let mut payload = vec![KIND_EVENT_BATCH];
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_all(&payload),
            Err(RecordError::Payload("event count exceeds the record"))
        );
    }
}
