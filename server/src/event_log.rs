//! `EventLog`: the bounded queue between request handlers and the disk, and the writer thread
//! behind it that replays the log at start-up, then appends, fsyncs and rolls segments.
//!
//! Handlers never wait on the disk: they `submit` a batch and get `Full` back at once when the
//! queue is at capacity (the route answers 503). What a 202 promises is `Durability`'s:
//! - `Interval`: written when the writer next drains the queue (within `WRITE_LINGER`, 5 ms, of
//!   the previous write) and fsynced at least every `fsync_interval`;
//! - `Sync`: the handler awaits the fsync that covers its batch; every batch drained together
//!   shares one fsync (group commit);
//! - `None`: written as in `Interval`; the OS decides when it reaches the disk.
//!
//! A failed write or fsync is fatal: the writer stops, `fatal` fires and the server shuts down
//! with a non-zero exit. It never retries an fsync (after a failure the kernel may have dropped
//! the dirty pages, so a retry could report success for data that is gone).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use pulse_engine::{Engine, Event};
use pulse_snapshot::{replay, LogEntry, ReplayOptions, ReplayReport, SegmentLimits, SegmentWriter};
use tokio::sync::{oneshot, Notify};

use crate::clock;
use crate::metrics::Metrics;

/// Estimated bytes one queued entry holds (the event, its strings and the `Arc` headers).
fn entry_bytes(entry: &LogEntry) -> usize {
    std::mem::size_of::<Event>()
        + entry.event.target.len()
        + entry.event.referrer_domain.as_ref().map_or(0, |r| r.len())
        + 64
}

/// When an accepted event reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    Interval,
    Sync,
    None,
}

/// How the writer thread is set up.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub dir: PathBuf,
    pub durability: Durability,
    pub fsync_interval: Duration,
    pub limits: SegmentLimits,
    /// Batches the queue holds (each at most one request's events).
    pub queue_capacity: usize,
    /// Bytes the queued events may hold together.
    pub queue_bytes: usize,
    /// Events at or before `now - window_ms` need not be replayed.
    pub window_ms: i64,
}

/// Most entries the writer gathers before writing, so one huge backlog does not become one
/// huge record set held in memory twice.
const MAX_ENTRIES_PER_WRITE: usize = 16 * 1024;

/// How long the writer lets the queue fill after a write in `Interval` and `None` modes before
/// it drains again. Without it, under load every request wakes the parked writer (a futex call
/// and a context switch on the handler's core) for a one-event `write`; with it, one write
/// carries a few milliseconds of traffic and handlers never wake anyone. On 2 cores this took
/// single-event ingest from ~17 to ~13 µs of server CPU per request (BENCHMARKS.md). The first
/// event after an idle spell is still written at once, and 5 ms keeps the promise of being
/// written within milliseconds. `Sync` never lingers: there a handler waits for the fsync.
const WRITE_LINGER: Duration = Duration::from_millis(5);

enum Message {
    Batch {
        entries: Vec<LogEntry>,
        bytes: usize,
        durable: Option<oneshot::Sender<()>>,
    },
    Shutdown,
}

/// Why a batch was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: try again shortly.
    Full,
    /// The writer has stopped (fatal error or shutdown).
    Closed,
}

/// What the rest of the server can see of the log: readiness, the replay report, fatal errors.
#[derive(Debug, Default)]
pub struct LogStatus {
    ready: AtomicBool,
    replay: Mutex<Option<ReplayReport>>,
    fatal: Mutex<Option<String>>,
    fatal_notify: Notify,
}

impl LogStatus {
    /// True once replay is done and the writer runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn replay_report(&self) -> Option<ReplayReport> {
        self.replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn fatal_error(&self) -> Option<String> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Completes when the writer hits a fatal error.
    pub async fn fatal(&self) {
        loop {
            let notified = self.fatal_notify.notified();
            if self.fatal_error().is_some() {
                return;
            }
            notified.await;
        }
    }

    fn set_fatal(&self, message: String) {
        tracing::error!(error = %message, "event log failed: shutting down");
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
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
    durability: Durability,
    status: Arc<LogStatus>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Batch { entries, .. } => write!(f, "Batch({})", entries.len()),
            Self::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl EventLog {
    /// Starts the writer thread: it replays `options.dir` into `engine`, then serves the queue.
    pub fn start(options: LogOptions, engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(options.queue_capacity.max(1));
        let status = Arc::new(LogStatus::default());
        let durability = options.durability;
        let max_queue_bytes = options.queue_bytes;
        let options_dir = options.dir.clone();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let thread_status = Arc::clone(&status);
        let writer = Writer {
            queued_bytes: Arc::clone(&queued_bytes),
            metrics,
        };
        let thread = std::thread::Builder::new()
            .name("pulse-log".into())
            .spawn(move || {
                let outcome = writer_main(&options, &engine, &receiver, &thread_status, &writer);
                if let Err(message) = outcome {
                    thread_status.set_fatal(message);
                }
            });
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                status.set_fatal(format!("cannot start the log writer thread: {e}"));
                None
            }
        };
        Self {
            dir: options_dir,
            sender,
            queued_bytes,
            max_queue_bytes,
            order: Mutex::new(()),
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
    /// if the writer fails).
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
                count(counted);
                Ok(receiver)
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
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

    /// Asks the writer to write and fsync everything queued, then waits for it to stop.
    /// Blocking: call it from a blocking context.
    pub fn shutdown(&self) {
        let _ = self.sender.send(Message::Shutdown);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                self.status
                    .set_fatal("the log writer thread panicked".into());
            }
        }
    }
}

/// What the writer thread shares with the rest of the server.
struct Writer {
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn append(
        &self,
        segment: &mut SegmentWriter,
        entries: &[LogEntry],
        bytes: usize,
    ) -> Result<(), String> {
        let started = Instant::now();
        segment
            .append(entries, clock::now_ms())
            .map_err(|e| format!("append failed: {e}"))?;
        self.metrics.record_log_flush(started.elapsed());
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&self, segment: &mut SegmentWriter) -> Result<(), String> {
        if !segment.has_unsynced() {
            return Ok(());
        }
        let started = Instant::now();
        segment.sync().map_err(|e| format!("fsync failed: {e}"))?;
        self.metrics.record_log_fsync(started.elapsed());
        Ok(())
    }
}

fn writer_main(
    options: &LogOptions,
    engine: &Engine,
    receiver: &Receiver<Message>,
    status: &LogStatus,
    shared: &Writer,
) -> Result<(), String> {
    let now_ms = clock::now_ms();
    let replay_options = ReplayOptions {
        skip_before_ms: now_ms - options.window_ms,
    };
    let report = replay(&options.dir, replay_options, |logged| {
        // Events of websites deleted since they were logged have nowhere to go.
        let _ = engine.ingest(logged.entry.event, logged.entry.carried_from);
    })
    .map_err(|e| format!("replay failed: {e}"))?;
    tracing::info!(
        events = report.events,
        segments = report.segments_read,
        skipped = report.segments_skipped,
        corrupt = report.broken.len(),
        ms = report.duration.as_millis() as u64,
        "replay done"
    );
    let mut writer = SegmentWriter::create(&options.dir, report.next_seq, now_ms, options.limits)
        .map_err(|e| format!("cannot start a segment: {e}"))?;
    if let Err(e) = writer.enforce_retention(now_ms) {
        tracing::warn!(error = %e, "retention could not delete old segments");
    }
    *status.replay.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
    status.ready.store(true, Ordering::Release);
    write_loop(options, &mut writer, receiver, shared)
}

fn write_loop(
    options: &LogOptions,
    writer: &mut SegmentWriter,
    receiver: &Receiver<Message>,
    shared: &Writer,
) -> Result<(), String> {
    let mut last_sync = Instant::now();
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut entries_bytes = 0;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut stopping = false;
    while !stopping {
        let timeout = match options.durability {
            Durability::Interval if writer.has_unsynced() => {
                options.fsync_interval.saturating_sub(last_sync.elapsed())
            }
            _ => Duration::from_secs(1),
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
            match message {
                Message::Batch {
                    entries: batch,
                    bytes,
                    durable,
                } => {
                    entries.extend(batch);
                    entries_bytes += bytes;
                    waiting.extend(durable);
                }
                Message::Shutdown => stopping = true,
            }
            if entries.len() < MAX_ENTRIES_PER_WRITE {
                next = receiver.try_recv().ok();
            }
        }
        let wrote = !entries.is_empty();
        if wrote {
            shared.append(writer, &entries, entries_bytes)?;
            entries.clear();
            entries_bytes = 0;
        }
        let sync_due = match options.durability {
            Durability::Sync => !waiting.is_empty(),
            Durability::Interval => last_sync.elapsed() >= options.fsync_interval,
            Durability::None => false,
        };
        if sync_due || stopping {
            shared.sync(writer)?;
            last_sync = Instant::now();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        if wrote && !stopping && options.durability != Durability::Sync {
            std::thread::sleep(WRITE_LINGER);
        }
    }
    // Whatever was queued after the shutdown message is written too before the thread ends.
    while let Ok(Message::Batch {
        entries: batch,
        bytes,
        durable,
    }) = receiver.try_recv()
    {
        shared.append(writer, &batch, bytes)?;
        waiting.extend(durable);
    }
    shared.sync(writer)?;
    for done in waiting.drain(..) {
        let _ = done.send(());
    }
    tracing::info!(next_seq = writer.next_seq(), "event log flushed and closed");
    Ok(())
}
