//! Websites in cluster mode: `KvWebsites`, the `WebsiteCatalog`'s storage in the
//! `PULSE_WEBSITES` bucket (one key per website id, its value the `StoredWebsite` as JSON), and
//! `watch`, which applies every change of the bucket — other nodes' and this node's own — to
//! this node's catalog, so a change made on one node is seen by all within moments.
//!
//! The rules are the catalog's own (`catalog.rs`), with the bucket in the file's place:
//! - create is the bucket's create, which refuses an id that exists (409 `website_exists`, even
//!   when another node created it a moment ago);
//! - patch and delete are compare-and-set against the revision this node last saw, so a patch
//!   never brings back a website another node deleted (409 `website_changed`);
//! - deletes are final: a website's `log_start_seq` is the stream sequence at its creation, and
//!   the consumer never counts events stored before it under the same id.
//!
//! It does not validate websites (the routes do) or hold them (the catalog does).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;

use super::{wait_for, ClusterError, KV_TIMEOUT, WEBSITES_BUCKET};
use crate::catalog::{
    CatalogOpenError, CatalogSnapshot, CatalogStorage, StorageChange, StorageError, StoredWebsite,
};
use crate::state::AppState;

/// How long the watcher waits before watching again after its watch ended.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The websites bucket, with the revision of each key this node last saw (for
/// compare-and-set) and the websites read at start-up (for `load`).
#[derive(Debug)]
pub struct KvWebsites {
    store: kv::Store,
    runtime: Handle,
    revisions: Mutex<HashMap<String, u64>>,
    loaded: Mutex<Vec<StoredWebsite>>,
}

impl KvWebsites {
    /// Reads every website in `store` now, for the catalog to open with.
    pub async fn open(store: kv::Store) -> Result<Self, ClusterError> {
        let setup = |reason: String| ClusterError::Setup {
            what: "bucket",
            name: WEBSITES_BUCKET,
            reason,
        };
        let mut revisions = HashMap::new();
        let mut loaded = Vec::new();
        let mut keys = store.keys().await.map_err(|e| setup(e.to_string()))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            ids.push(key.map_err(|e| setup(e.to_string()))?);
        }
        for id in ids {
            let Some(entry) = store.entry(&id).await.map_err(|e| setup(e.to_string()))? else {
                continue;
            };
            if let Some(website) = decode(&entry) {
                revisions.insert(id, entry.revision);
                loaded.push(website);
            }
        }
        Ok(Self {
            store,
            runtime: Handle::current(),
            revisions: Mutex::new(revisions),
            loaded: Mutex::new(loaded),
        })
    }

    fn revision(&self, id: &str) -> Option<u64> {
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// Remembers that key `id` is at `revision` (never going back to an older one).
    fn note(&self, id: &str, revision: u64) {
        let mut revisions = self
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let known = revisions.entry(id.to_owned()).or_insert(revision);
        *known = (*known).max(revision);
    }

    async fn store_change(&self, change: StorageChange<'_>) -> Result<(), StorageError> {
        // Past "exists" and "changed meanwhile", a key-value request fails for want of NATS
        // (no connection, no quorum, a timeout): a retryable 503, not a broken file.
        let other = |e: &dyn std::fmt::Display| StorageError::Unavailable(e.to_string());
        match change {
            StorageChange::Create(website) => {
                let id = website.website.id.as_str();
                match self.store.create(id, encode(website)?).await {
                    Ok(revision) => {
                        self.note(id, revision);
                        Ok(())
                    }
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                        Err(StorageError::Exists)
                    }
                    Err(e) => Err(other(&e)),
                }
            }
            StorageChange::Patch(website) => {
                let id = website.website.id.as_str();
                let Some(revision) = self.revision(id) else {
                    return Err(StorageError::Conflict);
                };
                match self.store.update(id, encode(website)?, revision).await {
                    Ok(revision) => {
                        self.note(id, revision);
                        Ok(())
                    }
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        Err(StorageError::Conflict)
                    }
                    Err(e) => Err(other(&e)),
                }
            }
            StorageChange::Delete(id) => {
                let revision = self.revision(id);
                match self.store.delete_expect_revision(id, revision).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        Err(StorageError::Conflict)
                    }
                    Err(e) => Err(other(&e)),
                }
            }
        }
    }
}

fn encode(website: &StoredWebsite) -> Result<Bytes, StorageError> {
    serde_json::to_vec(website)
        .map(Bytes::from)
        .map_err(|e| StorageError::Io(e.into()))
}

/// The website an entry holds: `Some` for a readable put, `None` for a delete, a purge or a value
/// this build cannot read (logged).
fn decode(entry: &kv::Entry) -> Option<StoredWebsite> {
    if entry.operation != Operation::Put {
        return None;
    }
    match serde_json::from_slice::<StoredWebsite>(&entry.value) {
        Ok(website) if website.website.id == entry.key => Some(website),
        Ok(_) => {
            tracing::error!(key = %entry.key, "a website stored under another website's key; ignored");
            None
        }
        Err(error) => {
            tracing::error!(key = %entry.key, %error, "an unreadable website in the bucket; ignored");
            None
        }
    }
}

/// The catalog's handle on the bucket (the cluster keeps the other).
#[derive(Debug)]
pub struct SharedWebsites(pub Arc<KvWebsites>);

impl CatalogStorage for SharedWebsites {
    fn load(&self) -> Result<Vec<StoredWebsite>, CatalogOpenError> {
        Ok(std::mem::take(
            &mut *self.0.loaded.lock().unwrap_or_else(PoisonError::into_inner),
        ))
    }

    fn store(
        &self,
        change: StorageChange<'_>,
        _next: &CatalogSnapshot,
    ) -> Result<(), StorageError> {
        wait_for(&self.0.runtime, KV_TIMEOUT, self.0.store_change(change))
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
    }
}

/// Applies one bucket entry to the catalog, off the runtime's threads (the catalog's writer lock
/// may be held by a writer waiting on NATS).
async fn apply(state: &Arc<AppState>, entry: kv::Entry) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    cluster.websites.note(&entry.key, entry.revision);
    let stored = decode(&entry);
    let applier = Arc::clone(state);
    let id = entry.key;
    let applied =
        tokio::task::spawn_blocking(move || applier.websites.apply_stored(&id, stored)).await;
    match applied {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "a website change from the cluster was refused"),
        Err(error) => tracing::error!(%error, "applying a website change did not finish"),
    }
    cluster
        .status()
        .catalog_changes
        .fetch_add(1, Ordering::Relaxed);
}

/// Reads website `id` from the bucket now and applies it: for the consumer, which may meet a
/// website's events before the watcher delivered the website.
pub async fn refresh(state: &Arc<AppState>, id: &str) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    match tokio::time::timeout(KV_TIMEOUT, cluster.websites.store.entry(id)).await {
        Ok(Ok(Some(entry))) if entry.operation == Operation::Put => apply(state, entry).await,
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, website = id, "reading a website failed"),
        Err(_) => tracing::warn!(website = id, "reading a website timed out"),
    }
}

/// Applies every change of the bucket to the catalog for as long as the server runs.
pub async fn watch(state: Arc<AppState>) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    loop {
        // The last value of every key first (deletes included), then each change as it comes.
        match cluster.websites.store.watch_with_history(">").await {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    match change {
                        Ok(entry) => apply(&state, entry).await,
                        Err(error) => {
                            tracing::warn!(%error, "watching websites failed; watching again");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot watch websites; retrying"),
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}
