//! The adversary of the soak: from one source address (a second loopback address, 127.0.0.2),
//! it holds three kinds of hostile connections to a Pulse server, each reopened as soon as the
//! server closes it, and counts what the server did to them:
//!
//! - **idle**: connects and sends nothing.
//! - **slow**: sends a request head one header line every `slow_interval`, never finishing it.
//! - **stalled**: sends a collect head announcing a 100 KiB body, then one byte of it.
//!
//! `run(&config, stop)` is the whole API; `pulse-adversary` parses flags and prints. It measures
//! nothing about legitimate traffic: `pulse-load` does, in the same run.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the adversary does.
#[derive(Debug, Clone)]
pub struct AdversaryConfig {
    pub target: SocketAddr,
    /// Bound before connecting, so the server sees this client address.
    pub source: Ipv4Addr,
    pub idle: usize,
    pub slow: usize,
    pub stalled: usize,
    /// Pause between the header lines of a slow connection.
    pub slow_interval: Duration,
    /// Pause before reopening a connection the server closed (or could not be opened): without
    /// it the adversary would be a connect flood, which is another test.
    pub reconnect_delay: Duration,
    /// Stop after this long; `None` runs until `stop`.
    pub duration: Option<Duration>,
}

/// One kind's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindReport {
    /// Connections opened.
    pub connects: u64,
    pub connect_failures: u64,
    /// Connections the server closed (end of file or reset) without an answer.
    pub closed_unanswered: u64,
    /// Connections the server answered (with any status) and closed.
    pub answered: u64,
    /// Of those, answers `408` (for example `body_timeout`) and `503` (for example `busy`).
    pub status_408: u64,
    pub status_503: u64,
}

/// What the adversary saw.
#[derive(Debug, Clone, Serialize)]
pub struct AdversaryReport {
    pub source: String,
    pub target: String,
    pub elapsed_secs: f64,
    pub idle: KindReport,
    pub slow: KindReport,
    pub stalled: KindReport,
}

impl AdversaryReport {
    /// One line for a human.
    pub fn summary_line(&self) -> String {
        let kind = |name: &str, k: &KindReport| {
            format!(
                "{name}: {} connects ({} failed), {} closed unanswered, {} answered (408 {}, 503 {})",
                k.connects,
                k.connect_failures,
                k.closed_unanswered,
                k.answered,
                k.status_408,
                k.status_503
            )
        };
        format!(
            "[adversary {} over {:.1}s] {} | {} | {}",
            self.source,
            self.elapsed_secs,
            kind("idle", &self.idle),
            kind("slow", &self.slow),
            kind("stalled", &self.stalled)
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Idle,
    Slow,
    Stalled,
}

#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    closed_unanswered: AtomicU64,
    answered: AtomicU64,
    status_408: AtomicU64,
    status_503: AtomicU64,
}

impl Counters {
    fn report(&self) -> KindReport {
        KindReport {
            connects: self.connects.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            closed_unanswered: self.closed_unanswered.load(Relaxed),
            answered: self.answered.load(Relaxed),
            status_408: self.status_408.load(Relaxed),
            status_503: self.status_503.load(Relaxed),
        }
    }

    /// Counts how a connection ended: `head` is what the server sent before closing.
    fn ended(&self, head: &[u8]) {
        if head.is_empty() {
            self.closed_unanswered.fetch_add(1, Relaxed);
            return;
        }
        self.answered.fetch_add(1, Relaxed);
        match head.get(9..12) {
            Some(b"408") => self.status_408.fetch_add(1, Relaxed),
            Some(b"503") => self.status_503.fetch_add(1, Relaxed),
            _ => 0,
        };
    }
}

async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(target).await
}

/// Reads until the server closes the connection; returns the first bytes it sent, if any.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut first = Vec::new();
    let mut buf = [0_u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return first,
            Ok(n) => {
                if first.len() < 64 {
                    first.extend_from_slice(&buf[..n.min(64)]);
                }
            }
        }
    }
}

/// One hostile connection from open to close.
async fn session(kind: Kind, mut stream: TcpStream, config: &AdversaryConfig) -> Vec<u8> {
    match kind {
        Kind::Idle => read_until_closed(&mut stream).await,
        Kind::Slow => {
            let (mut reader, mut writer) = stream.into_split();
            let trickle = async {
                let mut line: &[u8] = b"POST /api/collect HTTP/1.1\r\nhost: pulse\r\n";
                while writer.write_all(line).await.is_ok() {
                    line = b"x-slow: 1\r\n";
                    tokio::time::sleep(config.slow_interval).await;
                }
                std::future::pending::<()>().await;
            };
            let mut first = Vec::new();
            let read = async {
                let mut buf = [0_u8; 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if first.len() < 64 => first.extend_from_slice(&buf[..n.min(64)]),
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                () = trickle => {}
                () = read => {}
            }
            first
        }
        Kind::Stalled => {
            let head = format!(
                "POST /api/collect HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
                 user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 \
                 Firefox/128.0\r\ncontent-length: 102400\r\n\r\n{{",
                config.target
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return Vec::new();
            }
            read_until_closed(&mut stream).await
        }
    }
}

async fn connection_task(
    kind: Kind,
    config: Arc<AdversaryConfig>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let attempt = async {
            match connect_from(config.source, config.target).await {
                Ok(stream) => {
                    counters.connects.fetch_add(1, Relaxed);
                    let head = session(kind, stream, &config).await;
                    counters.ended(&head);
                }
                Err(_) => {
                    counters.connect_failures.fetch_add(1, Relaxed);
                }
            }
            tokio::time::sleep(config.reconnect_delay).await;
        };
        tokio::select! {
            () = attempt => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs the adversary until its duration passes or `stop` completes.
pub async fn run<F: Future<Output = ()>>(config: &AdversaryConfig, stop: F) -> AdversaryReport {
    let shared = Arc::new(config.clone());
    let counters: [Arc<Counters>; 3] = Default::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let kinds = [
        (Kind::Idle, config.idle),
        (Kind::Slow, config.slow),
        (Kind::Stalled, config.stalled),
    ];
    for (i, (kind, count)) in kinds.into_iter().enumerate() {
        for _ in 0..count {
            tasks.spawn(connection_task(
                kind,
                Arc::clone(&shared),
                Arc::clone(&counters[i]),
                stop_rx.clone(),
            ));
        }
    }
    let started = Instant::now();
    let until = async {
        match config.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = until => {}
        () = stop => {}
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    AdversaryReport {
        source: config.source.to_string(),
        target: config.target.to_string(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        idle: counters[0].report(),
        slow: counters[1].report(),
        stalled: counters[2].report(),
    }
}
