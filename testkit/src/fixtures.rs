//! What the tests share besides the process and the client: User-Agent strings with a known
//! classification, the path of the committed GeoIP test database, event bodies, readers of the
//! API's answers (realtime counts, recent events, website objects), the error-body check,
//! `Failures` for table-driven tests, `eventually` (poll a condition up to a deadline), `sample`
//! for failure messages, readers of a data directory, and `pageview_event` for tests that feed
//! the engine or the log directly. No process and no sockets here.

// Test code: a failed unwrap or panic is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pulse_engine::{Browser, DeviceType, Event, EventKind, Timestamp, VisitorId, WebsiteId};
use serde_json::{json, Value};

use crate::http::Response;

/// A desktop Chrome on Windows: classified as a human, "Chrome", "desktop".
pub const CHROME_DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
/// A desktop Firefox on Linux: a second human browser.
pub const FIREFOX_DESKTOP: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
/// Safari on an iPhone: classified as a human, "Safari", "mobile".
pub const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) \
     AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
/// Google's crawler: a bot.
pub const GOOGLEBOT: &str =
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// A command-line client: a bot.
pub const CURL: &str = "curl/8.5.0";

/// The MaxMind test database committed in `testdata/` at the repository root.
pub fn geoip_test_db() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/GeoLite2-Country-Test.mmdb"
    ));
    assert!(
        path.is_file(),
        "the GeoIP test database is missing: expected it at {} (see testdata/README.md)",
        path.display()
    );
    path
}

/// A human's pageview of `/` (Chrome, desktop, no referrer, no country) on `website` by
/// `visitor` at `ts_ms`: the engine event for tests where only who, where and when matter.
pub fn pageview_event(website: &str, visitor: u64, ts_ms: i64) -> Event {
    Event {
        website: WebsiteId::new(website).unwrap(),
        ts: Timestamp::from_unix_ms(ts_ms).unwrap(),
        visitor: VisitorId(visitor),
        kind: EventKind::Pageview,
        target: std::sync::Arc::from("/"),
        referrer_domain: None,
        is_bot: false,
        browser: Browser::Chrome,
        device: DeviceType::Desktop,
        country: None,
    }
}

/// A pageview event for `site` at `url`.
pub fn pageview(site: &str, url: &str) -> Value {
    json!({"website_id": site, "type": "pageview", "url": url})
}

/// The website object of a `POST /api/websites` answer. The contract calls it "the website
/// object" while GET and PATCH wrap theirs in `{"data": …}`; both forms are accepted here and
/// `websites_can_be_created_listed_read_patched_and_deleted` checks the shape.
pub fn website_of(body: &Value) -> Value {
    match body.get("data") {
        Some(inner) if body.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => body.clone(),
    }
}

/// `(active_visitors, total_in_window)` of a realtime `data` object.
pub fn counts_of(data: &Value) -> (u64, u64) {
    let active = data["active_visitors"]
        .as_u64()
        .unwrap_or_else(|| panic!("active_visitors is not a count: {data}"));
    let total = data["pagination"]["total_in_window"]
        .as_u64()
        .unwrap_or_else(|| panic!("total_in_window is not a count: {data}"));
    (active, total)
}

/// The `recent_events` array of a realtime `data` object.
pub fn recent(data: &Value) -> Vec<Value> {
    data["recent_events"]
        .as_array()
        .unwrap_or_else(|| panic!("recent_events is not an array: {data}"))
        .clone()
}

/// The recent event whose `url` is `url`; panics when there is none or several.
pub fn event_with_url(data: &Value, url: &str) -> Value {
    let found: Vec<Value> = recent(data)
        .into_iter()
        .filter(|e| e["url"] == url)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one recent event with url {url:?} in {data}"
    );
    found[0].clone()
}

/// The sorted keys of a JSON object.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Checks that `resp` is the error `status` / `code` with the documented body shape
/// `{"error":{"code":"...","message":"..."}}` and nothing else.
pub fn error_check(resp: &Response, status: u16, code: &str) -> Result<(), String> {
    if resp.status != status {
        return Err(format!("expected {status} `{code}`, got {resp:?}"));
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("expected a JSON error body ({e}), got {resp:?}"))?;
    let shape_ok = body.as_object().is_some_and(|o| o.len() == 1)
        && body["error"].as_object().is_some_and(|e| {
            e.len() == 2
                && e.get("code").is_some_and(Value::is_string)
                && e.get("message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| !m.trim().is_empty())
        });
    if !shape_ok {
        return Err(format!(
            "error body must be exactly {{\"error\":{{\"code\",\"message\"}}}} with a \
             non-empty message, got {body}"
        ));
    }
    if body["error"]["code"] != code {
        return Err(format!(
            "expected code `{code}`, got {} ({status})",
            body["error"]["code"]
        ));
    }
    Ok(())
}

/// Asserts `error_check`.
#[track_caller]
pub fn assert_error(resp: &Response, status: u16, code: &str, context: &str) {
    if let Err(why) = error_check(resp, status, code) {
        panic!("{context}: {why}");
    }
}

/// Collects failed checks so a table-driven test reports all of them at once.
#[derive(Debug, Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn check(&mut self, context: &str, result: Result<(), String>) {
        if let Err(why) = result {
            self.0.push(format!("{context}: {why}"));
        }
    }

    pub fn push(&mut self, failure: String) {
        self.0.push(failure);
    }

    /// Whether no check has failed so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[track_caller]
    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failed check(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// Up to 20 items of a list, for failure messages.
pub fn sample<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<&T> = items.iter().take(20).collect();
    if items.len() > shown.len() {
        format!("{shown:?} … ({} in all)", items.len())
    } else {
        format!("{shown:?}")
    }
}

/// Polls `probe` until it returns true or `deadline` passes; returns whether it succeeded.
pub async fn eventually<F, Fut>(deadline: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (exactly that form) into Unix seconds.
pub fn parse_utc_second(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = ts.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Every regular file under `dir`, recursively, with its bytes.
pub fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The live segment files (`*.seg`) of `data_dir`'s event log, oldest first (by name).
pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("segments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_utc_second_reads_only_the_exact_form() {
        assert_eq!(parse_utc_second("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_utc_second("2024-02-29T12:34:56Z"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_utc_second("2024-02-29 12:34:56Z"), None);
        assert_eq!(parse_utc_second("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn sample_shows_at_most_twenty_items() {
        assert_eq!(sample(&[1, 2]), "[1, 2]");
        let many: Vec<u32> = (0..25).collect();
        assert!(sample(&many).ends_with("… (25 in all)"));
    }
}
