//! `pulse-load`: the load generator and meter for a running Pulse server. Parses flags into a
//! `LoadConfig`, runs `pulse_benches::load::run` on a 1-thread (or `--threads N`) tokio runtime
//! until the duration, the event budget or Ctrl-C, prints the summary line (and progress lines
//! on stderr), and writes the report as JSON with `--json`. `--wait-ready` instead polls
//! `/readyz` until it answers 200 (run.sh times restarts with it).
//!
//! Demo: `pulse --trusted-proxies 127.0.0.1/32 & pulse-load --create-website --rate 20 --duration 0`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use pulse_benches::load::{self, LoadConfig, Mode, Report, UserAgents};
use pulse_testkit::http::{format_request, request_once};

/// Simulated visitors for a Pulse server (started with --trusted-proxies 127.0.0.1/32, so the
/// X-Forwarded-For addresses count as distinct visitors).
#[derive(Debug, Parser)]
#[command(name = "pulse-load", version, about)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Website id to send events to.
    #[arg(long, default_value = "load-test")]
    website: String,
    /// Create the website first (POST /api/websites; an existing one is fine).
    #[arg(long)]
    create_website: bool,
    /// Bearer token for the API calls (the server's --admin-token).
    #[arg(long)]
    token: Option<String>,
    /// Steady events per second (0: send nothing, only poll realtime).
    #[arg(long, conflicts_with = "max", default_value_t = 100.0)]
    rate: f64,
    /// As fast as the connections allow.
    #[arg(long)]
    max: bool,
    /// Seconds to run; 0 runs until Ctrl-C (or --events).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after sending this many events.
    #[arg(long)]
    events: Option<u64>,
    /// Keep-alive connections sending events.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Events per request: 1 sends single events, 2 to 50 batches.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Share of visitors that are bots (bot User-Agents).
    #[arg(long, default_value_t = 0.1)]
    bot_share: f64,
    /// Share of events that are custom events instead of pageviews.
    #[arg(long, default_value_t = 0.1)]
    custom_share: f64,
    /// Distinct visitors (each its own IP in 10.0.0.0/8); requests cycle through them.
    #[arg(long, default_value_t = 100_000)]
    visitors: u64,
    /// Number of the first visitor (shifts the IP range, so two runs use different visitors).
    #[arg(long, default_value_t = 0)]
    first_visitor: u64,
    /// Distinct page paths, ranked by a Zipf law.
    #[arg(long, default_value_t = 200)]
    paths: usize,
    /// Exponent of the Zipf law of paths.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Poll GET /api/websites/{id}/realtime this often on its own connection (0: never).
    #[arg(long, default_value_t = 100)]
    realtime_poll_ms: u64,
    /// Poll realtime with include_bots=true.
    #[arg(long)]
    include_bots: bool,
    /// The server's pid: report its RSS (VmRSS) and CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Directory with browser-user-agents.txt and bot-user-agents.txt (built-in samples when
    /// missing).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata"))]
    ua_dir: PathBuf,
    /// Write the report to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker threads of the load runtime (1: a current-thread runtime, leaving cores to the
    /// server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress_secs: f64,
    /// Name of the run, carried into the summary and the JSON.
    #[arg(long)]
    label: Option<String>,
    /// Exit 2 when more than this share of requests failed: a status other than 202, 429 or
    /// 503, a connection error, or no answer at all. (429 and 503 are the server's
    /// backpressure: reported, not failures.)
    #[arg(long, default_value_t = 0.01)]
    max_failure_ratio: f64,
    /// Do not load: poll GET /readyz every 2 ms until it answers 200, print the wait and its body.
    #[arg(long)]
    wait_ready: bool,
    /// Give up --wait-ready after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{flag} must be >= 0, not {value}"))
}

fn config(args: &Args) -> anyhow::Result<LoadConfig> {
    let mut config = LoadConfig::new(args.addr, &args.website);
    config.create_website = args.create_website;
    config.token = args.token.clone();
    config.mode = if args.max {
        Mode::Max
    } else {
        Mode::Rate(args.rate)
    };
    config.duration = match seconds(args.duration, "--duration")? {
        d if d.is_zero() => None,
        d => Some(d),
    };
    config.max_events = args.events;
    config.connections = args.connections;
    config.batch = args.batch;
    config.bot_share = args.bot_share;
    config.custom_share = args.custom_share;
    config.visitors = args.visitors;
    config.first_visitor = args.first_visitor;
    config.paths = args.paths;
    config.zipf_exponent = args.zipf_s;
    config.seed = args.seed;
    config.realtime_poll =
        (args.realtime_poll_ms > 0).then(|| Duration::from_millis(args.realtime_poll_ms));
    config.realtime_include_bots = args.include_bots;
    config.server_pid = args.server_pid;
    config.progress_every = match seconds(args.progress_secs, "--progress-secs")? {
        d if d.is_zero() => None,
        d => Some(d),
    };
    config.label = args.label.clone();
    config.threads = Some(args.threads);
    config.validate()?;
    if config.duration.is_none() && config.max_events.is_none() {
        eprintln!("running until Ctrl-C");
    }
    Ok(config)
}

/// Completes on Ctrl-C or SIGTERM.
async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Polls /readyz until 200 or the timeout; prints `{"waited_ms":..,"readyz":..}`.
fn wait_ready(args: &Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + seconds(args.timeout_secs, "--timeout-secs")?;
    // The token, when given, makes /readyz include its replay report.
    let request = format_request(
        "GET",
        "/readyz",
        &args.addr.to_string(),
        args.token.as_deref(),
        None,
    );
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match request_once(args.addr, &request, Duration::from_secs(2)) {
            Ok(response) if response.status == 200 => {
                let body: serde_json::Value =
                    serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
                let out = serde_json::json!({
                    "waited_ms": start.elapsed().as_secs_f64() * 1000.0,
                    "readyz": body,
                });
                println!("{out}");
                return Ok(());
            }
            Ok(response) => last = format!("readyz answered {}", response.status),
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "{} was not ready within {}s: {last}",
        args.addr,
        args.timeout_secs
    )
}

/// Problems that make the run a failure, for the exit code.
fn verdict(report: &Report, args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    let c = &report.counts;
    if report.mode != "poll-only" {
        if c.events_accepted == 0 {
            problems.push("no event was accepted".to_owned());
        }
        let failed = c.status_other + c.connection_errors + report.unfinished_requests;
        if c.requests > 0 && failed as f64 > args.max_failure_ratio * c.requests as f64 {
            problems.push(format!(
                "{failed} of {} requests failed (other status, connection error or no answer; \
                 limit {:.1}%)",
                c.requests,
                args.max_failure_ratio * 100.0
            ));
        }
    }
    if let Some(rt) = &report.realtime {
        if rt.polls_ok == 0 {
            problems.push(format!(
                "no realtime poll succeeded ({})",
                rt.last_error.as_deref().unwrap_or("no poll ran")
            ));
        }
    }
    problems
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.wait_ready {
        wait_ready(&args)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = config(&args)?;
    let agents = UserAgents::from_dir_or_builtin(&args.ua_dir);
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let report = runtime.block_on(load::run(&config, agents, interrupted()))?;
    println!("{}", report.summary_line());
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let backpressure = report.counts.status_429 + report.counts.status_503;
    if backpressure > 0 {
        eprintln!(
            "pulse-load: note: {backpressure} of {} requests were refused with 429/503 \
             (server backpressure, e.g. 503 queue_full); their events are not counted as accepted",
            report.counts.requests
        );
    }
    let problems = verdict(&report, &args);
    for problem in &problems {
        eprintln!("pulse-load: {problem}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
