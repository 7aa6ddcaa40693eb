//! The golden batches: `tests/fixtures/golden/batch.hex` holds, byte for byte, the payload the
//! log writes for `golden_entries()`, which use every value of every engine enum the log stores
//! and set and clear every event flag; `touch_batch.hex` holds the touch batch (record kind 2)
//! for `golden_touches()`, which set and clear every touch flag. Encoding must reproduce those
//! bytes and decoding them must give the entries back, so changing any code in `codes.rs` (or
//! the layout) fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pulse_engine::{
    Browser, CountryCode, DeviceType, Event, EventKind, Timestamp, Touch, VisitorId, WebsiteId,
};
use pulse_snapshot::LogEntry;
use pulse_snapshot::{batch, codes};

const FIRST_SEQ: u64 = 1_000;
/// The touch batch follows the event batch in the log's one sequence.
const FIRST_TOUCH_SEQ: u64 = 1_010;
const T0: i64 = 1_780_000_000_000;

/// Which optional parts and flags an entry has.
#[derive(Clone, Copy)]
struct Parts {
    bot: bool,
    referrer: bool,
    country: bool,
    carried: bool,
}

const NONE: Parts = Parts {
    bot: false,
    referrer: false,
    country: false,
    carried: false,
};

fn golden_entry(
    n: i64,
    browser: Browser,
    device: DeviceType,
    kind: EventKind,
    parts: Parts,
) -> LogEntry {
    LogEntry::Event {
        event: Arc::new(Event {
            website: WebsiteId::new(if n % 2 == 0 { "site-a" } else { "shop_B" }).unwrap(),
            ts: Timestamp::from_unix_ms(T0 + n).unwrap(),
            visitor: VisitorId(0x0102_0304_0506_0700 + n as u64),
            kind,
            target: Arc::from(match kind {
                EventKind::Pageview => "/café",
                EventKind::Custom => "signup",
            }),
            referrer_domain: parts.referrer.then(|| Arc::from("t.co")),
            is_bot: parts.bot,
            browser,
            device,
            country: parts.country.then(|| CountryCode::new("GB").unwrap()),
        }),
        carried_from: parts.carried.then_some(VisitorId(0xA0A1_A2A3_A4A5_A6A7)),
    }
}

/// Ten entries: browsers in declaration order, devices cycling, kinds alternating, and flags
/// chosen so each is set in some entry and clear in another (entry 0 has none, entry 5 all).
fn golden_entries() -> Vec<LogEntry> {
    use Browser as B;
    use DeviceType as D;
    use EventKind::{Custom, Pageview};
    let p = |bot, referrer, country, carried| Parts {
        bot,
        referrer,
        country,
        carried,
    };
    vec![
        golden_entry(0, B::Chrome, D::Desktop, Pageview, NONE),
        golden_entry(1, B::Edge, D::Mobile, Custom, p(true, false, false, false)),
        golden_entry(
            2,
            B::Firefox,
            D::Tablet,
            Pageview,
            p(false, true, false, false),
        ),
        golden_entry(3, B::Safari, D::Other, Custom, p(false, false, true, false)),
        golden_entry(
            4,
            B::Opera,
            D::Desktop,
            Pageview,
            p(false, false, false, true),
        ),
        golden_entry(
            5,
            B::SamsungInternet,
            D::Mobile,
            Custom,
            p(true, true, true, true),
        ),
        golden_entry(
            6,
            B::YandexBrowser,
            D::Tablet,
            Pageview,
            p(false, false, true, false),
        ),
        golden_entry(
            7,
            B::UcBrowser,
            D::Other,
            Custom,
            p(false, true, false, false),
        ),
        golden_entry(
            8,
            B::InternetExplorer,
            D::Desktop,
            Pageview,
            p(true, false, false, true),
        ),
        golden_entry(
            9,
            B::Other,
            D::Other,
            Pageview,
            p(true, false, false, false),
        ),
    ]
}

/// Four touches: flags none, bot, carried, both; websites alternating.
fn golden_touches() -> Vec<LogEntry> {
    [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
        .map(|(i, (bot, carried))| {
            let n = 10 + i as i64;
            LogEntry::Touch {
                touch: Touch {
                    website: WebsiteId::new(if n % 2 == 0 { "site-a" } else { "shop_B" }).unwrap(),
                    ts: Timestamp::from_unix_ms(T0 + n).unwrap(),
                    visitor: VisitorId(0x0102_0304_0506_0700 + n as u64),
                    is_bot: bot,
                },
                carried_from: carried.then_some(VisitorId(0xA0A1_A2A3_A4A5_A6A7)),
            }
        })
        .collect()
}

/// The event of an entry of `golden_entries()`.
fn event_of(entry: &LogEntry) -> &Event {
    match entry {
        LogEntry::Event { event, .. } => event,
        LogEntry::Touch { .. } => panic!("golden_entries() holds events only"),
    }
}

/// The committed event batch.
fn golden_bytes() -> Vec<u8> {
    hex_bytes(include_str!("fixtures/golden/batch.hex"))
}

/// The committed touch batch.
fn golden_touch_bytes() -> Vec<u8> {
    hex_bytes(include_str!("fixtures/golden/touch_batch.hex"))
}

/// A committed payload: hex pairs, with whitespace and `#` comments ignored.
fn hex_bytes(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn encoding_the_golden_entries_gives_the_committed_bytes() {
    let mut payload = Vec::new();
    assert_eq!(
        batch::encode(FIRST_SEQ, &golden_entries(), &mut payload),
        10
    );
    assert_eq!(payload, golden_bytes());
}

#[test]
fn encoding_the_golden_touches_gives_the_committed_bytes() {
    let mut payload = Vec::new();
    assert_eq!(
        batch::encode(FIRST_TOUCH_SEQ, &golden_touches(), &mut payload),
        4
    );
    assert_eq!(payload, golden_touch_bytes());
}

#[test]
fn decoding_the_committed_touch_bytes_gives_the_golden_touches() {
    let mut decoded = Vec::new();
    let (first_seq, count) =
        batch::decode(&golden_touch_bytes(), &mut None, |e| decoded.push(e)).unwrap();
    assert_eq!((first_seq, count), (FIRST_TOUCH_SEQ, 4));
    let touches = golden_touches();
    assert_eq!(decoded.len(), touches.len());
    for (i, (got, want)) in decoded.iter().zip(&touches).enumerate() {
        assert_eq!(got.seq, FIRST_TOUCH_SEQ + i as u64);
        assert_eq!(&got.entry, want, "touch {i}");
    }
}

/// As for events: a new touch flag grows `KNOWN_TOUCH_FLAGS` and fails here until a golden
/// touch sets it (and so a new fixture).
#[test]
fn golden_touches_set_and_clear_every_touch_flag() {
    let flags_of = |e: &LogEntry| match e {
        LogEntry::Touch {
            touch,
            carried_from,
        } => {
            let mut flags = 0;
            if touch.is_bot {
                flags |= codes::FLAG_BOT;
            }
            if carried_from.is_some() {
                flags |= codes::FLAG_CARRIED;
            }
            flags
        }
        LogEntry::Event { .. } => panic!("golden_touches() holds touches only"),
    };
    let touches = golden_touches();
    for bit in (0..8)
        .map(|i| 1u8 << i)
        .filter(|b| codes::KNOWN_TOUCH_FLAGS & b != 0)
    {
        assert!(
            touches.iter().any(|e| flags_of(e) & bit != 0),
            "{bit:#x} never set"
        );
        assert!(
            touches.iter().any(|e| flags_of(e) & bit == 0),
            "{bit:#x} never clear"
        );
    }
    assert!(touches
        .iter()
        .any(|e| flags_of(e) == codes::KNOWN_TOUCH_FLAGS));
    assert_eq!(golden_touch_bytes()[0], codes::KIND_TOUCH_BATCH);
}

#[test]
fn decoding_the_committed_bytes_gives_the_golden_entries() {
    let mut decoded = Vec::new();
    let (first_seq, count) =
        batch::decode(&golden_bytes(), &mut None, |e| decoded.push(e)).unwrap();
    assert_eq!((first_seq, count), (FIRST_SEQ, 10));
    let entries = golden_entries();
    assert_eq!(decoded.len(), entries.len());
    for (i, (got, want)) in decoded.iter().zip(&entries).enumerate() {
        assert_eq!(got.seq, FIRST_SEQ + i as u64);
        assert_eq!(&got.entry, want, "entry {i}");
    }
}

/// The fixture only pins what it contains: when an engine enum gains a variant, this fails
/// until the variant has a code in `codes.rs` and an entry here (and so a new fixture
/// version); when a flag is added, `KNOWN_FLAGS` grows and this fails the same way.
#[test]
fn golden_entries_use_every_enum_value_and_set_and_clear_every_flag() {
    let entries = golden_entries();
    for browser in Browser::ALL {
        assert!(
            entries.iter().any(|e| event_of(e).browser == *browser),
            "{browser:?} is missing from the golden batch"
        );
    }
    for device in DeviceType::ALL {
        assert!(
            entries.iter().any(|e| event_of(e).device == *device),
            "{device:?} is missing from the golden batch"
        );
    }
    for kind in EventKind::ALL {
        assert!(
            entries.iter().any(|e| event_of(e).kind == *kind),
            "{kind:?} is missing from the golden batch"
        );
    }
    let flags_of = |e: &LogEntry| {
        let (event, carried_from) = match e {
            LogEntry::Event {
                event,
                carried_from,
            } => (event, carried_from),
            LogEntry::Touch { .. } => panic!("golden_entries() holds events only"),
        };
        let mut flags = codes::kind_flags(event.kind);
        for (set, flag) in [
            (event.is_bot, codes::FLAG_BOT),
            (event.referrer_domain.is_some(), codes::FLAG_REFERRER),
            (event.country.is_some(), codes::FLAG_COUNTRY),
            (carried_from.is_some(), codes::FLAG_CARRIED),
        ] {
            if set {
                flags |= flag;
            }
        }
        flags
    };
    for bit in (0..8)
        .map(|i| 1u8 << i)
        .filter(|b| codes::KNOWN_FLAGS & b != 0)
    {
        assert!(
            entries.iter().any(|e| flags_of(e) & bit != 0),
            "no golden entry sets flag {bit:#x}"
        );
        assert!(
            entries.iter().any(|e| flags_of(e) & bit == 0),
            "no golden entry clears flag {bit:#x}"
        );
    }
    assert!(entries.iter().any(|e| flags_of(e) == codes::KNOWN_FLAGS));
}
