//! The integration tests of the `pulse` binary, as one test binary so the test kit is compiled
//! and linked once: each test starts the real binary on `127.0.0.1:0` through
//! `pulse_testkit::server` and checks it from outside. This file only knows where Cargo put the
//! binary; the harness, the client and the fixtures are the test kit's.
//!
//! - `http`: the HTTP API, one behaviour per test (issue 3).
//! - `admin`: the admin routes against a hostile page — DNS rebinding, CSRF, CORS — and what
//!   `/readyz` tells whom (issue 12).
//! - `malformed`: requests refused before the router still get JSON errors (issue 12).
//! - `collect_input`: collect's content codings, byte-order mark and `event_data` measure.
//! - `assets`: the embedded tracker and dashboard files (issue 5).
//! - `connections`: idle, slow-header and stalled-body floods from a second address; SIGTERM.
//! - `crash`: SIGKILL, SIGTERM and damaged logs against the event log (issue 4).
//! - `overload`: memory limit, `/metrics`, rate limit and a full write queue (issue 6).
//! - `checkpoint`: restarts from checkpoints — same answers, damaged ones ignored, SIGKILL
//!   mid-write (issue 15).
//! - `catalog`: website writes during ingest; file, list and engine agree across a restart.
//! - `clock`: the system clock stepped back under a running server (libfaketime).
//! - `midnight`: on the test clock, the carry-over across midnight, restarts and salt deletion.
//! - `disk`: a disk that fills up, free space below the reserve, segments deleted underneath.
//! - `operator`: data directory permissions, logs on a pipe, `RUST_LOG`.
//! - `tidy`: house rules over the source tree (no server started).
//! - `breakdown`: the realtime breakdown's shape, ranking, limits, auth and bots (issue 14).
//! - `compat`: Sparklytics' `/e` and `visitor_id`, Plausible's and Umami's APIs, ingest CORS.
//! - `stream`: the live stream — first message, updates, pacing, heartbeats, bounds, shutdown.
//! - `cluster`: cluster mode on a 3-node NATS JetStream cluster (issue 16).
//!
//! The browser test (`server/tests/browser/`, Node) is separate.

// Test code: a failed unwrap or panic is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use pulse_testkit::server::{Opts, Server};

mod admin;
mod assets;
mod breakdown;
mod catalog;
#[cfg(unix)]
mod checkpoint;
#[cfg(target_os = "linux")]
mod clock;
#[cfg(target_os = "linux")]
mod cluster;
mod collect_input;
mod compat;
#[cfg(target_os = "linux")]
mod connections;
#[cfg(unix)]
mod crash;
#[cfg(target_os = "linux")]
mod disk;
mod http;
mod malformed;
mod midnight;
#[cfg(unix)]
mod operator;
#[cfg(target_os = "linux")]
mod overload;
mod stream;
mod tidy;

/// The `pulse` binary Cargo built for these tests.
fn pulse_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pulse"))
}

/// The page path or event name a log entry holds (`(a touch)` for a touch): how the tests that
/// read the log back name what they find.
fn target_of(entry: &pulse_snapshot::LogEntry) -> &str {
    entry.event().map_or("(a touch)", |event| &event.target)
}

/// Starts `pulse` with `opts` on a fresh temporary data directory.
fn start(opts: Opts) -> Server {
    Server::start(pulse_bin(), opts)
}

/// Starts `pulse` with `opts` on `data_dir`, which the caller owns (so it outlives a SIGKILL).
fn start_in(opts: Opts, data_dir: &Path) -> Server {
    Server::start_in(pulse_bin(), opts, data_dir)
}
