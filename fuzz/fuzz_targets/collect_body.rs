//! Fuzz target `collect_body`: arbitrary bodies and headers through the same
//! decode-parse-validate-normalise code `/api/collect` runs (the content-type and
//! content-coding checks, `gunzip`, `parse_batch`, the client-IP rules). A coding byte sends the
//! body as it is, as gzip bytes to inflate (arbitrary, so mostly broken streams), or compressed
//! here first (so the JSON behind the gzip is reached). It must never panic, an inflated body
//! never exceeds the body limit (nor does its buffer), a compressed body inflates back to
//! itself, and every accepted event must satisfy the documented field limits. Allocation is
//! bounded by running with `-malloc_limit_mb`.

#![no_main]

use std::net::SocketAddr;

use std::borrow::Cow;
use std::io::Write;

use arbitrary::Arbitrary;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pulse_engine::{EventKind, WebsiteId};
use pulse_server::client_ip::TrustedProxies;
use pulse_server::config::MAX_BODY_BYTES;
use pulse_server::routes::collect::{
    body_encoding, gunzip, is_accepted_content_type, parse_batch, MAX_BATCH, MAX_EVENT_NAME_CHARS,
    MAX_URL_BYTES,
};

/// How the fuzzed body reaches `parse_batch`.
#[derive(Debug, Arbitrary)]
enum Coding {
    /// As sent with no `Content-Encoding`.
    Identity,
    /// As the bytes of a body labelled gzip.
    Gzip,
    /// Compressed here, then sent labelled gzip.
    GzipOfBody,
}

#[derive(Debug, Arbitrary)]
struct Request<'a> {
    headers: Vec<(&'a str, &'a [u8])>,
    peer_v4: [u8; 4],
    coding: Coding,
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
    let _ = body_encoding(&headers);
    let peer = SocketAddr::from((request.peer_v4, 443));
    let proxies = TrustedProxies::new(vec!["10.0.0.0/8"
        .parse()
        .unwrap_or_else(|_| unreachable!())]);
    let _ = proxies.client_ip(peer, &headers);

    // The route refuses bodies over 100 KiB before parsing; the fuzzer stays in that range.
    if request.body.len() > MAX_BODY_BYTES {
        return;
    }
    let body = match request.coding {
        Coding::Identity => Cow::Borrowed(request.body),
        Coding::Gzip => match gunzip(request.body, MAX_BODY_BYTES) {
            Ok(inflated) => Cow::Owned(inflated),
            Err(_) => return,
        },
        Coding::GzipOfBody => {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            let compressed = encoder
                .write_all(request.body)
                .and_then(|()| encoder.finish())
                .unwrap_or_else(|e| panic!("compressing into memory failed: {e}"));
            let inflated = gunzip(&compressed, MAX_BODY_BYTES)
                .unwrap_or_else(|e| panic!("a gzip body within the limit was refused: {e:?}"));
            assert_eq!(inflated, request.body, "gzip did not round-trip");
            Cow::Owned(inflated)
        }
    };
    assert!(body.len() <= MAX_BODY_BYTES);
    if let Cow::Owned(inflated) = &body {
        assert!(
            inflated.capacity() <= MAX_BODY_BYTES,
            "{}",
            inflated.capacity()
        );
    }
    if let Ok(events) = parse_batch(&body) {
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
