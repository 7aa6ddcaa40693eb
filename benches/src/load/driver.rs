//! `run`: drives one load run. Opens `connections` keep-alive connections (one tokio task each),
//! releases them together, hands out request tickets from one atomic counter (ticket `k` is
//! visitor `k % visitors`, and in rate mode is due at `start + k * batch / rate`), counts every
//! outcome in per-connection counters (cache-line aligned, so connections never share a line),
//! polls realtime on its own thread, samples the server's /proc figures, and stops on the
//! deadline, the event budget or the caller's `stop` future — then gives in-flight requests a
//! grace period and builds the `Report`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Barrier};
use tokio::task::JoinSet;

use crate::load::histogram::LatencyHistogram;
use crate::load::realtime::{PollStats, Poller};
use crate::load::report::{
    CollectLatency, Counts, ProcessReport, RealtimeReport, Report, ServerRealtime,
};
use crate::load::rng::{mix64, SplitMix64};
use crate::load::traffic::{EventBodies, RequestBuilder, UserAgents, VisitorModel};
use crate::load::{LoadConfig, LoadError, Mode};
use pulse_testkit::http::{format_request, AsyncConn, Response};
use pulse_testkit::procfs;

/// A keep-alive connection idle longer than this is replaced before use: the server closes idle
/// connections after its header timeout (10 s by default).
const IDLE_RECONNECT: Duration = Duration::from_secs(4);
/// Longest pause between attempts to reopen a connection.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the server's memory is sampled when no progress line is asked for.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Timeout of the set-up calls (creating the website).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection task reads.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    host: String,
    agents: UserAgents,
    bodies: EventBodies,
    model: VisitorModel,
    batch: usize,
    max_events: Option<u64>,
    max_tickets: u64,
    /// Seconds between tickets in rate mode.
    ticket_interval: Option<f64>,
    visitors: u64,
    first_visitor: u64,
    seed: u64,
    tickets: AtomicU64,
    stop: AtomicBool,
    start: OnceLock<Instant>,
    /// One bit per visitor slot: has it had a 202 yet.
    seen: Vec<AtomicU64>,
}

impl Shared {
    /// Marks visitor slot `slot` as accepted; true the first time.
    fn first_acceptance(&self, slot: u64) -> bool {
        let word = &self.seen[(slot / 64) as usize];
        let bit = 1_u64 << (slot % 64);
        word.load(Relaxed) & bit == 0 && word.fetch_or(bit, Relaxed) & bit == 0
    }
}

/// One connection's counters: written by its task only, read by the reporter.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ConnCounters {
    requests_started: AtomicU64,
    requests: AtomicU64,
    events_sent: AtomicU64,
    events_accepted: AtomicU64,
    status_202: AtomicU64,
    status_429: AtomicU64,
    status_503: AtomicU64,
    status_other: AtomicU64,
    connection_errors: AtomicU64,
    connect_failures: AtomicU64,
    bot_events_sent: AtomicU64,
    bot_events_accepted: AtomicU64,
    custom_events_accepted: AtomicU64,
    distinct_human_visitors: AtomicU64,
    distinct_bot_visitors: AtomicU64,
    /// Time from writing a collect request to its complete answer, whatever the status. Only
    /// its task locks it (and the reporter at the end), so the lock is never contended.
    latency: Mutex<LatencyHistogram>,
}

fn bump(counter: &AtomicU64, by: u64) {
    // Single writer: a load and a store are enough and cheaper than a locked add.
    counter.store(counter.load(Relaxed) + by, Relaxed);
}

impl ConnCounters {
    fn load(&self) -> Counts {
        Counts {
            requests_started: self.requests_started.load(Relaxed),
            requests: self.requests.load(Relaxed),
            events_sent: self.events_sent.load(Relaxed),
            events_accepted: self.events_accepted.load(Relaxed),
            status_202: self.status_202.load(Relaxed),
            status_429: self.status_429.load(Relaxed),
            status_503: self.status_503.load(Relaxed),
            status_other: self.status_other.load(Relaxed),
            connection_errors: self.connection_errors.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            bot_events_sent: self.bot_events_sent.load(Relaxed),
            bot_events_accepted: self.bot_events_accepted.load(Relaxed),
            custom_events_accepted: self.custom_events_accepted.load(Relaxed),
            distinct_human_visitors: self.distinct_human_visitors.load(Relaxed),
            distinct_bot_visitors: self.distinct_bot_visitors.load(Relaxed),
        }
    }
}

fn total(counters: &[Arc<ConnCounters>]) -> Counts {
    let mut sum = Counts::default();
    for c in counters {
        sum.add(&c.load());
    }
    sum
}

fn total_latency(counters: &[Arc<ConnCounters>]) -> LatencyHistogram {
    let mut sum = LatencyHistogram::new();
    for c in counters {
        if let Ok(latency) = c.latency.lock() {
            sum.merge(&latency);
        }
    }
    sum
}

/// Creates the website; an existing one (409) is fine.
async fn create_website(config: &LoadConfig) -> Result<(), LoadError> {
    let body = serde_json::json!({
        "id": config.website,
        "name": format!("pulse-load {}", config.website),
        "domain": crate::load::traffic::SITE_DOMAIN,
    })
    .to_string();
    let request = format_request(
        "POST",
        "/api/websites",
        &config.target.to_string(),
        config.token.as_deref(),
        Some(&body),
    );
    let attempt = async {
        let mut conn = AsyncConn::connect(config.target).await?;
        conn.send(&request, true).await
    };
    let response = tokio::time::timeout(SETUP_TIMEOUT, attempt)
        .await
        .map_err(|_| LoadError::Setup("creating the website timed out".to_owned()))?
        .map_err(|e| LoadError::Setup(format!("creating the website: {e}")))?;
    match response.status {
        201 | 409 => Ok(()),
        status => Err(LoadError::Setup(format!(
            "POST /api/websites answered {status}: {}",
            String::from_utf8_lossy(&response.body)
        ))),
    }
}

/// Runs the load described by `config` until its duration or event budget is used up or `stop`
/// completes, and reports what happened.
pub async fn run<F>(config: &LoadConfig, agents: UserAgents, stop: F) -> Result<Report, LoadError>
where
    F: Future<Output = ()>,
{
    config.validate()?;
    if config.create_website {
        create_website(config).await?;
    }
    let connections = if config.mode.is_poll_only() {
        0
    } else {
        config.connections
    };
    let ticket_interval = match config.mode {
        Mode::Rate(rate) if rate > 0.0 => Some(config.batch as f64 / rate),
        _ => None,
    };
    let batch = config.batch as u64;
    let shared = Arc::new(Shared {
        target: config.target,
        host: config.target.to_string(),
        bodies: EventBodies::new(
            &config.website,
            config.paths,
            config.zipf_exponent,
            config.custom_share,
        )
        .map_err(LoadError::Config)?,
        model: VisitorModel::new(config.seed, config.bot_share),
        agents,
        batch: config.batch,
        max_events: config.max_events,
        max_tickets: config.max_events.map_or(u64::MAX, |e| e.div_ceil(batch)),
        ticket_interval,
        visitors: config.visitors,
        first_visitor: config.first_visitor,
        seed: config.seed,
        tickets: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start: OnceLock::new(),
        seen: (0..config.visitors.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect(),
    });

    let counters: Vec<Arc<ConnCounters>> = (0..connections).map(|_| Arc::default()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let connected = Arc::new(Barrier::new(connections + 1));
    let released = Arc::new(Barrier::new(connections + 1));
    let mut tasks = JoinSet::new();
    for (id, c) in counters.iter().enumerate() {
        tasks.spawn(connection_task(
            id as u64,
            Arc::clone(&shared),
            Arc::clone(c),
            stop_rx.clone(),
            Arc::clone(&connected),
            Arc::clone(&released),
        ));
    }
    connected.wait().await;

    let me = std::process::id();
    let mut server = config.server_pid.map(ProcessSampler::new);
    let mut client = ProcessSampler::new(me);
    let poller = match config.realtime_poll {
        Some(interval) => Some(
            Poller::start(
                config.target,
                &config.website,
                config.token.as_deref(),
                config.realtime_include_bots,
                interval,
            )
            .map_err(LoadError::Setup)?,
        ),
        None => None,
    };
    let start = Instant::now();
    let _ = shared.start.set(start);
    released.wait().await;

    let deadline = config
        .duration
        .map(|d| tokio::time::Instant::from_std(start + d));
    let tick_every = config.progress_every.unwrap_or(SAMPLE_EVERY);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
    tokio::pin!(stop);
    let mut previous = (Counts::default(), start);
    let finished = {
        let all_done = async { while tasks.join_next().await.is_some() {} };
        tokio::pin!(all_done);
        let mut done = false;
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = sleep_until_opt(deadline) => break,
                () = &mut all_done, if connections > 0 => {
                    done = true;
                    break;
                }
                _ = ticker.tick() => {
                    if let Some(s) = server.as_mut() {
                        s.sample_rss();
                    }
                    if config.progress_every.is_some() {
                        let counts = total(&counters);
                        let polls = poller.as_ref().map(Poller::snapshot);
                        let mut report = build_report(
                            config,
                            &shared.agents.source,
                            counts,
                            start.elapsed(),
                            polls.as_ref(),
                            server.as_ref(),
                            None,
                        );
                        // Mid-run, started-but-unanswered requests are simply in flight.
                        report.unfinished_requests = 0;
                        let now = Instant::now();
                        let secs = now.duration_since(previous.1).as_secs_f64().max(1e-9);
                        let recent = counts.events_accepted - previous.0.events_accepted;
                        eprintln!(
                            "[{:>6.1}s] now {:.0} events/s | {}",
                            start.elapsed().as_secs_f64(),
                            recent as f64 / secs,
                            report.summary_line()
                        );
                        previous = (counts, now);
                    }
                }
            }
        }
        shared.stop.store(true, Relaxed);
        let _ = stop_tx.send(true);
        done || tokio::time::timeout(config.grace, &mut all_done)
            .await
            .is_ok()
    };
    if !finished {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let elapsed = start.elapsed();
    let polls = poller.map(Poller::stop);
    if let Some(s) = server.as_mut() {
        s.finish(elapsed);
    }
    client.finish(elapsed);
    let server_realtime = server_realtime(config).await;
    let mut report = build_report(
        config,
        &shared.agents.source,
        total(&counters),
        elapsed,
        polls.as_ref(),
        server.as_ref(),
        Some(&client),
    );
    report.server_realtime = server_realtime;
    report.collect_latency =
        (connections > 0).then(|| CollectLatency::from_histogram(&total_latency(&counters)));
    Ok(report)
}

/// Reads the website's realtime figures with and without bots; `None` on any failure.
async fn server_realtime(config: &LoadConfig) -> Option<ServerRealtime> {
    async fn read(config: &LoadConfig, include_bots: bool) -> Option<(u64, u64, bool)> {
        let request = format_request(
            "GET",
            &format!(
                "/api/websites/{}/realtime?include_bots={include_bots}",
                config.website
            ),
            &config.target.to_string(),
            config.token.as_deref(),
            None,
        );
        let attempt = async {
            let mut conn = AsyncConn::connect(config.target).await.ok()?;
            conn.send(&request, true).await.ok()
        };
        let response = tokio::time::timeout(SETUP_TIMEOUT, attempt).await.ok()??;
        if response.status != 200 {
            return None;
        }
        let body: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
        let data = body.get("data")?;
        Some((
            data.get("active_visitors")?.as_u64()?,
            data.get("pagination")?.get("total_in_window")?.as_u64()?,
            data.get("approximate")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        ))
    }
    let (active_visitors, events_in_window, approximate_all) = read(config, true).await?;
    let (human_active_visitors, human_events_in_window, approximate_humans) =
        read(config, false).await?;
    Some(ServerRealtime {
        active_visitors,
        events_in_window,
        human_active_visitors,
        human_events_in_window,
        approximate: approximate_all || approximate_humans,
    })
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn build_report(
    config: &LoadConfig,
    agents: &str,
    counts: Counts,
    elapsed: Duration,
    polls: Option<&PollStats>,
    server: Option<&ProcessSampler>,
    client: Option<&ProcessSampler>,
) -> Report {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (mode, rate) = match config.mode {
        Mode::Max => ("max", None),
        Mode::Rate(_) if config.mode.is_poll_only() => ("poll-only", None),
        Mode::Rate(r) => ("rate", Some(r)),
    };
    Report {
        label: config.label.clone(),
        target: config.target.to_string(),
        website: config.website.clone(),
        mode: mode.to_owned(),
        rate,
        connections: config.connections,
        batch: config.batch,
        threads: config.threads,
        bot_share: config.bot_share,
        custom_share: config.custom_share,
        visitors: config.visitors,
        user_agents: agents.to_owned(),
        elapsed_secs: secs,
        events_per_sec: counts.events_accepted as f64 / secs,
        requests_per_sec: counts.requests as f64 / secs,
        distinct_visitors: counts.distinct_visitors(),
        unfinished_requests: counts.unfinished(),
        counts,
        realtime: polls.map(RealtimeReport::from_stats),
        collect_latency: None,
        server: server.map(|s| s.report),
        client: client.map(|s| s.report),
        server_realtime: None,
    }
}

/// RSS and CPU of one process across the run.
#[derive(Debug)]
struct ProcessSampler {
    report: ProcessReport,
    cpu_start: Option<f64>,
}

impl ProcessSampler {
    fn new(pid: u32) -> Self {
        let rss = procfs::rss_kib(pid);
        Self {
            report: ProcessReport {
                pid,
                rss_kib_start: rss,
                rss_kib_end: rss,
                rss_kib_peak: rss,
                cpu_cores: None,
            },
            cpu_start: procfs::cpu_seconds(pid),
        }
    }

    fn sample_rss(&mut self) {
        if let Some(rss) = procfs::rss_kib(self.report.pid) {
            self.report.rss_kib_end = Some(rss);
            self.report.rss_kib_peak = Some(self.report.rss_kib_peak.map_or(rss, |p| p.max(rss)));
        }
    }

    fn finish(&mut self, elapsed: Duration) {
        self.sample_rss();
        if let (Some(a), Some(b)) = (self.cpu_start, procfs::cpu_seconds(self.report.pid)) {
            self.report.cpu_cores = Some((b - a) / elapsed.as_secs_f64().max(1e-9));
        }
    }
}

/// One keep-alive connection sending tickets until the run stops.
async fn connection_task(
    id: u64,
    shared: Arc<Shared>,
    counters: Arc<ConnCounters>,
    mut stop_rx: watch::Receiver<bool>,
    connected: Arc<Barrier>,
    released: Arc<Barrier>,
) {
    let mut rng = SplitMix64::new(mix64(shared.seed ^ mix64(id + 1)));
    let mut builder = RequestBuilder::new(&shared.host);
    let mut conn = match AsyncConn::connect(shared.target).await {
        Ok(c) => Some(c),
        Err(_) => {
            bump(&counters.connect_failures, 1);
            None
        }
    };
    connected.wait().await;
    released.wait().await;
    let Some(&start) = shared.start.get() else {
        return;
    };
    let mut last_used = Instant::now();
    let mut backoff = Duration::from_millis(10);
    loop {
        if shared.stop.load(Relaxed) {
            break;
        }
        if conn.is_none() || last_used.elapsed() > IDLE_RECONNECT {
            match AsyncConn::connect(shared.target).await {
                Ok(c) => {
                    conn = Some(c);
                    last_used = Instant::now();
                    backoff = Duration::from_millis(10);
                }
                Err(_) => {
                    conn = None;
                    bump(&counters.connect_failures, 1);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop_rx.changed() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let ticket = shared.tickets.fetch_add(1, Relaxed);
        if ticket >= shared.max_tickets {
            break;
        }
        if let Some(interval) = shared.ticket_interval {
            let due = start + Duration::from_secs_f64(ticket as f64 * interval);
            if due > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
                    _ = stop_rx.changed() => break,
                }
            }
            if shared.stop.load(Relaxed) {
                break;
            }
            if last_used.elapsed() > IDLE_RECONNECT {
                match AsyncConn::connect(shared.target).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        // This ticket's request is lost; the next loop backs off.
                        conn = None;
                        bump(&counters.connect_failures, 1);
                        continue;
                    }
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let events = match shared.max_events {
            Some(max) => (max - ticket * shared.batch as u64).min(shared.batch as u64) as usize,
            None => shared.batch,
        };
        let slot = ticket % shared.visitors;
        let (request, facts) = builder.build(
            shared.first_visitor + slot,
            events,
            shared.batch > 1,
            &shared.model,
            &shared.agents,
            &shared.bodies,
            &mut rng,
        );
        bump(&counters.requests_started, 1);
        let sent = Instant::now();
        let outcome = c.send(request, false).await;
        last_used = Instant::now();
        if outcome.is_ok() {
            if let Ok(mut latency) = counters.latency.lock() {
                latency.record(last_used - sent);
            }
        }
        let events = u64::from(facts.events);
        bump(&counters.requests, 1);
        bump(&counters.events_sent, events);
        if facts.is_bot {
            bump(&counters.bot_events_sent, events);
        }
        match outcome {
            Ok(Response { status, close, .. }) => {
                match status {
                    202 => {
                        bump(&counters.status_202, 1);
                        bump(&counters.events_accepted, events);
                        bump(
                            &counters.custom_events_accepted,
                            u64::from(facts.custom_events),
                        );
                        if facts.is_bot {
                            bump(&counters.bot_events_accepted, events);
                        }
                        if shared.first_acceptance(slot) {
                            if facts.is_bot {
                                bump(&counters.distinct_bot_visitors, 1);
                            } else {
                                bump(&counters.distinct_human_visitors, 1);
                            }
                        }
                    }
                    429 => bump(&counters.status_429, 1),
                    503 => bump(&counters.status_503, 1),
                    _ => bump(&counters.status_other, 1),
                }
                if close {
                    conn = None;
                }
            }
            Err(_) => {
                bump(&counters.connection_errors, 1);
                conn = None;
            }
        }
    }
}
