//! Criterion bench of URL normalisation on collect's hot path: the hand-written parser in
//! `pulse_server::url_normaliser` against the `url` crate (the WHATWG parser) applying the same
//! rules, on the kinds of URL the tracker sends — absolute page URLs and referrers.
//!
//! The `url` side is the code `url_normaliser` held before it was measured (commit `ebc90b2`):
//! kept here, not in the server, so the choice stays reproducible.
//!
//! Run: `cargo bench -p pulse-benches --bench url`.

// Bench code: a failed unwrap is a failed setup, which should stop the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pulse_server::url_normaliser::{normalized_host, page_path};
use url::Url;

/// Page URLs as the tracker sends them (`location.origin + location.pathname`), and two that
/// other clients send.
const PAGES: [&str; 4] = [
    "https://load.example/",
    "https://load.example/docs/getting-started",
    "https://shop.example.com/products/blue-widget-2000",
    "/pricing?utm_source=newsletter",
];
/// Referrers as browsers send them (`document.referrer`, usually just an origin).
const REFERRERS: [&str; 4] = [
    "https://www.google.com/",
    "https://news.ycombinator.com/item?id=1",
    "https://t.co/x1y2z3",
    "android-app://com.google.android.gm/",
];

/// `page_path` as the `url` crate computes it.
fn page_path_url_crate(input: &str, base: &Url) -> Option<String> {
    let input = input.trim();
    if input.chars().any(char::is_control) || input.starts_with("//") {
        return None;
    }
    let parsed = if input.starts_with('/') {
        Url::options().base_url(Some(base)).parse(input)
    } else {
        Url::parse(input)
    }
    .ok()?;
    let http = matches!(parsed.scheme(), "http" | "https");
    (http && parsed.host_str().is_some_and(|h| !h.is_empty())).then(|| parsed.path().to_owned())
}

/// `normalized_host` as the `url` crate computes it.
fn referrer_host_url_crate(input: &str) -> Option<String> {
    let input = input.trim();
    if input.chars().any(char::is_control) {
        return None;
    }
    let parsed = Url::parse(input).ok()?;
    let host = parsed
        .host_str()?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut host = host.as_str();
    while let Some(rest) = host.strip_prefix("www.") {
        host = rest;
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    valid.then(|| host.to_owned())
}

fn url_normalise(c: &mut Criterion) {
    let base = Url::parse("http://page.invalid/").unwrap();
    // Both sides must agree on these inputs before their speed means anything.
    for page in PAGES {
        assert_eq!(
            page_path(page).ok().map(|p| p.into_owned()),
            page_path_url_crate(page, &base),
            "{page}"
        );
    }
    for referrer in REFERRERS {
        assert_eq!(
            normalized_host(referrer),
            referrer_host_url_crate(referrer),
            "{referrer}"
        );
    }

    let mut group = c.benchmark_group("url_normalise");
    group.throughput(Throughput::Elements(PAGES.len() as u64));
    group.bench_function("page_path_4/hand_written", |b| {
        b.iter(|| {
            PAGES
                .iter()
                .map(|u| page_path(black_box(u)).map_or(0, |p| p.len()))
                .sum::<usize>()
        });
    });
    group.bench_function("page_path_4/url_crate", |b| {
        b.iter(|| {
            PAGES
                .iter()
                .map(|u| page_path_url_crate(black_box(u), &base).map_or(0, |p| p.len()))
                .sum::<usize>()
        });
    });
    group.throughput(Throughput::Elements(REFERRERS.len() as u64));
    group.bench_function("referrer_host_4/hand_written", |b| {
        b.iter(|| {
            REFERRERS
                .iter()
                .map(|u| normalized_host(black_box(u)).map_or(0, |h| h.len()))
                .sum::<usize>()
        });
    });
    group.bench_function("referrer_host_4/url_crate", |b| {
        b.iter(|| {
            REFERRERS
                .iter()
                .map(|u| referrer_host_url_crate(black_box(u)).map_or(0, |h| h.len()))
                .sum::<usize>()
        });
    });
    group.finish();
}

criterion_group!(benches, url_normalise);
criterion_main!(benches);
