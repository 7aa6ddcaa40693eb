//! The system clock stepping under a running server, end to end: the real binary under
//! libfaketime (Debian's `faketime` package), whose offset is read from a file on every call so a
//! test can move the clock of a running process. Without the library the test says so and passes
//! without checking anything; `.ci/run` installs it.
//!
//! The rule (ARCHITECTURE.md, Time): "now" never runs backwards, and replay counts events stamped
//! in the future as of now — a clock corrected backwards never hides live traffic.

use std::path::Path;
use std::time::Duration;

use pulse_testkit::fixtures::CHROME_DESKTOP;
use pulse_testkit::server::Opts;
use serde_json::json;

use crate::start_in;

pub(crate) const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const READY_DEADLINE: Duration = Duration::from_secs(30);
const SITE: &str = "clock";

/// `opts` running under libfaketime with the offset read from `offset_file` on every call. The
/// monotonic clock stays real, as it does on a machine whose wall clock NTP steps.
pub(crate) fn under_faketime(opts: Opts, offset_file: &Path) -> Opts {
    opts.env("LD_PRELOAD", LIBFAKETIME)
        .env(
            "FAKETIME_TIMESTAMP_FILE",
            &offset_file.display().to_string(),
        )
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}

#[tokio::test]
async fn a_clock_that_ran_ahead_and_was_corrected_does_not_freeze_realtime() {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!("SKIPPED: {LIBFAKETIME} is missing (apt-get install faketime); not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("faketime");
    let data_dir = dir.path().join("data");
    std::fs::write(&offset_file, "+3h\n").unwrap();
    let mut proc = start_in(under_faketime(Opts::default(), &offset_file), &data_dir);
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;
    let pageview = |path: &str| json!({"website_id": SITE, "type": "pageview", "url": path});
    let resp = proc
        .collect_as(CHROME_DESKTOP, &pageview("/ahead"))
        .await
        .unwrap();
    assert_eq!(resp.status, 202, "{resp:?}");

    // NTP steps the clock back to the right time: the next events must still count.
    std::fs::write(&offset_file, "+0\n").unwrap();
    for n in 0..4 {
        let resp = proc
            .collect_as(CHROME_DESKTOP, &pageview(&format!("/after/{n}")))
            .await
            .unwrap();
        assert_eq!(resp.status, 202, "{resp:?}");
    }
    let data = proc.realtime(SITE).await;
    assert_eq!(
        (
            data["active_visitors"].as_u64(),
            data["pagination"]["total_in_window"].as_u64()
        ),
        (Some(1), Some(5)),
        "one visitor and five events after the clock stepped back 3 h: {data}"
    );
    let stopped = proc.stop();
    assert!(stopped.success(), "{stopped}; stderr:\n{}", proc.stderr());

    // A restart with the right clock: the events stamped ahead are counted as of now, loudly.
    let proc = start_in(Opts::default(), &data_dir);
    let replay = proc.wait_ready(READY_DEADLINE).await;
    assert_eq!(replay["future_events"].as_u64(), Some(5), "{replay}");
    let data = proc.realtime(SITE).await;
    assert_eq!(
        (
            data["active_visitors"].as_u64(),
            data["pagination"]["total_in_window"].as_u64()
        ),
        (Some(1), Some(5)),
        "after a restart with the right clock: {data}"
    );
    assert!(
        proc.stderr().contains("stamped ahead of the system clock"),
        "replay must say so; stderr:\n{}",
        proc.stderr()
    );
}
