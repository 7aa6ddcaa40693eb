//! The server's one source of "now" (unix milliseconds, UTC) and its one date format, RFC 3339
//! to the second. The engine never reads a clock; everything it is given comes from here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. A clock before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-03-03T10:45:23Z` for a unix-millisecond instant (sub-second part dropped).
pub fn format_rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Gregorian (year, month, day) of a day count since 1970-01-01: Howard Hinnant's
/// `civil_from_days`, exact for every representable day.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let check = |ms: i64, expected: &str| assert_eq!(format_rfc3339(ms), expected);
        check(0, "1970-01-01T00:00:00Z");
        check(1_772_534_723_999, "2026-03-03T10:45:23Z");
        check(951_782_400_000, "2000-02-29T00:00:00Z");
        check(4_107_542_399_000, "2100-02-28T23:59:59Z");
        check(-1, "1969-12-31T23:59:59Z");
    }
}
