//! What the simulated visitors send: `UserAgents` (files or a built-in sample), the visitor
//! model (visitor `v` has its own IPv4 in 10.0.0.0/8, and a stable bot-or-not and User-Agent
//! drawn from `v`), Zipf-distributed page paths, referrers, custom events, and `RequestBuilder`,
//! which writes a whole collect request into a reused buffer from event bodies formatted once.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::load::rng::{mix64, unit_from, SplitMix64, Zipf};

/// Most distinct visitors: one IPv4 address each, all inside 10.0.0.0/8.
pub const MAX_VISITORS: u64 = 1 << 24;
/// Most events in one collect request (the server's limit).
pub const MAX_BATCH: usize = 50;

/// Desktop and mobile browsers the server classifies as humans.
pub const BUILTIN_BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];

/// Crawlers, monitors and tools the server classifies as bots.
pub const BUILTIN_BOTS: &[&str] = &[
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
];

/// Browser and bot User-Agents to draw visitors from.
#[derive(Debug, Clone)]
pub struct UserAgents {
    pub browsers: Vec<String>,
    pub bots: Vec<String>,
    /// Where they came from, for the report.
    pub source: String,
}

impl UserAgents {
    pub fn builtin() -> Self {
        Self {
            browsers: BUILTIN_BROWSERS.iter().map(|s| (*s).to_owned()).collect(),
            bots: BUILTIN_BOTS.iter().map(|s| (*s).to_owned()).collect(),
            source: "built-in sample".to_owned(),
        }
    }

    /// `browser-user-agents.txt` and `bot-user-agents.txt` from `dir` (one per line; blank
    /// lines, lines starting with `#`, lines with control characters or over 512 bytes are
    /// skipped), or the built-in sample when either file is missing or empty.
    pub fn from_dir_or_builtin(dir: &Path) -> Self {
        let read = |name: &str| -> Option<Vec<String>> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#') && l.len() <= 512)
                .filter(|l| !l.bytes().any(|b| b < 0x20 || b == 0x7f))
                .map(str::to_owned)
                .collect();
            (!lines.is_empty()).then_some(lines)
        };
        match (read("browser-user-agents.txt"), read("bot-user-agents.txt")) {
            (Some(browsers), Some(bots)) => Self {
                source: format!(
                    "{} ({} browsers, {} bots)",
                    dir.display(),
                    browsers.len(),
                    bots.len()
                ),
                browsers,
                bots,
            },
            _ => Self::builtin(),
        }
    }
}

/// Stable per-visitor facts: bot or not, and which User-Agent.
#[derive(Debug, Clone, Copy)]
pub struct VisitorModel {
    seed: u64,
    bot_share: f64,
}

impl VisitorModel {
    pub fn new(seed: u64, bot_share: f64) -> Self {
        Self { seed, bot_share }
    }

    pub fn is_bot(&self, visitor: u64) -> bool {
        unit_from(visitor ^ self.seed.rotate_left(17)) < self.bot_share
    }

    /// Index into the browser or bot list (whichever `is_bot` picks) of length `len`.
    pub fn agent_index(&self, visitor: u64, len: usize) -> usize {
        let h = mix64(visitor.wrapping_add(self.seed.rotate_left(41)));
        ((u128::from(h) * len as u128) >> 64) as usize
    }

    /// Visitor `v`'s address: 10.0.0.0 + v (v below `MAX_VISITORS`).
    pub fn ip(visitor: u64) -> [u8; 4] {
        (0x0A00_0000_u32 | (visitor as u32 & 0x00FF_FFFF)).to_be_bytes()
    }
}

/// Page paths ranked by popularity (rank 0 is the home page).
pub fn page_paths(n: usize) -> Vec<String> {
    const SECTIONS: &[&str] = &["blog", "docs", "pricing", "product", "changelog", "careers"];
    let mut paths = vec!["/".to_owned()];
    let mut i = 1;
    while paths.len() < n {
        let section = SECTIONS[i % SECTIONS.len()];
        paths.push(if i < SECTIONS.len() {
            format!("/{section}")
        } else {
            format!("/{section}/page-{}", i / SECTIONS.len())
        });
        i += 1;
    }
    paths.truncate(n.max(1));
    paths
}

/// Referrers and their weights; `None` is a direct visit. The internal one is the site itself.
const REFERRERS: &[(Option<&str>, f64)] = &[
    (None, 0.40),
    (Some("https://www.google.com/"), 0.25),
    (Some("https://load.example/"), 0.12),
    (Some("https://news.ycombinator.com/"), 0.08),
    (Some("https://t.co/x1y2z3"), 0.06),
    (Some("https://duckduckgo.com/"), 0.05),
    (Some("https://github.com/pulse/pulse"), 0.04),
];
const EVENT_NAMES: &[&str] = &["signup", "download", "play_video", "add_to_cart"];
/// The site's domain in every simulated URL.
pub const SITE_DOMAIN: &str = "load.example";

/// Event bodies formatted once: `pageviews[path * REFERRERS + referrer]`,
/// `customs[path * EVENT_NAMES + name]`.
#[derive(Debug)]
pub struct EventBodies {
    pageviews: Vec<Box<[u8]>>,
    customs: Vec<Box<[u8]>>,
    referrer_cdf: Vec<f64>,
    zipf: Zipf,
    custom_share: f64,
}

impl EventBodies {
    pub fn new(
        website: &str,
        paths: usize,
        zipf_exponent: f64,
        custom_share: f64,
    ) -> Result<Self, String> {
        let website = serde_json::to_string(website).map_err(|e| e.to_string())?;
        let paths = page_paths(paths);
        let zipf = Zipf::new(paths.len(), zipf_exponent)?;
        let mut pageviews = Vec::with_capacity(paths.len() * REFERRERS.len());
        let mut customs = Vec::with_capacity(paths.len() * EVENT_NAMES.len());
        for path in &paths {
            for (referrer, _) in REFERRERS {
                let mut body = format!(
                    r#"{{"website_id":{website},"type":"pageview","url":"https://{SITE_DOMAIN}{path}""#
                );
                if let Some(referrer) = referrer {
                    let _ = write!(body, r#","referrer":"{referrer}""#);
                }
                body.push('}');
                pageviews.push(body.into_bytes().into_boxed_slice());
            }
            for name in EVENT_NAMES {
                let body = format!(
                    r#"{{"website_id":{website},"type":"event","event_name":"{name}","url":"https://{SITE_DOMAIN}{path}"}}"#
                );
                customs.push(body.into_bytes().into_boxed_slice());
            }
        }
        let mut total = 0.0;
        let referrer_cdf = REFERRERS
            .iter()
            .map(|(_, w)| {
                total += w;
                total
            })
            .collect();
        Ok(Self {
            pageviews,
            customs,
            referrer_cdf,
            zipf,
            custom_share,
        })
    }

    /// Picks one event; returns its body and whether it is a custom event.
    fn pick(&self, rng: &mut SplitMix64) -> (&[u8], bool) {
        let path = self.zipf.sample(rng);
        if self.custom_share > 0.0 && rng.next_f64() < self.custom_share {
            let name = rng.below(EVENT_NAMES.len());
            (&self.customs[path * EVENT_NAMES.len() + name], true)
        } else {
            let u = rng.next_f64() * self.referrer_cdf.last().copied().unwrap_or(1.0);
            let referrer = self
                .referrer_cdf
                .partition_point(|&c| c <= u)
                .min(REFERRERS.len() - 1);
            (&self.pageviews[path * REFERRERS.len() + referrer], false)
        }
    }
}

/// What one built request carries, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFacts {
    pub events: u32,
    pub custom_events: u32,
    pub is_bot: bool,
}

/// Writes collect requests into a buffer it keeps (one per connection): the fixed head is
/// formatted once; per request only the User-Agent, address, length and event bodies are copied.
#[derive(Debug)]
pub struct RequestBuilder {
    head: Vec<u8>,
    body: Vec<u8>,
    out: Vec<u8>,
}

impl RequestBuilder {
    pub fn new(host: &str) -> Self {
        let head = format!(
            "POST /api/collect HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        );
        Self {
            head: head.into_bytes(),
            body: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(16 * 1024),
        }
    }

    /// Builds a request from `visitor` with `events` events (1 to `MAX_BATCH`); `as_array`
    /// sends even a single event as a one-element batch.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &mut self,
        visitor: u64,
        events: usize,
        as_array: bool,
        model: &VisitorModel,
        agents: &UserAgents,
        bodies: &EventBodies,
        rng: &mut SplitMix64,
    ) -> (&[u8], RequestFacts) {
        let is_bot = model.is_bot(visitor) && !agents.bots.is_empty();
        let list = if is_bot {
            &agents.bots
        } else {
            &agents.browsers
        };
        let agent = list
            .get(model.agent_index(visitor, list.len()))
            .map_or("", String::as_str);
        self.body.clear();
        let mut custom_events = 0;
        if as_array {
            self.body.push(b'[');
        }
        for i in 0..events {
            if i > 0 {
                self.body.push(b',');
            }
            let (event, custom) = bodies.pick(rng);
            self.body.extend_from_slice(event);
            custom_events += u32::from(custom);
        }
        if as_array {
            self.body.push(b']');
        }
        let ip = VisitorModel::ip(visitor);
        self.out.clear();
        self.out.extend_from_slice(&self.head);
        self.out.extend_from_slice(b"user-agent: ");
        self.out.extend_from_slice(agent.as_bytes());
        // Writes into a Vec cannot fail.
        let _ = write!(
            self.out,
            "\r\nx-forwarded-for: {}.{}.{}.{}\r\ncontent-length: {}\r\n\r\n",
            ip[0],
            ip[1],
            ip[2],
            ip[3],
            self.body.len()
        );
        self.out.extend_from_slice(&self.body);
        let facts = RequestFacts {
            events: events as u32,
            custom_events,
            is_bot,
        };
        (&self.out, facts)
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed check.
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn requests_are_valid_http_with_json_bodies() {
        let agents = UserAgents::builtin();
        let model = VisitorModel::new(1, 0.5);
        let bodies = EventBodies::new("site-1", 50, 1.0, 0.3).unwrap();
        let mut rng = SplitMix64::new(5);
        let mut builder = RequestBuilder::new("127.0.0.1:3000");
        for (visitor, events, as_array) in [(0, 1, false), (77, 50, true), (3, 1, true)] {
            let (raw, facts) = builder.build(
                visitor, events, as_array, &model, &agents, &bodies, &mut rng,
            );
            let raw = raw.to_vec();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            let head = match request.parse(&raw).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!(request.method, Some("POST"));
            let xff = request
                .headers
                .iter()
                .find(|h| h.name == "x-forwarded-for")
                .unwrap();
            let ip = VisitorModel::ip(visitor);
            assert_eq!(
                xff.value,
                format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]).as_bytes()
            );
            let json: serde_json::Value = serde_json::from_slice(&raw[head..]).unwrap();
            let list = match json {
                serde_json::Value::Array(list) => {
                    assert!(as_array);
                    list
                }
                one => vec![one],
            };
            assert_eq!(list.len(), events);
            assert_eq!(facts.events as usize, events);
            let customs = list.iter().filter(|e| e["type"] == "event").count();
            assert_eq!(facts.custom_events as usize, customs);
            assert_eq!(facts.is_bot, model.is_bot(visitor));
        }
    }

    #[test]
    fn bot_share_and_addresses() {
        let model = VisitorModel::new(9, 0.1);
        let bots = (0..100_000).filter(|&v| model.is_bot(v)).count();
        assert!((9_000..11_000).contains(&bots), "{bots}");
        assert_eq!(VisitorModel::ip(0), [10, 0, 0, 0]);
        assert_eq!(VisitorModel::ip(MAX_VISITORS - 1), [10, 255, 255, 255]);
        assert_eq!(page_paths(3), vec!["/", "/docs", "/pricing"]);
    }
}
