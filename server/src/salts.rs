//! `SaltStore`: the daily salts in memory and in a `SaltVault` — files on disk (`SaltFiles`) in
//! local mode, a key-value bucket shared by every node in cluster mode (`cluster::salts`).
//!
//! Each UTC day's salt is 32 random bytes in `<data-dir>/salts/<day>.salt` (mode 0600, the
//! directory 0700), created when first needed, so a restart keeps visitor ids stable. Yesterday's
//! salt is deleted as soon as the carry-over after midnight has passed. Which salt applies to an
//! event is the engine's `SaltSchedule`; this module only adds randomness and storage.
//! A vault hands out one salt per day whoever asks first (`SaltVault::salt_for`), so in a
//! cluster two nodes never pick different salts for one day.
//!
//! Collect reads the schedule on every request, so it is an `ArcSwap` snapshot: reading takes
//! no lock. Rotation and expiry take `maintenance` (a mutex only maintainers take), work on a
//! copy, write the new salt before publishing the copy (ids must be reproducible after a
//! restart) and delete dropped salts after. A request waits for a maintainer only when the
//! published schedule cannot identify it at all — the first requests of a new UTC day, which
//! need that day's salt; expiring yesterday's salt never makes a request wait. That wait is
//! bounded (`FETCH_WAIT`, off the async workers), and after a failed fetch requests fail at once
//! for `FETCH_RETRY` instead of each asking the vault again: a cluster whose NATS is down at
//! midnight must answer 503 quickly, not hold every request and worker for the key-value
//! timeout in turn. So that a working vault is never waited on at midnight at all, the
//! maintenance timer fetches the next day's salt in the last `PREFETCH_AHEAD_MS` of a day
//! (`prefetch`), and vaults keep tomorrow's salt across a restart.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Mutex as TimedMutex, MutexGuard as TimedGuard};
use pulse_engine::{DailySalt, EngineError, Identity, Salt, SaltSchedule, Timestamp};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::atomic_file::{remove_durably, write_atomically};

/// Where the daily salts are kept between runs (and, in a cluster, shared). Called under the
/// salt store's maintenance lock, possibly from the async runtime's threads.
pub trait SaltVault: Send + Sync + std::fmt::Debug {
    /// Today's salt (created when missing) and yesterday's if it is kept; tomorrow's, fetched
    /// ahead of midnight (`SaltStore::prefetch`), stays kept; every other kept salt is
    /// destroyed.
    fn open(&self, today: i64) -> io::Result<(DailySalt, Option<DailySalt>)>;
    /// The salt of `day`: the one kept, else a fresh one kept from now on. Never two different
    /// salts for one day, whoever asks.
    fn salt_for(&self, day: i64) -> io::Result<DailySalt>;
    /// Destroys the kept copy of `day`'s salt.
    fn destroy(&self, day: i64) -> io::Result<()>;
    /// The directory of the salt files, for a vault that has one.
    fn dir(&self) -> Option<&Path> {
        None
    }
}

/// 32 fresh random bytes for `day`.
pub fn fresh_salt(day: i64) -> io::Result<DailySalt> {
    let mut bytes = [0u8; Salt::LEN];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(DailySalt {
        day,
        salt: Salt::from_bytes(bytes),
    })
}

/// The local vault: `<data-dir>/salts/<day>.salt`, mode 0600, in a 0700 directory.
#[derive(Debug)]
pub struct SaltFiles {
    dir: PathBuf,
}

impl SaltFiles {
    /// Opens (creating if needed) the salt directory under `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("salts");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Self { dir })
    }
}

impl SaltVault for SaltFiles {
    fn open(&self, today: i64) -> io::Result<(DailySalt, Option<DailySalt>)> {
        let dir = &self.dir;
        let mut current = None;
        let mut previous = None;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let day = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".salt"))
                .and_then(|d| d.parse::<i64>().ok());
            match day {
                Some(d) if d == today => current = read_salt(&path, d),
                Some(d) if d == today - 1 => previous = read_salt(&path, d),
                _ => {}
            }
            let keep = day.is_some_and(|d| is_kept_day(d, today));
            if !keep {
                // Other days' salts, and leftovers of interrupted writes, must not outlive
                // their use: a salt kept is a pseudonym that can be recomputed.
                remove_durably(&path)?;
            }
        }
        let current = match current {
            Some(salt) => salt,
            None => {
                let salt = fresh_salt(today)?;
                write_atomically(&salt_path(dir, today), salt.salt.as_bytes(), 0o600)?;
                salt
            }
        };
        Ok((current, previous))
    }

    fn salt_for(&self, day: i64) -> io::Result<DailySalt> {
        let path = salt_path(&self.dir, day);
        // Tomorrow's salt may have been fetched ahead by a run that stopped before midnight.
        if let Some(kept) = read_salt(&path, day) {
            return Ok(kept);
        }
        let salt = fresh_salt(day)?;
        // Persist before use so ids are reproducible after a restart. If the disk refuses,
        // keep serving with the salt in memory: ids would change on restart, which is logged,
        // while refusing traffic would lose data.
        if let Err(error) = write_atomically(&path, salt.salt.as_bytes(), 0o600) {
            tracing::error!(%error, day, "new salt could not be persisted");
        }
        Ok(salt)
    }

    fn destroy(&self, day: i64) -> io::Result<()> {
        remove_durably(&salt_path(&self.dir, day))
    }

    fn dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// How long a request that needs a new day's salt waits while another request fetches it. A
/// vault answers in milliseconds when it works; past this the request is answered 503 (it may
/// retry) rather than held for as long as a failing vault takes.
const FETCH_WAIT: Duration = Duration::from_millis(200);

/// After a failed fetch of a day's salt, how long requests needing it fail at once (503) before
/// one of them asks the vault again.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// How long before a UTC midnight the maintenance timer fetches the next day's salt
/// (`SaltStore::prefetch`), so that the first requests after midnight find it in memory instead
/// of waiting on the vault: a key-value bucket replicated across NATS servers can take longer
/// than `FETCH_WAIT` on a loaded machine, and two nodes race to create the salt right then.
pub const PREFETCH_AHEAD_MS: i64 = 5 * 60 * 1000;

/// Whether a vault keeps `day`'s salt on a start on `today`: yesterday's (the carry-over),
/// today's, and tomorrow's (fetched ahead of midnight, used by no pseudonym yet).
pub fn is_kept_day(day: i64, today: i64) -> bool {
    (today - 1..=today + 1).contains(&day)
}

/// A fetch of a day's salt that failed.
#[derive(Debug, Clone, Copy)]
struct FailedFetch {
    day: i64,
    at: Instant,
}

#[derive(Debug)]
pub struct SaltStore {
    vault: Box<dyn SaltVault>,
    schedule: ArcSwap<SaltSchedule>,
    /// Held by whoever rotates or expires salts, for the whole of the vault work; readers never
    /// take it. Timed, so a request waits for another's fetch only `fetch_wait`.
    maintenance: TimedMutex<()>,
    /// The last failed fetch of a new day's salt; never held across vault work.
    failed_fetch: Mutex<Option<FailedFetch>>,
    /// The next day's salt, fetched ahead of midnight; taken by the rotation to that day.
    /// Never held across vault work.
    fetched_ahead: Mutex<Option<DailySalt>>,
    fetch_wait: Duration,
    fetch_retry: Duration,
}

/// Runs `f`, which may block, off the async workers when called on a multi-threaded runtime
/// (`block_in_place`: the worker's other tasks move to another thread meanwhile); a plain call
/// anywhere else (a current-thread runtime cannot lend its only thread).
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() != RuntimeFlavor::CurrentThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn salt_path(dir: &Path, day: i64) -> PathBuf {
    dir.join(format!("{day}.salt"))
}

fn read_salt(path: &Path, day: i64) -> Option<DailySalt> {
    let bytes = fs::read(path).ok()?;
    let bytes: [u8; Salt::LEN] = bytes.try_into().ok()?;
    Some(DailySalt {
        day,
        salt: Salt::from_bytes(bytes),
    })
}

impl SaltStore {
    /// Opens (creating if needed) the salt directory under `data_dir`, keeps today's and
    /// yesterday's salts, deletes any other, and creates today's if it is missing.
    pub fn open(data_dir: &Path, now: Timestamp, carry_ms: i64) -> io::Result<Self> {
        Self::with_vault(Box::new(SaltFiles::in_data_dir(data_dir)?), now, carry_ms)
    }

    /// Like `open`, with the salts kept in `vault`.
    pub fn with_vault(
        vault: Box<dyn SaltVault>,
        now: Timestamp,
        carry_ms: i64,
    ) -> io::Result<Self> {
        let (current, previous) = vault.open(now.utc_day())?;
        let mut schedule = SaltSchedule::new(current, previous, carry_ms);
        if let Some(expired) = schedule.expire_previous(now) {
            vault.destroy(expired.day)?;
        }
        Ok(Self {
            vault,
            schedule: ArcSwap::from_pointee(schedule),
            maintenance: TimedMutex::new(()),
            failed_fetch: Mutex::new(None),
            fetched_ahead: Mutex::new(None),
            fetch_wait: FETCH_WAIT,
            fetch_retry: FETCH_RETRY,
        })
    }

    /// The directory of the salt files (local mode).
    pub fn dir(&self) -> Option<&Path> {
        self.vault.dir()
    }

    fn needs_maintenance(schedule: &SaltSchedule, now: Timestamp) -> bool {
        let carry_over = schedule.previous().is_some()
            && now.unix_ms() >= schedule.current().day * Timestamp::DAY_MS + schedule.carry_ms();
        schedule.day_to_rotate(now).is_some() || carry_over
    }

    /// Rotates to a new day's salt and deletes yesterday's once the carry-over has passed.
    /// Called on every identification (cheaply) and by the server's maintenance timer, so an
    /// expired salt is destroyed even without traffic. Skips (`Ok`) when the new day's salt is
    /// being fetched by another caller for longer than `fetch_wait`, or its fetch failed less
    /// than `fetch_retry` ago: the published schedule then cannot identify the request, which
    /// is answered 503.
    pub fn maintain(&self, now: Timestamp) -> io::Result<()> {
        let salt_day = {
            let schedule = self.schedule.load();
            if !Self::needs_maintenance(&schedule, now) {
                return Ok(());
            }
            schedule.day_to_rotate(now)
        };
        let Some(_maintainer) = self.maintainer(salt_day) else {
            return Ok(());
        };
        // Another maintainer may have finished while this one waited: start from what it
        // published.
        let mut next = SaltSchedule::clone(&self.schedule.load());
        let mut dropped_days = Vec::new();
        let mut changed = false;
        if let Some(day) = next.day_to_rotate(now) {
            let ahead = self
                .fetched_ahead
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let ahead = match ahead {
                Some(salt) if salt.day == day => Some(salt),
                Some(skipped) => {
                    // Fetched for a day the clock jumped past, so never used: it goes now.
                    self.vault.destroy(skipped.day)?;
                    None
                }
                None => None,
            };
            let salt = match ahead {
                Some(salt) => Ok(salt),
                None if self.failed_recently(day) => return Ok(()),
                None => off_the_workers(|| self.vault.salt_for(day)),
            };
            let salt = match salt {
                Ok(salt) => salt,
                Err(error) => {
                    *self
                        .failed_fetch
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(FailedFetch {
                        day,
                        at: Instant::now(),
                    });
                    return Err(error);
                }
            };
            dropped_days.extend(next.rotate(salt).map(|dropped| dropped.day));
            changed = true;
        }
        if let Some(expired) = next.expire_previous(now) {
            dropped_days.push(expired.day);
            changed = true;
        }
        if changed {
            self.schedule.store(Arc::new(next));
        }
        for day in dropped_days {
            self.vault.destroy(day)?;
        }
        Ok(())
    }

    /// Fetches the next UTC day's salt once `now` is within `PREFETCH_AHEAD_MS` of midnight and
    /// keeps it for the rotation, so no request after midnight waits on the vault. Called by
    /// the maintenance timer only, never on a request's path; skips (`Ok`) while another
    /// maintainer works, since the next tick tries again.
    pub fn prefetch(&self, now: Timestamp) -> io::Result<()> {
        let tomorrow = now.utc_day() + 1;
        if tomorrow * Timestamp::DAY_MS - now.unix_ms() > PREFETCH_AHEAD_MS {
            return Ok(());
        }
        let held = self
            .fetched_ahead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|salt| salt.day == tomorrow);
        if held {
            return Ok(());
        }
        let Some(_maintainer) = self.maintenance.try_lock() else {
            return Ok(());
        };
        let salt = off_the_workers(|| self.vault.salt_for(tomorrow))?;
        *self
            .fetched_ahead
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(salt);
        Ok(())
    }

    /// Whether fetching `day`'s salt failed less than `fetch_retry` ago.
    fn failed_recently(&self, day: i64) -> bool {
        self.failed_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|failed| failed.day == day && failed.at.elapsed() < self.fetch_retry)
    }

    /// The maintenance lock. A caller that needs a new day's salt (`salt_day`) waits for it
    /// (nothing can be identified without it), but only `fetch_wait`, off the async workers,
    /// and not at all when its fetch just failed; any other caller skips maintenance when
    /// someone else is doing it, since the published schedule still answers.
    fn maintainer(&self, salt_day: Option<i64>) -> Option<TimedGuard<'_, ()>> {
        if let Some(guard) = self.maintenance.try_lock() {
            return Some(guard);
        }
        let day = salt_day?;
        if self.failed_recently(day) {
            return None;
        }
        off_the_workers(|| self.maintenance.try_lock_for(self.fetch_wait))
    }

    /// The identity of a request received at `now` from `(ip, user_agent)`.
    pub fn identify(
        &self,
        now: Timestamp,
        ip: IpAddr,
        user_agent: &str,
    ) -> Result<Identity, EngineError> {
        if let Err(error) = self.maintain(now) {
            // Either no randomness was available for a new salt (then `identify` below fails for
            // the new day and the caller answers 503) or an old salt file could not be deleted.
            tracing::error!(%error, "salt maintenance failed");
        }
        self.schedule.load().identify(now, ip, user_agent)
    }

    /// The identity of a request received at `now` that names its visitor itself: `client_id`
    /// on `website` (see `pulse_engine::client_visitor_id`).
    pub fn identify_client(
        &self,
        now: Timestamp,
        website: &str,
        client_id: &str,
    ) -> Result<Identity, EngineError> {
        if let Err(error) = self.maintain(now) {
            tracing::error!(%error, "salt maintenance failed");
        }
        self.schedule
            .load()
            .identify_client(now, website, client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARRY_MS: i64 = 30 * 60 * 1000;
    const DAY: i64 = 20_500;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_restart_keeps_ids_and_midnight_rotates_then_deletes_yesterday() {
        let data = tempfile::tempdir().unwrap();
        let noon = DAY * Timestamp::DAY_MS + 12 * 3_600_000;
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let first = SaltStore::open(data.path(), at(noon), CARRY_MS).unwrap();
        let id = first.identify(at(noon), ip, "UA").unwrap().visitor;
        drop(first);
        let second = SaltStore::open(data.path(), at(noon + 1000), CARRY_MS).unwrap();
        assert_eq!(
            second.identify(at(noon + 1000), ip, "UA").unwrap().visitor,
            id
        );
        assert_eq!(files(second.dir().unwrap()), [format!("{DAY}.salt")]);

        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let after = second.identify(at(midnight + 5), ip, "UA").unwrap();
        assert_ne!(after.visitor, id);
        assert_eq!(after.carried_from, Some(id));
        assert_eq!(
            files(second.dir().unwrap()),
            [format!("{DAY}.salt"), format!("{}.salt", DAY + 1)]
        );
        second.maintain(at(midnight + CARRY_MS)).unwrap();
        assert_eq!(files(second.dir().unwrap()), [format!("{}.salt", DAY + 1)]);
    }

    #[test]
    fn identify_does_not_wait_for_a_maintainer_while_the_schedule_answers() {
        let data = tempfile::tempdir().unwrap();
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let store = Arc::new(SaltStore::open(data.path(), at(midnight - 1000), CARRY_MS).unwrap());
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        store.identify(at(midnight + 5), ip, "UA").unwrap();
        // Past the carry-over, yesterday's salt is due for deletion; a maintainer parked in its
        // file work holds the maintenance lock meanwhile.
        let after_carry = at(midnight + CARRY_MS + 1);
        let parked_maintainer = store.maintenance.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                tx.send(store.identify(after_carry, ip, "UA")).unwrap();
            })
        };
        let answered = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(parked_maintainer);
        reader.join().unwrap();
        let identity = answered.expect("identify waited for a maintainer").unwrap();
        assert_eq!(identity.carried_from, None);
        // Once the maintainer is gone, the next maintenance does the deletion.
        store.maintain(after_carry).unwrap();
        assert_eq!(files(store.dir().unwrap()), [format!("{}.salt", DAY + 1)]);
    }

    /// A vault that has today's salt and answers for any other day after `delay`: with a fresh
    /// salt when `reachable`, else, like a cluster's with NATS gone, with an error. It counts
    /// those calls and says when the first starts.
    #[derive(Debug)]
    struct SlowVault {
        delay: Duration,
        reachable: bool,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
        started: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    }

    impl SaltVault for SlowVault {
        fn open(&self, today: i64) -> io::Result<(DailySalt, Option<DailySalt>)> {
            Ok((fresh_salt(today)?, None))
        }
        fn salt_for(&self, day: i64) -> io::Result<DailySalt> {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(started) = self.started.lock().unwrap().take() {
                started.send(()).unwrap();
            }
            std::thread::sleep(self.delay);
            if self.reachable {
                fresh_salt(day)
            } else {
                Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
            }
        }
        fn destroy(&self, _day: i64) -> io::Result<()> {
            Ok(())
        }
    }

    /// At midnight with the vault unreachable, one request waits for it; the others are refused
    /// after the short wait instead of each waiting out the vault's timeout in turn, and right
    /// after the failure requests are refused without asking the vault again.
    #[test]
    fn a_failing_salt_fetch_is_waited_out_by_one_request_not_by_each() {
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let vault = Box::new(SlowVault {
            delay: Duration::from_secs(2),
            reachable: false,
            fetches: Arc::clone(&fetches),
            started: Mutex::new(Some(started_tx)),
        });
        let mut store = SaltStore::with_vault(vault, at(midnight - 1000), CARRY_MS).unwrap();
        // A retry window no noisy machine outlasts, so "right after" below is certain.
        store.fetch_retry = Duration::from_secs(600);
        let store = Arc::new(store);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let request = |store: &Arc<SaltStore>| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                let began = Instant::now();
                let identified = store.identify(at(midnight + 5), ip, "UA");
                (identified.is_ok(), began.elapsed())
            })
        };
        let first = request(&store);
        started_rx.recv().unwrap();
        let others: Vec<_> = (0..3).map(|_| request(&store)).collect();
        let others: Vec<_> = others.into_iter().map(|t| t.join().unwrap()).collect();
        let (first_ok, first_took) = first.join().unwrap();
        assert!(!first_ok, "no salt, no identity");
        assert!(first_took >= Duration::from_secs(2), "{first_took:?}");
        for (ok, took) in others {
            assert!(!ok);
            assert!(
                took < Duration::from_secs(1),
                "a request waited {took:?} for another's fetch"
            );
        }
        let began = Instant::now();
        assert!(store.identify(at(midnight + 6), ip, "UA").is_err());
        assert!(began.elapsed() < Duration::from_secs(1));
        assert_eq!(
            fetches.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the first request asked the vault"
        );
    }

    /// With a vault that works but answers slower than `FETCH_WAIT` (a replicated bucket on a
    /// loaded machine), the first requests after midnight used to race for the new salt: one
    /// fetched it, the other waited `FETCH_WAIT` and was refused (CI's cluster midnight test,
    /// once). Fetched ahead by the maintenance timer, the salt is in memory at midnight: every
    /// request is identified and none asks the vault.
    #[test]
    fn a_salt_fetched_ahead_of_midnight_serves_the_first_requests_without_the_vault() {
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fetched = || fetches.load(std::sync::atomic::Ordering::SeqCst);
        let vault = Box::new(SlowVault {
            delay: FETCH_WAIT * 3,
            reachable: true,
            fetches: Arc::clone(&fetches),
            started: Mutex::new(None),
        });
        let store = SaltStore::with_vault(vault, at(midnight - 3_600_000), CARRY_MS).unwrap();
        // An hour before midnight is too early; inside the last minutes it fetches, once.
        store.prefetch(at(midnight - 3_600_000)).unwrap();
        assert_eq!(fetched(), 0);
        store
            .prefetch(at(midnight - PREFETCH_AHEAD_MS + 1))
            .unwrap();
        store.prefetch(at(midnight - 1_000)).unwrap();
        assert_eq!(fetched(), 1);

        let store = Arc::new(store);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.identify(at(midnight + 5), ip, "UA"))
            })
            .collect();
        let ids: Vec<_> = requests
            .into_iter()
            .map(|r| r.join().unwrap().unwrap().visitor)
            .collect();
        assert_eq!(ids[0], ids[1]);
        assert_eq!(fetched(), 1, "no request asked the vault");
    }

    /// Local mode: tomorrow's salt fetched ahead is kept by a restart before midnight and is the
    /// salt the day then uses, so ids after midnight do not depend on whether Pulse restarted.
    #[test]
    fn a_restart_before_midnight_keeps_the_salt_fetched_ahead() {
        let data = tempfile::tempdir().unwrap();
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let first = SaltStore::open(data.path(), at(midnight - 60_000), CARRY_MS).unwrap();
        first.prefetch(at(midnight - 60_000)).unwrap();
        let id = first.identify(at(midnight + 5), ip, "UA").unwrap().visitor;
        drop(first);
        let second = SaltStore::open(data.path(), at(midnight - 30_000), CARRY_MS).unwrap();
        assert!(files(second.dir().unwrap()).contains(&format!("{}.salt", DAY + 1)));
        assert_eq!(
            second.identify(at(midnight + 5), ip, "UA").unwrap().visitor,
            id
        );
    }

    /// A data directory left at 23:59 with one visitor's id under yesterday's salt.
    fn left_before_midnight(data: &Path, ip: IpAddr) -> pulse_engine::VisitorId {
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let store = SaltStore::open(data, at(midnight - 60_000), CARRY_MS).unwrap();
        store
            .identify(at(midnight - 60_000), ip, "UA")
            .unwrap()
            .visitor
    }

    #[test]
    fn open_inside_the_carry_over_keeps_yesterdays_salt_and_carries_its_ids() {
        let data = tempfile::tempdir().unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let yesterday_id = left_before_midnight(data.path(), ip);
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let inside = at(midnight + CARRY_MS - 1);
        let store = SaltStore::open(data.path(), inside, CARRY_MS).unwrap();
        assert_eq!(
            files(store.dir().unwrap()),
            [format!("{DAY}.salt"), format!("{}.salt", DAY + 1)]
        );
        let identity = store.identify(inside, ip, "UA").unwrap();
        assert_eq!(identity.carried_from, Some(yesterday_id));
    }

    #[test]
    fn open_after_the_carry_over_deletes_yesterdays_salt() {
        let data = tempfile::tempdir().unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        left_before_midnight(data.path(), ip);
        let midnight = (DAY + 1) * Timestamp::DAY_MS;
        let after = at(midnight + CARRY_MS);
        let store = SaltStore::open(data.path(), after, CARRY_MS).unwrap();
        assert_eq!(files(store.dir().unwrap()), [format!("{}.salt", DAY + 1)]);
        assert_eq!(store.identify(after, ip, "UA").unwrap().carried_from, None);
    }

    #[test]
    fn stale_and_foreign_files_are_deleted_on_open() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("salts");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{}.salt", DAY - 5)), [1u8; 32]).unwrap();
        fs::write(dir.join("junk.tmp"), b"x").unwrap();
        let store =
            SaltStore::open(data.path(), at(DAY * Timestamp::DAY_MS + 1), CARRY_MS).unwrap();
        assert_eq!(files(store.dir().unwrap()), [format!("{DAY}.salt")]);
    }
}
