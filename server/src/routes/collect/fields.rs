//! Field rules that every ingest format shares: a page URL becomes a path, a custom event name
//! is trimmed and printable, a property object is bounded, and a site-chosen visitor id is
//! short and printable. `/api/collect`'s `schema`, Plausible's `/api/event` and Umami's
//! `/api/send` apply the same limits through these functions, so a limit means the same on
//! every route.
//!
//! Each takes a field as raw JSON and the name to report it by (the caller's wire name). It
//! knows nothing of the body's shape around the field.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::schema::{nesting_depth, required, string_field};
use super::{MAX_EVENT_DATA_BYTES, MAX_EVENT_DATA_DEPTH, MAX_EVENT_NAME_CHARS, MAX_URL_BYTES};
use crate::error::ApiError;
use crate::url_normaliser::page_path;

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

/// A custom event name, already a string: trimmed, non-empty, without control characters.
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

/// An optional string field of at most `max_chars` characters.
pub fn optional_string<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
    max_chars: usize,
) -> Result<Option<Cow<'a, str>>, ApiError> {
    string_field(raw, name, max_chars)
}

/// An optional referrer URL; blank means none.
pub fn referrer<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, ApiError> {
    Ok(string_field(raw, name, MAX_URL_BYTES)?.filter(|r| !r.trim().is_empty()))
}

/// Checks an optional property object (`event_data`, `props`, `data`): a JSON object of at most
/// `MAX_EVENT_DATA_BYTES` serialised and `MAX_EVENT_DATA_DEPTH` levels. With `string_allowed`,
/// a JSON string holding such an object is accepted too (Plausible's API allows both).
/// Properties are validated, not kept: the realtime view shows none.
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
        let inner = string_field(Some(raw), name, MAX_EVENT_DATA_BYTES)?.unwrap_or_default();
        let parsed: Box<RawValue> = serde_json::from_str(&inner).map_err(|_| {
            ApiError::invalid_field(name, "must be a JSON object or a string holding one")
        })?;
        return check_properties(Some(&parsed), name, false);
    }
    if text.len() > MAX_EVENT_DATA_BYTES {
        return Err(ApiError::invalid_field(
            name,
            format!("must be at most {MAX_EVENT_DATA_BYTES} bytes serialised"),
        ));
    }
    if !text.starts_with('{') && text != "null" {
        return Err(ApiError::invalid_field(name, "must be a JSON object"));
    }
    if nesting_depth(text) > MAX_EVENT_DATA_DEPTH {
        return Err(ApiError::invalid_json(format!(
            "{name} nests deeper than {MAX_EVENT_DATA_DEPTH} levels"
        )));
    }
    Ok(())
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
}
