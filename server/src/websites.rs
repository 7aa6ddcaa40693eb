//! `WebsiteRegistry`: the websites this server tracks, their settings, and their file.
//!
//! Websites are kept in memory for the hot path and in `<data-dir>/websites.json`, replaced
//! atomically on every change (temp file, fsync, rename, fsync directory), so they survive
//! restarts and crashes. Validation of API input lives in `routes::websites`; this module only
//! stores what it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use pulse_engine::WebsiteId;
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomically;
use crate::error::ServerError;
use crate::referrer::normalized_domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotPolicy {
    Exclude,
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
}

/// A website plus what the hot path derives from it once.
#[derive(Debug)]
pub struct WebsiteEntry {
    pub website: Website,
    pub id: WebsiteId,
    /// `domain` normalised like a referrer host, for self-referral checks.
    pub site_domain: String,
}

impl WebsiteEntry {
    fn new(website: Website) -> Result<Self, String> {
        let id = WebsiteId::new(&website.id).map_err(|e| e.to_string())?;
        let site_domain = normalized_domain(&website.domain);
        Ok(Self {
            website,
            id,
            site_domain,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct WebsitesFile {
    version: u32,
    websites: Vec<Website>,
}

const FILE_VERSION: u32 = 1;

#[derive(Debug)]
pub struct WebsiteRegistry {
    path: PathBuf,
    sites: RwLock<BTreeMap<String, Arc<WebsiteEntry>>>,
}

impl WebsiteRegistry {
    /// Loads `<data_dir>/websites.json`, or starts empty when it does not exist.
    pub fn open(data_dir: &Path) -> Result<Self, ServerError> {
        let path = data_dir.join("websites.json");
        let file_error = |message: String| ServerError::WebsitesFile {
            path: path.clone(),
            message,
        };
        let mut sites = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: WebsitesFile =
                    serde_json::from_slice(&bytes).map_err(|e| file_error(e.to_string()))?;
                if file.version != FILE_VERSION {
                    return Err(file_error(format!("unsupported version {}", file.version)));
                }
                for website in file.websites {
                    let entry = WebsiteEntry::new(website).map_err(file_error)?;
                    sites.insert(entry.website.id.clone(), Arc::new(entry));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(e.to_string())),
        }
        Ok(Self {
            path,
            sites: RwLock::new(sites),
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<WebsiteEntry>> {
        self.sites
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub fn list(&self) -> Vec<Website> {
        self.sites
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|e| e.website.clone())
            .collect()
    }

    /// Applies `change` to a copy of the websites and, if it succeeds, persists the copy and
    /// then publishes it. The write lock is held throughout, so the file's order of changes is
    /// the memory's.
    pub fn update<T, E>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Website>) -> Result<T, E>,
    ) -> Result<Result<T, E>, std::io::Error> {
        let mut sites = self.sites.write().unwrap_or_else(PoisonError::into_inner);
        let mut copy: BTreeMap<String, Website> = sites
            .iter()
            .map(|(id, e)| (id.clone(), e.website.clone()))
            .collect();
        let outcome = match change(&mut copy) {
            Ok(outcome) => outcome,
            Err(e) => return Ok(Err(e)),
        };
        let file = WebsitesFile {
            version: FILE_VERSION,
            websites: copy.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        write_atomically(&self.path, &bytes, 0o600)?;
        let mut published = BTreeMap::new();
        for (id, website) in copy {
            let entry = WebsiteEntry::new(website).map_err(std::io::Error::other)?;
            published.insert(id, Arc::new(entry));
        }
        *sites = published;
        Ok(Ok(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: &str) -> Website {
        Website {
            id: id.into(),
            name: "Example".into(),
            domain: "www.example.com".into(),
            bot_policy: BotPolicy::Exclude,
            respect_dnt: true,
            created_at: "2026-03-03T10:45:23Z".into(),
        }
    }

    #[test]
    fn websites_survive_reopening_and_failed_changes_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = WebsiteRegistry::open(dir.path()).unwrap();
        registry
            .update(|sites| {
                sites.insert("a".into(), site("a"));
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        let failed = registry
            .update(|sites| {
                sites.clear();
                Err::<(), _>("refused")
            })
            .unwrap();
        assert_eq!(failed, Err("refused"));
        drop(registry);
        let reopened = WebsiteRegistry::open(dir.path()).unwrap();
        assert_eq!(reopened.list(), vec![site("a")]);
        assert_eq!(reopened.get("a").unwrap().site_domain, "example.com");
    }

    #[test]
    fn a_corrupt_websites_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("websites.json"), b"{not json").unwrap();
        assert!(WebsiteRegistry::open(dir.path()).is_err());
    }
}
