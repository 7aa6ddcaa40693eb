//! URL normalisation for untrusted input: page URLs become paths (`page_path`), referrers
//! become the host shown in the realtime list (`normalized_host`, `referrer_domain`) and a
//! website's configured domain is normalised the same way (`normalized_domain`).
//!
//! Only the path of a page URL and the host of a referrer survive: query strings, fragments and
//! referrer paths can carry personal data.

/// Longest host kept, in bytes (the DNS limit).
const MAX_HOST_LEN: usize = 253;

/// The normalised host of `url`, or `None` when it has none.
pub fn normalized_host(url: &str) -> Option<String> {
    let url = url.trim();
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        // An IPv6 literal keeps its brackets so it cannot be confused with a port.
        let end = bracketed.find(']')?;
        &host_port[..end + 2]
    } else {
        host_port.split(':').next().unwrap_or("")
    };
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

/// The website's own domain as configured, normalised like a referrer host.
pub fn normalized_domain(domain: &str) -> String {
    let domain = domain.trim();
    let host = if domain.contains("://") {
        normalized_host(domain).unwrap_or_default()
    } else {
        normalized_host(&format!("http://{domain}")).unwrap_or_default()
    };
    host
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

/// The path of a page URL — an absolute `http(s)` URL or a path starting with `/` — without
/// query string or fragment, which can carry personal data.
pub fn page_path(url: &str) -> Result<&str, &'static str> {
    const WHY: &str = "must be a path starting with / or an absolute http(s) URL";
    let url = url.trim();
    if url.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let strip_query = |s: &str| -> usize { s.find(['?', '#']).unwrap_or(s.len()) };
    if url.starts_with('/') {
        if url.starts_with("//") {
            return Err(WHY);
        }
        return Ok(&url[..strip_query(url)]);
    }
    let lower_scheme = url
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower_scheme.starts_with("http://") {
        &url[7..]
    } else if lower_scheme.starts_with("https://") {
        &url[8..]
    } else {
        return Err(WHY);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if authority_end == 0 {
        return Err("must name a host");
    }
    let after = &rest[authority_end..];
    if !after.starts_with('/') {
        return Ok("/");
    }
    Ok(&after[..strip_query(after)])
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
            assert_eq!(page_path(url).map_err(|_| ()), expected, "{url:?}");
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
    }
}
