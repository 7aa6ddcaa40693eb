//! The collect wire format: the JSON a browser sends to `/api/collect`, one event object or an
//! array of them, and `parse_batch`, the whole parse-validate-normalise step as a pure function
//! of the body bytes (the `collect_body` fuzz target calls it directly).
//!
//! Owns the field limits and the error each malformed field gets. It knows nothing of the
//! connection (headers, client address, clock) or of websites: the handler in `mod.rs` adds
//! those. Page URLs are reduced to paths by `crate::url_normaliser`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::StatusCode;
use pulse_engine::{EventKind, WebsiteId};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::url_normaliser::page_path;

/// Most events in one request.
pub const MAX_BATCH: usize = 50;
/// Longest custom event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 100;
/// Largest `event_data` object, serialised, in bytes.
pub const MAX_EVENT_DATA_BYTES: usize = 4096;
/// Deepest nesting of arrays and objects in `event_data` (serde_json's own recursion limit).
pub const MAX_EVENT_DATA_DEPTH: usize = 128;
/// Longest `url` or `referrer`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest `screen`, `language` or `utm_*` value, in characters.
pub const MAX_SHORT_FIELD_CHARS: usize = 256;

/// One event as sent, each field kept raw until it is validated on its own, so an error names
/// the field it is about.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    website_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    referrer: Option<&'a RawValue>,
    #[serde(borrow)]
    event_name: Option<&'a RawValue>,
    #[serde(borrow)]
    event_data: Option<&'a RawValue>,
    #[serde(borrow)]
    screen: Option<&'a RawValue>,
    #[serde(borrow)]
    language: Option<&'a RawValue>,
    #[serde(borrow)]
    utm_source: Option<&'a RawValue>,
    #[serde(borrow)]
    utm_medium: Option<&'a RawValue>,
    #[serde(borrow)]
    utm_campaign: Option<&'a RawValue>,
    #[serde(borrow)]
    utm_term: Option<&'a RawValue>,
    #[serde(borrow)]
    utm_content: Option<&'a RawValue>,
    #[serde(borrow)]
    visitor_id: Option<&'a RawValue>,
}

/// A JSON array of events that keeps at most `MAX_BATCH + 1` of them and only counts the rest,
/// so an array of thousands of tiny elements never allocates thousands of events.
struct Batch<'a> {
    events: Vec<RawEvent<'a>>,
    total: usize,
}

impl<'de> Deserialize<'de> for Batch<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BatchVisitor;
        impl<'de> Visitor<'de> for BatchVisitor {
            type Value = Batch<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of event objects")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut events = Vec::new();
                let mut total = 0;
                loop {
                    if events.len() <= MAX_BATCH {
                        match seq.next_element::<RawEvent<'de>>()? {
                            Some(event) => events.push(event),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    total += 1;
                }
                Ok(Batch { events, total })
            }
        }
        deserializer.deserialize_seq(BatchVisitor)
    }
}

/// A validated, normalised event, before the connection's context is added. It borrows from
/// the request body where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectEvent<'a> {
    pub website_id: WebsiteId,
    pub kind: EventKind,
    /// The page path (pageviews; query and fragment dropped) or the event name (custom events),
    /// already in the shared form the engine keeps.
    pub target: Arc<str>,
    /// The referrer as sent; reduced to a host against the website's domain later.
    pub referrer: Option<Cow<'a, str>>,
    /// The site-chosen visitor id (`fields::client_id`), never stored: it is only hashed.
    pub visitor_id: Option<Cow<'a, str>>,
}

/// Parses and validates a collect body: one event object or an array of 1 to `MAX_BATCH`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<CollectEvent<'_>>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let invalid_json = |e: serde_json::Error| {
        ApiError::invalid_json(format!("the body is not a valid event or batch: {e}"))
    };
    match first {
        Some(b'[') => {
            let batch: Batch<'_> = serde_json::from_slice(body).map_err(invalid_json)?;
            if batch.total == 0 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "empty_batch",
                    "the batch holds no events",
                ));
            }
            if batch.total > MAX_BATCH {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "batch_too_large",
                    format!(
                        "the batch holds {} events; at most {MAX_BATCH} are accepted",
                        batch.total
                    ),
                ));
            }
            batch
                .events
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    validate(raw).map_err(|mut e| {
                        e.message = format!("event {i}: {}", e.message);
                        e
                    })
                })
                .collect()
        }
        Some(b'{') => {
            let raw: RawEvent<'_> = serde_json::from_slice(body).map_err(invalid_json)?;
            Ok(vec![validate(&raw)?])
        }
        Some(_) => Err(ApiError::invalid_json(
            "the body must be an event object or an array of event objects",
        )),
        None => Err(ApiError::invalid_json("the body is empty")),
    }
}

/// A JSON string field, or `None` when absent or null.
pub(super) fn string_field<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
    max_chars: usize,
) -> Result<Option<Cow<'a, str>>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let text = raw.get();
    // `RawValue` holds valid JSON, so a string without backslashes is exactly the bytes between
    // its quotes: borrow them without a second parse. Anything else goes through serde_json,
    // which unescapes into an owned copy or says it is not a string.
    let value = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => Cow::Owned(
            serde_json::from_str::<String>(text)
                .map_err(|_| ApiError::invalid_field(name, "must be a string"))?,
        ),
    };
    if value.chars().count() > max_chars {
        return Err(ApiError::invalid_field(
            name,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(Some(value))
}

pub(super) fn required<'a>(
    value: Option<Cow<'a, str>>,
    name: &str,
) -> Result<Cow<'a, str>, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ApiError::missing_field(name)),
    }
}

fn validate<'a>(raw: &RawEvent<'a>) -> Result<CollectEvent<'a>, ApiError> {
    let website = required(
        string_field(raw.website_id, "website_id", WebsiteId::MAX_LEN)?,
        "website_id",
    )?;
    let website_id = WebsiteId::new(&website).map_err(|_| {
        ApiError::invalid_field(
            "website_id",
            "must be 1 to 64 characters of A-Z a-z 0-9 - _",
        )
    })?;
    let kind = match required(string_field(raw.kind, "type", 16)?, "type")?.as_ref() {
        "pageview" => EventKind::Pageview,
        "event" => EventKind::Custom,
        _ => {
            return Err(ApiError::invalid_field(
                "type",
                "must be \"pageview\" or \"event\"",
            ))
        }
    };
    let url = required(string_field(raw.url, "url", MAX_URL_BYTES)?, "url")?;
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid_field(
            "url",
            format!("must be at most {MAX_URL_BYTES} bytes"),
        ));
    }
    let path = page_path(&url).map_err(|why| ApiError::invalid_field("url", why))?;
    let target = match kind {
        EventKind::Pageview => Arc::from(path),
        EventKind::Custom => {
            let name = required(
                string_field(raw.event_name, "event_name", MAX_EVENT_NAME_CHARS)?,
                "event_name",
            )?;
            if name.chars().any(char::is_control) {
                return Err(ApiError::invalid_field(
                    "event_name",
                    "must not contain control characters",
                ));
            }
            Arc::from(name.trim())
        }
    };
    let referrer =
        string_field(raw.referrer, "referrer", MAX_URL_BYTES)?.filter(|r| !r.trim().is_empty());
    if let Some(data) = raw.event_data {
        let text = data.get();
        if text.len() > MAX_EVENT_DATA_BYTES {
            return Err(ApiError::invalid_field(
                "event_data",
                format!("must be at most {MAX_EVENT_DATA_BYTES} bytes serialised"),
            ));
        }
        if !text.starts_with('{') && text != "null" {
            return Err(ApiError::invalid_field(
                "event_data",
                "must be a JSON object",
            ));
        }
        // The body parser has checked the syntax; nesting is checked here so a deeply nested
        // value is refused now rather than by whoever reads it later.
        // `invalid_json`, as serde_json's own recursion limit answers for the body as a whole.
        if nesting_depth(text) > MAX_EVENT_DATA_DEPTH {
            return Err(ApiError::invalid_json(format!(
                "event_data nests deeper than {MAX_EVENT_DATA_DEPTH} levels"
            )));
        }
    }
    for (value, name) in [
        (raw.screen, "screen"),
        (raw.language, "language"),
        (raw.utm_source, "utm_source"),
        (raw.utm_medium, "utm_medium"),
        (raw.utm_campaign, "utm_campaign"),
        (raw.utm_term, "utm_term"),
        (raw.utm_content, "utm_content"),
    ] {
        string_field(value, name, MAX_SHORT_FIELD_CHARS)?;
    }
    let visitor_id = super::fields::client_id(raw.visitor_id, "visitor_id")?;
    Ok(CollectEvent {
        website_id,
        kind,
        target,
        referrer,
        visitor_id,
    })
}

/// How deeply arrays and objects nest in `json`, which must be valid JSON: brackets inside
/// strings do not count. Linear, and allocates nothing.
pub(super) fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        match parse_batch(body.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn each_kind_of_bad_body_gets_its_code() {
        let ok = r#"{"website_id":"s","type":"pageview","url":"/"}"#;
        let check = |body: &str, expected: &str| assert_eq!(code(body), expected, "{body}");
        check(ok, "ok");
        check(&format!("[{ok}]"), "ok");
        check("", "invalid_json");
        check("   ", "invalid_json");
        check("nope", "invalid_json");
        check(r#"{"website_id":"s""#, "invalid_json");
        check(&format!("{ok} trailing"), "invalid_json");
        check(&"[".repeat(10_000), "invalid_json");
        check("[]", "empty_batch");
        check(&format!("[{}]", vec![ok; 51].join(",")), "batch_too_large");
        check(&format!("[{}]", vec!["0"; 5000].join(",")), "invalid_json");
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        check(
            &format!(
                r#"{{"website_id":"s","type":"pageview","url":"/","event_data":{{"d":{deep}}}}}"#
            ),
            "invalid_json",
        );
        check(&format!("[{}]", vec![ok; 50].join(",")), "ok");
        check(r#"{"type":"pageview","url":"/"}"#, "missing_field");
        check(r#"{"website_id":"s","url":"/"}"#, "missing_field");
        check(r#"{"website_id":"s","type":"pageview"}"#, "missing_field");
        check(
            r#"{"website_id":"s","type":"event","url":"/"}"#,
            "missing_field",
        );
        check(
            r#"{"website_id":5,"type":"pageview","url":"/"}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"a/b","type":"pageview","url":"/"}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"s","type":"click","url":"/"}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"s","type":"pageview","url":"ftp://x/"}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"s","type":"pageview","url":"//evil/"}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"s","type":"pageview","url":"/","event_data":[1]}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"s","type":"pageview","url":"/","screen":1e999}"#,
            "invalid_field",
        );
        check(
            r#"{"website_id":"s","type":"pageview","url":"/","screen":123}"#,
            "invalid_field",
        );
        let long_name = "n".repeat(101);
        check(
            &format!(r#"{{"website_id":"s","type":"event","url":"/","event_name":"{long_name}"}}"#),
            "invalid_field",
        );
        let big_data = format!(r#"{{"k":"{}"}}"#, "x".repeat(4100));
        check(
            &format!(r#"{{"website_id":"s","type":"pageview","url":"/","event_data":{big_data}}}"#),
            "invalid_field",
        );
    }

    #[test]
    fn custom_events_use_the_event_name_and_escapes_are_decoded() {
        let events = parse_batch(
            br#"[{"website_id":"s","type":"event","url":"/x","event_name":"sign\u0075p"},
                 {"website_id":"s","type":"pageview","url":"/p?q","referrer":"https://t.co/x"}]"#,
        )
        .unwrap();
        assert_eq!(events[0].kind, EventKind::Custom);
        assert_eq!(&*events[0].target, "signup");
        assert_eq!(&*events[1].target, "/p");
        assert_eq!(events[1].referrer.as_deref(), Some("https://t.co/x"));
    }

    proptest::proptest! {
        /// Whatever string a client encodes, and however it escapes it, `string_field` reads
        /// back exactly that string: the borrowed fast path and the unescaping path agree.
        #[test]
        fn string_fields_read_back_what_was_encoded(value in "\\PC{0,40}", escape_all in proptest::bool::ANY) {
            let encoded = if escape_all {
                value.chars().map(|c| format!("\\u{:04x}", u32::from(c).min(0xFFFF))).collect::<String>()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let encoded = if escape_all {
                // Characters outside the BMP need surrogate pairs; keep those as JSON encodes them.
                if value.chars().all(|c| u32::from(c) <= 0xFFFF) {
                    format!("\"{encoded}\"")
                } else {
                    serde_json::to_string(&value).unwrap()
                }
            } else {
                encoded
            };
            let raw: Box<RawValue> = serde_json::from_str(&encoded).unwrap();
            let read = string_field(Some(&raw), "f", usize::MAX).unwrap();
            proptest::prop_assert_eq!(read.as_deref(), Some(value.as_str()));
        }
    }

    #[test]
    fn nesting_depth_counts_brackets_outside_strings() {
        let check =
            |json: &str, expected: usize| assert_eq!(nesting_depth(json), expected, "{json}");
        check("{}", 1);
        check(r#"{"a":[1,{"b":[]}]}"#, 4);
        check(r#"{"a":"[[[{{{"}"#, 1);
        check(r#"{"a":"\"[[","b":[]}"#, 2);
        check(r#"{"a":"\\","b":[[]]}"#, 3);
        check(&format!("{}{}", "[".repeat(128), "]".repeat(128)), 128);
    }

    #[test]
    fn non_strings_are_refused_by_name() {
        for text in ["1", "true", "{}", "[\"a\"]", "1e999"] {
            let raw: Box<RawValue> = match serde_json::from_str(text) {
                Ok(raw) => raw,
                // Not even JSON serde accepts (1e999): the body parser refuses it earlier.
                Err(_) => continue,
            };
            let error = string_field(Some(&raw), "screen", 10).unwrap_err();
            assert_eq!(
                (error.code, error.message.contains("screen")),
                ("invalid_field", true),
                "{text}"
            );
        }
    }
}
