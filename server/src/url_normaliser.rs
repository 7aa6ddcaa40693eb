//! URL normalisation for untrusted input, with one set of rules for every caller: page URLs
//! become paths (`page_path`), referrers become the host shown in the realtime list
//! (`normalized_host`, `referrer_domain`), and a website's configured domain is normalised the
//! same way (`normalized_domain`) so self-referrals can be recognised.
//!
//! Parsing is the `url` crate's (the WHATWG URL standard, as browsers parse): percent-encoding,
//! `.` and `..` segments, internationalised hosts (to punycode) and backslashes are handled as a
//! browser would. On top of it this module refuses control characters, keeps only `http(s)` page
//! URLs, and reduces hosts to lower case without port, credentials, trailing dots or leading
//! `www.`. Only the path of a page URL and the host of a referrer survive: query strings,
//! fragments and referrer paths can carry personal data.

use std::borrow::Cow;
use std::sync::LazyLock;

use url::Url;

/// Longest host kept, in bytes (the DNS limit).
const MAX_HOST_LEN: usize = 253;

/// Why a page URL was refused; the message completes "url …" in the API's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageUrlError {
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must be a path starting with / or an absolute http(s) URL")]
    NotHttp,
    #[error("must name a host")]
    NoHost,
    #[error("is not a valid URL: {0}")]
    Malformed(url::ParseError),
}

/// What a path-only page URL is resolved against; only its path is kept, so the host is moot.
static PATH_BASE: LazyLock<Result<Url, url::ParseError>> =
    LazyLock::new(|| Url::parse("http://page.invalid/"));

/// `input` trimmed, or `None` when it holds a control character. The URL standard would silently
/// drop tabs and newlines; untrusted input carrying them is refused instead.
fn without_controls(input: &str) -> Option<&str> {
    let input = input.trim();
    (!input.chars().any(char::is_control)).then_some(input)
}

/// The path of a page URL — an absolute `http(s)` URL or a path starting with `/` — without
/// query string or fragment, normalised as a browser would (`..` resolved, non-ASCII
/// percent-encoded).
pub fn page_path(url: &str) -> Result<Cow<'_, str>, PageUrlError> {
    let url = without_controls(url).ok_or(PageUrlError::ControlCharacter)?;
    let parsed = if url.starts_with('/') {
        // Protocol-relative (`//host/…`) would name a host without a scheme.
        if url.starts_with("//") {
            return Err(PageUrlError::NotHttp);
        }
        let base = PATH_BASE
            .as_ref()
            .map_err(|e| PageUrlError::Malformed(*e))?;
        Url::options().base_url(Some(base)).parse(url)
    } else {
        Url::parse(url)
    };
    let parsed = parsed.map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => PageUrlError::NotHttp,
        url::ParseError::EmptyHost => PageUrlError::NoHost,
        other => PageUrlError::Malformed(other),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(PageUrlError::NotHttp);
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(PageUrlError::NoHost);
    }
    Ok(Cow::Owned(parsed.path().to_owned()))
}

/// The normalised host of `url`, or `None` when it has none.
pub fn normalized_host(url: &str) -> Option<String> {
    let parsed = Url::parse(without_controls(url)?).ok()?;
    normalize_host(parsed.host_str()?)
}

/// `host` in the form the realtime list shows: lower case, no trailing dots, no leading `www.`,
/// and only characters a host name or IP literal can hold.
fn normalize_host(host: &str) -> Option<String> {
    // Hosts of non-special schemes (`android-app://…`) are kept as written: lower-case them too.
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    // Every leading `www.` goes, so `www.www.example.com` cannot show up as `www.example.com`.
    let mut host = host.as_str();
    while let Some(rest) = host.strip_prefix("www.") {
        host = rest;
    }
    let valid = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    valid.then(|| host.to_owned())
}

/// The website's own domain as configured (`example.com` or a URL), normalised like a referrer
/// host; empty when it has none.
pub fn normalized_domain(domain: &str) -> String {
    let domain = domain.trim();
    if domain.contains("://") {
        normalized_host(domain).unwrap_or_default()
    } else {
        normalized_host(&format!("http://{domain}")).unwrap_or_default()
    }
}

/// The referrer domain to record for a website whose normalised domain is `site_domain`:
/// `None` for a missing or invalid referrer and for a self-referral (the site itself or any of
/// its subdomains).
pub fn referrer_domain(referrer: Option<&str>, site_domain: &str) -> Option<String> {
    let host = normalized_host(referrer?)?;
    let is_self = !site_domain.is_empty()
        && (host == site_domain
            || host
                .strip_suffix(site_domain)
                .is_some_and(|prefix| prefix.ends_with('.')));
    (!is_self).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(referrer: &str, site: &str, expected: Option<&str>) {
        let site = normalized_domain(site);
        assert_eq!(
            referrer_domain(Some(referrer), &site).as_deref(),
            expected,
            "{referrer:?} on {site:?}"
        );
    }

    #[test]
    fn referrers_become_lowercase_hosts_without_www() {
        check(
            "https://WWW.Google.com/search?q=secret",
            "example.com",
            Some("google.com"),
        );
        check(
            "http://news.ycombinator.com:8080/item?id=1",
            "example.com",
            Some("news.ycombinator.com"),
        );
        check(
            "https://user:pass@www.bing.com/",
            "example.com",
            Some("bing.com"),
        );
        check("https://t.co", "example.com", Some("t.co"));
        check(
            "android-app://com.google.android.gm/",
            "example.com",
            Some("com.google.android.gm"),
        );
        check(
            "http://[2001:db8::1]:80/x",
            "example.com",
            Some("[2001:db8::1]"),
        );
        check(
            "https://example.com.evil.net/",
            "example.com",
            Some("example.com.evil.net"),
        );
        check(
            "https://notexample.com/",
            "example.com",
            Some("notexample.com"),
        );
    }

    /// Found by the `url_normalise` fuzz target: only the first `www.` used to be removed.
    #[test]
    fn repeated_www_prefixes_are_all_removed() {
        check(
            "https://www.www.Example.org/",
            "example.com",
            Some("example.org"),
        );
        check("https://www.www.example.com/", "example.com", None);
        check("https://www./", "example.com", Some("www"));
    }

    #[test]
    fn self_referrals_and_junk_become_none() {
        check("https://example.com/pricing", "example.com", None);
        check("https://www.example.com/", "https://Example.com", None);
        check("https://blog.example.com/post", "www.example.com", None);
        check("", "example.com", None);
        check("not a url", "example.com", None);
        check("https://:443/", "example.com", None);
        check("https://exa mple.com/", "example.com", None);
        check(
            &format!("https://{}.com/", "a".repeat(300)),
            "example.com",
            None,
        );
        assert_eq!(referrer_domain(None, "example.com"), None);
    }

    #[test]
    fn pageview_urls_become_paths_without_query_or_fragment() {
        let check = |url: &str, expected: Result<&str, ()>| {
            assert_eq!(
                page_path(url).as_deref().map_err(|_| ()),
                expected,
                "{url:?}"
            );
        };
        check("/pricing?email=a@b.c#top", Ok("/pricing"));
        check("https://example.com/blog/post?x=1", Ok("/blog/post"));
        check("HTTPS://example.com", Ok("/"));
        check("http://example.com?utm=1", Ok("/"));
        check("http://example.com:8080/a#b", Ok("/a"));
        check("https://:80/", Err(()));
        check("http://", Err(()));
        check("/a\tb", Err(()));
        check("example.com/path", Err(()));
        check("javascript:alert(1)", Err(()));
        check("/a\nb", Err(()));
    }

    /// The URL standard's rules, which the hand-written parsers did not follow: what a browser
    /// would request is what is counted.
    #[test]
    fn page_paths_are_normalised_as_a_browser_would() {
        let path = |url: &str| page_path(url).map(Cow::into_owned);
        assert_eq!(path("/a/./b/../c"), Ok("/a/c".to_owned()));
        assert_eq!(
            path("https://example.com/caf\u{e9} x"),
            Ok("/caf%C3%A9%20x".to_owned())
        );
        assert_eq!(
            path("https://example.com\\docs\\x?q"),
            Ok("/docs/x".to_owned())
        );
        // Extra slashes after a special scheme are skipped, as browsers do.
        assert_eq!(path("https:///nohost/p"), Ok("/p".to_owned()));
        assert!(matches!(
            path("https://exa mple.com/"),
            Err(PageUrlError::Malformed(_))
        ));
    }

    #[test]
    fn hosts_compare_after_percent_decoding_and_punycode() {
        check("https://ex%61mple.com/", "example.com", None);
        check(
            "https://B\u{fc}cher.de/",
            "example.com",
            Some("xn--bcher-kva.de"),
        );
        check("https://www.b\u{fc}cher.de/", "B\u{fc}cher.de", None);
        check("https:///path-only", "example.com", Some("path-only"));
    }
}
