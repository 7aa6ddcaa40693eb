//! `WebsiteCatalog`: the one owner of the websites. It keeps their file
//! (`<data-dir>/websites.json`), the snapshot that collect and realtime read, and the engine's
//! set of websites in step, and it is the only code that changes any of them. Validation of API
//! input lives in `routes::websites`; the engine's per-website state lives in the engine.
//!
//! **Reads** (`get`, `list`) load an `ArcSwap<CatalogSnapshot>`: no lock is taken, so a reader
//! never waits on a writer, least of all on a writer's fsync.
//!
//! **Writes** (`create`, `patch`, `delete`) take `writer`, a mutex that only writers take and
//! that owns the file, so changes are applied one at a time and in one order. Each write:
//!
//! 1. derives the next set of websites from the published snapshot and checks the change;
//! 2. for a create, adds the website to the engine (with the local log, at a known place in it:
//!    `LogStart::Local`);
//! 3. replaces the file with the whole next set (temp file, fsync, rename, fsync directory);
//! 4. publishes the next snapshot;
//! 5. for a delete, removes the website from the engine.
//!
//! If step 2 fails nothing has changed (`CatalogError::EngineRefused`). If step 3 fails, a
//! created website leaves the engine again, and nothing else has changed.
//!
//! **The rules these steps keep.** In memory, the engine holds every website the published
//! snapshot shows (a website reaches the engine before readers can see it, and leaves readers
//! before it leaves the engine). On disk, the file is the only state that survives a restart,
//! and `open` builds both the snapshot and the engine's set from it alone. Because a change is
//! in the file before anyone can see it and the file is replaced atomically, a crash at any step
//! leaves either the old or the new set on disk, and the restarted server holds exactly that set.
//!
//! **Storage is pluggable** (`CatalogStorage`): the websites file (`FileStorage` over a
//! `CatalogFile`) in local mode, a key-value bucket shared by every node in cluster mode
//! (`cluster::websites`). A shared storage also tells the catalog about changes other nodes
//! made: `apply_stored` runs steps 2, 4 and 5 for them, with no storage step, since storage already
//! holds the change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use pulse_engine::{Engine, EngineError, WebsiteId};
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomically;
use crate::event_log::EventLog;
use crate::url_normaliser::normalized_domain;

/// The websites file's version; `open` refuses any other.
const FILE_VERSION: u32 = 1;

/// Whether bots count in a website's realtime answer by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BotPolicy {
    #[serde(rename = "exclude")]
    Exclude,
    #[serde(rename = "include")]
    Include,
}

/// A website as the API shows it and the file stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Website {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub bot_policy: BotPolicy,
    pub respect_dnt: bool,
    pub created_at: String,
    /// More host names the site is served under: Plausible's clients name a website by domain
    /// (`domain` or any alias). Absent in files written before aliases existed.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Whether an event's site-chosen `visitor_id` replaces the (IP, User-Agent) identity. When
    /// false the id is ignored. Absent in older files, where it means true.
    #[serde(default = "accept_client_ids_by_default")]
    pub accept_client_ids: bool,
}

/// What `accept_client_ids` is when a website does not say: true, as Sparklytics' tracker
/// expects `identify()` to count one visitor per id.
pub const fn accept_client_ids_by_default() -> bool {
    true
}

/// A website plus what the hot path derives from it once.
#[derive(Debug)]
pub struct WebsiteEntry {
    pub website: Website,
    /// The first log sequence number that belongs to this website. Events logged before it under
    /// the same id belong to a website that was deleted: replay never counts them (see
    /// `WebsiteCatalog::create`). 0 for websites created before this was kept.
    pub log_start_seq: u64,
    pub id: WebsiteId,
    /// `domain` normalised like a referrer host, for self-referral checks.
    pub site_domain: String,
}

impl WebsiteEntry {
    /// The entry for `website`, or `EngineError::InvalidWebsiteId` when its id is not one.
    pub fn new(website: Website) -> Result<Self, EngineError> {
        let id = WebsiteId::new(&website.id)?;
        let site_domain = normalized_domain(&website.domain);
        Ok(Self {
            website,
            log_start_seq: 0,
            id,
            site_domain,
        })
    }

    fn with_log_start(mut self, log_start_seq: u64) -> Self {
        self.log_start_seq = log_start_seq;
        self
    }
}

/// The changes a `PATCH` may make; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebsitePatch {
    pub name: Option<String>,
    pub domain: Option<String>,
    pub bot_policy: Option<BotPolicy>,
    pub respect_dnt: Option<bool>,
    pub aliases: Option<Vec<String>>,
    pub accept_client_ids: Option<bool>,
}

/// One published, immutable state of the catalog.
#[derive(Debug, Default)]
pub struct CatalogSnapshot {
    websites: BTreeMap<String, Arc<WebsiteEntry>>,
    /// Every website's normalised `domain` and `aliases`; when two websites claim one host, the
    /// one with the smaller id has it, so the answer does not depend on the order of changes.
    by_domain: HashMap<String, Arc<WebsiteEntry>>,
}

impl CatalogSnapshot {
    fn new(websites: BTreeMap<String, Arc<WebsiteEntry>>) -> Self {
        let mut by_domain = HashMap::new();
        for entry in websites.values() {
            let hosts = std::iter::once(entry.site_domain.clone()).chain(
                entry
                    .website
                    .aliases
                    .iter()
                    .map(|alias| normalized_domain(alias)),
            );
            for host in hosts.filter(|h| !h.is_empty()) {
                by_domain.entry(host).or_insert_with(|| Arc::clone(entry));
            }
        }
        Self {
            websites,
            by_domain,
        }
    }

    /// The website served at host `domain` (normalised like a website's `domain`).
    pub fn by_domain(&self, domain: &str) -> Option<&Arc<WebsiteEntry>> {
        self.by_domain.get(&normalized_domain(domain))
    }

    pub fn get(&self, id: &str) -> Option<&Arc<WebsiteEntry>> {
        self.websites.get(id)
    }

    pub fn len(&self) -> usize {
        self.websites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.websites.is_empty()
    }

    /// The websites, ordered by id.
    pub fn websites(&self) -> impl Iterator<Item = &Website> {
        self.websites.values().map(|entry| &entry.website)
    }

    /// The file's bytes for this set of websites.
    fn encode(&self) -> io::Result<Vec<u8>> {
        let document = WebsitesDocument {
            version: FILE_VERSION,
            websites: self.websites().cloned().collect(),
            log_starts: self
                .websites
                .iter()
                .filter(|(_, entry)| entry.log_start_seq > 0)
                .map(|(id, entry)| (id.clone(), entry.log_start_seq))
                .collect(),
        };
        serde_json::to_vec_pretty(&document).map_err(io::Error::from)
    }
}

/// The websites file's format: `{"version": 1, "websites": [Website, …], "log_starts": {id: seq}}`.
/// `log_starts` (absent when empty, so older files read and re-encode unchanged) holds each
/// website's `WebsiteEntry::log_start_seq` when it is not 0.
#[derive(Debug, Serialize, Deserialize)]
struct WebsitesDocument {
    version: u32,
    websites: Vec<Website>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    log_starts: BTreeMap<String, u64>,
}

/// Where the catalog keeps its set of websites between runs. `AtomicJsonFile` in the server;
/// tests substitute one that fails or pauses.
pub trait CatalogFile: Send + Sync + fmt::Debug {
    /// The stored bytes, or `None` when nothing was ever stored.
    fn read(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the stored bytes so that a crash leaves the old or the new ones.
    fn replace(&self, bytes: &[u8]) -> io::Result<()>;
}

/// A website as storage keeps it: the website and its first log sequence number
/// (`WebsiteEntry::log_start_seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWebsite {
    #[serde(flatten)]
    pub website: Website,
    #[serde(default)]
    pub log_start_seq: u64,
}

/// One change as storage is asked to make it; `next` (passed beside it) is the whole set after
/// it, for storages that keep the set as one document.
#[derive(Debug, Clone, Copy)]
pub enum StorageChange<'a> {
    Create(&'a StoredWebsite),
    Patch(&'a StoredWebsite),
    Delete(&'a str),
}

/// Why storage did not take a change.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Shared storage already holds a website with this id (another node created it).
    #[error("storage already holds this website")]
    Exists,
    /// Shared storage holds a newer version than the one this change started from (another
    /// node changed or deleted it meanwhile).
    #[error("the website was changed elsewhere meanwhile")]
    Conflict,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Shared storage could not be reached or did not answer in time (the cluster's NATS is
    /// down or has no quorum); nothing was changed, and the same change may be retried.
    #[error("shared storage unavailable: {0}")]
    Unavailable(String),
}

/// Where the catalog keeps its websites: a file of this server (`FileStorage`) or storage
/// shared by the nodes of a cluster. Called under the catalog's writer lock, from blocking
/// threads.
pub trait CatalogStorage: Send + Sync + fmt::Debug {
    /// Every stored website.
    fn load(&self) -> Result<Vec<StoredWebsite>, CatalogOpenError>;
    /// Makes `change`, after which the stored set is `next`.
    fn store(&self, change: StorageChange<'_>, next: &CatalogSnapshot) -> Result<(), StorageError>;
}

/// The local storage: the whole set in one `CatalogFile`, replaced at every change.
#[derive(Debug)]
pub struct FileStorage {
    file: Box<dyn CatalogFile>,
}

impl FileStorage {
    pub fn new(file: Box<dyn CatalogFile>) -> Self {
        Self { file }
    }
}

impl CatalogStorage for FileStorage {
    fn load(&self) -> Result<Vec<StoredWebsite>, CatalogOpenError> {
        let Some(bytes) = self.file.read().map_err(CatalogOpenError::Read)? else {
            return Ok(Vec::new());
        };
        let document: WebsitesDocument =
            serde_json::from_slice(&bytes).map_err(CatalogOpenError::Parse)?;
        if document.version != FILE_VERSION {
            return Err(CatalogOpenError::UnsupportedVersion {
                version: document.version,
            });
        }
        let log_starts = document.log_starts;
        Ok(document
            .websites
            .into_iter()
            .map(|website| StoredWebsite {
                log_start_seq: log_starts.get(&website.id).copied().unwrap_or(0),
                website,
            })
            .collect())
    }

    fn store(
        &self,
        _change: StorageChange<'_>,
        next: &CatalogSnapshot,
    ) -> Result<(), StorageError> {
        write_file(self.file.as_ref(), next).map_err(StorageError::Io)
    }
}

/// `<data-dir>/websites.json`, replaced with `write_atomically` (mode 0600).
#[derive(Debug)]
pub struct AtomicJsonFile {
    path: PathBuf,
}

impl AtomicJsonFile {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("websites.json"),
        }
    }
}

impl CatalogFile for AtomicJsonFile {
    fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn replace(&self, bytes: &[u8]) -> io::Result<()> {
        write_atomically(&self.path, bytes, 0o600)
    }
}

/// Why the catalog could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CatalogOpenError {
    #[error("cannot be read: {0}")]
    Read(#[source] io::Error),
    #[error("is not a websites file: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("has unsupported version {version} (this build reads version {FILE_VERSION})")]
    UnsupportedVersion { version: u32 },
    #[error("holds an invalid website id {id:?}")]
    InvalidId { id: String },
    #[error("holds website {id:?} twice")]
    DuplicateId { id: String },
    #[error("holds website {id:?}, which the engine refused: {source}")]
    EngineRefused {
        id: String,
        /// How many websites the file holds in all.
        stored: usize,
        source: EngineError,
    },
}

/// Why a change to the catalog was refused or failed. Every kind leaves the file, the snapshot
/// and the engine as they were.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("a website with id {id:?} already exists")]
    WebsiteExists { id: String },
    #[error("no website has id {id:?}")]
    UnknownWebsite { id: String },
    #[error("this server holds at most {limit} websites")]
    TooManyWebsites { limit: usize },
    #[error("invalid website id {id:?}")]
    InvalidId { id: String },
    #[error("website {id:?} was changed on another node meanwhile")]
    Conflict { id: String },
    #[error("the websites file could not be written: {0}")]
    Storage(#[source] io::Error),
    #[error("the cluster's website storage is unavailable ({0}); nothing was changed")]
    StorageUnavailable(String),
    #[error("the engine refused website {id:?} ({source}); nothing was stored")]
    EngineRefused { id: String, source: EngineError },
    #[error("the log is still being replayed; where a new website begins is not known yet")]
    LogNotReady,
}

/// Where a new website's events begin in the log (`WebsiteEntry::log_start_seq`).
#[derive(Debug, Clone, Copy)]
pub enum LogStart<'a> {
    /// At this sequence number: in cluster mode, the stream's next, read before the create.
    At(u64),
    /// Where the local log stands as the website enters the engine, read while no event can be
    /// queued or counted (`EventLog::at_log_position`).
    Local(&'a EventLog),
}

/// The websites: one snapshot for readers, one file, one engine set, one writer at a time.
pub struct WebsiteCatalog {
    snapshot: ArcSwap<CatalogSnapshot>,
    /// Held by writers only, for the whole of a change; readers never touch it.
    writer: Mutex<Box<dyn CatalogStorage>>,
    engine: Arc<Engine>,
}

impl fmt::Debug for WebsiteCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsiteCatalog")
            .field("websites", &self.snapshot.load().len())
            .finish_non_exhaustive()
    }
}

impl WebsiteCatalog {
    /// Loads `<data_dir>/websites.json` (or starts empty when it does not exist) and registers
    /// every website in `engine`.
    pub fn open(data_dir: &Path, engine: Arc<Engine>) -> Result<Self, CatalogOpenError> {
        Self::with_file(Box::new(AtomicJsonFile::in_data_dir(data_dir)), engine)
    }

    /// Like `open`, with the websites stored in `file`.
    pub fn with_file(
        file: Box<dyn CatalogFile>,
        engine: Arc<Engine>,
    ) -> Result<Self, CatalogOpenError> {
        Self::with_storage(Box::new(FileStorage::new(file)), engine)
    }

    /// Loads every website `storage` holds and registers each in `engine`.
    pub fn with_storage(
        storage: Box<dyn CatalogStorage>,
        engine: Arc<Engine>,
    ) -> Result<Self, CatalogOpenError> {
        let mut websites = BTreeMap::new();
        let stored_websites = storage.load()?;
        let stored = stored_websites.len();
        for StoredWebsite {
            website,
            log_start_seq,
        } in stored_websites
        {
            let id = website.id.clone();
            let entry = WebsiteEntry::new(website)
                .map_err(|_| CatalogOpenError::InvalidId { id: id.clone() })?
                .with_log_start(log_start_seq);
            if websites.contains_key(&id) {
                return Err(CatalogOpenError::DuplicateId { id });
            }
            engine.add_website(entry.id.clone()).map_err(|source| {
                CatalogOpenError::EngineRefused {
                    id: id.clone(),
                    stored,
                    source,
                }
            })?;
            websites.insert(id, Arc::new(entry));
        }
        Ok(Self {
            snapshot: ArcSwap::from_pointee(CatalogSnapshot::new(websites)),
            writer: Mutex::new(storage),
            engine,
        })
    }

    /// The website `id`, without waiting for any writer.
    pub fn get(&self, id: &str) -> Option<Arc<WebsiteEntry>> {
        self.snapshot.load().get(id).cloned()
    }

    /// The website whose `domain` or one of whose `aliases` is `domain`, without waiting for
    /// any writer.
    pub fn get_by_domain(&self, domain: &str) -> Option<Arc<WebsiteEntry>> {
        self.snapshot.load().by_domain(domain).cloned()
    }

    /// Every website, ordered by id, without waiting for any writer.
    pub fn list(&self) -> Vec<Website> {
        self.snapshot.load().websites().cloned().collect()
    }

    /// Each website's first log sequence number, for replay: events logged under a website's id
    /// before it belong to a deleted website of the same id.
    pub fn log_starts(&self) -> Vec<(WebsiteId, u64)> {
        self.snapshot
            .load()
            .websites
            .values()
            .map(|entry| (entry.id.clone(), entry.log_start_seq))
            .collect()
    }

    /// Adds `website`: registers it in the engine, stores it, publishes it. `start` says where
    /// its events begin in the log (`WebsiteEntry::log_start_seq`): every event logged under its
    /// id before that number belongs to a deleted website of the same id, and replay leaves it
    /// out. That is what makes a delete final: a re-created id starts empty, before and after a
    /// restart. With the local log, the number is read and the website enters the engine while
    /// no event can be queued (`LogStart::Local`), so an event a handler resolved for the deleted
    /// website and queues meanwhile is counted live exactly when replay counts it.
    pub fn create(&self, website: Website, start: LogStart<'_>) -> Result<Website, CatalogError> {
        let file = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        let id = website.id.clone();
        if previous.websites.contains_key(&id) {
            return Err(CatalogError::WebsiteExists { id });
        }
        let limit = self.engine.limits().max_websites;
        if previous.len() >= limit {
            return Err(CatalogError::TooManyWebsites { limit });
        }
        let website_id =
            WebsiteId::new(&id).map_err(|_| CatalogError::InvalidId { id: id.clone() })?;
        let register = || match self.engine.add_website(website_id.clone()) {
            // Already there is what this step wants; nothing else can have put it there while
            // the catalog holds the writer lock.
            Ok(()) | Err(EngineError::WebsiteExists) => Ok(()),
            Err(source) => Err(CatalogError::EngineRefused {
                id: id.clone(),
                source,
            }),
        };
        let log_start_seq = match start {
            LogStart::At(seq) => register().map(|()| seq)?,
            LogStart::Local(log) => log
                .at_log_position(|seq| register().map(|()| seq))
                .ok_or(CatalogError::LogNotReady)??,
        };
        let entry = Arc::new(
            WebsiteEntry::new(website.clone())
                .map_err(|_| CatalogError::InvalidId { id: id.clone() })?
                .with_log_start(log_start_seq),
        );
        let mut websites = previous.websites.clone();
        websites.insert(id.clone(), Arc::clone(&entry));
        let next = CatalogSnapshot::new(websites);
        let stored = StoredWebsite {
            website: website.clone(),
            log_start_seq,
        };
        if let Err(error) = store(file.as_ref(), StorageChange::Create(&stored), &next, &id) {
            // Readers never saw it; what the engine counted for it meanwhile (only events of a
            // deleted website of the same id) goes with it, as replay would leave it out.
            let _ = self.engine.remove_website(&website_id);
            return Err(error);
        }
        self.snapshot.store(Arc::new(next));
        Ok(website)
    }

    /// Applies `patch` to website `id` and stores the result.
    pub fn patch(&self, id: &str, patch: WebsitePatch) -> Result<Website, CatalogError> {
        let file = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        let current = previous
            .get(id)
            .ok_or_else(|| CatalogError::UnknownWebsite { id: id.to_owned() })?;
        let mut website = current.website.clone();
        if let Some(name) = patch.name {
            website.name = name;
        }
        if let Some(domain) = patch.domain {
            website.domain = domain;
        }
        if let Some(policy) = patch.bot_policy {
            website.bot_policy = policy;
        }
        if let Some(respect) = patch.respect_dnt {
            website.respect_dnt = respect;
        }
        if let Some(aliases) = patch.aliases {
            website.aliases = aliases;
        }
        if let Some(accept) = patch.accept_client_ids {
            website.accept_client_ids = accept;
        }
        let entry = WebsiteEntry::new(website.clone())
            .map_err(|_| CatalogError::InvalidId { id: id.to_owned() })?
            .with_log_start(current.log_start_seq);
        let stored = StoredWebsite {
            website: website.clone(),
            log_start_seq: entry.log_start_seq,
        };
        let mut websites = previous.websites.clone();
        websites.insert(id.to_owned(), Arc::new(entry));
        let next = CatalogSnapshot::new(websites);
        store(file.as_ref(), StorageChange::Patch(&stored), &next, id)?;
        // The engine keeps no per-website settings, so there is no engine step.
        self.snapshot.store(Arc::new(next));
        Ok(website)
    }

    /// Removes website `id` from the file, then from readers, then from the engine.
    pub fn delete(&self, id: &str) -> Result<(), CatalogError> {
        let file = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        let mut websites = previous.websites.clone();
        let removed = websites
            .remove(id)
            .ok_or_else(|| CatalogError::UnknownWebsite { id: id.to_owned() })?;
        let next = CatalogSnapshot::new(websites);
        store(file.as_ref(), StorageChange::Delete(id), &next, id)?;
        self.snapshot.store(Arc::new(next));
        // The only refusal is "unknown website", which is the state this step wants.
        let _ = self.engine.remove_website(&removed.id);
        Ok(())
    }

    /// Applies a change that shared storage already holds (another node made it, or this one
    /// did and storage reports it back): `Some` creates or replaces website `id`, `None` removes
    /// it. Runs the engine and reader steps of `create`, `patch` and `delete` in their order,
    /// under the writer lock, and changes nothing when the catalog already agrees. A website
    /// stored again with another `log_start_seq` was deleted and created anew meanwhile: its
    /// counts start over.
    pub fn apply_stored(
        &self,
        id: &str,
        stored: Option<StoredWebsite>,
    ) -> Result<(), CatalogError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        let current = previous.get(id);
        let mut websites = previous.websites.clone();
        let Some(StoredWebsite {
            website,
            log_start_seq,
        }) = stored
        else {
            let Some(removed) = websites.remove(id) else {
                return Ok(());
            };
            self.snapshot
                .store(Arc::new(CatalogSnapshot::new(websites)));
            let _ = self.engine.remove_website(&removed.id);
            return Ok(());
        };
        if current.is_some_and(|c| c.website == website && c.log_start_seq == log_start_seq) {
            return Ok(());
        }
        let entry = Arc::new(
            WebsiteEntry::new(website)
                .map_err(|_| CatalogError::InvalidId { id: id.to_owned() })?
                .with_log_start(log_start_seq),
        );
        let recreated = current.is_some_and(|c| c.log_start_seq != log_start_seq);
        if recreated {
            // Readers first, then the engine, as a delete does.
            let mut without = websites.clone();
            without.remove(id);
            self.snapshot.store(Arc::new(CatalogSnapshot::new(without)));
            let _ = self.engine.remove_website(&entry.id);
        }
        if current.is_none() || recreated {
            match self.engine.add_website(entry.id.clone()) {
                Ok(()) | Err(EngineError::WebsiteExists) => {}
                Err(source) => {
                    return Err(CatalogError::EngineRefused {
                        id: id.to_owned(),
                        source,
                    })
                }
            }
        }
        websites.insert(id.to_owned(), entry);
        self.snapshot
            .store(Arc::new(CatalogSnapshot::new(websites)));
        Ok(())
    }
}

/// Replaces the file's contents with `snapshot`'s websites.
fn write_file(file: &dyn CatalogFile, snapshot: &CatalogSnapshot) -> io::Result<()> {
    file.replace(&snapshot.encode()?)
}

/// `change` as a step of a change to website `id`, with storage's refusals as catalog errors.
fn store(
    storage: &dyn CatalogStorage,
    change: StorageChange<'_>,
    next: &CatalogSnapshot,
    id: &str,
) -> Result<(), CatalogError> {
    storage.store(change, next).map_err(|error| match error {
        StorageError::Exists => CatalogError::WebsiteExists { id: id.to_owned() },
        StorageError::Conflict => CatalogError::Conflict { id: id.to_owned() },
        StorageError::Io(source) => CatalogError::Storage(source),
        StorageError::Unavailable(why) => CatalogError::StorageUnavailable(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use pulse_engine::EngineLimits;

    /// How long a test waits for something that must happen promptly.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn site(id: &str) -> Website {
        Website {
            id: id.into(),
            name: "Example".into(),
            domain: "www.example.com".into(),
            bot_policy: BotPolicy::Exclude,
            respect_dnt: true,
            created_at: "2026-03-03T10:45:23Z".into(),
            aliases: Vec::new(),
            accept_client_ids: true,
        }
    }

    #[test]
    fn websites_are_found_by_domain_or_alias_and_the_smaller_id_wins_a_shared_host() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = WebsiteCatalog::open(dir.path(), engine(10)).unwrap();
        catalog.create(site("b"), LogStart::At(0)).unwrap();
        let mut a = site("a");
        a.domain = "shop.example.org".into();
        a.aliases = vec!["www.example.com".into(), "EXAMPLE.net".into()];
        catalog.create(a, LogStart::At(0)).unwrap();
        let id_of = |d: &str| catalog.get_by_domain(d).map(|e| e.website.id.clone());
        assert_eq!(id_of("shop.example.org").as_deref(), Some("a"));
        assert_eq!(id_of("example.net").as_deref(), Some("a"));
        assert_eq!(id_of("www.example.com").as_deref(), Some("a"));
        assert_eq!(id_of("nowhere.example"), None);
        catalog
            .patch(
                "a",
                WebsitePatch {
                    aliases: Some(Vec::new()),
                    ..WebsitePatch::default()
                },
            )
            .unwrap();
        assert_eq!(id_of("www.example.com").as_deref(), Some("b"));
        assert_eq!(id_of("example.net"), None);
    }

    fn engine(max_websites: usize) -> Arc<Engine> {
        let limits = EngineLimits {
            max_websites,
            ..EngineLimits::default()
        };
        Arc::new(Engine::new(limits).unwrap())
    }

    fn engine_has(engine: &Engine, id: &str) -> bool {
        engine
            .realtime(&WebsiteId::new(id).unwrap(), 0, true)
            .is_ok()
    }

    /// The ids stored in the websites file under `dir`.
    fn file_ids(dir: &Path) -> Vec<String> {
        let bytes = std::fs::read(dir.join("websites.json")).unwrap();
        let document: WebsitesDocument = serde_json::from_slice(&bytes).unwrap();
        document.websites.into_iter().map(|w| w.id).collect()
    }

    fn snapshot_ids(catalog: &WebsiteCatalog) -> Vec<String> {
        catalog.list().into_iter().map(|w| w.id).collect()
    }

    /// What a test can make a `TestFile` do.
    #[derive(Debug, Default)]
    struct FileControl {
        fail_next: AtomicBool,
        /// When set, the next `replace` says it has started and waits for a release first.
        park: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    /// The real file, with a `FileControl` the test keeps a handle to.
    #[derive(Debug)]
    struct TestFile {
        inner: AtomicJsonFile,
        control: Arc<FileControl>,
    }

    fn catalog_with_test_file(
        dir: &Path,
        engine: Arc<Engine>,
    ) -> (WebsiteCatalog, Arc<FileControl>) {
        let control = Arc::new(FileControl::default());
        let file = TestFile {
            inner: AtomicJsonFile::in_data_dir(dir),
            control: Arc::clone(&control),
        };
        let catalog = WebsiteCatalog::with_file(Box::new(file), engine).unwrap();
        (catalog, control)
    }

    impl CatalogFile for TestFile {
        fn read(&self) -> io::Result<Option<Vec<u8>>> {
            self.inner.read()
        }

        fn replace(&self, bytes: &[u8]) -> io::Result<()> {
            let park = self.control.park.lock().unwrap().take();
            if let Some((started, release)) = park {
                started.send(()).unwrap();
                release.recv_timeout(DEADLINE).unwrap();
            }
            if self.control.fail_next.swap(false, Ordering::SeqCst) {
                return Err(io::Error::other("injected write failure"));
            }
            self.inner.replace(bytes)
        }
    }

    #[test]
    fn changes_from_shared_storage_reach_readers_and_the_engine_once_and_a_recreate_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(10);
        let catalog = WebsiteCatalog::open(dir.path(), Arc::clone(&engine)).unwrap();
        let stored = |name: &str, log_start_seq| StoredWebsite {
            website: Website {
                name: name.into(),
                ..site("a")
            },
            log_start_seq,
        };
        catalog.apply_stored("a", Some(stored("First", 5))).unwrap();
        assert_eq!(catalog.get("a").unwrap().log_start_seq, 5);
        assert!(engine_has(&engine, "a"));
        let id = WebsiteId::new("a").unwrap();
        let event = Arc::new(pulse_engine::Event {
            website: id.clone(),
            ts: pulse_engine::Timestamp::from_unix_ms(1_000).unwrap(),
            visitor: pulse_engine::VisitorId(1),
            kind: pulse_engine::EventKind::Pageview,
            target: Arc::from("/"),
            referrer_domain: None,
            is_bot: false,
            browser: pulse_engine::Browser::Chrome,
            device: pulse_engine::DeviceType::Desktop,
            country: None,
        });
        engine.ingest(Arc::clone(&event), None).unwrap();
        let total = |engine: &Engine| engine.realtime(&id, 1_000, true).unwrap().total_in_window;
        // The same website again (this node's own write reported back) changes nothing; a
        // renamed one keeps its counts.
        catalog.apply_stored("a", Some(stored("First", 5))).unwrap();
        catalog
            .apply_stored("a", Some(stored("Renamed", 5)))
            .unwrap();
        assert_eq!(catalog.get("a").unwrap().website.name, "Renamed");
        assert_eq!(total(&engine), 1);
        // Deleted and created again elsewhere (a new log start): the counts start over.
        catalog.apply_stored("a", Some(stored("Again", 9))).unwrap();
        assert_eq!(catalog.get("a").unwrap().log_start_seq, 9);
        assert_eq!(total(&engine), 0);
        catalog.apply_stored("a", None).unwrap();
        catalog.apply_stored("a", None).unwrap();
        assert!(catalog.get("a").is_none());
        assert!(!engine_has(&engine, "a"));
    }

    #[test]
    fn websites_survive_reopening_with_their_derived_fields() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = WebsiteCatalog::open(dir.path(), engine(10)).unwrap();
        catalog.create(site("a"), LogStart::At(0)).unwrap();
        catalog.create(site("b"), LogStart::At(0)).unwrap();
        catalog
            .patch(
                "a",
                WebsitePatch {
                    name: Some("Renamed".into()),
                    ..WebsitePatch::default()
                },
            )
            .unwrap();
        catalog.delete("b").unwrap();
        drop(catalog);
        let reopened_engine = engine(10);
        let reopened = WebsiteCatalog::open(dir.path(), Arc::clone(&reopened_engine)).unwrap();
        let mut expected = site("a");
        expected.name = "Renamed".into();
        assert_eq!(reopened.list(), vec![expected]);
        assert_eq!(reopened.get("a").unwrap().site_domain, "example.com");
        assert!(engine_has(&reopened_engine, "a"));
        assert_eq!(reopened_engine.website_count(), 1);
    }

    #[test]
    fn a_websites_file_written_by_the_registry_before_it_opens_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        // Byte for byte what `WebsiteRegistry` wrote before the catalog replaced it.
        let old = r#"{
  "version": 1,
  "websites": [
    {
      "id": "blog",
      "name": "Blog",
      "domain": "www.example.com",
      "bot_policy": "include",
      "respect_dnt": false,
      "created_at": "2026-03-03T10:45:23Z"
    }
  ]
}"#;
        std::fs::write(dir.path().join("websites.json"), old).unwrap();
        let engine = engine(10);
        let catalog = WebsiteCatalog::open(dir.path(), Arc::clone(&engine)).unwrap();
        let blog = catalog.get("blog").unwrap();
        assert_eq!(blog.website.bot_policy, BotPolicy::Include);
        assert!(!blog.website.respect_dnt);
        assert!(engine_has(&engine, "blog"));
        assert!(blog.website.aliases.is_empty());
        assert!(blog.website.accept_client_ids);
        // Written back, it spells out the fields added since, with their defaults.
        let rewritten = old.replace(
            r#""created_at": "2026-03-03T10:45:23Z""#,
            "\"created_at\": \"2026-03-03T10:45:23Z\",\n      \"aliases\": [],\n      \"accept_client_ids\": true",
        );
        assert_eq!(
            String::from_utf8(catalog.snapshot.load().encode().unwrap()).unwrap(),
            rewritten
        );
    }

    #[test]
    fn a_corrupt_or_newer_websites_file_is_an_error_not_an_empty_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("websites.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            WebsiteCatalog::open(dir.path(), engine(10)),
            Err(CatalogOpenError::Parse(_))
        ));
        std::fs::write(&path, br#"{"version": 2, "websites": []}"#).unwrap();
        assert!(matches!(
            WebsiteCatalog::open(dir.path(), engine(10)),
            Err(CatalogOpenError::UnsupportedVersion { version: 2 })
        ));
    }

    #[test]
    fn refused_changes_are_typed_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = WebsiteCatalog::open(dir.path(), engine(1)).unwrap();
        catalog.create(site("a"), LogStart::At(0)).unwrap();
        assert!(matches!(
            catalog.create(site("a"), LogStart::At(0)),
            Err(CatalogError::WebsiteExists { id }) if id == "a"
        ));
        assert!(matches!(
            catalog.create(site("b"), LogStart::At(0)),
            Err(CatalogError::TooManyWebsites { limit: 1 })
        ));
        assert!(matches!(
            catalog.patch("zz", WebsitePatch::default()),
            Err(CatalogError::UnknownWebsite { .. })
        ));
        assert!(matches!(
            catalog.delete("zz"),
            Err(CatalogError::UnknownWebsite { .. })
        ));
        assert_eq!(file_ids(dir.path()), ["a"]);
        assert_eq!(snapshot_ids(&catalog), ["a"]);
    }

    #[test]
    fn an_engine_refusal_restores_the_file_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(2);
        let catalog = WebsiteCatalog::open(dir.path(), Arc::clone(&engine)).unwrap();
        catalog.create(site("a"), LogStart::At(0)).unwrap();
        let before = std::fs::read(dir.path().join("websites.json")).unwrap();
        // The engine fills up behind the catalog's back, so the catalog's own limit check passes
        // and only the engine step can refuse.
        engine
            .add_website(WebsiteId::new("intruder").unwrap())
            .unwrap();
        let refused = catalog.create(site("b"), LogStart::At(0));
        assert!(
            matches!(
                &refused,
                Err(CatalogError::EngineRefused {
                    id,
                    source: EngineError::TooManyWebsites { limit: 2 },
                }) if id == "b"
            ),
            "{refused:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("websites.json")).unwrap(),
            before
        );
        assert_eq!(snapshot_ids(&catalog), ["a"]);
        assert!(catalog.get("b").is_none());
        assert!(!engine_has(&engine, "b"));
    }

    #[test]
    fn a_failed_file_write_changes_neither_the_snapshot_nor_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(10);
        let (catalog, control) = catalog_with_test_file(dir.path(), Arc::clone(&engine));
        catalog.create(site("a"), LogStart::At(0)).unwrap();
        control.fail_next.store(true, Ordering::SeqCst);
        assert!(matches!(
            catalog.create(site("b"), LogStart::At(0)),
            Err(CatalogError::Storage(_))
        ));
        control.fail_next.store(true, Ordering::SeqCst);
        assert!(matches!(catalog.delete("a"), Err(CatalogError::Storage(_))));
        assert_eq!(file_ids(dir.path()), ["a"]);
        assert_eq!(snapshot_ids(&catalog), ["a"]);
        assert!(engine_has(&engine, "a"));
        assert!(!engine_has(&engine, "b"));
    }

    #[test]
    fn a_read_completes_while_a_write_is_parked_in_its_file_step() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(10);
        let (catalog, control) = catalog_with_test_file(dir.path(), engine);
        let catalog = Arc::new(catalog);
        catalog.create(site("a"), LogStart::At(0)).unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *control.park.lock().unwrap() = Some((started_tx, release_rx));
        let writer = {
            let catalog = Arc::clone(&catalog);
            std::thread::spawn(move || catalog.create(site("b"), LogStart::At(0)))
        };
        started_rx.recv_timeout(DEADLINE).unwrap();
        // The writer now holds the writer lock and sits inside its file step.
        let (read_tx, read_rx) = mpsc::channel();
        let reader = {
            let catalog = Arc::clone(&catalog);
            std::thread::spawn(move || {
                let a = catalog.get("a").map(|e| e.website.id.clone());
                let b = catalog.get("b").is_some();
                let listed = snapshot_ids(&catalog);
                read_tx.send((a, b, listed)).unwrap();
            })
        };
        let read = read_rx.recv_timeout(DEADLINE);
        release_tx.send(()).unwrap();
        let (a, b_visible, listed) = read.expect("a read waited for a writer's file step");
        assert_eq!(a.as_deref(), Some("a"));
        assert!(!b_visible, "a website was visible before it was stored");
        assert_eq!(listed, ["a"]);
        reader.join().unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(snapshot_ids(&catalog), ["a", "b"]);
    }

    #[test]
    fn concurrent_creates_patches_and_deletes_leave_file_snapshot_and_engine_equal() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(6);
        let catalog = Arc::new(WebsiteCatalog::open(dir.path(), Arc::clone(&engine)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let catalog = Arc::clone(&catalog);
                std::thread::spawn(move || {
                    for i in 0..40_usize {
                        // Eight ids shared by all threads over a limit of six: creates collide,
                        // hit the limit, patch and delete websites other threads made.
                        let id = format!("s{}", (i * 3 + t) % 8);
                        let _ = match (i + t) % 3 {
                            0 => catalog.create(site(&id), LogStart::At(0)).map(|_| ()),
                            1 => catalog
                                .patch(
                                    &id,
                                    WebsitePatch {
                                        name: Some(format!("t{t} i{i}")),
                                        ..WebsitePatch::default()
                                    },
                                )
                                .map(|_| ()),
                            _ => catalog.delete(&id),
                        };
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let listed = snapshot_ids(&catalog);
        assert_eq!(file_ids(dir.path()), listed);
        assert_eq!(engine.website_count(), listed.len());
        for id in &listed {
            assert!(
                engine_has(&engine, id),
                "{id} is listed but not in the engine"
            );
        }
    }
}
