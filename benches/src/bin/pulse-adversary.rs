//! `pulse-adversary`: holds idle, slow-header and stalled-body connections to a Pulse server
//! from a second loopback address (127.0.0.2 by default), reopening each as the server closes it,
//! until the duration or Ctrl-C/SIGTERM; prints a summary line and writes the counts as JSON with
//! `--json`. run.sh's `soak_adversary` runs it next to `pulse-load`, which measures the
//! legitimate traffic.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pulse_benches::adversary::{self, AdversaryConfig};

/// Hostile connections for a Pulse server, from one source address.
#[derive(Debug, Parser)]
#[command(name = "pulse-adversary", version, about)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Source address to bind (any 127.0.0.0/8 address works on Linux without set-up).
    #[arg(long, default_value = "127.0.0.2")]
    source: Ipv4Addr,
    /// Connections that send nothing.
    #[arg(long, default_value_t = 300)]
    idle: usize,
    /// Connections that send a request head one line at a time and never finish it.
    #[arg(long, default_value_t = 300)]
    slow: usize,
    /// Connections that announce a 100 KiB collect body and send one byte of it.
    #[arg(long, default_value_t = 100)]
    stalled: usize,
    /// Milliseconds between the header lines of a slow connection.
    #[arg(long, default_value_t = 500)]
    slow_interval_ms: u64,
    /// Milliseconds before reopening a closed connection.
    #[arg(long, default_value_t = 50)]
    reconnect_delay_ms: u64,
    /// Seconds to run; 0 runs until Ctrl-C or SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Write the counts to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::try_from_secs_f64(args.duration)
        .with_context(|| format!("--duration must be >= 0, not {}", args.duration))?;
    let config = AdversaryConfig {
        target: args.addr,
        source: args.source,
        idle: args.idle,
        slow: args.slow,
        stalled: args.stalled,
        slow_interval: Duration::from_millis(args.slow_interval_ms.max(1)),
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
        duration: (!duration.is_zero()).then_some(duration),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(adversary::run(&config, interrupted()));
    println!("{}", report.summary_line());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
