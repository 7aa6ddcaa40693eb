//! Field rules that every ingest format shares, each written once: a string field is a JSON
//! string of bounded length, a page URL becomes a path, a custom event name is trimmed and
//! printable, a property object is bounded (its size measured without the client's whitespace,
//! and its nesting), and a site-chosen visitor id is short and printable. `/api/collect`'s
//! `schema`, Plausible's `/api/event` and Umami's `/api/send` apply the same limits through
//! these functions, so a limit means the same on every route.
//!
//! Each takes a field as raw JSON and the name to report it by (the caller's wire name). It
//! knows nothing of the body's shape around the field.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::url_normaliser::page_path;

/// Longest custom event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 100;
/// Largest property object (`event_data`, `props`, `data`) in bytes, counted as sent less the
/// whitespace outside strings, so how a client indents its JSON does not change what fits.
pub const MAX_EVENT_DATA_BYTES: usize = 4096;
/// Deepest nesting of arrays and objects in a property object (serde_json's own recursion
/// limit).
pub const MAX_EVENT_DATA_DEPTH: usize = 128;
/// Longest page URL or referrer, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest `screen`, `language`, `utm_*` (and the like) value, in characters.
pub const MAX_SHORT_FIELD_CHARS: usize = 256;
/// A JSON string field, or `None` when absent or null; refused when not a string or longer
/// than `max_chars` characters.
pub fn string_field<'a>(
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

/// A field that must be present and not blank: `missing_field` otherwise.
pub fn required<'a>(value: Option<Cow<'a, str>>, name: &str) -> Result<Cow<'a, str>, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ApiError::missing_field(name)),
    }
}

/// Longest site-chosen visitor id, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;

/// A site-chosen visitor id: `None` when absent, null or blank; refused when longer than
/// `MAX_CLIENT_ID_CHARS` or holding control characters.
pub fn client_id<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, ApiError> {
    let Some(id) = string_field(raw, name, MAX_CLIENT_ID_CHARS)? else {
        return Ok(None);
    };
    if id.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            name,
            format!("must be at most {MAX_CLIENT_ID_CHARS} printable characters"),
        ));
    }
    Ok((!id.trim().is_empty()).then_some(id))
}

/// A required page URL (a path or an absolute http(s) URL), reduced to its path.
pub fn page_target(raw: Option<&RawValue>, name: &str) -> Result<Arc<str>, ApiError> {
    let url = required(string_field(raw, name, MAX_URL_BYTES)?, name)?;
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid_field(
            name,
            format!("must be at most {MAX_URL_BYTES} bytes"),
        ));
    }
    let path = page_path(&url).map_err(|why| ApiError::invalid_field(name, why))?;
    Ok(Arc::from(path))
}

/// A required custom event name field (`event_name_target`'s rules).
pub fn event_name(raw: Option<&RawValue>, name: &str) -> Result<Arc<str>, ApiError> {
    let value =
        string_field(raw, name, usize::MAX)?.ok_or_else(|| ApiError::missing_field(name))?;
    event_name_target(&value, name)
}

/// A custom event name, already a string: trimmed, non-empty, at most `MAX_EVENT_NAME_CHARS`
/// characters, without control characters.
pub fn event_name_target(name_value: &str, name: &str) -> Result<Arc<str>, ApiError> {
    let trimmed = name_value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::missing_field(name));
    }
    if name_value.chars().count() > MAX_EVENT_NAME_CHARS {
        return Err(ApiError::invalid_field(
            name,
            format!("must be at most {MAX_EVENT_NAME_CHARS} characters"),
        ));
    }
    if name_value.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            name,
            "must not contain control characters",
        ));
    }
    Ok(Arc::from(trimmed))
}

/// An optional referrer URL; blank means none.
pub fn referrer<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, ApiError> {
    Ok(string_field(raw, name, MAX_URL_BYTES)?.filter(|r| !r.trim().is_empty()))
}

/// Checks an optional property object (`event_data`, `props`, `data`): a JSON object of at most
/// `MAX_EVENT_DATA_BYTES` without whitespace and `MAX_EVENT_DATA_DEPTH` levels. With
/// `string_allowed`, a JSON string holding such an object is accepted too (Plausible's API allows
/// both). Properties are validated, not kept: the realtime view shows none.
pub fn check_properties(
    raw: Option<&RawValue>,
    name: &str,
    string_allowed: bool,
) -> Result<(), ApiError> {
    let Some(raw) = raw else {
        return Ok(());
    };
    let text = raw.get();
    if text.starts_with('"') && string_allowed {
        // No length limit of its own: the object inside is measured as an object is, without
        // its whitespace, and the body limit bounds the parse.
        let inner = string_field(Some(raw), name, usize::MAX)?.unwrap_or_default();
        let parsed: Box<RawValue> = serde_json::from_str(&inner).map_err(|_| {
            ApiError::invalid_field(name, "must be a JSON object or a string holding one")
        })?;
        return check_properties(Some(&parsed), name, false);
    }
    let shape = JsonShape::of(text);
    if shape.compact_bytes > MAX_EVENT_DATA_BYTES {
        return Err(ApiError::invalid_field(
            name,
            format!(
                "must be at most {MAX_EVENT_DATA_BYTES} bytes without whitespace (it is {})",
                shape.compact_bytes
            ),
        ));
    }
    if !text.starts_with('{') && text != "null" {
        return Err(ApiError::invalid_field(name, "must be a JSON object"));
    }
    // The body parser has checked the syntax; nesting is checked here so a deeply nested
    // value is refused now rather than by whoever reads it later.
    // `invalid_json`, as serde_json's own recursion limit answers for the body as a whole.
    if shape.depth > MAX_EVENT_DATA_DEPTH {
        return Err(ApiError::invalid_json(format!(
            "{name} nests deeper than {MAX_EVENT_DATA_DEPTH} levels"
        )));
    }
    Ok(())
}

/// What the property limits measure of a JSON value, found in one linear scan that allocates
/// nothing.
#[derive(Debug, PartialEq, Eq)]
struct JsonShape {
    /// How deeply arrays and objects nest; brackets inside strings do not count.
    depth: usize,
    /// The value's size without insignificant whitespace (whitespace outside strings), escapes
    /// counted as sent: the same value pretty-printed or compact measures the same.
    compact_bytes: usize,
}

impl JsonShape {
    /// Measures `json`, which must be valid JSON.
    fn of(json: &str) -> Self {
        let (mut depth, mut deepest, mut compact_bytes) = (0usize, 0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for byte in json.bytes() {
            if in_string {
                compact_bytes += 1;
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                // RFC 8259 §2: the only insignificant whitespace.
                b' ' | b'\t' | b'\n' | b'\r' => continue,
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            compact_bytes += 1;
        }
        Self {
            depth: deepest,
            compact_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn client_ids_are_bounded_printable_and_blank_means_none() {
        let ok = raw(r#""user-1""#);
        assert_eq!(
            client_id(Some(&ok), "v").unwrap().as_deref(),
            Some("user-1")
        );
        assert_eq!(client_id(Some(&raw(r#""  ""#)), "v").unwrap(), None);
        assert_eq!(client_id(None, "v").unwrap(), None);
        let long = raw(&format!("\"{}\"", "x".repeat(MAX_CLIENT_ID_CHARS + 1)));
        assert_eq!(
            client_id(Some(&long), "v").unwrap_err().code,
            "invalid_field"
        );
        let max = raw(&format!("\"{}\"", "é".repeat(MAX_CLIENT_ID_CHARS)));
        assert!(client_id(Some(&max), "v").unwrap().is_some());
        let control = raw(r#""a\u0007b""#);
        assert_eq!(
            client_id(Some(&control), "v").unwrap_err().code,
            "invalid_field"
        );
        assert_eq!(
            client_id(Some(&raw("7")), "v").unwrap_err().code,
            "invalid_field"
        );
    }

    #[test]
    fn properties_may_be_an_object_or_when_allowed_a_string_holding_one() {
        let check = |json: &str, string_allowed: bool| {
            check_properties(Some(&raw(json)), "props", string_allowed).map_err(|e| e.code)
        };
        assert_eq!(check(r#"{"plan":"pro"}"#, false), Ok(()));
        assert_eq!(check(r#""{\"plan\":\"pro\"}""#, true), Ok(()));
        assert_eq!(
            check(r#""{\"plan\":\"pro\"}""#, false),
            Err("invalid_field")
        );
        assert_eq!(check(r#""not json""#, true), Err("invalid_field"));
        assert_eq!(check(r#""[1]""#, true), Err("invalid_field"));
        assert_eq!(check("[1]", true), Err("invalid_field"));
        let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_EVENT_DATA_BYTES));
        assert_eq!(check(&big, true), Err("invalid_field"));
    }

    #[test]
    fn nesting_depth_counts_brackets_outside_strings() {
        let check =
            |json: &str, expected: usize| assert_eq!(JsonShape::of(json).depth, expected, "{json}");
        check("{}", 1);
        check(r#"{"a":[1,{"b":[]}]}"#, 4);
        check(r#"{"a":"[[[{{{"}"#, 1);
        check(r#"{"a":"\"[[","b":[]}"#, 2);
        check(r#"{"a":"\\","b":[[]]}"#, 3);
        check(&format!("{}{}", "[".repeat(128), "]".repeat(128)), 128);
    }

    #[test]
    fn compact_size_drops_whitespace_outside_strings_only() {
        let check = |json: &str, expected: usize| {
            assert_eq!(JsonShape::of(json).compact_bytes, expected, "{json}")
        };
        check("{}", 2);
        check(" {\n\t\"a\" :\r\n 1 } ", 7);
        check(r#"{"a b":" \" x "}"#, 16);
        check(r#"{"a":"\u0020"}"#, 14);
        check("[1, 2, [ ] ]", 8);
    }

    #[test]
    fn string_held_properties_are_measured_without_whitespace_too() {
        let pretty = format!(
            "{{\n  \"k\" : \"{}\"\n}}",
            "x".repeat(MAX_EVENT_DATA_BYTES - 8)
        );
        let held = serde_json::to_string(&pretty).unwrap();
        assert_eq!(
            check_properties(Some(&raw(&held)), "props", true).map_err(|e| e.code),
            Ok(())
        );
        let over = format!("{{\"k\":\"{}\"}}", "x".repeat(MAX_EVENT_DATA_BYTES - 7));
        assert_eq!(
            check_properties(Some(&raw(&over)), "props", false).map_err(|e| e.code),
            Err("invalid_field")
        );
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

    /// `value` as a JSON string literal, each character written as `choices` says: as itself
    /// (where JSON allows it), as a short escape (`\n`, `\t`, `\"`, `\/`, …, where one exists),
    /// or as `\uXXXX` in either hex case — a UTF-16 surrogate pair beyond the BMP.
    fn json_string_of(value: &str, choices: &[u8]) -> String {
        use std::fmt::Write;
        let mut out = String::from("\"");
        for (i, c) in value.chars().enumerate() {
            let choice = choices.get(i).copied().unwrap_or(0);
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let must_escape = c < ' ' || c == '"' || c == '\\';
            match (choice % 3, short) {
                (0, _) if !must_escape => out.push(c),
                (0 | 1, Some(escape)) => out.push_str(escape),
                _ => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        if choice & 4 == 0 {
                            write!(out, "\\u{unit:04x}").unwrap();
                        } else {
                            write!(out, "\\u{unit:04X}").unwrap();
                        }
                    }
                }
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn the_property_encoder_writes_short_escapes_and_surrogate_pairs() {
        assert_eq!(
            json_string_of("\n\t😀/é", &[0, 1, 1, 1, 5]),
            "\"\\n\\t\\ud83d\\ude00\\/\\u00E9\""
        );
        let raw: Box<RawValue> = serde_json::from_str(&json_string_of("a😀", &[2, 4])).unwrap();
        assert_eq!(raw.get(), "\"\\u0061\\uD83D\\uDE00\"");
    }

    /// Characters worth drawing often: those with short escapes, controls without one, and
    /// characters beyond the BMP (surrogate pairs when escaped).
    const TRICKY_CHARS: [char; 12] = [
        '"',
        '\\',
        '/',
        '\u{8}',
        '\u{c}',
        '\n',
        '\r',
        '\t',
        '\u{0}',
        '\u{1f}',
        '😀',
        '\u{10FFFF}',
    ];

    proptest::proptest! {
        /// Whatever string a client encodes, and however it escapes each character, `string_field`
        /// reads back exactly that string: the borrowed fast path and the unescaping path agree.
        #[test]
        fn string_fields_read_back_what_was_encoded(
            chars in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<char>(),
                    proptest::sample::select(&TRICKY_CHARS[..]),
                ],
                0..40,
            ),
            choices in proptest::collection::vec(proptest::prelude::any::<u8>(), 40),
        ) {
            let value: String = chars.into_iter().collect();
            let encoded = json_string_of(&value, &choices);
            let raw: Box<RawValue> = serde_json::from_str(&encoded).unwrap();
            let read = string_field(Some(&raw), "f", usize::MAX).unwrap();
            proptest::prop_assert_eq!(read.as_deref(), Some(value.as_str()));
        }
    }
}
