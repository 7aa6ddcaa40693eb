//! Checkpoints of the engine, so a restart replays only the log written since the last one:
//! `restore` at start-up (on the log thread, before replay), `write` every
//! `--checkpoint-interval-secs` from a background task, and `CheckpointStats` for `/readyz` and
//! `/metrics`. The file format and its atomic write are `pulse_snapshot::checkpoint`'s.
//!
//! **The invariant.** A checkpoint holds, for each website W, exactly W's events with a sequence
//! number below `seq_W`, and the log holds every one of them durably before the checkpoint is
//! installed. `seq_W` is read and W copied while `EventLog`'s submit lock is held
//! (`EventLog::at_log_position`): a batch is numbered (by its place in the queue) and counted in
//! the engine under that same lock, so no event is in flight between the two — every event below
//! `seq_W` is in the copy and none from it on. Websites are copied one at a time, each under the
//! lock for as long as its copy takes (one pass over its visitor windows), so ingest pauses for
//! the largest website's copy, never for the whole checkpoint. Before the file is renamed into
//! place the log thread writes and fsyncs everything queued (`EventLog::sync_through`), so a crash
//! at any moment leaves a checkpoint whose events the log also has, and the next event numbered
//! after a restart is past every `seq_W`.
//!
//! A checkpoint may only make a restart faster, never change an answer: one that is damaged,
//! from another format, made under other engine limits, or stamped in the future of this start
//! is ignored with a log line and the whole log is replayed, and a website deleted after its
//! copy is left to the log (`Checkpoint::restore`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pulse_engine::{Engine, EngineError, WebsiteId};
use pulse_snapshot::checkpoint::{self, Checkpoint, Restored, WebsiteCheckpoint};
use pulse_snapshot::SnapshotError;

use crate::clock;
use crate::event_log::{FlushError, LogStatus};
use crate::state::AppState;

/// How far in the future of a start a checkpoint's creation time may be before it is ignored
/// (the same tolerance replay gives events).
const FUTURE_TOLERANCE_MS: i64 = 60_000;
/// How long a checkpoint waits for the log to be durable up to it before it gives up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where checkpoints go and how often.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub dir: PathBuf,
    /// `None`: checkpoints are disabled (neither written nor loaded).
    pub interval: Option<Duration>,
    /// Slept between 64 KiB writes of a checkpoint file: zero, except in tests that stop the
    /// server mid-write.
    pub write_pace: Duration,
}

/// The checkpoint loaded at start-up.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    pub path: PathBuf,
    pub seq: u64,
    pub websites: usize,
    pub duration: Duration,
}

/// What `/readyz` and `/metrics` show of checkpoints.
#[derive(Debug)]
pub struct CheckpointStats {
    /// Creation time of the newest checkpoint on disk (unix ms), `i64::MIN` for none.
    created_ms: AtomicI64,
    bytes: AtomicU64,
    write_micros: AtomicU64,
    /// The longest the submit lock was held for one website's copy, in the last checkpoint.
    longest_pause_micros: AtomicU64,
    loaded: Mutex<Option<LoadedCheckpoint>>,
    /// Checkpoint files refused at start-up.
    refused: AtomicU64,
}

impl Default for CheckpointStats {
    fn default() -> Self {
        Self {
            created_ms: AtomicI64::new(i64::MIN),
            bytes: AtomicU64::new(0),
            write_micros: AtomicU64::new(0),
            longest_pause_micros: AtomicU64::new(0),
            loaded: Mutex::new(None),
            refused: AtomicU64::new(0),
        }
    }
}

/// The last checkpoint written, as `/metrics` shows it.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointReading {
    pub age: Duration,
    pub bytes: u64,
    pub write_duration: Duration,
    pub longest_pause: Duration,
}

impl CheckpointStats {
    /// The checkpoint loaded at start-up, if one was.
    pub fn loaded(&self) -> Option<LoadedCheckpoint> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Checkpoint files refused at start-up.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The newest checkpoint (loaded or written) at `now_ms`, if there is one.
    pub fn reading(&self, now_ms: i64) -> Option<CheckpointReading> {
        let created_ms = self.created_ms.load(Ordering::Relaxed);
        (created_ms != i64::MIN).then(|| CheckpointReading {
            age: Duration::from_millis(u64::try_from(now_ms - created_ms).unwrap_or(0)),
            bytes: self.bytes.load(Ordering::Relaxed),
            write_duration: Duration::from_micros(self.write_micros.load(Ordering::Relaxed)),
            longest_pause: Duration::from_micros(self.longest_pause_micros.load(Ordering::Relaxed)),
        })
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Puts the newest usable checkpoint in `dir` into `engine` (whose websites are registered,
/// empty) and says where replay takes over; `None`, with a log line saying why, when there is
/// none to use — then the whole log is replayed.
pub fn restore(
    dir: &Path,
    engine: &Engine,
    log_starts: &HashMap<WebsiteId, u64>,
    now_ms: i64,
    status: &LogStatus,
) -> Option<Restored> {
    let started = Instant::now();
    let stats = &status.checkpoints;
    let loaded = match checkpoint::load_newest(dir, engine.limits()) {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::warn!(%error, "cannot read the checkpoints: replaying the whole log");
            return None;
        }
    };
    for (path, reason) in &loaded.refused {
        tracing::warn!(checkpoint = %path.display(), %reason, "checkpoint ignored");
    }
    stats
        .refused
        .store(loaded.refused.len() as u64, Ordering::Relaxed);
    let Some((found, path)) = loaded.checkpoint else {
        if !loaded.refused.is_empty() {
            tracing::warn!("no usable checkpoint: replaying the whole log");
        }
        return None;
    };
    if found.created_ms > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            checkpoint = %path.display(),
            ahead_secs = (found.created_ms - now_ms) / 1000,
            "checkpoint ignored: made in the future of this start (the clock ran ahead, or runs \
             behind now); replaying the whole log"
        );
        return None;
    }
    let (seq, created_ms) = (found.seq, found.created_ms);
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    match found.restore(engine, log_starts) {
        Ok(restored) => {
            let duration = started.elapsed();
            tracing::info!(
                checkpoint = %path.display(),
                seq,
                websites = restored.websites,
                left_out = restored.left_out,
                replay_from_seq = restored.replay_from_seq,
                ms = duration.as_millis() as u64,
                "checkpoint loaded: replaying the log after it"
            );
            stats.created_ms.store(created_ms, Ordering::Relaxed);
            stats.bytes.store(bytes, Ordering::Relaxed);
            *stats.loaded.lock().unwrap_or_else(PoisonError::into_inner) = Some(LoadedCheckpoint {
                path,
                seq,
                websites: restored.websites,
                duration,
            });
            Some(restored)
        }
        Err(error) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                checkpoint = %path.display(),
                %error,
                "checkpoint ignored: its state does not fit the engine; replaying the whole log"
            );
            None
        }
    }
}

/// Why a checkpoint was not written. The next one is tried at the next interval.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    #[error("the log is still replaying")]
    NotReady,
    #[error("copying website {website}: {source}")]
    Export {
        website: WebsiteId,
        source: EngineError,
    },
    #[error("the event log is not durable up to the checkpoint: {0}")]
    Flush(#[source] FlushError),
    #[error(transparent)]
    File(#[from] SnapshotError),
}

/// A checkpoint written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub seq: u64,
    pub bytes: u64,
    pub websites: usize,
    pub duration: Duration,
    pub longest_pause: Duration,
}

/// Writes one checkpoint of every website (see the module comment for the invariant).
/// Blocking: call it from a blocking context.
pub fn write(state: &AppState) -> Result<Written, CheckpointFailure> {
    if state.log.status().is_stopping() {
        // A replay stopped by shutdown leaves the engine short of the log: never checkpoint it.
        return Err(CheckpointFailure::NotReady);
    }
    let started = Instant::now();
    let created_ms = clock::now_ms();
    let first_seq = state.log.next_seq().ok_or(CheckpointFailure::NotReady)?;
    let mut websites = Vec::new();
    let mut longest_pause = Duration::ZERO;
    for id in state.engine.website_ids() {
        let copied = state.log.at_log_position(|seq| {
            let locked = Instant::now();
            let copy = state.engine.export_website(&id);
            (seq, copy, locked.elapsed())
        });
        let Some((seq, copy, pause)) = copied else {
            return Err(CheckpointFailure::NotReady);
        };
        longest_pause = longest_pause.max(pause);
        match copy {
            Ok(export) => websites.push(WebsiteCheckpoint {
                id,
                seq,
                state: export,
            }),
            // Deleted since the list was taken: the log says what happens to its events.
            Err(EngineError::UnknownWebsite) => {}
            Err(source) => {
                return Err(CheckpointFailure::Export {
                    website: id,
                    source,
                })
            }
        }
    }
    let seq = websites.iter().map(|w| w.seq).min().unwrap_or(first_seq);
    let max_seq = websites.iter().map(|w| w.seq).max().unwrap_or(first_seq);
    let count = websites.len();
    let found = Checkpoint {
        seq,
        created_ms,
        limits: *state.engine.limits(),
        websites,
    };
    let bytes = checkpoint::encode(&found)?;
    drop(found);
    state
        .log
        .sync_through(max_seq, FLUSH_TIMEOUT)
        .map_err(CheckpointFailure::Flush)?;
    let settings = &state.checkpoints;
    let written = checkpoint::write_checkpoint(&settings.dir, seq, &bytes, settings.write_pace)?;
    let status = state.log.status();
    status.keep_from(seq);
    let duration = started.elapsed();
    let stats = &status.checkpoints;
    stats.created_ms.store(created_ms, Ordering::Relaxed);
    stats.bytes.store(written.bytes, Ordering::Relaxed);
    stats
        .write_micros
        .store(micros(duration), Ordering::Relaxed);
    stats
        .longest_pause_micros
        .store(micros(longest_pause), Ordering::Relaxed);
    Ok(Written {
        path: written.path,
        seq,
        bytes: written.bytes,
        websites: count,
        duration,
        longest_pause,
    })
}

/// Writes a checkpoint every `interval` once replay is done, until the task is aborted.
pub async fn run(state: Arc<AppState>, interval: Duration) {
    state.log.status().replayed().await;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let task_state = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || write(&task_state)).await {
            Ok(Ok(written)) => tracing::debug!(
                checkpoint = %written.path.display(),
                seq = written.seq,
                bytes = written.bytes,
                websites = written.websites,
                ms = written.duration.as_millis() as u64,
                longest_pause_us = micros(written.longest_pause),
                "checkpoint written"
            ),
            Ok(Err(error)) => tracing::warn!(%error, "checkpoint not written"),
            Err(error) => tracing::error!(%error, "the checkpoint task failed"),
        }
    }
}
