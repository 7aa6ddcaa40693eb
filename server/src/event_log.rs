//! `EventLog`: the bounded queue between request handlers and the disk, and the log thread
//! (`pulse-log`) behind it that replays the log at start-up, then appends, fsyncs and rolls segments.
//!
//! Handlers never wait on the disk: they `submit` a batch and get `Full` back at once when the
//! queue is at capacity (the route answers 503). What a 202 promises is `Durability`'s:
//! - `Interval`: written when the log thread next drains the queue (within `WRITE_LINGER`, 5 ms, of
//!   the previous write) and fsynced at least every `fsync_interval`;
//! - `Sync`: the handler awaits the fsync that covers its batch; every batch drained together
//!   shares one fsync (group commit);
//! - `None`: written as in `Interval`; the OS decides when it reaches the disk.
//!
//! A failed write (disk full, read-only, EIO) stalls the log instead of failing it: the events
//! already queued stay in memory and are retried every `STALL_RETRY`, new batches are refused
//! (`SubmitError::Stalled`, collect answers 503) and `/readyz` says why, until a write succeeds.
//! The same stall starts before the disk is full, when free space drops below the configured
//! reserve, so what is queued still has room. A failed fsync is fatal: the log thread stops,
//! `fatal` fires and the server shuts down with a non-zero exit. It never retries an fsync (after
//! a failure the kernel may have dropped the dirty pages, so a retry could report success for data
//! that is gone).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use pulse_engine::{Engine, Event, Timestamp, Touch, WebsiteId};
use pulse_snapshot::{
    replay, LogEntry, ReplayOptions, ReplayReport, SegmentLimits, SegmentWriter, SnapshotError,
};
use tokio::sync::{oneshot, Notify};

use crate::checkpoints::{self, CheckpointStats};
use crate::clock;
use crate::metrics::Metrics;

/// Estimated bytes one queued entry holds (the event, its strings and the `Arc` headers; a
/// touch is the entry alone).
fn entry_bytes(entry: &LogEntry) -> usize {
    match entry {
        LogEntry::Event { event, .. } => {
            std::mem::size_of::<Event>()
                + event.target.len()
                + event.referrer_domain.as_ref().map_or(0, |r| r.len())
                + 64
        }
        LogEntry::Touch { .. } => std::mem::size_of::<LogEntry>(),
    }
}

/// When an accepted event reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    Interval,
    Sync,
    None,
}

/// How the log thread is set up.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub dir: PathBuf,
    pub durability: Durability,
    pub fsync_interval: Duration,
    pub limits: SegmentLimits,
    /// Free bytes kept in hand on the log's file system: below it new batches are refused.
    pub disk_reserve_bytes: u64,
    /// Batches the queue holds (each at most one request's events).
    pub queue_capacity: usize,
    /// Bytes the queued events may hold together.
    pub queue_bytes: usize,
    /// Events at or before `now - window_ms` need not be replayed.
    pub window_ms: i64,
    /// Each website's first sequence number (`WebsiteEntry::log_start_seq`): replay leaves out
    /// events logged under its id before it, which belong to a deleted website of the same id.
    pub log_starts: HashMap<WebsiteId, u64>,
    /// Where checkpoints are kept; `None` when they are disabled (the log is replayed whole).
    pub checkpoint_dir: Option<PathBuf>,
}

/// Most entries the log thread gathers before writing, so one huge backlog does not become one
/// huge record set held in memory twice.
const MAX_ENTRIES_PER_WRITE: usize = 16 * 1024;

/// How long the log thread lets the queue fill after a write in `Interval` and `None` modes before
/// it drains again. Without it, under load every request wakes the parked log thread (a futex call
/// and a context switch on the handler's core) for a one-event `write`; with it, one write
/// carries a few milliseconds of traffic and handlers never wake anyone. On 2 cores this took
/// single-event ingest from 15.6 to 11.9 µs of server CPU per request, together with `ClassCache`
/// (BENCHMARKS.md, run 20261128T043028Z). The first
/// event after an idle spell is still written at once, and 5 ms keeps the promise of being
/// written within milliseconds. `Sync` never lingers: there a handler waits for the fsync.
const WRITE_LINGER: Duration = Duration::from_millis(5);

/// How often a stalled log retries its write, and checks free space while it is not stalled.
const STALL_RETRY: Duration = Duration::from_millis(250);
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown keeps retrying a stalled write before it gives up on the queued events and
/// exits non-zero.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(10);

enum Message {
    Batch {
        entries: Vec<LogEntry>,
        bytes: usize,
        durable: Option<oneshot::Sender<()>>,
    },
    /// Write and fsync everything queued before this message, then answer with the sequence
    /// number the log is durable up to (a checkpoint waits for it before it is installed).
    Flush(crossbeam_channel::Sender<u64>),
    Shutdown,
}

/// Why a batch was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: try again shortly.
    Full,
    /// The log thread has stopped (fatal error or shutdown).
    Closed,
    /// The disk refuses writes or is nearly full: try again later.
    Stalled,
}

/// Why the log is not taking new events for now (it resumes by itself).
#[derive(Debug, thiserror::Error)]
pub enum LogStall {
    #[error("writing to the event log failed, retrying: {0}")]
    WriteFailed(#[source] SnapshotError),
    #[error("segment files were deleted under the server and could not be written back: {0}")]
    SegmentsDeleted(#[source] SnapshotError),
    #[error(
        "{available_bytes} bytes free for the event log, below the reserve of {reserve_bytes}"
    )]
    LowDisk {
        available_bytes: u64,
        reserve_bytes: u64,
    },
}

/// How far past "now" a logged event may be stamped before replay calls it a clock error (two
/// hosts' clocks, or one clock before and after a small NTP step, disagree by this much).
const FUTURE_TOLERANCE_MS: i64 = 60_000;

/// Events replay found stamped beyond `now + FUTURE_TOLERANCE_MS`: the clock ran ahead when they
/// were logged (or runs behind now). Counting them at their stamps would show visitors in the
/// future and push the engine's clock past every new event, hiding live traffic; so each is
/// counted as of now, and the count is logged and reported.
#[derive(Debug, Default)]
struct FutureEvents {
    events: u64,
    max_ahead_ms: i64,
}

impl FutureEvents {
    /// `now` when `ts` is too far in the future (counted as one such entry), else `None`.
    fn moved_to_now(&mut self, ts: Timestamp, now_ms: i64) -> Option<Timestamp> {
        let ahead_ms = ts.unix_ms().saturating_sub(now_ms);
        if ahead_ms <= FUTURE_TOLERANCE_MS {
            return None;
        }
        let now = Timestamp::from_unix_ms(now_ms).ok()?;
        self.events += 1;
        self.max_ahead_ms = self.max_ahead_ms.max(ahead_ms);
        Some(now)
    }

    fn counted_as_of(&mut self, event: Arc<Event>, now_ms: i64) -> Arc<Event> {
        match self.moved_to_now(event.ts, now_ms) {
            None => event,
            Some(now) => {
                let mut moved = Event::clone(&event);
                moved.ts = now;
                Arc::new(moved)
            }
        }
    }

    /// A touch stamped in the future is counted as of now, as an event is.
    fn touch_as_of(&mut self, mut touch: Touch, now_ms: i64) -> Touch {
        if let Some(now) = self.moved_to_now(touch.ts, now_ms) {
            touch.ts = now;
        }
        touch
    }
}

/// Why `sync_through` could not confirm the log durable up to a sequence number.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("the event log did not write and fsync in time (stalled, or shutting down)")]
    Timeout,
    #[error("the event log is durable up to {durable}, not {seq}")]
    Behind { durable: u64, seq: u64 },
}

/// Why the event log stopped for good. Every kind is fatal: the server shuts down with a
/// non-zero exit rather than acknowledge events it cannot keep.
#[derive(Debug, thiserror::Error)]
pub enum LogFailure {
    #[error("replay failed: {0}")]
    Replay(#[source] SnapshotError),
    #[error("cannot start a segment: {0}")]
    StartSegment(#[source] SnapshotError),
    #[error("append failed: {0}")]
    Append(#[source] SnapshotError),
    #[error("fsync failed: {0}")]
    Fsync(#[source] SnapshotError),
    #[error("cannot start the log thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the log thread panicked")]
    Panicked,
}

/// What the rest of the server can see of the log: readiness, the replay report, fatal errors.
#[derive(Debug)]
pub struct LogStatus {
    ready: AtomicBool,
    replay: Mutex<Option<ReplayReport>>,
    fatal: Mutex<Option<Arc<LogFailure>>>,
    /// Events replay counted as of now because they were stamped in the future.
    future_events: AtomicU64,
    /// The sequence number the first event queued in this process gets (set before `ready`).
    first_seq: AtomicU64,
    /// Set while `stall` holds a reason; read on every submit, so it is an atomic.
    stalled: AtomicBool,
    /// Set when shutdown begins: a replay still running stops counting in the engine (nobody
    /// will ask it again) and only reads the log to its end, to append the queue after it.
    stopping: AtomicBool,
    stall: Mutex<Option<Arc<LogStall>>>,
    fatal_notify: Notify,
    ready_notify: Notify,
    /// Retention keeps every segment with an event at or after this sequence number (the newest
    /// checkpoint's); `u64::MAX` while no checkpoint needs any.
    keep_from_seq: AtomicU64,
    /// The checkpoint loaded at start-up and the last one written.
    pub checkpoints: CheckpointStats,
}

impl Default for LogStatus {
    fn default() -> Self {
        Self {
            ready: AtomicBool::default(),
            replay: Mutex::default(),
            fatal: Mutex::default(),
            future_events: AtomicU64::default(),
            first_seq: AtomicU64::default(),
            stalled: AtomicBool::default(),
            stopping: AtomicBool::default(),
            stall: Mutex::default(),
            fatal_notify: Notify::default(),
            ready_notify: Notify::default(),
            keep_from_seq: AtomicU64::new(u64::MAX),
            checkpoints: CheckpointStats::default(),
        }
    }
}

impl LogStatus {
    /// Keeps every segment with an event at or after `seq` from retention: a durable
    /// checkpoint stands there, and a restart replays the log from it.
    pub fn keep_from(&self, seq: u64) {
        self.keep_from_seq.store(seq, Ordering::Relaxed);
    }

    /// True once replay is done and the log thread runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// True once shutdown has begun. A replay cut short by it left the engine incomplete, so
    /// nothing may be derived from the engine's state (a checkpoint) from then on.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn replay_report(&self) -> Option<ReplayReport> {
        self.replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn fatal_error(&self) -> Option<Arc<LogFailure>> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Events the start-up replay found stamped in the future and counted as of now.
    pub fn future_events(&self) -> u64 {
        self.future_events.load(Ordering::Relaxed)
    }

    /// Why the log refuses new events right now, if it does.
    pub fn stall(&self) -> Option<Arc<LogStall>> {
        self.stall
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Records a new stall reason (or its end), logging each change once.
    fn set_stall(&self, stall: Option<LogStall>) {
        let mut current = self.stall.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*current, &stall) {
            (None, None) => return,
            (None, Some(reason)) => {
                tracing::error!(%reason, "event log stalled: collect answers 503 until it resumes");
            }
            (Some(_), None) => tracing::info!("event log resumed: writes succeed again"),
            (Some(_), Some(_)) => {}
        }
        self.stalled.store(stall.is_some(), Ordering::Release);
        *current = stall.map(Arc::new);
    }

    /// Completes once replay is done and the log takes writes (see `is_ready`).
    pub async fn replayed(&self) {
        loop {
            let notified = self.ready_notify.notified();
            if self.is_ready() {
                return;
            }
            notified.await;
        }
    }

    /// Completes when the log thread hits a fatal error.
    pub async fn fatal(&self) {
        loop {
            let notified = self.fatal_notify.notified();
            if self.fatal_error().is_some() {
                return;
            }
            notified.await;
        }
    }

    fn set_fatal(&self, failure: LogFailure) {
        tracing::error!(error = %failure, "event log failed: shutting down");
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(failure));
        self.fatal_notify.notify_waiters();
        self.fatal_notify.notify_one();
    }
}

#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    sender: Sender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    max_queue_bytes: usize,
    /// Orders queueing and counting together (see `submit`).
    order: Mutex<()>,
    /// Events queued since start: event `n` of this process gets sequence `first_seq + n`,
    /// because the log is gap-free and written in queue order.
    queued_events: AtomicU64,
    durability: Durability,
    status: Arc<LogStatus>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Batch { entries, .. } => write!(f, "Batch({})", entries.len()),
            Self::Flush(_) => f.write_str("Flush"),
            Self::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl EventLog {
    /// Starts the log thread: it replays `options.dir` into `engine`, then serves the queue.
    pub fn start(options: LogOptions, engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(options.queue_capacity.max(1));
        let status = Arc::new(LogStatus::default());
        let durability = options.durability;
        let max_queue_bytes = options.queue_bytes;
        let options_dir = options.dir.clone();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let thread_status = Arc::clone(&status);
        let appender = Appender {
            queued_bytes: Arc::clone(&queued_bytes),
            metrics,
        };
        let thread = std::thread::Builder::new()
            .name("pulse-log".into())
            .spawn(move || {
                let outcome =
                    run_log_thread(&options, &engine, &receiver, &thread_status, &appender);
                if let Err(failure) = outcome {
                    thread_status.set_fatal(failure);
                }
            });
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                status.set_fatal(LogFailure::Spawn(e));
                None
            }
        };
        Self {
            dir: options_dir,
            sender,
            queued_bytes,
            max_queue_bytes,
            order: Mutex::new(()),
            queued_events: AtomicU64::new(0),
            durability,
            status,
            thread: Mutex::new(thread),
        }
    }

    pub fn status(&self) -> &Arc<LogStatus> {
        &self.status
    }

    /// Queues `entries` without waiting and, only if they were queued, hands them to `count`
    /// (the engine). Both happen under one lock, so the engine sees events in exactly the order
    /// the log stores them and a replay rebuilds the same answer, ties included. In `Sync` mode
    /// the returned receiver completes once the entries are fsynced (and is dropped unanswered
    /// if the log thread fails).
    pub fn submit(
        &self,
        entries: Vec<LogEntry>,
        count: impl FnOnce(Vec<LogEntry>),
    ) -> Result<Option<oneshot::Receiver<()>>, SubmitError> {
        let (durable, receiver) = if self.durability == Durability::Sync {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let counted = entries.clone();
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if self.status.is_stalled() {
            return Err(SubmitError::Stalled);
        }
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > self.max_queue_bytes {
            return Err(SubmitError::Full);
        }
        let message = Message::Batch {
            entries,
            bytes,
            durable,
        };
        match self.sender.try_send(message) {
            Ok(()) => {
                self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
                self.queued_events
                    .fetch_add(counted.len() as u64, Ordering::Relaxed);
                count(counted);
                Ok(receiver)
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Runs `f` with the sequence number the next event queued will get, while no event can be
    /// queued or counted: whatever `f` reads from the engine holds exactly the events below
    /// that number. Every submit waits meanwhile, so `f` must be short. `None` before replay is
    /// done.
    pub fn at_log_position<T>(&self, f: impl FnOnce(u64) -> T) -> Option<T> {
        if !self.status.is_ready() {
            return None;
        }
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let next_seq = self.status.first_seq.load(Ordering::Acquire)
            + self.queued_events.load(Ordering::Relaxed);
        Some(f(next_seq))
    }

    /// Waits until every event below `seq` is written and fsynced, asking the log thread for an
    /// fsync now. Blocking; gives up after `timeout` (a stalled or stopped log).
    pub fn sync_through(&self, seq: u64, timeout: Duration) -> Result<(), FlushError> {
        let deadline = Instant::now() + timeout;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.sender
            .send_deadline(Message::Flush(reply), deadline)
            .map_err(|_| FlushError::Timeout)?;
        match answer.recv_deadline(deadline) {
            Ok(durable) if durable >= seq => Ok(()),
            Ok(durable) => Err(FlushError::Behind { durable, seq }),
            Err(_) => Err(FlushError::Timeout),
        }
    }

    /// Bytes free for the log on its file system, if they can be read.
    pub fn disk_available_bytes(&self) -> Option<u64> {
        pulse_snapshot::writer::available_bytes(&self.dir).ok()
    }

    /// The sequence number the next event queued will get, once replay is done (`None` before:
    /// the log does not know where it ends yet).
    pub fn next_seq(&self) -> Option<u64> {
        if !self.status.is_ready() {
            return None;
        }
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        Some(
            self.status.first_seq.load(Ordering::Acquire)
                + self.queued_events.load(Ordering::Relaxed),
        )
    }

    /// Batches waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.sender.len()
    }

    /// How many segment files the log has and their total size (read from the directory).
    pub fn segment_files(&self) -> (usize, u64) {
        pulse_snapshot::segment::list_segments(&self.dir)
            .map(|segments| {
                let bytes = segments
                    .iter()
                    .filter_map(|(_, path)| std::fs::metadata(path).ok())
                    .map(|m| m.len())
                    .sum();
                (segments.len(), bytes)
            })
            .unwrap_or((0, 0))
    }

    /// Estimated bytes held by queued events, and the most they may hold.
    pub fn queue_bytes(&self) -> (usize, usize) {
        (
            self.queued_bytes.load(Ordering::Relaxed),
            self.max_queue_bytes,
        )
    }

    /// Asks the log thread to write and fsync everything queued, then waits for it to stop.
    /// Blocking: call it from a blocking context.
    pub fn shutdown(&self) {
        self.status.stopping.store(true, Ordering::Relaxed);
        let _ = self.sender.send(Message::Shutdown);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                self.status.set_fatal(LogFailure::Panicked);
            }
        }
    }
}

/// A failed append: retried while the disk refuses writes, fatal once an fsync has failed.
enum WriteError {
    Retry(SnapshotError),
    Fatal(LogFailure),
}

impl WriteError {
    fn classify(error: SnapshotError) -> Self {
        if error.is_sync_failure() {
            Self::Fatal(LogFailure::Fsync(error))
        } else {
            Self::Retry(error)
        }
    }
}

/// Appends and fsyncs on the log thread, releasing the queue bytes it wrote and timing both for
/// the metrics it shares with the rest of the server.
struct Appender {
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Appender {
    fn append(
        &self,
        segment: &mut SegmentWriter,
        entries: &[LogEntry],
        bytes: usize,
    ) -> Result<(), WriteError> {
        let started = Instant::now();
        segment
            .append(entries, clock::now_ms())
            .map_err(WriteError::classify)?;
        self.metrics.record_log_flush(started.elapsed());
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&self, segment: &mut SegmentWriter) -> Result<(), LogFailure> {
        if !segment.has_unsynced() {
            return Ok(());
        }
        let started = Instant::now();
        segment.sync().map_err(LogFailure::Fsync)?;
        self.metrics.record_log_fsync(started.elapsed());
        Ok(())
    }
}

/// The log thread's whole life: replay into the engine, open a fresh segment, then serve the
/// queue until shutdown.
fn run_log_thread(
    options: &LogOptions,
    engine: &Engine,
    receiver: &Receiver<Message>,
    status: &LogStatus,
    appender: &Appender,
) -> Result<(), LogFailure> {
    let now_ms = clock::now_ms();
    // A checkpoint, when there is a usable one, holds each website up to its own sequence
    // number: replay counts only what comes after (see `checkpoints::restore`).
    let restored = options
        .checkpoint_dir
        .as_deref()
        .and_then(|dir| checkpoints::restore(dir, engine, &options.log_starts, now_ms, status));
    let starts = restored
        .as_ref()
        .map_or(&options.log_starts, |restored| &restored.starts);
    let replay_options = ReplayOptions {
        skip_before_ms: now_ms - options.window_ms,
        skip_below_seq: restored.as_ref().map_or(0, |r| r.replay_from_seq),
    };
    let mut future = FutureEvents::default();
    let mut superseded: u64 = 0;
    let mut uncounted: u64 = 0;
    let report = replay(&options.dir, replay_options, |logged| {
        if status.stopping.load(Ordering::Relaxed) {
            // Shutting down: the log must still be read to its end (torn tails, damage, the next
            // sequence number), but counting in memory would only delay the exit.
            uncounted += 1;
            return;
        }
        let website = logged.entry.website();
        if starts.get(website).is_some_and(|&start| logged.seq < start) {
            if options
                .log_starts
                .get(website)
                .is_some_and(|&start| logged.seq < start)
            {
                // Logged for a deleted website whose id was used again: never counted.
                superseded += 1;
            }
            // Otherwise the checkpoint holds it already.
            return;
        }
        // Entries of websites deleted since they were logged have nowhere to go.
        match logged.entry {
            LogEntry::Event {
                event,
                carried_from,
            } => {
                let event = future.counted_as_of(event, now_ms);
                let _ = engine.ingest(event, carried_from);
            }
            LogEntry::Touch {
                touch,
                carried_from,
            } => {
                let touch = future.touch_as_of(touch, now_ms);
                let _ = engine.touch(&touch, carried_from);
            }
        }
    })
    .map_err(LogFailure::Replay)?;
    if future.events > 0 {
        tracing::error!(
            events = future.events,
            max_ahead_secs = future.max_ahead_ms / 1000,
            "the log holds events stamped ahead of the system clock (it ran ahead, or runs \
             behind now): they are counted as of now; check the system clock"
        );
    }
    status.future_events.store(future.events, Ordering::Relaxed);
    tracing::info!(
        events = report.events,
        segments = report.segments_read,
        skipped = report.segments_skipped,
        corrupt = report.broken.len(),
        set_aside = report.set_aside.len(),
        ms = report.duration.as_millis() as u64,
        "replay done"
    );
    if uncounted > 0 {
        tracing::info!(
            events = uncounted,
            "shutdown began during replay: the rest of the log was read but not counted"
        );
    }
    if superseded > 0 {
        tracing::info!(
            events = superseded,
            "replay left out events of deleted websites whose ids were used again"
        );
    }
    // A website created just before a crash may have been promised a sequence number the crash
    // never wrote; starting at or past it keeps every later event of that website countable.
    let max_start = options.log_starts.values().copied().max().unwrap_or(0);
    let mut first_seq = report.next_seq.max(max_start);
    if let Some(restored) = &restored {
        if restored.max_seq > report.next_seq {
            // Never when the checkpoint was installed after the log's fsync, as it is: the log
            // lost events it had made durable. Numbering on from the checkpoint keeps new events
            // from being taken for ones it holds.
            tracing::error!(
                log_ends_at = report.next_seq,
                checkpoint_at = restored.max_seq,
                "the checkpoint holds events the event log no longer has"
            );
        }
        first_seq = first_seq.max(restored.max_seq);
        status.keep_from(restored.replay_from_seq);
    }
    let mut segment = SegmentWriter::create(&options.dir, first_seq, now_ms, options.limits)
        .map_err(LogFailure::StartSegment)?;
    segment.keep_from(status.keep_from_seq.load(Ordering::Relaxed));
    if let Err(e) = segment.enforce_retention(now_ms) {
        tracing::warn!(error = %e, "retention could not delete old segments");
    }
    segment
        .hold_sealed(now_ms - options.window_ms)
        .map_err(LogFailure::StartSegment)?;
    *status.replay.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
    status.first_seq.store(first_seq, Ordering::Release);
    status.ready.store(true, Ordering::Release);
    status.ready_notify.notify_waiters();
    write_loop(options, &mut segment, receiver, appender, status)
}

/// Events drained from the queue and not yet written, with the handlers waiting for their fsync.
#[derive(Default)]
struct Pending {
    entries: Vec<LogEntry>,
    bytes: usize,
    waiting: Vec<oneshot::Sender<()>>,
    flushes: Vec<crossbeam_channel::Sender<u64>>,
}

impl Pending {
    fn take(&mut self, message: Message) -> bool {
        match message {
            Message::Batch {
                entries,
                bytes,
                durable,
            } => {
                self.entries.extend(entries);
                self.bytes += bytes;
                self.waiting.extend(durable);
                false
            }
            Message::Flush(reply) => {
                self.flushes.push(reply);
                false
            }
            Message::Shutdown => true,
        }
    }

    /// Writes the pending entries. `Ok(None)`: written (or nothing to write); `Ok(Some(error))`:
    /// the disk refused, everything stays pending for a retry.
    fn write(
        &mut self,
        appender: &Appender,
        segment: &mut SegmentWriter,
    ) -> Result<Option<SnapshotError>, LogFailure> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        match appender.append(segment, &self.entries, self.bytes) {
            Ok(()) => {
                self.entries.clear();
                self.bytes = 0;
                Ok(None)
            }
            Err(WriteError::Retry(error)) => Ok(Some(error)),
            Err(WriteError::Fatal(failure)) => Err(failure),
        }
    }

    /// Tells the handlers waiting for an fsync that it happened (only once their entries are
    /// written, so never while a write is pending), and flush requests how far the log is
    /// durable.
    fn acknowledge(&mut self, durable_seq: u64) {
        if self.entries.is_empty() {
            for done in self.waiting.drain(..) {
                let _ = done.send(());
            }
            for reply in self.flushes.drain(..) {
                let _ = reply.send(durable_seq);
            }
        }
    }
}

/// Writes back segment files deleted under the running server, loudly: the events in them were
/// acknowledged, and the next start must find them.
fn restore_deleted_segments(
    segment: &mut SegmentWriter,
    window_ms: i64,
    appender: &Appender,
) -> Result<(), SnapshotError> {
    let restored = segment.restore_unlinked(clock::now_ms() - window_ms)?;
    if !restored.is_empty() {
        tracing::error!(
            segments = restored.len(),
            "SEGMENT FILES DELETED under the running server: written back from open handles"
        );
        appender
            .metrics
            .record_segments_restored(restored.len() as u64);
    }
    Ok(())
}

/// Free space below the reserve, as a stall reason (`None` when there is room or no reserve).
fn check_reserve(segment: &SegmentWriter, reserve_bytes: u64) -> Option<LogStall> {
    if reserve_bytes == 0 {
        return None;
    }
    match segment.available_bytes() {
        Ok(available_bytes) if available_bytes < reserve_bytes => Some(LogStall::LowDisk {
            available_bytes,
            reserve_bytes,
        }),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%error, "cannot read the free space of the log's file system");
            None
        }
    }
}

fn write_loop(
    options: &LogOptions,
    segment: &mut SegmentWriter,
    receiver: &Receiver<Message>,
    appender: &Appender,
    status: &LogStatus,
) -> Result<(), LogFailure> {
    let mut last_sync = Instant::now();
    let mut pending = Pending::default();
    let mut retrying = false;
    // Whether free space or deleted segments hold new events back (checked once a second).
    let mut held_back = check_reserve(segment, options.disk_reserve_bytes).is_some();
    let mut last_space_check = Instant::now();
    let mut stopping = false;
    while !stopping {
        let timeout = match options.durability {
            _ if retrying => STALL_RETRY,
            Durability::Interval if segment.has_unsynced() => {
                options.fsync_interval.saturating_sub(last_sync.elapsed())
            }
            _ => SPACE_CHECK_INTERVAL,
        };
        let mut next = match receiver.recv_timeout(timeout) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                stopping = true;
                None
            }
        };
        // Gather everything already queued into one write (and, in sync mode, one fsync).
        while let Some(message) = next.take() {
            stopping |= pending.take(message);
            if pending.entries.len() < MAX_ENTRIES_PER_WRITE {
                next = receiver.try_recv().ok();
            }
        }
        segment.keep_from(status.keep_from_seq.load(Ordering::Relaxed));
        let had_entries = !pending.entries.is_empty();
        let failed = pending.write(appender, segment)?;
        retrying = failed.is_some();
        let wrote = had_entries && !retrying;
        if last_space_check.elapsed() >= SPACE_CHECK_INTERVAL || (wrote && status.is_stalled()) {
            // A write succeeding after a stall ends it at once; otherwise the segment files and
            // free space are checked once a second.
            last_space_check = Instant::now();
            let mut stall = check_reserve(segment, options.disk_reserve_bytes);
            if let Err(error) = restore_deleted_segments(segment, options.window_ms, appender) {
                stall = Some(LogStall::SegmentsDeleted(error));
            }
            held_back = stall.is_some();
            if failed.is_none() {
                status.set_stall(stall);
            }
        }
        if let Some(error) = failed {
            status.set_stall(Some(LogStall::WriteFailed(error)));
        } else if !held_back {
            status.set_stall(None);
        }
        let sync_due = !pending.flushes.is_empty()
            || match options.durability {
                Durability::Sync => !pending.waiting.is_empty(),
                Durability::Interval => last_sync.elapsed() >= options.fsync_interval,
                Durability::None => false,
            };
        if sync_due || stopping {
            appender.sync(segment)?;
            last_sync = Instant::now();
            pending.acknowledge(segment.next_seq());
        }
        if wrote && !stopping && options.durability != Durability::Sync {
            std::thread::sleep(WRITE_LINGER);
        }
    }
    // Whatever was queued after the shutdown message is written too before the thread ends, and
    // a stalled disk gets `SHUTDOWN_RETRY` to take it.
    while let Ok(message) = receiver.try_recv() {
        pending.take(message);
    }
    let deadline = Instant::now() + SHUTDOWN_RETRY;
    while let Some(error) = pending.write(appender, segment)? {
        if Instant::now() >= deadline {
            tracing::error!(
                unwritten_events = pending.entries.len(),
                "shutdown gave up waiting for the disk: these acknowledged events are lost"
            );
            return Err(LogFailure::Append(error));
        }
        tracing::warn!(%error, queued = pending.entries.len(), "shutdown waits for the disk");
        std::thread::sleep(STALL_RETRY);
    }
    appender.sync(segment)?;
    pending.acknowledge(segment.next_seq());
    tracing::info!(
        next_seq = segment.next_seq(),
        "event log flushed and closed"
    );
    Ok(())
}
