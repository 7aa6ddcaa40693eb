//! What an operator sees of a running server: who may read its data directory, and what its
//! logs look like on a pipe (issue 12, item 9).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use pulse_testkit::fixtures::{eventually, pageview, segment_files};
use pulse_testkit::server::Opts;

use crate::start_in;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_and_the_log_are_readable_by_the_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = start_in(Opts::default(), &data_dir);
    server.wait_ready(Duration::from_secs(30)).await;
    server.site("w", "example.com").await;
    assert_eq!(server.collect(&pageview("w", "/")).await.status, 202);
    let written = eventually(Duration::from_secs(10), || async {
        segment_files(&data_dir)
            .iter()
            .any(|p| std::fs::metadata(p).unwrap().len() > 32)
    })
    .await;
    assert!(written, "nothing reached the log");
    assert_eq!(mode(&data_dir), 0o700, "data directory");
    assert_eq!(
        mode(&data_dir.join("segments")),
        0o700,
        "segments directory"
    );
    for segment in segment_files(&data_dir) {
        assert_eq!(mode(&segment), 0o600, "{}", segment.display());
    }
    assert_eq!(
        mode(&data_dir.join("websites.json")),
        0o600,
        "websites.json"
    );
}

#[tokio::test]
async fn logs_on_a_pipe_carry_no_colour_codes_and_rust_log_is_honoured() {
    // Starts a server with `env`, stops it, and returns what it logged (stderr is a pipe here).
    let logged = |env: &[(&str, &str)]| {
        let opts = env
            .iter()
            .fold(Opts::default(), |opts, (key, value)| opts.env(key, value));
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut server = start_in(opts, dir.path());
            server.wait_ready(Duration::from_secs(30)).await;
            let stopped = server.stop();
            assert!(stopped.success(), "{stopped}");
            server.stderr()
        }
    };
    let plain = logged(&[]).await;
    assert!(plain.contains("INFO"), "no INFO lines by default:\n{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "ANSI escape codes on a pipe:\n{plain}"
    );
    // RUST_LOG is read when PULSE_LOG is not set...
    let quiet = logged(&[("RUST_LOG", "warn")]).await;
    assert!(
        !quiet.contains("INFO"),
        "RUST_LOG=warn was ignored:\n{quiet}"
    );
    // ...and PULSE_LOG wins over it.
    let both = logged(&[("RUST_LOG", "warn"), ("PULSE_LOG", "info")]).await;
    assert!(
        both.contains("INFO"),
        "PULSE_LOG=info should win over RUST_LOG=warn:\n{both}"
    );
}
