//! The realtime poller: `GET /api/websites/{id}/realtime` every interval on its own keep-alive
//! connection, on its own OS thread with blocking sockets, timing each request from the first
//! byte written to the last byte of the body read. Being off the load runtime keeps the load
//! tasks' scheduling out of the figure; what remains is the server's answer plus two loopback
//! syscalls and a thread wake-up on this machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::load::histogram::LatencyHistogram;
use pulse_testkit::http::{format_request, BlockingConn};

/// Timeout of one poll (connect, write or read).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failed poll.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What the poller measured so far.
#[derive(Debug, Clone, Default)]
pub struct PollStats {
    pub latency: LatencyHistogram,
    /// Polls answered 200 (the only ones in `latency`).
    pub ok: u64,
    /// Polls answered with another status.
    pub non_200: u64,
    /// Polls that failed at the connection level (refused, reset, timed out).
    pub errors: u64,
    pub last_error: Option<String>,
}

/// A running poller; `stop` ends it and returns its figures.
#[derive(Debug)]
pub struct Poller {
    stats: Arc<Mutex<PollStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn start(
        addr: SocketAddr,
        website: &str,
        token: Option<&str>,
        include_bots: bool,
        interval: Duration,
    ) -> Result<Self, String> {
        let query = if include_bots {
            "?include_bots=true"
        } else {
            ""
        };
        let request = format_request(
            "GET",
            &format!("/api/websites/{website}/realtime{query}"),
            &addr.to_string(),
            token,
            None,
        );
        let stats = Arc::new(Mutex::new(PollStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stats = Arc::clone(&stats);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("realtime-poller".to_owned())
                .spawn(move || poll_loop(addr, &request, interval, &stats, &stop))
                .map_err(|e| format!("cannot start the realtime poller thread: {e}"))?
        };
        Ok(Self {
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The figures so far.
    pub fn snapshot(&self) -> PollStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops polling (within one interval) and returns the final figures.
    pub fn stop(mut self) -> PollStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.snapshot()
    }
}

fn poll_loop(
    addr: SocketAddr,
    request: &[u8],
    interval: Duration,
    stats: &Mutex<PollStats>,
    stop: &AtomicBool,
) {
    let mut conn: Option<BlockingConn> = None;
    let mut due = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        // Never catch up with a burst: the next poll is one interval after this one.
        due = now + interval;
        let outcome = match conn.as_mut() {
            Some(c) => Ok(c),
            None => BlockingConn::connect(addr, POLL_TIMEOUT).map(|c| conn.insert(c)),
        }
        .and_then(|c| {
            let start = Instant::now();
            let response = c.send(request, false)?;
            Ok((response, start.elapsed()))
        });
        let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok((response, latency)) => {
                if response.status == 200 {
                    s.ok += 1;
                    s.latency.record(latency);
                } else {
                    s.non_200 += 1;
                    s.last_error = Some(format!("realtime answered {}", response.status));
                }
                if response.close {
                    conn = None;
                }
            }
            Err(error) => {
                s.errors += 1;
                s.last_error = Some(error.to_string());
                conn = None;
                due = Instant::now() + RECONNECT_PAUSE.max(interval);
            }
        }
    }
}
