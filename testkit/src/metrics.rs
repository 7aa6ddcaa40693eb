//! The one scrape of `/metrics`: a parser of the text exposition formats — classic Prometheus
//! text (`text/plain; version=0.0.4`) and OpenMetrics text (`# TYPE`/`# UNIT`/`# HELP`
//! comments, `_total` counter samples, optional timestamps and exemplars, `# EOF`) — into a
//! `Scrape`: every sample by its exposed name and sorted labels. It checks what a test relies
//! on (each line is a comment or a well-formed sample with a numeric value, no series twice,
//! nothing after `# EOF`) and ignores metadata: a test asks for `pulse_x_total{route="…"}` by
//! the name it sees on the wire. Fetching the text is the server harness's job.
//!
//! Hand-written (~150 lines) rather than a crate: `prometheus-parse` reads only the classic
//! format and pulls in regex and chrono, `openmetrics-parser` is a pest grammar with one strict
//! entry point per format and an API its author says keeps changing.

use std::collections::BTreeMap;

/// Every sample of a scrape by `name{sorted labels}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(BTreeMap<String, f64>);

/// `name{k="v",…}` with the labels sorted: the key under which `Scrape` stores a sample.
pub fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<(&str, &str)> = labels.to_vec();
    labels.sort_unstable();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_metric_name(name) && !name.contains(':')
}

/// A sample's labels, `(name, value)` in the order written.
type Labels = Vec<(String, String)>;

/// Parses the inside of `{…}` starting right after the `{`; returns the labels and the rest of
/// the line after the closing `}`. Values may hold `\\`, `\"` and `\n` escapes, `,` and `}`.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("label without a value in {text:?}"))?;
        let key = key.trim();
        if !is_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key} has an unquoted value"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => return Err(format!("unknown escape \\{c} in {text:?}")),
                    None => return Err(format!("dangling escape in {text:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {text:?}")),
            }
        };
        labels.push((key.to_owned(), value));
        rest = after[end + 1..].trim_start();
        if let Some(more) = rest.strip_prefix(',') {
            rest = more.trim_start();
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after label {key} in {text:?}"));
        }
    }
}

/// One sample line: its series key and value.
fn parse_sample(line: &str) -> Result<(String, f64), String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| "no value after the name".to_owned())?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (Vec::new(), &line[name_end..]),
    };
    // OpenMetrics: `value [timestamp] [# {exemplar labels} value [timestamp]]`.
    let rest = rest
        .split_once(" # ")
        .map_or(rest, |(sample, _exemplar)| sample);
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| "no value".to_owned())?
        .parse::<f64>()
        .map_err(|e| format!("value is not a number ({e})"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .map_err(|e| format!("timestamp {ts:?} is not a number ({e})"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Ok((series_key(name, &labels), value))
}

impl Scrape {
    /// Parses classic Prometheus or OpenMetrics text. On failure, returns one message per bad
    /// line (with the line), every duplicate series and anything after `# EOF`.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let mut samples = BTreeMap::new();
        let mut errors = Vec::new();
        let mut eof = false;
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if eof {
                errors.push(format!("{line:?} after # EOF"));
                continue;
            }
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Ok((key, value)) => {
                    if samples.insert(key.clone(), value).is_some() {
                        errors.push(format!("{key} appears twice"));
                    }
                }
                Err(why) => errors.push(format!("{line:?}: {why}")),
            }
        }
        if errors.is_empty() {
            Ok(Self(samples))
        } else {
            Err(errors)
        }
    }

    /// The sample, if the scrape has it.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(&series_key(name, labels)).copied()
    }

    /// The sample; panics (a failed check) with every series the scrape has when it is missing.
    #[track_caller]
    #[allow(clippy::panic)]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "/metrics has no {}; it has:\n{}",
                series_key(name, labels),
                self.0.keys().cloned().collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// The sample, 0 when absent (a labelled counter is rendered once it first moves).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Sum of every sample of `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        let prefix = format!("{name}{{");
        self.0
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series key, sorted.
    pub fn series(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_classic_prometheus_text() {
        let text = "# HELP pulse_up Whether it runs.\n# TYPE pulse_up gauge\npulse_up 1\n\
                    pulse_requests_total{route=\"/api/collect\",status=\"202\"} 7\n\
                    pulse_requests_total{status=\"429\",route=\"/api/collect\",} 2\n\
                    pulse_latency_seconds_bucket{le=\"+Inf\"} 3\nodd_value NaN\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.value("pulse_up", &[]), 1.0);
        assert_eq!(
            scrape.get(
                "pulse_requests_total",
                &[("status", "202"), ("route", "/api/collect")]
            ),
            Some(7.0)
        );
        assert_eq!(scrape.sum("pulse_requests_total"), 9.0);
        assert_eq!(
            scrape.value("pulse_latency_seconds_bucket", &[("le", "+Inf")]),
            3.0
        );
        assert!(scrape.value("odd_value", &[]).is_nan());
        assert_eq!(scrape.counter("pulse_missing_total", &[]), 0.0);
    }

    #[test]
    fn parses_openmetrics_text_with_timestamps_exemplars_and_eof() {
        let text = "# HELP pulse_events Events.\n# TYPE pulse_events counter\n# UNIT pulse_events events\n\
                    pulse_events_total{site=\"w\"} 12 1700000000.5\n\
                    pulse_events_created{site=\"w\"} 1.7e9\n\
                    pulse_rt_seconds_bucket{le=\"0.1\"} 4 # {trace_id=\"a b\"} 0.05 1700000000\n\
                    pulse_queue_depth -Inf\n# EOF\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.value("pulse_events_total", &[("site", "w")]), 12.0);
        assert_eq!(
            scrape.value("pulse_events_created", &[("site", "w")]),
            1.7e9
        );
        assert_eq!(
            scrape.value("pulse_rt_seconds_bucket", &[("le", "0.1")]),
            4.0
        );
        assert_eq!(scrape.value("pulse_queue_depth", &[]), f64::NEG_INFINITY);
        assert_eq!(scrape.get("pulse_events", &[("site", "w")]), None);
    }

    #[test]
    fn label_values_keep_escapes_commas_and_braces() {
        let text = "m{path=\"/a,b}\",q=\"say \\\"hi\\\"\\\\\\n\"} 1\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(
            scrape.series(),
            [series_key(
                "m",
                &[("path", "/a,b}"), ("q", "say \"hi\"\\\n")]
            )]
        );
    }

    #[test]
    fn refuses_bad_lines_duplicates_and_text_after_eof() {
        for (text, expected) in [
            ("m{a=\"1\"} x\n", "not a number"),
            ("m{a=1} 1\n", "unquoted"),
            ("m{a=\"1\" 1\n", "expected , or }"),
            ("m{a=\"1} 1\n", "unterminated"),
            ("1m 1\n", "bad metric name"),
            ("m{a:b=\"1\"} 1\n", "bad label name"),
            ("m\n", "no value"),
            ("m 1 2 3\n", "unexpected"),
            ("m 1\nm 2\n", "appears twice"),
            (
                "m{b=\"1\",a=\"2\"} 1\nm{a=\"2\",b=\"1\"} 2\n",
                "appears twice",
            ),
            ("m 1\n# EOF\nn 2\n", "after # EOF"),
        ] {
            let errors = Scrape::parse(text).expect_err(text);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{text:?}: expected an error containing {expected:?}, got {errors:?}"
            );
        }
    }
}
