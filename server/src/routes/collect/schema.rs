//! The collect wire format: the JSON a browser sends to `/api/collect`, one event object or an
//! array of them, and `parse_batch`, the whole parse-validate-normalise step as a pure function
//! of the body bytes (the `collect_body` fuzz target calls it directly).
//!
//! Owns the shape of the body (which fields, one event or a batch, the batch limits); each
//! field's rule and limit is `fields`', shared with the other ingest formats. It knows nothing
//! of the connection (headers, client address, clock) or of websites: the handler in `mod.rs`
//! adds those.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::StatusCode;
use pulse_engine::{EventKind, WebsiteId};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::encoding::strip_utf8_bom;
use super::fields::{self, required, string_field, MAX_SHORT_FIELD_CHARS};
use crate::error::ApiError;

/// Most events in one request.
pub const MAX_BATCH: usize = 50;

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

/// Parses and validates a collect body: one event object or an array of 1 to `MAX_BATCH`,
/// after one leading UTF-8 byte-order mark, if any.
pub fn parse_batch(body: &[u8]) -> Result<Vec<CollectEvent<'_>>, ApiError> {
    let body = strip_utf8_bom(body);
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
    let path = fields::page_target(raw.url, "url")?;
    let target = match kind {
        EventKind::Pageview => path,
        EventKind::Custom => fields::event_name(raw.event_name, "event_name")?,
    };
    let referrer = fields::referrer(raw.referrer, "referrer")?;
    fields::check_properties(raw.event_data, "event_data", false)?;
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
    let visitor_id = fields::client_id(raw.visitor_id, "visitor_id")?;
    Ok(CollectEvent {
        website_id,
        kind,
        target,
        referrer,
        visitor_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::collect::fields::MAX_EVENT_DATA_BYTES;

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

    #[test]
    fn body_starting_with_a_utf8_bom_is_parsed() {
        let ok = r#"{"website_id":"s","type":"pageview","url":"/bom"}"#;
        assert_eq!(code(&format!("\u{feff}{ok}")), "ok");
        assert_eq!(code(&format!("\u{feff}[{ok}]")), "ok");
        assert_eq!(code(&format!("\u{feff} \n{ok}")), "ok");
        // Only one mark, and only as the very first bytes.
        assert_eq!(code(&format!("\u{feff}\u{feff}{ok}")), "invalid_json");
        assert_eq!(code(&format!(" \u{feff}{ok}")), "invalid_json");
        assert_eq!(code("\u{feff}"), "invalid_json");
    }

    /// An event whose `event_data` measures `compact_bytes` once whitespace is removed, sent
    /// indented by `indent` spaces (0: compact).
    fn event_with_data(compact_bytes: usize, indent: usize) -> String {
        // Members `"kNNNN":"x…"` of 30 bytes, 31 with their comma; the last value pads to size.
        let mut members: Vec<String> = (0..compact_bytes / 31)
            .map(|i| format!(r#""k{i:04}":"{}""#, "x".repeat(20)))
            .collect();
        let compact_len = members.iter().map(String::len).sum::<usize>() + members.len() + 1;
        let last = members.last_mut().unwrap();
        last.insert_str(last.len() - 1, &"y".repeat(compact_bytes - compact_len));
        let data = if indent == 0 {
            format!("{{{}}}", members.join(","))
        } else {
            let pad = " ".repeat(indent);
            let lines: Vec<String> = members
                .iter()
                .map(|m| format!("{pad}{}", m.replacen(':', " : ", 1)))
                .collect();
            format!("{{\n{}\n}}", lines.join(",\n"))
        };
        format!(r#"{{"website_id":"s","type":"pageview","url":"/","event_data":{data}}}"#)
    }

    #[test]
    fn event_data_limit_ignores_the_clients_whitespace() {
        let at_limit = event_with_data(MAX_EVENT_DATA_BYTES, 8);
        assert!(
            at_limit.len() > MAX_EVENT_DATA_BYTES + 1000,
            "the pretty form is over 4 KB"
        );
        assert_eq!(code(&at_limit), "ok");
        assert_eq!(code(&event_with_data(MAX_EVENT_DATA_BYTES, 0)), "ok");
        for indent in [0, 8] {
            let over = event_with_data(MAX_EVENT_DATA_BYTES + 1, indent);
            assert_eq!(code(&over), "invalid_field", "indent {indent}");
        }
    }
}
