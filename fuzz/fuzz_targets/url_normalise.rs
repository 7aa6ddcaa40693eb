//! Fuzz target `url_normalise`: the server's other parsers of untrusted text — page URLs to
//! paths, referrers to hosts, website domains — never panic, and what they return keeps the
//! promises the realtime API relies on (no query strings, no `www.`, lower case).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pulse_server::url_normaliser::{
    normalized_domain, normalized_host, page_path, referrer_domain,
};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    url: &'a str,
    referrer: &'a str,
    domain: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(path) = page_path(input.url) {
        assert!(path.starts_with('/'));
        assert!(!path.contains(['?', '#']));
    }
    if let Some(host) = normalized_host(input.referrer) {
        assert!(!host.is_empty() && host.len() <= 253);
        assert!(!host.starts_with("www."));
        assert_eq!(host, host.to_ascii_lowercase());
    }
    let site = normalized_domain(input.domain);
    if let Some(host) = referrer_domain(Some(input.referrer), &site) {
        assert!(site.is_empty() || host != site);
    }
});
