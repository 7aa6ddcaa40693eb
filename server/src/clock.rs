//! The server's one source of "now" (unix milliseconds, UTC) and its one date format, RFC 3339
//! to the second. The engine never reads a clock; everything it is given comes from here.
//!
//! "Now" never runs backwards (ARCHITECTURE.md, Time): `EventClock` follows the wall clock while
//! it moves forward, and the monotonic clock while the wall clock stands still or steps back (an
//! NTP correction, a VM snapshot restored, a bad RTC at boot). A step forward is taken at once and
//! kept. So a wall clock corrected backwards can never make new events older than ones already
//! counted, which would hide them from the window; instead stamps run ahead of the wall clock by
//! the step, at real speed, until the next start, where replay re-anchors (`event_log`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where `EventClock` reads time: a wall clock and a monotonic one, both in milliseconds.
pub trait TimeSource: Send + Sync {
    /// Milliseconds since the Unix epoch as the system says (may jump either way).
    fn wall_ms(&self) -> i64;
    /// Milliseconds since some fixed point; never decreases.
    fn monotonic_ms(&self) -> i64;
}

/// The operating system's clocks.
#[derive(Debug)]
pub struct SystemClocks {
    started: Instant,
}

impl SystemClocks {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }
}

impl Default for SystemClocks {
    fn default() -> Self {
        Self::new()
    }
}

impl TimeSource for SystemClocks {
    fn wall_ms(&self) -> i64 {
        // A clock before 1970 reads as 0.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A wall-clock time that never decreases: `steady + offset`, where `steady` is the wall time at
/// creation plus the monotonic time elapsed since, and `offset` is the largest amount the wall
/// clock has ever been ahead of `steady` (so forward steps are kept and backward ones ignored).
/// Lock-free: one `fetch_max` per reading.
#[derive(Debug)]
pub struct EventClock<S> {
    source: S,
    base_wall_ms: i64,
    base_monotonic_ms: i64,
    offset_ms: AtomicI64,
}

impl<S: TimeSource> EventClock<S> {
    pub fn new(source: S) -> Self {
        let base_wall_ms = source.wall_ms();
        let base_monotonic_ms = source.monotonic_ms();
        Self {
            source,
            base_wall_ms,
            base_monotonic_ms,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Now, in unix milliseconds: never less than any earlier reading.
    pub fn now_ms(&self) -> i64 {
        let elapsed_ms = self
            .source
            .monotonic_ms()
            .saturating_sub(self.base_monotonic_ms);
        let steady_ms = self.base_wall_ms.saturating_add(elapsed_ms);
        let ahead_ms = self.source.wall_ms().saturating_sub(steady_ms);
        // A read-modify-write only when the wall clock got further ahead: every handler reads
        // this clock, and a write on each read would bounce the line between cores.
        let known_ms = self.offset_ms.load(Ordering::Relaxed);
        let offset_ms = if ahead_ms > known_ms {
            self.offset_ms
                .fetch_max(ahead_ms, Ordering::Relaxed)
                .max(ahead_ms)
        } else {
            known_ms
        };
        steady_ms.saturating_add(offset_ms)
    }

    /// How far "now" runs ahead of the wall clock because the wall clock stepped back.
    pub fn ahead_of_wall_ms(&self) -> i64 {
        self.now_ms().saturating_sub(self.source.wall_ms()).max(0)
    }
}

static CLOCK: LazyLock<EventClock<SystemClocks>> =
    LazyLock::new(|| EventClock::new(SystemClocks::new()));

/// Milliseconds since the Unix epoch, from the process's `EventClock`: never decreases. (In a
/// test build started with `--test-clock`, the instant the test set: `test_clock.rs`.)
pub fn now_ms() -> i64 {
    #[cfg(feature = "test-clock")]
    if let Some(now_ms) = crate::test_clock::now_ms() {
        return now_ms;
    }
    CLOCK.now_ms()
}

/// How far the server's "now" runs ahead of the system clock (after the system clock stepped
/// back), for `/metrics`.
pub fn ahead_of_wall_ms() -> i64 {
    #[cfg(feature = "test-clock")]
    if crate::test_clock::now_ms().is_some() {
        return 0;
    }
    CLOCK.ahead_of_wall_ms()
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

    /// Clocks a test sets by hand.
    #[derive(Debug, Default)]
    struct ManualClocks {
        wall_ms: AtomicI64,
        monotonic_ms: AtomicI64,
    }

    impl ManualClocks {
        fn pass(&self, ms: i64) {
            self.wall_ms.fetch_add(ms, Ordering::Relaxed);
            self.monotonic_ms.fetch_add(ms, Ordering::Relaxed);
        }

        fn step_wall(&self, ms: i64) {
            self.wall_ms.fetch_add(ms, Ordering::Relaxed);
        }
    }

    impl TimeSource for &ManualClocks {
        fn wall_ms(&self) -> i64 {
            self.wall_ms.load(Ordering::Relaxed)
        }

        fn monotonic_ms(&self) -> i64 {
            self.monotonic_ms.load(Ordering::Relaxed)
        }
    }

    const T0: i64 = 1_772_534_723_000;
    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn a_wall_clock_stepped_back_does_not_move_now_back_or_stop_it() {
        let clocks = ManualClocks::default();
        clocks.wall_ms.store(T0, Ordering::Relaxed);
        let clock = EventClock::new(&clocks);
        assert_eq!(clock.now_ms(), T0);
        // The clock ran 3 hours ahead, then NTP corrected it.
        clocks.step_wall(3 * HOUR_MS);
        clocks.pass(1_000);
        let ahead = clock.now_ms();
        assert_eq!(ahead, T0 + 3 * HOUR_MS + 1_000);
        clocks.step_wall(-3 * HOUR_MS);
        assert_eq!(clock.now_ms(), ahead, "now went backwards");
        clocks.pass(60_000);
        assert_eq!(clock.now_ms(), ahead + 60_000, "now must keep real speed");
        assert_eq!(clock.ahead_of_wall_ms(), 3 * HOUR_MS);
    }

    #[test]
    fn a_wall_clock_stepped_forward_is_followed_at_once() {
        let clocks = ManualClocks::default();
        clocks.wall_ms.store(T0, Ordering::Relaxed);
        let clock = EventClock::new(&clocks);
        clocks.step_wall(HOUR_MS);
        assert_eq!(clock.now_ms(), T0 + HOUR_MS);
        clocks.pass(5);
        assert_eq!(clock.now_ms(), T0 + HOUR_MS + 5);
        assert_eq!(clock.ahead_of_wall_ms(), 0);
    }

    proptest::proptest! {
        #[test]
        fn now_never_decreases_and_keeps_real_speed(
            steps in proptest::collection::vec((0i64..10_000, -7_200_000i64..7_200_000), 1..50)
        ) {
            let clocks = ManualClocks::default();
            clocks.wall_ms.store(T0, Ordering::Relaxed);
            let clock = EventClock::new(&clocks);
            let mut last = clock.now_ms();
            for (elapsed, step) in steps {
                clocks.pass(elapsed);
                clocks.step_wall(step);
                let now = clock.now_ms();
                proptest::prop_assert!(now >= last + elapsed, "{now} after {last} and {elapsed} ms");
                proptest::prop_assert!(now >= clocks.wall_ms.load(Ordering::Relaxed));
                last = now;
            }
        }
    }

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
