//! The event and its parts: `Event`, `WebsiteId`, `VisitorId`, `Timestamp`, and the small
//! enums (`EventKind`, `Browser`, `DeviceType`, `CountryCode`) a realtime row shows.
//!
//! These are plain values. Parsing untrusted input into them is the server's job; this module only
//! guarantees that a constructed value is within its documented limits.

use std::fmt;
use std::sync::Arc;

use strum::VariantArray;

use crate::error::EngineError;

/// Milliseconds since the Unix epoch, UTC.
///
/// The engine accepts `0 ..= Timestamp::MAX_MS` (the year 2527); the upper bound lets the event
/// tally pack a timestamp into 44 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The largest accepted value: `2^44 - 1` milliseconds.
    pub const MAX_MS: i64 = (1 << 44) - 1;
    /// Milliseconds in one UTC day.
    pub const DAY_MS: i64 = 86_400_000;

    /// A timestamp from unix milliseconds, or an error when it is negative or past `MAX_MS`.
    pub fn from_unix_ms(ms: i64) -> Result<Self, EngineError> {
        if (0..=Self::MAX_MS).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(EngineError::TimestampOutOfRange { unix_ms: ms })
        }
    }

    /// Unix milliseconds.
    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// The UTC day number (days since 1970-01-01) this instant falls on.
    pub fn utc_day(self) -> i64 {
        self.0.div_euclid(Self::DAY_MS)
    }

    /// Milliseconds elapsed since the start of this instant's UTC day.
    pub fn ms_into_day(self) -> i64 {
        self.0.rem_euclid(Self::DAY_MS)
    }
}

/// A website's identifier: 1 to 64 characters of `[A-Za-z0-9_-]`, so it is safe in a URL path
/// and a file name without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebsiteId(Arc<str>);

impl WebsiteId {
    /// The longest accepted id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates `id` and wraps it.
    pub fn new(id: &str) -> Result<Self, EngineError> {
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(Arc::from(id)))
        } else {
            Err(EngineError::InvalidWebsiteId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebsiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pseudonymous visitor: the first 8 bytes of a salted sha256, read big-endian.
///
/// Displayed as 16 lowercase hex characters. It is only as stable as the daily salt behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VisitorId(pub u64);

impl VisitorId {
    /// Parses exactly 16 hex characters (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(Self)
    }
}

impl fmt::Display for VisitorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What happened: a page was viewed, or the site reported a named custom event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, VariantArray)]
pub enum EventKind {
    /// A page was viewed; the event's target is the page path.
    Pageview,
    /// The site reported a custom event; the event's target is its name.
    Custom,
}

impl EventKind {
    /// Every kind, in declaration order (derived, so a new variant is never missing).
    pub const ALL: &'static [Self] = <Self as VariantArray>::VARIANTS;

    /// The name used in the API and the log: `pageview` or `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pageview => "pageview",
            Self::Custom => "event",
        }
    }
}

/// Browser family, as classified from the User-Agent by the server.
///
/// Declaration order means nothing: the event log stores each family under its own explicit
/// code (`pulse_snapshot::codes`), so variants may be added or reordered freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, VariantArray)]
pub enum Browser {
    /// Google Chrome, and Chromium-based browsers that name no other family.
    Chrome,
    /// Microsoft Edge.
    Edge,
    /// Mozilla Firefox.
    Firefox,
    /// Apple Safari.
    Safari,
    /// Opera, including Opera Mini.
    Opera,
    /// Samsung Internet.
    SamsungInternet,
    /// Yandex Browser.
    YandexBrowser,
    /// UC Browser.
    UcBrowser,
    /// Internet Explorer.
    InternetExplorer,
    /// Any other or unrecognised browser, and every bot.
    Other,
}

impl Browser {
    /// Every family, in declaration order (derived, so a new variant is never missing).
    pub const ALL: &'static [Self] = <Self as VariantArray>::VARIANTS;

    /// The display name used in the realtime API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chrome => "Chrome",
            Self::Edge => "Edge",
            Self::Firefox => "Firefox",
            Self::Safari => "Safari",
            Self::Opera => "Opera",
            Self::SamsungInternet => "Samsung Internet",
            Self::YandexBrowser => "Yandex Browser",
            Self::UcBrowser => "UC Browser",
            Self::InternetExplorer => "Internet Explorer",
            Self::Other => "Other",
        }
    }
}

/// Device class, as classified from the User-Agent by the server.
///
/// Declaration order means nothing: the event log stores each class under its own explicit
/// code (`pulse_snapshot::codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, VariantArray)]
pub enum DeviceType {
    /// A desktop or laptop computer.
    Desktop,
    /// A phone.
    Mobile,
    /// A tablet.
    Tablet,
    /// Televisions, consoles, anything unrecognised, and every bot.
    Other,
}

impl DeviceType {
    /// Every class, in declaration order (derived, so a new variant is never missing).
    pub const ALL: &'static [Self] = <Self as VariantArray>::VARIANTS;

    /// The name used in the realtime API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Tablet => "tablet",
            Self::Other => "other",
        }
    }
}

/// An ISO 3166-1 alpha-2 country code, upper-case ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Accepts two ASCII letters in either case and stores them upper-cased.
    pub fn new(code: &str) -> Option<Self> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The two upper-case letters as text.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The two upper-case ASCII bytes.
    pub fn as_bytes(&self) -> [u8; 2] {
        self.0
    }
}

/// One recorded event.
///
/// `target` is the page path for a pageview and the event name for a custom event; the server
/// has already dropped query strings and fragments, which can carry personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The website the event was sent for.
    pub website: WebsiteId,
    /// When it happened, as the server stamped it.
    pub ts: Timestamp,
    /// Who sent it, pseudonymously.
    pub visitor: VisitorId,
    /// Pageview or custom event.
    pub kind: EventKind,
    /// The page path (pageview) or the event name (custom event).
    pub target: Arc<str>,
    /// The referring site's host, when the page was reached from another site.
    pub referrer_domain: Option<Arc<str>>,
    /// Whether the User-Agent was classified as a bot.
    pub is_bot: bool,
    /// Browser family (`Other` for bots).
    pub browser: Browser,
    /// Device class (`Other` for bots).
    pub device: DeviceType,
    /// The client's country, when a GeoIP database is configured and knows the address.
    pub country: Option<CountryCode>,
}

/// A visitor seen on a website without an event (Plausible's engagement ping: the page is still
/// open). It counts the visitor as active at `ts`, exactly as an event's visitor would, and is
/// never an event: it is not listed among recent events, not in any event count, and takes no
/// arrival number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// The website the visitor was seen on.
    pub website: WebsiteId,
    /// When, as the server stamped it.
    pub ts: Timestamp,
    /// Who, pseudonymously.
    pub visitor: VisitorId,
    /// Whether the User-Agent was classified as a bot (the visitor is counted in that class).
    pub is_bot: bool,
}

/// The one event the engine's unit tests build: a human Chrome desktop pageview with no
/// referrer or country. Tests that need other fields set them with struct-update syntax.
/// (Integration tests use `pulse_testkit::fixtures::pageview_event`; unit tests cannot, as the
/// test kit links its own copy of this crate.)
#[cfg(test)]
pub(crate) fn test_pageview(website: &str, visitor: u64, ts_ms: i64, target: &str) -> Event {
    Event {
        website: WebsiteId::new(website).unwrap(),
        ts: Timestamp::from_unix_ms(ts_ms).unwrap(),
        visitor: VisitorId(visitor),
        kind: EventKind::Pageview,
        target: Arc::from(target),
        referrer_domain: None,
        is_bot: false,
        browser: Browser::Chrome,
        device: DeviceType::Desktop,
        country: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_id_displays_as_16_lowercase_hex_and_parses_back() {
        let id = VisitorId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!(VisitorId::from_hex("00ABCDEF01234567"), Some(id));
        assert_eq!(VisitorId::from_hex("abc"), None);
        assert_eq!(VisitorId::from_hex("zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn website_id_accepts_only_url_safe_slugs() {
        let check = |id: &str, ok: bool| assert_eq!(WebsiteId::new(id).is_ok(), ok, "{id:?}");
        check("my-site_01", true);
        check(&"a".repeat(64), true);
        check(&"a".repeat(65), false);
        check("", false);
        check("a/b", false);
        check("a b", false);
        check("é", false);
    }

    #[test]
    fn timestamp_rejects_negative_and_too_large() {
        assert!(Timestamp::from_unix_ms(-1).is_err());
        assert!(Timestamp::from_unix_ms(Timestamp::MAX_MS + 1).is_err());
        let ts = Timestamp::from_unix_ms(Timestamp::DAY_MS * 3 + 5).unwrap();
        assert_eq!((ts.utc_day(), ts.ms_into_day()), (3, 5));
    }

    #[test]
    fn every_variant_has_its_own_api_name() {
        fn distinct(names: impl Iterator<Item = &'static str>) -> bool {
            let names: Vec<_> = names.collect();
            let unique: std::collections::HashSet<_> = names.iter().collect();
            unique.len() == names.len()
        }
        assert!(distinct(EventKind::ALL.iter().map(|k| k.as_str())));
        assert!(distinct(Browser::ALL.iter().map(|b| b.as_str())));
        assert!(distinct(DeviceType::ALL.iter().map(|d| d.as_str())));
    }

    #[test]
    fn country_code_is_two_letters_uppercased() {
        assert_eq!(
            CountryCode::new("gb").map(|c| c.as_str().to_owned()),
            Some("GB".into())
        );
        assert_eq!(CountryCode::new("G1"), None);
        assert_eq!(CountryCode::new("GBR"), None);
    }
}
