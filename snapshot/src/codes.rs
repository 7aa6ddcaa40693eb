//! The log's code tables, pure: the byte each engine enum value is written as, the bits of an
//! entry's flags byte and the payload kinds. These tables are the format. The engine's
//! declaration order means nothing on disk: every code is spelled out below, encoding is an
//! exhaustive `match` (a new engine variant does not compile until it has a code), and decoding
//! treats an unknown code as corruption, never as a default. A code, once written to a log, is
//! never reused for another value.
//!
//! The layout the codes sit in is `batch`'s; `tests/golden.rs` pins both, byte for byte.

use pulse_engine::{Browser, DeviceType, EventKind};

use crate::error::RecordError;

/// Payload kind of a batch of events, the first byte of every record payload.
pub const KIND_EVENT_BATCH: u8 = 1;
/// Payload kind of a batch of touches (visitors seen without an event, `pulse_engine::Touch`).
pub const KIND_TOUCH_BATCH: u8 = 2;
/// Every payload kind the format defines; any other first byte is corruption.
pub const RECORD_KINDS: [u8; 2] = [KIND_EVENT_BATCH, KIND_TOUCH_BATCH];

/// Flag bit: the event comes from a bot.
pub const FLAG_BOT: u8 = 1;
/// Flag bit: the event is a custom event (`EventKind::Custom`); clear for a pageview.
pub const FLAG_CUSTOM: u8 = 2;
/// Flag bit: a referrer host follows the target.
pub const FLAG_REFERRER: u8 = 4;
/// Flag bit: a two-byte country code follows the device.
pub const FLAG_COUNTRY: u8 = 8;
/// Flag bit: the visitor's id under yesterday's salt follows the country.
pub const FLAG_CARRIED: u8 = 16;
/// Every flag bit an event defines; an event's flags byte with any other bit set is corruption.
pub const KNOWN_FLAGS: u8 = FLAG_BOT | FLAG_CUSTOM | FLAG_REFERRER | FLAG_COUNTRY | FLAG_CARRIED;
/// Every flag bit a touch defines (the bits of the same name as an event's, nothing else); a
/// touch's flags byte with any other bit set is corruption.
pub const KNOWN_TOUCH_FLAGS: u8 = FLAG_BOT | FLAG_CARRIED;

/// An engine enum the log stores as one byte under an explicit code.
pub trait LogCode: Sized + Copy {
    /// The byte written for `self`.
    fn to_code(self) -> u8;
    /// The value written as `code`; a code the table does not define is
    /// `RecordError::Payload`.
    fn from_code(code: u8) -> Result<Self, RecordError>;
}

impl LogCode for Browser {
    fn to_code(self) -> u8 {
        match self {
            Browser::Chrome => 0,
            Browser::Edge => 1,
            Browser::Firefox => 2,
            Browser::Safari => 3,
            Browser::Opera => 4,
            Browser::SamsungInternet => 5,
            Browser::YandexBrowser => 6,
            Browser::UcBrowser => 7,
            Browser::InternetExplorer => 8,
            Browser::Other => 9,
        }
    }

    fn from_code(code: u8) -> Result<Self, RecordError> {
        Ok(match code {
            0 => Browser::Chrome,
            1 => Browser::Edge,
            2 => Browser::Firefox,
            3 => Browser::Safari,
            4 => Browser::Opera,
            5 => Browser::SamsungInternet,
            6 => Browser::YandexBrowser,
            7 => Browser::UcBrowser,
            8 => Browser::InternetExplorer,
            9 => Browser::Other,
            _ => return Err(RecordError::Payload("unknown browser code")),
        })
    }
}

impl LogCode for DeviceType {
    fn to_code(self) -> u8 {
        match self {
            DeviceType::Desktop => 0,
            DeviceType::Mobile => 1,
            DeviceType::Tablet => 2,
            DeviceType::Other => 3,
        }
    }

    fn from_code(code: u8) -> Result<Self, RecordError> {
        Ok(match code {
            0 => DeviceType::Desktop,
            1 => DeviceType::Mobile,
            2 => DeviceType::Tablet,
            3 => DeviceType::Other,
            _ => return Err(RecordError::Payload("unknown device type code")),
        })
    }
}

/// The flag bits that record `kind`: `FLAG_CUSTOM` for a custom event, none for a pageview.
pub fn kind_flags(kind: EventKind) -> u8 {
    match kind {
        EventKind::Pageview => 0,
        EventKind::Custom => FLAG_CUSTOM,
    }
}

/// The kind recorded in an event's `flags` (one bit, so every flags byte names a kind).
pub fn kind_from_flags(flags: u8) -> EventKind {
    if flags & FLAG_CUSTOM != 0 {
        EventKind::Custom
    } else {
        EventKind::Pageview
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `all` round-trips, no two share a code, and every other byte is rejected:
    /// together, the two directions of the table are one bijection over `all`.
    fn assert_table_is_a_bijection<T: LogCode + PartialEq + std::fmt::Debug>(all: &[T]) {
        let mut owner: [Option<T>; 256] = [None; 256];
        for &value in all {
            let code = value.to_code();
            assert_eq!(
                T::from_code(code),
                Ok(value),
                "{value:?} does not round-trip"
            );
            if let Some(other) = owner[usize::from(code)] {
                panic!("{value:?} and {other:?} share code {code}");
            }
            owner[usize::from(code)] = Some(value);
        }
        for code in 0..=u8::MAX {
            match owner[usize::from(code)] {
                Some(value) => assert_eq!(T::from_code(code), Ok(value)),
                None => assert!(
                    matches!(T::from_code(code), Err(RecordError::Payload(_))),
                    "code {code} names no value but decodes"
                ),
            }
        }
    }

    #[test]
    fn every_browser_has_its_own_code_and_unknown_codes_are_corruption() {
        assert_table_is_a_bijection(Browser::ALL);
    }

    #[test]
    fn every_device_type_has_its_own_code_and_unknown_codes_are_corruption() {
        assert_table_is_a_bijection(DeviceType::ALL);
    }

    #[test]
    fn every_event_kind_round_trips_through_its_flag_bits() {
        for &kind in EventKind::ALL {
            let flags = kind_flags(kind);
            assert_eq!(
                flags & !FLAG_CUSTOM,
                0,
                "{kind:?} uses a bit it does not own"
            );
            assert_eq!(kind_from_flags(flags), kind);
            assert_eq!(kind_from_flags(flags | (KNOWN_FLAGS & !FLAG_CUSTOM)), kind);
        }
    }

    #[test]
    fn record_kinds_are_the_written_codes_and_distinct() {
        // Written to disk: these values are the format and never change or get reused.
        assert_eq!(KIND_EVENT_BATCH, 1);
        assert_eq!(KIND_TOUCH_BATCH, 2);
        let mut kinds = RECORD_KINDS;
        kinds.sort_unstable();
        kinds.windows(2).for_each(|w| assert_ne!(w[0], w[1]));
        assert!(
            !RECORD_KINDS.contains(&0),
            "a zeroed tail must never read as a kind"
        );
    }

    #[test]
    fn touch_flags_are_event_flags_of_the_same_meaning() {
        assert_eq!(KNOWN_TOUCH_FLAGS & !KNOWN_FLAGS, 0);
        assert_eq!(KNOWN_TOUCH_FLAGS, FLAG_BOT | FLAG_CARRIED);
    }

    #[test]
    fn flag_bits_are_distinct_single_bits() {
        let flags = [
            FLAG_BOT,
            FLAG_CUSTOM,
            FLAG_REFERRER,
            FLAG_COUNTRY,
            FLAG_CARRIED,
        ];
        let mut seen = 0u8;
        for flag in flags {
            assert_eq!(flag.count_ones(), 1, "{flag:#x}");
            assert_eq!(seen & flag, 0, "{flag:#x} is used twice");
            seen |= flag;
        }
        assert_eq!(seen, KNOWN_FLAGS);
    }
}
