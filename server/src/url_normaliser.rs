//! URL normalisation for untrusted input, with one parser and one set of rules for every
//! caller: page URLs become paths (`page_path`), referrers become the host shown in the realtime
//! list (`normalized_host`, `referrer_domain`), and a website's configured domain is normalised
//! the same way (`normalized_domain`) so self-referrals can be recognised.
//!
//! `split_url` is the one parser: `scheme://[userinfo@]host[:port][/path][?query][#fragment]`,
//! borrowed from the input, refusing control characters. It is hand-written rather than the
//! `url` crate's WHATWG parser because that one, with the same rules on top, made 50-event
//! batches cost 25% more server CPU in a same-run A/B (BENCHMARKS.md, "Library swaps"; the
//! `url` bench compares the two per call). It does not percent-decode, resolve `..` or convert
//! internationalised hosts, and it need not: paths are counted as the browser sent them, and a
//! host outside `[a-z0-9._-]` (or an IP literal) is refused. Only the path of a page URL and the
//! host of a referrer survive: query strings, fragments and referrer paths can carry personal
//! data.

use std::borrow::Cow;

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
}

/// The parts of an absolute URL this module keeps, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UrlParts<'a> {
    /// As written; compare without case.
    scheme: &'a str,
    /// Without userinfo and port; an IPv6 literal keeps its brackets. Possibly empty.
    host: &'a str,
    /// From the `/` after the host up to the query or fragment; `/` when there is none.
    path: &'a str,
}

/// Why `split_url` refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitError {
    ControlCharacter,
    NoScheme,
}

/// `input` trimmed, or an error when it holds a control character anywhere.
fn without_controls(input: &str) -> Result<&str, SplitError> {
    let input = input.trim();
    if input.chars().any(char::is_control) {
        return Err(SplitError::ControlCharacter);
    }
    Ok(input)
}

/// Cuts a query string or fragment off `path`.
fn strip_query(path: &str) -> &str {
    path.find(['?', '#']).map_or(path, |end| &path[..end])
}

/// Splits an absolute URL (`scheme://authority…`; the scheme a letter followed by letters,
/// digits, `+`, `-` or `.`) into the parts this module keeps.
fn split_url(input: &str) -> Result<UrlParts<'_>, SplitError> {
    let input = without_controls(input)?;
    let (scheme, rest) = input.split_once("://").ok_or(SplitError::NoScheme)?;
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return Err(SplitError::NoScheme);
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        // An IPv6 literal keeps its brackets so it cannot be confused with a port.
        host_port.find(']').map_or("", |end| &host_port[..=end])
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let path = if after.starts_with('/') {
        strip_query(after)
    } else {
        "/"
    };
    Ok(UrlParts { scheme, host, path })
}

/// The path of a page URL — an absolute `http(s)` URL or a path starting with `/` — without
/// query string or fragment.
pub fn page_path(url: &str) -> Result<Cow<'_, str>, PageUrlError> {
    let trimmed = url.trim();
    if trimmed.starts_with('/') && !trimmed.starts_with("//") {
        let path = without_controls(trimmed).map_err(|_| PageUrlError::ControlCharacter)?;
        return Ok(Cow::Borrowed(strip_query(path)));
    }
    let parts = split_url(url).map_err(|e| match e {
        SplitError::ControlCharacter => PageUrlError::ControlCharacter,
        SplitError::NoScheme => PageUrlError::NotHttp,
    })?;
    if !(parts.scheme.eq_ignore_ascii_case("http") || parts.scheme.eq_ignore_ascii_case("https")) {
        return Err(PageUrlError::NotHttp);
    }
    if parts.host.is_empty() {
        return Err(PageUrlError::NoHost);
    }
    Ok(Cow::Borrowed(parts.path))
}

/// The normalised host of `url`, or `None` when it has none.
pub fn normalized_host(url: &str) -> Option<String> {
    normalize_host(split_url(url).ok()?.host)
}

/// `host` in the form the realtime list shows: lower case, no trailing dots, no leading `www.`,
/// and only characters a host name or IP literal can hold.
fn normalize_host(host: &str) -> Option<String> {
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
        check("https:///path-only", "example.com", None);
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
        check("https:///nohost", Err(()));
        check("example.com/path", Err(()));
        check("javascript:alert(1)", Err(()));
        check("/a\nb", Err(()));
        check("https://exa\tmple.com/", Err(()));
        check("https://:8080/a", Err(()));
        check("https://user@/a", Err(()));
    }

    /// The two callers used to parse with different rules: a page URL with an empty host and a
    /// port passed, the same URL as a referrer had no host. Now one parser decides for both.
    #[test]
    fn page_urls_and_referrers_agree_on_what_has_a_host() {
        for url in [
            "https://:8080/a",
            "https://user:pw@/a",
            "http://[::1/a",
            "https://exa\u{7f}mple.com/",
            "1https://example.com/",
            "ht tp://example.com/",
        ] {
            assert_eq!(page_path(url).ok(), None, "{url:?}");
            assert_eq!(normalized_host(url), None, "{url:?}");
        }
        for url in [
            "https://Example.com:8080/a?q",
            "http://u:p@example.com",
            "HTTP://example.com.",
        ] {
            assert!(page_path(url).is_ok(), "{url:?}");
            assert_eq!(
                normalized_host(url).as_deref(),
                Some("example.com"),
                "{url:?}"
            );
        }
    }
}
