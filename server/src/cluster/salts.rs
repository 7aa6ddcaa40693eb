//! Salts in cluster mode: `KvSalts`, the `SaltVault` in the `PULSE_SALTS` bucket, one key per
//! UTC day (`day-<days since 1970>`, the 32 salt bytes as its value), so a visitor gets the same
//! id whichever node the event hits.
//!
//! A day's salt is created once: the first node that needs it creates the key with the bucket's
//! create, which fails when the key exists (compare-and-set against "no value"); a node that
//! loses that race reads the winner's salt. Every node rotates at UTC midnight and destroys
//! yesterday's salt (purges the key) once the carry-over has passed — the same rules as local
//! mode (`salts.rs`), which decides when; this module only keeps the bytes.

use std::io;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use pulse_engine::{DailySalt, Salt};
use tokio::runtime::Handle;

use super::{wait_for, KV_TIMEOUT};
use crate::salts::{fresh_salt, is_kept_day, SaltVault};

/// The bucket of salts.
#[derive(Debug)]
pub struct KvSalts {
    store: kv::Store,
    runtime: Handle,
}

fn key(day: i64) -> String {
    format!("day-{day}")
}

fn day_of(key: &str) -> Option<i64> {
    key.strip_prefix("day-")?.parse().ok()
}

fn salt_of(day: i64, bytes: &[u8]) -> io::Result<DailySalt> {
    let bytes: [u8; Salt::LEN] = bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the salt of day {day} in the bucket is not {} bytes",
                Salt::LEN
            ),
        )
    })?;
    Ok(DailySalt {
        day,
        salt: Salt::from_bytes(bytes),
    })
}

fn nats_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

impl KvSalts {
    /// The vault in `store`; its calls block on the runtime behind the current handle.
    pub fn new(store: kv::Store) -> Self {
        Self {
            store,
            runtime: Handle::current(),
        }
    }

    async fn read(&self, day: i64) -> io::Result<Option<DailySalt>> {
        match self.store.get(key(day)).await.map_err(nats_error)? {
            Some(bytes) => salt_of(day, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The salt of `day`: a fresh one if this node creates the key first, else the one stored.
    async fn create_or_read(&self, day: i64) -> io::Result<DailySalt> {
        // Twice at most: the key may be purged between a lost create and the read.
        for _ in 0..2 {
            let fresh = fresh_salt(day)?;
            let bytes = Bytes::copy_from_slice(fresh.salt.as_bytes());
            match self.store.create(key(day), bytes).await {
                Ok(_) => return Ok(fresh),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    if let Some(stored) = self.read(day).await? {
                        return Ok(stored);
                    }
                }
                Err(e) => return Err(nats_error(e)),
            }
        }
        Err(io::Error::other(format!(
            "the salt of day {day} kept being created and destroyed"
        )))
    }

    async fn open_days(&self, today: i64) -> io::Result<(DailySalt, Option<DailySalt>)> {
        let mut keys = self.store.keys().await.map_err(nats_error)?;
        let mut stale = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(nats_error)?;
            if !day_of(&key).is_some_and(|d| is_kept_day(d, today)) {
                stale.push(key);
            }
        }
        for key in stale {
            // A salt kept is a pseudonym that can be recomputed: other days' go.
            self.store.purge(&key).await.map_err(nats_error)?;
        }
        let current = self.create_or_read(today).await?;
        let previous = self.read(today - 1).await?;
        Ok((current, previous))
    }
}

impl SaltVault for KvSalts {
    fn open(&self, today: i64) -> io::Result<(DailySalt, Option<DailySalt>)> {
        wait_for(&self.runtime, KV_TIMEOUT, self.open_days(today))?
    }

    fn salt_for(&self, day: i64) -> io::Result<DailySalt> {
        wait_for(&self.runtime, KV_TIMEOUT, self.create_or_read(day))?
    }

    fn destroy(&self, day: i64) -> io::Result<()> {
        wait_for(&self.runtime, KV_TIMEOUT, async {
            self.store.purge(key(day)).await.map_err(nats_error)
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_keys_name_their_day_and_nothing_else_parses_as_one() {
        assert_eq!(key(20_500), "day-20500");
        assert_eq!(day_of("day-20500"), Some(20_500));
        assert_eq!(day_of("20500"), None);
        assert_eq!(day_of("day-x"), None);
    }

    #[test]
    fn a_stored_salt_of_the_wrong_length_is_an_error_not_a_salt() {
        assert!(salt_of(1, &[7; 31]).is_err());
        assert_eq!(salt_of(1, &[7; 32]).unwrap().salt.as_bytes(), &[7; 32]);
    }
}
