//! User-Agent classification in one pass: whether the client is a bot, which
//! browser family it is, and what kind of device it runs on. The header is
//! lower-cased into a fixed stack buffer and scanned once against a static
//! table of needles, so the cost is linear in the (capped) input length and
//! nothing is compiled or allocated per request. This module only derives the
//! three coarse facts in [`UserAgentClass`]; it never stores or logs the
//! User-Agent itself, so no raw header outlives the call. `ClassCache` (`cache.rs`)
//! remembers recent verdicts under a keyed hash of the header, never the header.

use std::sync::LazyLock;

use pulse_engine::{Browser, DeviceType};

mod cache;

pub use cache::ClassCache;

/// The coarse facts Pulse keeps about a request's User-Agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAgentClass {
    pub is_bot: bool,
    pub browser: Browser,
    pub device: DeviceType,
}

/// Classifies a raw User-Agent header value.
///
/// Bots always come back with `Browser::Other` and `DeviceType::Other`, so
/// callers can drop them without looking at the other fields.
pub fn classify(user_agent: &str) -> UserAgentClass {
    let trimmed = user_agent.trim();
    // Anything longer than a real browser ever sends is treated as absurd
    // before any per-byte work, which also bounds the scan below.
    if trimmed.len() > MAX_UA_LEN || trimmed.len() < MIN_UA_LEN {
        return BOT;
    }

    let mut buf = [0u8; MAX_UA_LEN];
    let mut has_letter = false;
    for (slot, &byte) in buf.iter_mut().zip(trimmed.as_bytes()) {
        if byte < 0x20 || byte == 0x7f {
            return BOT;
        }
        has_letter |= byte.is_ascii_alphabetic();
        *slot = byte.to_ascii_lowercase();
    }
    if !has_letter {
        return BOT;
    }

    let facts = scan(&buf[..trimmed.len()]);
    if looks_automated(facts) {
        return BOT;
    }
    UserAgentClass {
        is_bot: false,
        browser: browser_family(facts),
        device: device_type(facts),
    }
}

/// Real browsers send a couple of hundred bytes at most; a longer header is
/// either a mistake or an attempt to make the classifier do work.
const MAX_UA_LEN: usize = 512;

/// Nothing shorter than "Opera/9.80" can name a browser and its platform, so
/// such headers come from tools or are placeholders.
const MIN_UA_LEN: usize = 10;

/// The single answer for every kind of bot, so bots never pollute the
/// browser and device breakdowns.
const BOT: UserAgentClass = UserAgentClass {
    is_bot: true,
    browser: Browser::Other,
    device: DeviceType::Other,
};

/// Facts a needle can establish. The scan ORs them together and the verdict
/// is computed from the combination afterwards, so needle order never matters.
type Facts = u64;

/// A self-declared bot, tool, library, monitor or headless browser.
const AUTOMATION: Facts = 1 << 0;
/// The header starts with "Mozilla/", as every mainstream browser's does.
const MOZILLA: Facts = 1 << 1;
/// A rendering engine token that every genuine "Mozilla/" browser carries.
const ENGINE: Facts = 1 << 2;
/// An operating system or device token that every genuine browser carries.
const PLATFORM: Facts = 1 << 3;
/// "compatible", which outside of IE and Konqueror means "a bot follows".
const COMPATIBLE: Facts = 1 << 4;
/// A browser that legitimately uses the "(compatible; ...)" form.
const COMPATIBLE_BROWSER: Facts = 1 << 5;
/// A token that only human-facing clients put in headers that do not start
/// with "Mozilla/": Opera, UC, feature phones and mobile in-app browsers.
const HUMAN_CLIENT: Facts = 1 << 6;

// Browser family tokens; `browser_family` resolves overlaps between them.
const EDGE: Facts = 1 << 10;
const OPERA: Facts = 1 << 11;
const SAMSUNG: Facts = 1 << 12;
const YANDEX: Facts = 1 << 13;
const UC: Facts = 1 << 14;
const IE: Facts = 1 << 15;
const FIREFOX: Facts = 1 << 16;
const CHROME: Facts = 1 << 17;
const SAFARI: Facts = 1 << 18;
const VERSION: Facts = 1 << 19;

// Device tokens; `device_type` resolves overlaps between them.
const TABLET: Facts = 1 << 24;
const ANDROID: Facts = 1 << 25;
const MOBI: Facts = 1 << 26;
const PHONE: Facts = 1 << 27;
const DESKTOP: Facts = 1 << 28;
/// Televisions and consoles: neither desktop nor handheld, so `Other`.
const BIG_SCREEN: Facts = 1 << 29;

/// A condition on the bytes around a needle, for needles that are only
/// meaningful in some positions.
#[derive(Debug, Clone, Copy)]
enum Guard {
    Anywhere,
    /// Only at the very start of the header.
    AtStart,
    /// Only where a token starts, e.g. "java/" the HTTP library as opposed to
    /// "(Java; U; ...)" in a feature phone's platform list.
    TokenStart,
    /// "bot", except inside "cubot", which is a phone brand.
    NotCubot,
    /// A top-level domain ending a host name, e.g. "example.com": a word
    /// character before the dot and none after the suffix. This keeps ".NET
    /// CLR" in old Windows headers from counting as a domain.
    DomainSuffix,
    /// The "@" of an e-mail address, as opposed to a version tag such as
    /// "android@124.0" that some browsers append.
    EmailAt,
    /// Anywhere except directly before one of the given continuations.
    NotFollowedBy(&'static [&'static str]),
}

impl Guard {
    fn holds(self, text: &[u8], start: usize, end: usize) -> bool {
        let before = start.checked_sub(1).and_then(|i| text.get(i)).copied();
        let after = text.get(end).copied();
        match self {
            Guard::Anywhere => true,
            Guard::AtStart => start == 0,
            Guard::TokenStart => !before.is_some_and(|b| b.is_ascii_alphanumeric()),
            Guard::NotCubot => !text[..start].ends_with(b"cu"),
            Guard::DomainSuffix => {
                before.is_some_and(|b| b.is_ascii_alphanumeric())
                    && !after.is_some_and(|b| b.is_ascii_alphanumeric())
            }
            Guard::EmailAt => {
                before.is_some_and(|b| b.is_ascii_alphanumeric())
                    && after.is_some_and(|b| b.is_ascii_alphabetic())
            }
            Guard::NotFollowedBy(continuations) => {
                let rest = &text[end..];
                !continuations.iter().any(|c| rest.starts_with(c.as_bytes()))
            }
        }
    }
}

/// One lower-case pattern and the facts its presence establishes.
#[derive(Debug, Clone, Copy)]
struct Needle {
    text: &'static str,
    facts: Facts,
    guard: Guard,
}

const fn any(text: &'static str, facts: Facts) -> Needle {
    Needle {
        text,
        facts,
        guard: Guard::Anywhere,
    }
}

const fn when(text: &'static str, facts: Facts, guard: Guard) -> Needle {
    Needle { text, facts, guard }
}

/// Every pattern the classifier knows, grouped by what it reveals. Bot
/// patterns name families ("crawl", "feed", "uptime", library names) rather
/// than individual products, so new members of a family are caught too.
const NEEDLES: &[Needle] = &[
    // Generic self-descriptions used by crawlers, scrapers and tools.
    when("bot", AUTOMATION, Guard::NotCubot),
    any("crawl", AUTOMATION),
    any("spider", AUTOMATION),
    any("spyder", AUTOMATION),
    any("slurp", AUTOMATION),
    any("scrap", AUTOMATION),
    any("fetch", AUTOMATION),
    any("scan", AUTOMATION),
    any("index", AUTOMATION),
    any("harvest", AUTOMATION),
    any("archiv", AUTOMATION),
    any("mirror", AUTOMATION),
    any("download", AUTOMATION),
    any("extract", AUTOMATION),
    any("parser", AUTOMATION),
    any("analyz", AUTOMATION),
    any("analys", AUTOMATION),
    any("research", AUTOMATION),
    any("agent", AUTOMATION),
    any("proxy", AUTOMATION),
    any("cache", AUTOMATION),
    any("hook", AUTOMATION),
    any("test", AUTOMATION),
    // SEO, audit and validation tools.
    any("seo", AUTOMATION),
    any("audit", AUTOMATION),
    any("validat", AUTOMATION),
    any("verif", AUTOMATION),
    any("detect", AUTOMATION),
    any("sitemap", AUTOMATION),
    any("semrush", AUTOMATION),
    any("ahrefs", AUTOMATION),
    any("majestic", AUTOMATION),
    any("sistrix", AUTOMATION),
    any("screaming frog", AUTOMATION),
    any("sitebulb", AUTOMATION),
    any("silktide", AUTOMATION),
    any("marketgoo", AUTOMATION),
    any("linktiger", AUTOMATION),
    // Monitors, uptime checkers and synthetic-transaction services.
    any("monitor", AUTOMATION),
    any("uptime", AUTOMATION),
    any("check", AUTOMATION),
    any("watcher", AUTOMATION),
    any("probe", AUTOMATION),
    any("synthetic", AUTOMATION),
    when("ping", AUTOMATION, Guard::TokenStart),
    any("statuscake", AUTOMATION),
    any("site24x7", AUTOMATION),
    any("uptrends", AUTOMATION),
    any("catchpoint", AUTOMATION),
    any("thousandeyes", AUTOMATION),
    any("zabbix", AUTOMATION),
    any("nagios", AUTOMATION),
    any("datadog", AUTOMATION),
    any("newrelic", AUTOMATION),
    any("dynatrace", AUTOMATION),
    any("ruxit", AUTOMATION),
    any("appinsights", AUTOMATION),
    any("sentry", AUTOMATION),
    any("bugsnag", AUTOMATION),
    any("honeybadger", AUTOMATION),
    any("sindup", AUTOMATION),
    // Session-replay services render recorded pages in their own browsers.
    any("hotjar", AUTOMATION),
    any("exporter", AUTOMATION),
    // Security scanners.
    any("nikto", AUTOMATION),
    when("nmap", AUTOMATION, Guard::TokenStart),
    any("zgrab", AUTOMATION),
    any("sqlmap", AUTOMATION),
    any("nessus", AUTOMATION),
    any("openvas", AUTOMATION),
    any("acunetix", AUTOMATION),
    any("qualys", AUTOMATION),
    any("nuclei", AUTOMATION),
    any("whatweb", AUTOMATION),
    any("zmeu", AUTOMATION),
    any("censys", AUTOMATION),
    any("netcraft", AUTOMATION),
    // Feed readers and aggregators.
    any("feed", AUTOMATION),
    any("rss", AUTOMATION),
    any("reader", AUTOMATION),
    any("flipboard", AUTOMATION),
    any("newsblur", AUTOMATION),
    any("miniflux", AUTOMATION),
    any("newsnow", AUTOMATION),
    any("newsai", AUTOMATION),
    // Link preview fetchers, chat unfurlers and federated-social servers.
    any("preview", AUTOMATION),
    any("unfurl", AUTOMATION),
    any("embed", AUTOMATION),
    any("iframely", AUTOMATION),
    any("facebookexternalhit", AUTOMATION),
    any("facebookcatalog", AUTOMATION),
    any("meta-external", AUTOMATION),
    any("whatsapp", AUTOMATION),
    any("slack-", AUTOMATION),
    any("vkshare", AUTOMATION),
    any("outbrain", AUTOMATION),
    any("mastodon", AUTOMATION),
    any("pleroma", AUTOMATION),
    any("misskey", AUTOMATION),
    any("friendica", AUTOMATION),
    any("lemmy", AUTOMATION),
    any("gotosocial", AUTOMATION),
    any("synapse", AUTOMATION),
    when(
        "google",
        AUTOMATION,
        Guard::NotFollowedBy(&[" pixel", "tv", " tv", "app", "play"]),
    ),
    any("cloudflare", AUTOMATION),
    any("cloudfront", AUTOMATION),
    // AI assistants and their fetchers.
    any("chatgpt", AUTOMATION),
    any("openai", AUTOMATION),
    any("claude", AUTOMATION),
    any("anthropic", AUTOMATION),
    any("perplexity", AUTOMATION),
    any("cohere", AUTOMATION),
    any("mistral", AUTOMATION),
    // Command-line tools and HTTP libraries. A JavaScript tracker is only
    // ever executed by a browser, so any of these is automation.
    any("http", AUTOMATION),
    any("curl", AUTOMATION),
    any("wget", AUTOMATION),
    any("libwww", AUTOMATION),
    any("lwp-", AUTOMATION),
    any("python", AUTOMATION),
    any("urllib", AUTOMATION),
    any("aiohttp", AUTOMATION),
    any("requests/", AUTOMATION),
    any("go-http", AUTOMATION),
    any("okhttp", AUTOMATION),
    any("axios", AUTOMATION),
    any("node-fetch", AUTOMATION),
    any("undici", AUTOMATION),
    when("got ", AUTOMATION, Guard::AtStart),
    when("java/", AUTOMATION, Guard::TokenStart),
    when("java-", AUTOMATION, Guard::TokenStart),
    any("jakarta", AUTOMATION),
    any("apache-", AUTOMATION),
    any("jersey/", AUTOMATION),
    any("jetty/", AUTOMATION),
    any("ruby", AUTOMATION),
    any("mechanize", AUTOMATION),
    when("perl", AUTOMATION, Guard::TokenStart),
    when("php/", AUTOMATION, Guard::TokenStart),
    when("php-", AUTOMATION, Guard::TokenStart),
    any("guzzle", AUTOMATION),
    any("winhttp", AUTOMATION),
    any("postman", AUTOMATION),
    any("insomnia", AUTOMATION),
    any("powershell", AUTOMATION),
    any("reqwest", AUTOMATION),
    any("dart:io", AUTOMATION),
    any("nutch", AUTOMATION),
    any("heritrix", AUTOMATION),
    any("larbin", AUTOMATION),
    any("httrack", AUTOMATION),
    any("wpull", AUTOMATION),
    any("webcopier", AUTOMATION),
    any("webzip", AUTOMATION),
    any("indy library", AUTOMATION),
    // Headless and automated browsers, performance auditors.
    any("headless", AUTOMATION),
    any("phantomjs", AUTOMATION),
    any("puppeteer", AUTOMATION),
    any("playwright", AUTOMATION),
    any("selenium", AUTOMATION),
    any("webdriver", AUTOMATION),
    any("slimerjs", AUTOMATION),
    any("cypress", AUTOMATION),
    any("nightmare", AUTOMATION),
    any("htmlunit", AUTOMATION),
    any("jsdom", AUTOMATION),
    any("electron/", AUTOMATION),
    any("lighthouse", AUTOMATION),
    any("pagespeed", AUTOMATION),
    any("gtmetrix", AUTOMATION),
    any("dareboost", AUTOMATION),
    when("ptst/", AUTOMATION, Guard::TokenStart),
    any("prerender", AUTOMATION),
    any("rendertron", AUTOMATION),
    when("splash", AUTOMATION, Guard::TokenStart),
    // Addresses: browsers never advertise a URL, an e-mail or a host name.
    any("://", AUTOMATION),
    any("www.", AUTOMATION),
    when("@", AUTOMATION, Guard::EmailAt),
    when(".com", AUTOMATION, Guard::DomainSuffix),
    when(".net", AUTOMATION, Guard::DomainSuffix),
    when(".org", AUTOMATION, Guard::DomainSuffix),
    when(".io", AUTOMATION, Guard::DomainSuffix),
    when(".ai", AUTOMATION, Guard::DomainSuffix),
    when(".co", AUTOMATION, Guard::DomainSuffix),
    when(".app", AUTOMATION, Guard::DomainSuffix),
    when(".dev", AUTOMATION, Guard::DomainSuffix),
    // Country-code domains are left out: Facebook's in-app browser names the carrier as a
    // host (`FBCR/Telekom.de`), so ".de" or ".fr" would flag real visitors.
    // WebKit browsers close the engine comment right after "like Gecko";
    // tools that copy it often squeeze their own name in before the ")".
    // The Kindle 3 e-reader is the one browser that really sent ", Safari".
    when(
        "like gecko,",
        AUTOMATION,
        Guard::NotFollowedBy(&[" safari"]),
    ),
    any("like gecko;", AUTOMATION),
    // Structure that genuine browsers share.
    when("mozilla/", MOZILLA, Guard::AtStart),
    any("gecko", ENGINE),
    any("webkit", ENGINE),
    any("khtml", ENGINE),
    any("presto", ENGINE),
    any("compatible", COMPATIBLE),
    any("konqueror", COMPATIBLE_BROWSER),
    // Browser families. Several can match one header; `browser_family`
    // applies the precedence.
    any("edg/", EDGE),
    any("edge/", EDGE),
    any("edga/", EDGE),
    any("edgios/", EDGE),
    any("opr/", OPERA),
    any("opios/", OPERA),
    any("opera", OPERA | HUMAN_CLIENT | COMPATIBLE_BROWSER),
    any("opera mini", PHONE),
    any("samsungbrowser", SAMSUNG),
    any("yabrowser", YANDEX),
    any("ucbrowser", UC | HUMAN_CLIENT),
    any("uc browser", UC | HUMAN_CLIENT),
    any("ucweb", UC | HUMAN_CLIENT),
    any("ucmobile", UC),
    any("msie", IE | ENGINE | COMPATIBLE_BROWSER),
    any("trident/", IE | ENGINE | COMPATIBLE_BROWSER),
    any("firefox/", FIREFOX),
    any("fxios", FIREFOX),
    any("chrome/", CHROME),
    any("crios", CHROME),
    any("chromium", CHROME),
    any("safari/", SAFARI),
    any("version/", VERSION),
    // Devices and platforms.
    any("ipad", TABLET | PLATFORM | HUMAN_CLIENT),
    when("tablet", TABLET | PLATFORM, Guard::NotFollowedBy(&[" pc"])),
    any("kindle", TABLET | PLATFORM),
    any("silk/", TABLET),
    any("playbook", TABLET | PLATFORM),
    any("android", ANDROID | PLATFORM | HUMAN_CLIENT),
    any("mobi", MOBI | PLATFORM),
    any("iphone", PHONE | PLATFORM | HUMAN_CLIENT),
    any("ipod", PHONE | PLATFORM | HUMAN_CLIENT),
    any("windows phone", PHONE),
    any("blackberry", PHONE | PLATFORM | HUMAN_CLIENT),
    any("bb10", PHONE | PLATFORM),
    any("symbian", PHONE | PLATFORM | HUMAN_CLIENT),
    any("series60", PHONE | PLATFORM),
    when("s60", PHONE | PLATFORM, Guard::TokenStart),
    any("nokia", PHONE | PLATFORM | HUMAN_CLIENT),
    any("midp", PHONE | PLATFORM | HUMAN_CLIENT),
    any("j2me", PHONE | PLATFORM | HUMAN_CLIENT),
    any("up.browser", PHONE | HUMAN_CLIENT),
    any("kaios", PHONE | PLATFORM),
    any("windows nt", DESKTOP),
    any("windows", PLATFORM),
    any("macintosh", DESKTOP | PLATFORM),
    any("mac os", PLATFORM),
    any("x11", DESKTOP | PLATFORM),
    any("linux", DESKTOP | PLATFORM),
    when("cros ", DESKTOP | PLATFORM, Guard::TokenStart),
    any("bsd", DESKTOP | PLATFORM),
    any("sunos", DESKTOP | PLATFORM),
    any("tizen", PLATFORM),
    any("harmony", PLATFORM),
    any("fuchsia", PLATFORM),
    any("webos", PLATFORM),
    any("web0s", PLATFORM),
    any("smarttv", BIG_SCREEN),
    any("smart-tv", BIG_SCREEN),
    any("crkey", BIG_SCREEN | PLATFORM),
    any("playstation", BIG_SCREEN | PLATFORM),
    any("nintendo", BIG_SCREEN | PLATFORM),
    any("xbox", BIG_SCREEN | PLATFORM),
    // Mobile apps that report themselves without the "Mozilla/" prefix:
    // Facebook's in-app browser and Apple's networking stack.
    any("fban/", HUMAN_CLIENT),
    any("fbav/", HUMAN_CLIENT),
    any("instagram", HUMAN_CLIENT),
    any("dalvik/", HUMAN_CLIENT),
    any("cfnetwork/", HUMAN_CLIENT),
];

/// `NEEDLES` bucketed by their first two bytes, so each input position is
/// compared only with the few needles that can start there. Needles live in
/// one flat vector sorted by bucket; `starts[key]..starts[key + 1]` is the
/// slice for bucket `key`.
#[derive(Debug)]
struct NeedleIndex {
    starts: Vec<usize>,
    needles: Vec<Needle>,
}

/// Six low bits of each of the two leading bytes. Bytes that share their low
/// bits (e.g. '/' and 'o') land in the same bucket, which only costs an extra
/// comparison, never a missed match.
const BUCKETS: usize = 1 << 12;

fn bucket_key(first: u8, second: u8) -> usize {
    (usize::from(first & 0x3f) << 6) | usize::from(second & 0x3f)
}

static INDEX: LazyLock<NeedleIndex> = LazyLock::new(|| {
    let mut entries: Vec<(usize, Needle)> = Vec::new();
    for needle in NEEDLES {
        match *needle.text.as_bytes() {
            [] => {}
            // A one-byte needle matches whatever follows it, including the
            // end of input, which the scan keys as a zero byte.
            [only] => entries.extend((0..64).map(|second| (bucket_key(only, second), *needle))),
            [first, second, ..] => entries.push((bucket_key(first, second), *needle)),
        }
    }
    entries.sort_by_key(|&(key, _)| key);
    let mut starts = vec![0; BUCKETS + 1];
    for &(key, _) in &entries {
        starts[key + 1] += 1;
    }
    for key in 0..BUCKETS {
        starts[key + 1] += starts[key];
    }
    NeedleIndex {
        starts,
        needles: entries.into_iter().map(|(_, needle)| needle).collect(),
    }
});

/// Collects the facts of every needle occurring in `text`, which must already
/// be lower-case. Work per byte is bounded by the largest bucket, so the scan
/// is linear in the input length.
fn scan(text: &[u8]) -> Facts {
    let index = &*INDEX;
    let mut facts = 0;
    for (start, &first) in text.iter().enumerate() {
        let second = text.get(start + 1).copied().unwrap_or(0);
        let key = bucket_key(first, second);
        let rest = &text[start..];
        for needle in &index.needles[index.starts[key]..index.starts[key + 1]] {
            if facts & needle.facts == needle.facts {
                // Everything this needle could add is known already.
                continue;
            }
            if rest.starts_with(needle.text.as_bytes())
                && needle.guard.holds(text, start, start + needle.text.len())
            {
                facts |= needle.facts;
            }
        }
    }
    facts
}

/// Decides bot-or-not from the scanned facts. Beyond explicit bot patterns,
/// it rejects headers that lack the structure every real browser has.
fn looks_automated(facts: Facts) -> bool {
    let has = |fact: Facts| facts & fact != 0;
    if has(AUTOMATION) {
        return true;
    }
    // "(compatible; Name/1.0)" is the conventional bot self-description; only
    // IE, Konqueror and old Opera use that form as browsers.
    if has(COMPATIBLE) && !has(COMPATIBLE_BROWSER) {
        return true;
    }
    if has(MOZILLA) {
        // A "Mozilla/" header without an engine or a platform is a tool
        // borrowing the prefix, e.g. "Mozilla/5.0 (compatible)".
        !has(ENGINE) || !has(PLATFORM)
    } else {
        // Without the prefix only a few known human-facing clients remain.
        !has(HUMAN_CLIENT)
    }
}

/// Applies the family precedence: browsers built on Chromium or WebKit also
/// carry the "Chrome/" and "Safari/" tokens, so the most specific wins.
fn browser_family(facts: Facts) -> Browser {
    let has = |fact: Facts| facts & fact != 0;
    if has(EDGE) {
        Browser::Edge
    } else if has(OPERA) {
        Browser::Opera
    } else if has(SAMSUNG) {
        Browser::SamsungInternet
    } else if has(YANDEX) {
        Browser::YandexBrowser
    } else if has(UC) {
        Browser::UcBrowser
    } else if has(IE) {
        Browser::InternetExplorer
    } else if has(FIREFOX) {
        Browser::Firefox
    } else if has(CHROME) {
        Browser::Chrome
    } else if has(SAFARI) && has(VERSION) {
        // In-app web views also say "Safari/" but omit "Version/".
        Browser::Safari
    } else {
        Browser::Other
    }
}

/// Televisions and consoles are set apart first because they also claim
/// Windows or Linux. Tablet signals come next because iPads and Android
/// tablets also carry "Mobile" or "Linux", and handhelds precede desktops for
/// the same reason.
fn device_type(facts: Facts) -> DeviceType {
    let has = |fact: Facts| facts & fact != 0;
    if has(BIG_SCREEN) {
        DeviceType::Other
    } else if has(TABLET) || (has(ANDROID) && !has(MOBI)) {
        DeviceType::Tablet
    } else if has(MOBI) || has(PHONE) {
        DeviceType::Mobile
    } else if has(DESKTOP) {
        DeviceType::Desktop
    } else {
        DeviceType::Other
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn check(ua: &str, is_bot: bool, browser: Browser, device: DeviceType) {
        let expected = UserAgentClass {
            is_bot,
            browser,
            device,
        };
        assert_eq!(classify(ua), expected, "user agent: {ua:?}");
    }

    #[test]
    fn representative_user_agents() {
        use Browser as B;
        use DeviceType as D;
        let cases: &[(&str, bool, Browser, DeviceType)] = &[
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                false, B::Chrome, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
                false, B::Edge, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
                false, B::Firefox, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
                false, B::Safari, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                false, B::Chrome, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
                false, B::Firefox, D::Desktop,
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                false, B::Chrome, D::Desktop,
            ),
            (
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
                false, B::Firefox, D::Desktop,
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                false, B::Chrome, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0",
                false, B::Opera, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 YaBrowser/24.4.0.0 Safari/537.36",
                false, B::YandexBrowser, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
                false, B::InternetExplorer, D::Desktop,
            ),
            (
                "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0; .NET CLR 2.0.50727)",
                false, B::InternetExplorer, D::Desktop,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                false, B::Safari, D::Mobile,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
                false, B::Chrome, D::Mobile,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                false, B::Safari, D::Tablet,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
                false, B::Chrome, D::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Safari/537.36",
                false, B::Chrome, D::Tablet,
            ),
            (
                "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
                false, B::Firefox, D::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
                false, B::SamsungInternet, D::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 EdgA/124.0.2478.50",
                false, B::Edge, D::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; U; Android 11; en-US; RMX2193 Build/RP1A.200720.011) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/100.0.4896.58 UCBrowser/13.4.0.1306 Mobile Safari/537.36",
                false, B::UcBrowser, D::Mobile,
            ),
            (
                "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25 Version/10.54",
                false, B::Opera, D::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 (Ecosia android@124.0.6367.82)",
                false, B::Chrome, D::Mobile,
            ),
            (
                "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Trident/7.0; SLCC2; .NET CLR 2.0.50727; Media Center PC 6.0; .NET4.0C; Tablet PC 2.0)",
                false, B::InternetExplorer, D::Desktop,
            ),
            (
                "Mozilla/5.0 (Linux; Android 12; CUBOT NOTE 30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
                false, B::Chrome, D::Mobile,
            ),
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                true, B::Other, D::Other,
            ),
            (
                "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                true, B::Other, D::Other,
            ),
            (
                "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                true, B::Other, D::Other,
            ),
            ("curl/8.5.0", true, B::Other, D::Other),
            ("python-requests/2.31.0", true, B::Other, D::Other),
            ("Go-http-client/2.0", true, B::Other, D::Other),
            ("Java/17.0.2", true, B::Other, D::Other),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
                true, B::Other, D::Other,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Chrome-Lighthouse",
                true, B::Other, D::Other,
            ),
            ("", true, B::Other, D::Other),
            ("   \t  ", true, B::Other, D::Other),
            ("Mozilla/5.0", true, B::Other, D::Other),
            ("1234567890 / 42.0", true, B::Other, D::Other),
            (
                "Mozilla/5.0 (Windows NT 10.0)\u{0}AppleWebKit/537.36 Chrome/124.0.0.0",
                true, B::Other, D::Other,
            ),
        ];
        for &(ua, is_bot, browser, device) in cases {
            check(ua, is_bot, browser, device);
        }
        check(&"a".repeat(2000), true, B::Other, D::Other);
    }

    #[test]
    fn absurd_length_is_rejected_without_scanning() {
        let bot_fragments = "bot crawl Mozilla/5.0 (".repeat(100 * 1024 / 23);
        let open_parens = "Mozilla/5.0 (".repeat(100 * 1024 / 13);
        let just_over = format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36{}",
            " x".repeat(MAX_UA_LEN / 2)
        );
        for ua in [&bot_fragments, &open_parens, &just_over] {
            assert!(ua.len() > MAX_UA_LEN);
            assert_eq!(classify(ua), BOT);
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_bots_carry_no_breakdown() {
        // A fixed xorshift sequence keeps the test deterministic while still
        // covering control bytes, invalid UTF-8 and lengths on both sides of
        // the cap.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..5_000 {
            let len = (next() % 600) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    // Mostly printable ASCII so the scanner gets real work.
                    if round % 2 == 0 {
                        (r % 95) as u8 + b' '
                    } else {
                        r as u8
                    }
                })
                .collect();
            let class = classify(&String::from_utf8_lossy(&bytes));
            if class.is_bot {
                assert_eq!(class, BOT);
            }
        }
    }

    /// The sample files, committed in `testdata/` at the workspace root (with their licences).
    fn testdata_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
    }

    pub(super) fn sample_lines(name: &str) -> Vec<String> {
        let path = testdata_dir().join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "cannot read sample file {} ({err}); see testdata/README.md",
                path.display()
            )
        });
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn bot_recall_and_false_positive_rate_on_shared_samples() {
        let bots = sample_lines("bot-user-agents.txt");
        let browsers = sample_lines("browser-user-agents.txt");
        assert!(!bots.is_empty() && !browsers.is_empty());

        let missed: Vec<&String> = bots.iter().filter(|ua| !classify(ua).is_bot).collect();
        let flagged: Vec<&String> = browsers.iter().filter(|ua| classify(ua).is_bot).collect();
        let recall = 1.0 - missed.len() as f64 / bots.len() as f64;
        let false_positive_rate = flagged.len() as f64 / browsers.len() as f64;

        println!(
            "bot recall: {:.2}% ({} of {} missed)",
            recall * 100.0,
            missed.len(),
            bots.len()
        );
        for ua in missed.iter().take(20) {
            println!("  missed bot: {ua}");
        }
        println!(
            "false positives: {:.2}% ({} of {} browsers)",
            false_positive_rate * 100.0,
            flagged.len(),
            browsers.len()
        );
        for ua in flagged.iter().take(20) {
            println!("  flagged browser: {ua}");
        }

        assert!(recall >= 0.995, "bot recall {recall:.4} is below 0.995");
        assert!(
            false_positive_rate <= 0.01,
            "false-positive rate {false_positive_rate:.4} is above 0.01"
        );
    }
}
