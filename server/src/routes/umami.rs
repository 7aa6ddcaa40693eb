//! `POST /api/send`: Umami's collect API, so Umami's browser tracker and `@umami/node` reach
//! Pulse unchanged. Untrusted input.
//!
//! Owns Umami's wire format (`parse_send`, a pure function of the body the `umami_send` fuzz
//! target calls) and Umami's answer shape. Everything else — content type, rate limit, body
//! limit, privacy signals, identity, bots, the log — is `collect::ingest`'s, the same steps
//! `/api/collect` runs.
//!
//! The body is `{"type":"event"|"identify","payload":{"website":…,"url":…,…}}`. An `event` with
//! a `name` is a custom event (its `url` optional), without one a pageview (its `url` required). `identify` is validated and accepted, and
//! records nothing (Pulse keeps no session data); its `payload.id`, like an event's, is a
//! site-chosen visitor id (`collect::fields::client_id`). The website is the one whose id is
//! `payload.website` (create it with `"id": "<the Umami website UUID>"`), or else the one
//! listing that UUID in its `aliases`.
//!
//! The answer is Umami's: `200 {"cache":…,"sessionId":…,"visitId":…}`, and `{"beep":"boop"}`
//! for a bot's User-Agent. `cache` is the constant `CACHE_TOKEN` (Umami's tracker sends it back
//! in `x-umami-cache`; Pulse ignores it), and the ids are the nil UUID: nothing in the answer
//! identifies the visitor or carries anything private.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use pulse_engine::{EventKind, WebsiteId};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::collect::fields::{
    check_properties, client_id, event_name_target, page_target, referrer, string_field,
};
use super::collect::{
    ingest, strip_utf8_bom, CollectEvent, WebsiteEvent, MAX_SHORT_FIELD_CHARS, MAX_URL_BYTES,
};
use crate::error::ApiError;
use crate::state::AppState;

/// The `cache` token of every answer: a constant, so it carries nothing about anyone.
pub const CACHE_TOKEN: &str = "pulse";
/// The `sessionId` and `visitId` of every answer: Pulse does not hand out visitor ids.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Deserialize)]
struct RawSend<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawPayload<'a> {
    #[serde(borrow)]
    website: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    referrer: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    hostname: Option<&'a RawValue>,
    #[serde(borrow)]
    language: Option<&'a RawValue>,
    #[serde(borrow)]
    screen: Option<&'a RawValue>,
    #[serde(borrow)]
    title: Option<&'a RawValue>,
}

/// What a send asks Pulse to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UmamiAction {
    /// Record a pageview (target: the path) or a custom event (target: its name).
    Record { kind: EventKind, target: Arc<str> },
    /// `identify`: accepted, nothing recorded.
    Identify,
}

/// A validated Umami send, before its website is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UmamiSend<'a> {
    pub website: WebsiteId,
    pub action: UmamiAction,
    pub referrer: Option<Cow<'a, str>>,
    /// `payload.id`: the site-chosen visitor id, only ever hashed.
    pub visitor_id: Option<Cow<'a, str>>,
}

/// Parses and validates an Umami send body.
pub fn parse_send(body: &[u8]) -> Result<UmamiSend<'_>, ApiError> {
    let body = strip_utf8_bom(body);
    let invalid_json =
        |e: serde_json::Error| ApiError::invalid_json(format!("the body is not a valid send: {e}"));
    let raw: RawSend<'_> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(invalid_json)?,
        Some(_) => return Err(ApiError::invalid_json("the body must be a JSON object")),
        None => return Err(ApiError::invalid_json("the body is empty")),
    };
    let kind =
        string_field(raw.kind, "type", 16)?.ok_or_else(|| ApiError::missing_field("type"))?;
    let identify = match kind.as_ref() {
        "event" => false,
        "identify" => true,
        _ => {
            return Err(ApiError::invalid_field(
                "type",
                "must be \"event\" or \"identify\"",
            ))
        }
    };
    let payload = raw
        .payload
        .filter(|p| p.get() != "null")
        .ok_or_else(|| ApiError::missing_field("payload"))?;
    if !payload.get().starts_with('{') {
        return Err(ApiError::invalid_field("payload", "must be a JSON object"));
    }
    let payload: RawPayload<'_> = serde_json::from_str(payload.get()).map_err(invalid_json)?;
    let website = string_field(payload.website, "payload.website", WebsiteId::MAX_LEN)?
        .ok_or_else(|| ApiError::missing_field("payload.website"))?;
    let website = WebsiteId::new(&website).map_err(|_| {
        ApiError::invalid_field(
            "payload.website",
            "must be 1 to 64 characters of A-Z a-z 0-9 - _",
        )
    })?;
    for (value, name) in [
        (payload.hostname, "payload.hostname"),
        (payload.language, "payload.language"),
        (payload.screen, "payload.screen"),
    ] {
        string_field(value, name, MAX_SHORT_FIELD_CHARS)?;
    }
    string_field(payload.title, "payload.title", MAX_URL_BYTES)?;
    check_properties(payload.data, "payload.data", false)?;
    let visitor_id = client_id(payload.id, "payload.id")?;
    let referrer = referrer(payload.referrer, "payload.referrer")?;
    let action = if identify {
        UmamiAction::Identify
    } else {
        let name = string_field(payload.name, "payload.name", usize::MAX)?;
        match name {
            // `@umami/node`'s `track(name, data)` sends no `url`: a custom event needs none,
            // but one that is sent must still be a valid URL.
            Some(name) if !name.trim().is_empty() => {
                if payload.url.is_some_and(|u| u.get() != "null") {
                    page_target(payload.url, "payload.url")?;
                }
                UmamiAction::Record {
                    kind: EventKind::Custom,
                    target: event_name_target(&name, "payload.name")?,
                }
            }
            _ => UmamiAction::Record {
                kind: EventKind::Pageview,
                target: page_target(payload.url, "payload.url")?,
            },
        }
    };
    Ok(UmamiSend {
        website,
        action,
        referrer,
        visitor_id,
    })
}

/// `POST /api/send`.
pub async fn send(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    ingest(&state, peer, request, async |admitted| {
        let send = parse_send(&admitted.body)?;
        let websites = &admitted.state.websites;
        let website = websites
            .get(send.website.as_str())
            .or_else(|| websites.get_by_domain(send.website.as_str()))
            .ok_or_else(ApiError::unknown_website)?;
        let user_agent = admitted
            .headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .unwrap_or_default();
        let is_bot = admitted.state.user_agents.classify(&user_agent).is_bot;
        if let UmamiAction::Record { kind, target } = send.action {
            let event = CollectEvent {
                website_id: website.id.clone(),
                kind,
                target,
                referrer: send.referrer,
                visitor_id: send.visitor_id,
            };
            admitted
                .record(vec![WebsiteEvent { website, event }])
                .await?;
        }
        Ok(answer(is_bot))
    })
    .await
}

/// Umami's answer: `{"beep":"boop"}` to a bot, the cache token and nil ids to anyone else.
fn answer(is_bot: bool) -> Response {
    let body = if is_bot {
        r#"{"beep":"boop"}"#.to_owned()
    } else {
        format!(r#"{{"cache":"{CACHE_TOKEN}","sessionId":"{NIL_UUID}","visitId":"{NIL_UUID}"}}"#)
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        match parse_send(body.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    const WEBSITE: &str = "94db1cb1-74f4-4a40-ad6c-962362670409";

    #[test]
    fn events_with_a_name_are_custom_and_without_one_pageviews() {
        let pageview_body = format!(
            r#"{{"type":"event","payload":{{"website":"{WEBSITE}","hostname":"example.com","language":"en-US","referrer":"https://www.google.com/","screen":"1920x1080","title":"Pricing","url":"/pricing?plan=pro"}}}}"#
        );
        let pageview = parse_send(pageview_body.as_bytes()).unwrap();
        assert_eq!(pageview.website.as_str(), WEBSITE);
        assert_eq!(
            pageview.action,
            UmamiAction::Record {
                kind: EventKind::Pageview,
                target: Arc::from("/pricing")
            }
        );
        let custom_body = format!(
            r#"{{"type":"event","payload":{{"website":"{WEBSITE}","url":"/","name":"signup","data":{{"plan":"pro"}},"id":"user-1"}}}}"#
        );
        let custom = parse_send(custom_body.as_bytes()).unwrap();
        assert_eq!(
            custom.action,
            UmamiAction::Record {
                kind: EventKind::Custom,
                target: Arc::from("signup")
            }
        );
        assert_eq!(custom.visitor_id.as_deref(), Some("user-1"));
        let identify_body = format!(
            r#"{{"type":"identify","payload":{{"website":"{WEBSITE}","data":{{"a":1}}}}}}"#
        );
        let identify = parse_send(identify_body.as_bytes()).unwrap();
        assert_eq!(identify.action, UmamiAction::Identify);
    }

    #[test]
    fn each_kind_of_bad_body_gets_its_code() {
        let check = |body: &str, expected: &str| assert_eq!(code(body), expected, "{body}");
        check(
            r#"{"type":"event","payload":{"website":"w","url":"/"}}"#,
            "ok",
        );
        check("", "invalid_json");
        check("[]", "invalid_json");
        check(
            r#"{"type":"event","payload":{"website":"w","url":"/"}"#,
            "invalid_json",
        );
        check(r#"{"payload":{"website":"w","url":"/"}}"#, "missing_field");
        check(
            r#"{"type":"click","payload":{"website":"w","url":"/"}}"#,
            "invalid_field",
        );
        check(r#"{"type":"event"}"#, "missing_field");
        check(r#"{"type":"event","payload":null}"#, "missing_field");
        check(r#"{"type":"event","payload":[1]}"#, "invalid_field");
        check(r#"{"type":"event","payload":{"url":"/"}}"#, "missing_field");
        check(
            r#"{"type":"event","payload":{"website":"a/b","url":"/"}}"#,
            "invalid_field",
        );
        check(
            r#"{"type":"event","payload":{"website":"w"}}"#,
            "missing_field",
        );
        check(
            r#"{"type":"event","payload":{"website":"w","name":"n"}}"#,
            "ok",
        );
        check(
            r#"{"type":"event","payload":{"website":"w","name":"n","url":"ftp://x"}}"#,
            "invalid_field",
        );
        check(
            r#"{"type":"event","payload":{"website":"w","url":"ftp://x"}}"#,
            "invalid_field",
        );
        check(
            r#"{"type":"event","payload":{"website":"w","url":"/","data":"x"}}"#,
            "invalid_field",
        );
        check(
            r#"{"type":"event","payload":{"website":"w","url":"/","screen":5}}"#,
            "invalid_field",
        );
        let long_id = "u".repeat(200);
        check(
            &format!(
                r#"{{"type":"event","payload":{{"website":"w","url":"/","id":"{long_id}"}}}}"#
            ),
            "invalid_field",
        );
    }
}
