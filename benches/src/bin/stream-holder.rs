//! `stream-holder`: holds many live streams (`GET /api/websites/{id}/realtime/stream`) open
//! against a server, as a room full of dashboards would, and counts what they receive.
//!
//! It opens `--streams` streams (spread over `--websites` websites named `<website>`,
//! `<website>-1`, …, which must exist), reads them all for `--duration-secs` on one tokio thread,
//! then prints one JSON line: streams opened and refused, data messages and heartbeats received,
//! the most data messages one stream got in any one second (the pacing), and streams that ended
//! early. It measures; it does not judge: `run.sh` (`streams`) measures the server's RSS and CPU
//! around it with `pulse-load`. The SSE reader is the test kit's (`EventStream`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use pulse_testkit::http::{Client, HttpError, SseMessage};
use serde_json::json;

/// Timeout for opening one stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(name = "stream-holder", version, about)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Bearer token (the server's --admin-token).
    #[arg(long)]
    token: Option<String>,
    /// Website whose streams to open (with --websites > 1, also `<website>-1`, …).
    #[arg(long, default_value = "load-test")]
    website: String,
    /// How many websites the streams are spread over.
    #[arg(long, default_value_t = 1)]
    websites: usize,
    /// Streams to hold open.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// How long to hold them, after all are open.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Also write the JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one stream saw.
#[derive(Debug, Default)]
struct Seen {
    data: u64,
    heartbeats: u64,
    /// The most data messages within one wall-clock second of the run.
    most_per_second: u64,
    ended_early: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(args.addr, OPEN_TIMEOUT);
    let started = Instant::now();
    let mut open = Vec::with_capacity(args.streams);
    let mut refused = 0_u64;
    for n in 0..args.streams {
        let website = match n % args.websites.max(1) {
            0 => args.website.clone(),
            k => format!("{}-{k}", args.website),
        };
        let mut request = client.get(&format!("/api/websites/{website}/realtime/stream"));
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        match request.open_stream().await {
            Ok(stream) => open.push(stream),
            Err(HttpError::NotAStream(response)) => {
                refused += 1;
                if refused == 1 {
                    eprintln!("stream {n} refused: {response:?}");
                }
            }
            Err(error) => return Err(error).context(format!("opening stream {n}")),
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let opened = open.len();
    let hold = Duration::from_secs_f64(args.duration_secs.max(0.0));
    let end = tokio::time::Instant::now() + hold;
    let readers: Vec<_> = open
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut second = Instant::now();
                let mut in_second = 0;
                loop {
                    let left = end.saturating_duration_since(tokio::time::Instant::now());
                    match stream.next(left).await {
                        Ok(Some(SseMessage::Data(_))) => {
                            if second.elapsed() >= Duration::from_secs(1) {
                                second = Instant::now();
                                in_second = 0;
                            }
                            in_second += 1;
                            seen.most_per_second = seen.most_per_second.max(in_second);
                            seen.data += 1;
                        }
                        Ok(Some(SseMessage::Comment(_))) => seen.heartbeats += 1,
                        Ok(None) => {
                            seen.ended_early = true;
                            break;
                        }
                        Err(HttpError::Timeout) => break,
                        Err(_) => {
                            seen.ended_early = true;
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut total = Seen::default();
    let mut ended_early = 0_u64;
    for reader in readers {
        let seen = reader.await.context("a stream reader panicked")?;
        total.data += seen.data;
        total.heartbeats += seen.heartbeats;
        total.most_per_second = total.most_per_second.max(seen.most_per_second);
        ended_early += u64::from(seen.ended_early);
    }
    let line = json!({
        "label": "stream_holder",
        "streams_requested": args.streams,
        "streams_opened": opened,
        "streams_refused": refused,
        "websites": args.websites,
        "open_secs": open_secs,
        "held_secs": hold.as_secs_f64(),
        "data_messages": total.data,
        "data_messages_per_stream_per_sec": if opened > 0 && hold.as_secs_f64() > 0.0 {
            total.data as f64 / opened as f64 / hold.as_secs_f64()
        } else { 0.0 },
        "most_data_messages_in_one_second": total.most_per_second,
        "heartbeats": total.heartbeats,
        "ended_early": ended_early,
    });
    println!("{line}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{line}\n")).context("writing --json")?;
    }
    Ok(())
}
