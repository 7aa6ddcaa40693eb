//! `POST /api/event`: Plausible's event API, so Plausible's tracker (`@plausible-analytics/tracker`,
//! the `script.js` snippet) and its server-side callers reach Pulse unchanged. Untrusted input.
//!
//! Owns Plausible's wire format (`parse_event`, a pure function of the body the
//! `plausible_event` fuzz target calls) and how its `domain` names websites. Everything else —
//! content type, rate limit, body limit, privacy signals, identity, bots, the log — is
//! `collect::ingest`'s, the same steps `/api/collect` runs.
//!
//! The body is one JSON object with long or short keys: `name`/`n`, `url`/`u`, `domain`/`d`,
//! `referrer`/`r`, `props`/`p` (an object, or a string holding one), `revenue`/`$`. Any other
//! key (`v`, `i`, `h`, `sd`, `e`, `interactive`) is ignored. `pageview` is a pageview, any other
//! name a custom event, except `engagement`: Plausible's time-on-page ping (sent on tab hide and
//! before each SPA pageview) refreshes the visitor's last-seen time (`Admitted::touch`, logged
//! like an event) without adding a recent event or an event count, so a reader still on the page
//! stays active. The answer is `202`, as Plausible's.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use pulse_engine::EventKind;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::collect::fields::{
    check_properties, event_name_target, page_target, referrer, string_field,
};
use super::collect::{
    accepted, ingest, strip_utf8_bom, CollectEvent, WebsiteEvent, MAX_EVENT_NAME_CHARS,
};
use crate::error::ApiError;
use crate::state::AppState;

/// Most websites one event may name in a comma-separated `domain`.
pub const MAX_DOMAINS: usize = 16;
/// Longest `domain` value (the whole comma-separated list), in characters.
pub const MAX_DOMAIN_LIST_CHARS: usize = 1024;

/// The body as sent; each field raw until validated, under its long or short key.
#[derive(Deserialize)]
struct RawPlausibleEvent<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    u: Option<&'a RawValue>,
    #[serde(borrow)]
    domain: Option<&'a RawValue>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
    #[serde(borrow)]
    referrer: Option<&'a RawValue>,
    #[serde(borrow)]
    r: Option<&'a RawValue>,
    #[serde(borrow)]
    props: Option<&'a RawValue>,
    #[serde(borrow)]
    p: Option<&'a RawValue>,
    #[serde(borrow)]
    revenue: Option<&'a RawValue>,
    #[serde(borrow, rename = "$")]
    revenue_short: Option<&'a RawValue>,
}

/// What an event asks Pulse to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlausibleAction {
    /// Record a pageview (target: the path) or a custom event (target: its name).
    Record { kind: EventKind, target: Arc<str> },
    /// Plausible's engagement ping: the visitor is seen again, no event is recorded.
    Engagement,
}

/// A validated Plausible event, before its websites are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlausibleEvent<'a> {
    /// The host names it was sent for (1 to `MAX_DOMAINS`, trimmed, none empty).
    pub domains: Vec<String>,
    pub action: PlausibleAction,
    pub referrer: Option<Cow<'a, str>>,
}

/// The long key's value when sent, else the short key's; the name reported is the one used.
fn either<'a>(
    long: Option<&'a RawValue>,
    long_name: &'static str,
    short: Option<&'a RawValue>,
    short_name: &'static str,
) -> (Option<&'a RawValue>, &'static str) {
    match (long, short) {
        (Some(value), _) => (Some(value), long_name),
        (None, Some(value)) => (Some(value), short_name),
        (None, None) => (None, long_name),
    }
}

/// Parses and validates a Plausible event body.
pub fn parse_event(body: &[u8]) -> Result<PlausibleEvent<'_>, ApiError> {
    let body = strip_utf8_bom(body);
    let raw: RawPlausibleEvent<'_> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_json(format!("the body is not a valid Plausible event: {e}"))
        })?,
        Some(_) => return Err(ApiError::invalid_json("the body must be a JSON object")),
        None => return Err(ApiError::invalid_json("the body is empty")),
    };
    let (name_raw, name_key) = either(raw.name, "name", raw.n, "n");
    let name = string_field(name_raw, name_key, MAX_EVENT_NAME_CHARS)?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::missing_field(name_key))?;
    let (domain_raw, domain_key) = either(raw.domain, "domain", raw.d, "d");
    let domains = domain_list(domain_raw, domain_key)?;
    let (url_raw, url_key) = either(raw.url, "url", raw.u, "u");
    let path = page_target(url_raw, url_key)?;
    let (props_raw, props_key) = either(raw.props, "props", raw.p, "p");
    check_properties(props_raw, props_key, true)?;
    let (revenue_raw, revenue_key) = either(raw.revenue, "revenue", raw.revenue_short, "$");
    check_properties(revenue_raw, revenue_key, true)?;
    let (referrer_raw, referrer_key) = either(raw.referrer, "referrer", raw.r, "r");
    let referrer = referrer(referrer_raw, referrer_key)?;
    let action = match name.as_ref() {
        "pageview" => PlausibleAction::Record {
            kind: EventKind::Pageview,
            target: path,
        },
        "engagement" => PlausibleAction::Engagement,
        other => PlausibleAction::Record {
            kind: EventKind::Custom,
            target: event_name_target(other, name_key)?,
        },
    };
    Ok(PlausibleEvent {
        domains,
        action,
        referrer,
    })
}

/// `domain`: one host name or a comma-separated list of them (Plausible's way to send one
/// event to several sites).
fn domain_list(raw: Option<&RawValue>, key: &str) -> Result<Vec<String>, ApiError> {
    let list = string_field(raw, key, MAX_DOMAIN_LIST_CHARS)?
        .filter(|d| !d.trim().is_empty())
        .ok_or_else(|| ApiError::missing_field(key))?;
    let domains: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    if domains.is_empty() || domains.len() > MAX_DOMAINS {
        return Err(ApiError::invalid_field(
            key,
            format!("must name 1 to {MAX_DOMAINS} comma-separated host names"),
        ));
    }
    Ok(domains)
}

/// `POST /api/event`.
pub async fn event(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    ingest(&state, peer, request, async |admitted| {
        let event = parse_event(&admitted.body)?;
        let mut websites = Vec::new();
        for domain in &event.domains {
            if let Some(website) = admitted.state.websites.get_by_domain(domain) {
                if !websites.iter().any(|w: &Arc<_>| Arc::ptr_eq(w, &website)) {
                    websites.push(website);
                }
            }
        }
        if websites.is_empty() {
            return Err(ApiError::unknown_website());
        }
        let PlausibleAction::Record { kind, target } = event.action else {
            admitted.touch(websites).await?;
            return Ok(accepted());
        };
        let events = websites
            .into_iter()
            .map(|website| WebsiteEvent {
                event: CollectEvent {
                    website_id: website.id.clone(),
                    kind,
                    target: Arc::clone(&target),
                    referrer: event.referrer.clone(),
                    visitor_id: None,
                },
                website,
            })
            .collect();
        admitted.record(events).await?;
        Ok(accepted())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        match parse_event(body.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn short_and_long_keys_parse_to_the_same_event() {
        let short = parse_event(
            br#"{"n":"pageview","v":36,"u":"http://127.0.0.1:8000/p.html?x=1","d":"127.0.0.1","r":"https://www.google.com/"}"#,
        )
        .unwrap();
        let long = parse_event(
            br#"{"name":"pageview","url":"http://127.0.0.1:8000/p.html","domain":"127.0.0.1","referrer":"https://www.google.com/","interactive":true}"#,
        )
        .unwrap();
        assert_eq!(short, long);
        assert_eq!(
            short.action,
            PlausibleAction::Record {
                kind: EventKind::Pageview,
                target: Arc::from("/p.html")
            }
        );
        assert_eq!(short.domains, ["127.0.0.1"]);
    }

    #[test]
    fn other_names_are_custom_events_and_engagement_is_its_own_action() {
        let custom = parse_event(
            br#"{"n":"Signup","u":"/x","d":"a.com, b.com","p":"{\"plan\":\"pro\"}","$":{"amount":9.99,"currency":"EUR"}}"#,
        )
        .unwrap();
        assert_eq!(
            custom.action,
            PlausibleAction::Record {
                kind: EventKind::Custom,
                target: Arc::from("Signup")
            }
        );
        assert_eq!(custom.domains, ["a.com", "b.com"]);
        let engagement =
            parse_event(br#"{"n":"engagement","sd":100,"d":"a.com","u":"/","e":1857,"v":36}"#)
                .unwrap();
        assert_eq!(engagement.action, PlausibleAction::Engagement);
    }

    #[test]
    fn each_kind_of_bad_body_gets_its_code() {
        let check = |body: &str, expected: &str| assert_eq!(code(body), expected, "{body}");
        check(r#"{"n":"pageview","u":"/","d":"a.com"}"#, "ok");
        check("", "invalid_json");
        check("[]", "invalid_json");
        check("{", "invalid_json");
        check(r#"{"u":"/","d":"a.com"}"#, "missing_field");
        check(r#"{"n":" ","u":"/","d":"a.com"}"#, "missing_field");
        check(r#"{"n":"pageview","d":"a.com"}"#, "missing_field");
        check(r#"{"n":"pageview","u":"/"}"#, "missing_field");
        check(r#"{"n":"pageview","u":"/","d":" , "}"#, "invalid_field");
        let many = vec!["a.com"; MAX_DOMAINS + 1].join(",");
        check(
            &format!(r#"{{"n":"pageview","u":"/","d":"{many}"}}"#),
            "invalid_field",
        );
        check(
            r#"{"n":"pageview","u":"ftp://x/","d":"a.com"}"#,
            "invalid_field",
        );
        check(r#"{"n":7,"u":"/","d":"a.com"}"#, "invalid_field");
        check(r#"{"n":"e","u":"/","d":"a.com","p":[1]}"#, "invalid_field");
        check(
            r#"{"n":"e","u":"/","d":"a.com","p":"nope"}"#,
            "invalid_field",
        );
        check(r#"{"n":"a\u0001b","u":"/","d":"a.com"}"#, "invalid_field");
        let long_name = "n".repeat(MAX_EVENT_NAME_CHARS + 1);
        check(
            &format!(r#"{{"n":"{long_name}","u":"/","d":"a.com"}}"#),
            "invalid_field",
        );
    }
}
