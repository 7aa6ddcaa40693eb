//! Fuzz target `collect_body`: arbitrary bodies and headers through the same
//! parse-validate-normalise code `/api/collect` runs (`parse_batch`, the content-type check, the
//! client-IP rules). It must never panic, and every accepted event must satisfy the documented
//! field limits. Allocation is bounded by running with `-malloc_limit_mb`.

#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pulse_engine::{EventKind, WebsiteId};
use pulse_server::client_ip::TrustedProxies;
use pulse_server::routes::collect::{
    is_accepted_content_type, parse_batch, MAX_BATCH, MAX_EVENT_NAME_CHARS, MAX_URL_BYTES,
};

#[derive(Debug, Arbitrary)]
struct Request<'a> {
    headers: Vec<(&'a str, &'a [u8])>,
    peer_v4: [u8; 4],
    body: &'a [u8],
}

fuzz_target!(|request: Request<'_>| {
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers.iter().take(64) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let _ = is_accepted_content_type(&headers);
    let peer = SocketAddr::from((request.peer_v4, 443));
    let proxies = TrustedProxies::new(vec!["10.0.0.0/8"
        .parse()
        .unwrap_or_else(|_| unreachable!())]);
    let _ = proxies.client_ip(peer, &headers);

    // The route refuses bodies over 100 KiB before parsing; the fuzzer stays in that range.
    if request.body.len() > 100 * 1024 {
        return;
    }
    if let Ok(events) = parse_batch(request.body) {
        assert!((1..=MAX_BATCH).contains(&events.len()));
        for event in events {
            assert!(WebsiteId::new(event.website_id.as_str()).is_ok());
            match event.kind {
                EventKind::Pageview => {
                    assert!(event.target.starts_with('/'), "{:?}", event.target);
                    assert!(!event.target.contains(['?', '#']));
                    assert!(event.target.len() <= MAX_URL_BYTES);
                }
                EventKind::Custom => {
                    assert!(!event.target.is_empty());
                    assert!(event.target.chars().count() <= MAX_EVENT_NAME_CHARS);
                }
            }
            assert!(event
                .referrer
                .as_ref()
                .is_none_or(|r| r.len() <= MAX_URL_BYTES * 4));
        }
    }
});
