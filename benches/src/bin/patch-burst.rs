//! `patch-burst`: collect latency while website PATCHes arrive, against idle, in one run.
//!
//! A probe thread sends `POST /api/collect` on its own keep-alive connection every
//! `--probe-interval-ms` for `2 × --phase-secs`, in alternating slices of `--slice-secs`: idle
//! slices with nothing else going on, and burst slices while a second thread PATCHes the same
//! website `--patch-per-sec` times a second. Alternating makes both phases share the machine's
//! background noise. It prints one JSON line with each phase's collect percentiles, the
//! burst/idle p99 ratio and the PATCH count. It measures; it does not judge (the figure goes in BENCHMARKS.md).
//! The load harness proper (`pulse-load`) and the HTTP client (`load::http`) live elsewhere.
//!
//! Start the server with `--rate-limit-per-ip 0` (every probe comes from 127.0.0.1) and a data
//! directory on a real disk (the PATCH cost is the websites file's fsyncs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use pulse_benches::load::histogram::LatencyHistogram;
use pulse_testkit::http::{format_request, request_once, BlockingConn};
use serde_json::{json, Value};

/// Timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A desktop Chrome, so collect classifies a human as the tracker's traffic would be.
const USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

#[derive(Debug, Parser)]
#[command(name = "patch-burst", version, about)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Bearer token for the website API (the server's --admin-token).
    #[arg(long)]
    token: Option<String>,
    /// Website to collect for and PATCH (created when missing).
    #[arg(long, default_value = "patch-burst")]
    website: String,
    /// Seconds of each phase (idle, then burst).
    #[arg(long, default_value_t = 10.0)]
    phase_secs: f64,
    /// Website PATCHes per second during the burst phase.
    #[arg(long, default_value_t = 50.0)]
    patch_per_sec: f64,
    /// Length of one idle or burst slice.
    #[arg(long, default_value_t = 1.0)]
    slice_secs: f64,
    /// Pause between two collect probes (0: back to back).
    #[arg(long, default_value_t = 1)]
    probe_interval_ms: u64,
    /// Also write the JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the probe saw in one phase.
#[derive(Debug, Default)]
struct Phase {
    latency: LatencyHistogram,
    non_202: u64,
}

impl Phase {
    fn to_json(&self) -> Value {
        let us = |q: f64| {
            self.latency
                .percentile_ns(q)
                .map(|ns| (ns as f64 / 1000.0 * 10.0).round() / 10.0)
        };
        json!({
            "n": self.latency.count(),
            "non_202": self.non_202,
            "p50_us": us(0.5),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "max_us": self.latency.max_ns().map(|ns| ns as f64 / 1000.0),
        })
    }
}

/// Sends collect probes on one connection for `2 × phase`, alternating idle and burst slices
/// (`patching` is set during burst slices); returns (idle, burst).
fn probe(
    args: &Args,
    phase: Duration,
    slice: Duration,
    patching: &AtomicBool,
) -> anyhow::Result<(Phase, Phase)> {
    let body = json!({"website_id": args.website, "type": "pageview", "url": "/probe"}).to_string();
    let request = format!(
        "POST /api/collect HTTP/1.1\r\nhost: {}\r\nuser-agent: {USER_AGENT}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        args.addr,
        body.len()
    )
    .into_bytes();
    let mut conn = BlockingConn::connect(args.addr, REQUEST_TIMEOUT)?;
    let interval = Duration::from_millis(args.probe_interval_ms);
    let (mut idle, mut burst) = (Phase::default(), Phase::default());
    let start = Instant::now();
    let end = start + phase * 2;
    while Instant::now() < end {
        let slice_index = start.elapsed().as_secs_f64() / slice.as_secs_f64();
        let in_burst = slice_index as u64 % 2 == 1;
        patching.store(in_burst, Ordering::Relaxed);
        let sent = Instant::now();
        let response = conn.send(&request, false)?;
        let latency = sent.elapsed();
        let phase = if in_burst { &mut burst } else { &mut idle };
        if response.status == 202 {
            phase.latency.record(latency);
        } else {
            phase.non_202 += 1;
        }
        if response.close {
            conn = BlockingConn::connect(args.addr, REQUEST_TIMEOUT)?;
        }
        std::thread::sleep(interval);
    }
    patching.store(false, Ordering::Relaxed);
    Ok((idle, burst))
}

/// PATCHes the website at `per_sec` while `patching` is set, until `stop`; counts the 200s in
/// `ok` and the rest in `failed`.
fn patch_loop(
    args: &Args,
    per_sec: f64,
    patching: &AtomicBool,
    stop: &AtomicBool,
    ok: &AtomicU64,
    failed: &AtomicU64,
) -> anyhow::Result<()> {
    let mut conn = BlockingConn::connect(args.addr, REQUEST_TIMEOUT)?;
    let every = Duration::from_secs_f64(1.0 / per_sec);
    let target = format!("/api/websites/{}", args.website);
    let host = args.addr.to_string();
    let mut due = Instant::now();
    let mut i = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        due = now + every;
        if !patching.load(Ordering::Relaxed) {
            continue;
        }
        i += 1;
        let body = json!({"name": format!("Burst {i}")}).to_string();
        let request = format_request("PATCH", &target, &host, args.token.as_deref(), Some(&body));
        let response = conn.send(&request, false)?;
        if response.status == 200 {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        if response.close {
            conn = BlockingConn::connect(args.addr, REQUEST_TIMEOUT)?;
        }
    }
    Ok(())
}

fn create_website(args: &Args) -> anyhow::Result<()> {
    let body = json!({"id": args.website, "name": "Patch burst", "domain": "example.com"});
    let request = format_request(
        "POST",
        "/api/websites",
        &args.addr.to_string(),
        args.token.as_deref(),
        Some(&body.to_string()),
    );
    let response = request_once(args.addr, &request, REQUEST_TIMEOUT)?;
    match response.status {
        201 | 409 => Ok(()),
        status => bail!("creating website {} answered {status}", args.website),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.patch_per_sec > 0.0 && args.patch_per_sec.is_finite()) {
        bail!("--patch-per-sec must be a positive number");
    }
    let phase = Duration::try_from_secs_f64(args.phase_secs).context("--phase-secs")?;
    let slice = Duration::try_from_secs_f64(args.slice_secs).context("--slice-secs")?;
    if slice.is_zero() {
        bail!("--slice-secs must be positive");
    }
    create_website(&args)?;

    let (patching, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let (probed, patcher) = std::thread::scope(|scope| {
        let patcher =
            scope.spawn(|| patch_loop(&args, args.patch_per_sec, &patching, &stop, &ok, &failed));
        let probed = probe(&args, phase, slice, &patching);
        stop.store(true, Ordering::Relaxed);
        (probed, patcher.join())
    });
    let (idle, burst) = probed?;
    match patcher {
        Ok(result) => result?,
        Err(_) => bail!("the PATCH thread panicked"),
    }
    let ratio = match (
        idle.latency.percentile_ns(0.99),
        burst.latency.percentile_ns(0.99),
    ) {
        (Some(i), Some(b)) if i > 0 => Some((b as f64 / i as f64 * 100.0).round() / 100.0),
        _ => None,
    };
    let out = json!({
        "idle": idle.to_json(),
        "burst": burst.to_json(),
        "p99_ratio_burst_over_idle": ratio,
        "patches_ok": ok.load(Ordering::Relaxed),
        "patches_failed": failed.load(Ordering::Relaxed),
        "patch_per_sec": args.patch_per_sec,
        "phase_secs": args.phase_secs,
        "slice_secs": args.slice_secs,
    });
    println!("{out}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{out}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
