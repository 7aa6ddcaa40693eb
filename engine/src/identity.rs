//! Cookie-less visitor identity: `Salt`, `SaltSchedule` and `visitor_id()`.
//!
//! `visitor_id = sha256(salt ‖ ip ‖ user_agent)[0..8]`, with the secret salt of the event's UTC
//! day. The IP is hashed as 16 bytes (IPv4 as its IPv6-mapped form), so the boundary between IP
//! and User-Agent is unambiguous. A site may name its visitors itself (a client id, such as a
//! signed-in user's): `client_visitor_id = sha256(salt ‖ CLIENT_ID_DOMAIN ‖ len(website) ‖
//! website ‖ client_id)[0..8]`. `CLIENT_ID_DOMAIN` ends in the byte `0xFF`, which no UTF-8 text
//! contains, at the offset where the IP/User-Agent form has its User-Agent, so no client id can
//! hash the same input as any (IP, User-Agent) pair. This module owns the arithmetic of which salt applies when;
//! generating random salts, persisting and deleting them are the server's job, and neither the
//! IP nor the User-Agent is kept anywhere.

use std::fmt;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::error::EngineError;
use crate::event::{Timestamp, VisitorId};

/// 32 secret random bytes. `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct Salt([u8; Salt::LEN]);

impl Salt {
    /// Bytes in a salt.
    pub const LEN: usize = 32;

    /// Wraps 32 bytes the caller drew from a secure random source.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The secret bytes, for hashing and for the salt file.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(<secret>)")
    }
}

impl Drop for Salt {
    fn drop(&mut self) {
        // Best effort: overwrite the secret before the memory is reused. `black_box` keeps the
        // compiler from proving the write dead; this is not a guarantee against every copy.
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

/// The visitor id of `(ip, user_agent)` under `salt`.
pub fn visitor_id(salt: &Salt, ip: IpAddr, user_agent: &str) -> VisitorId {
    let ip16 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(ip16);
    hasher.update(user_agent.as_bytes());
    let digest = hasher.finalize();
    let mut first8 = [0u8; 8];
    first8.copy_from_slice(&digest[..8]);
    VisitorId(u64::from_be_bytes(first8))
}

/// The domain-separation tag of client ids: 16 bytes in the IP's place, then `0xFF` where a
/// User-Agent (always UTF-8, so never `0xFF`) would begin.
pub const CLIENT_ID_DOMAIN: &[u8; 17] = b"pulse/client-id\0\xff";

/// The visitor id a site-chosen `client_id` gets on `website` under `salt`. The website is part
/// of the input, so one client id on two websites is two unrelated visitors.
pub fn client_visitor_id(salt: &Salt, website: &str, client_id: &str) -> VisitorId {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(CLIENT_ID_DOMAIN);
    // Website ids are at most 64 bytes, so one length byte frames them; longer is clamped only
    // to stay total, as the caller's `WebsiteId` never is.
    hasher.update([u8::try_from(website.len()).unwrap_or(u8::MAX)]);
    hasher.update(website.as_bytes());
    hasher.update(client_id.as_bytes());
    let digest = hasher.finalize();
    let mut first8 = [0u8; 8];
    first8.copy_from_slice(&digest[..8]);
    VisitorId(u64::from_be_bytes(first8))
}

/// A salt and the UTC day (days since 1970-01-01) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySalt {
    /// The UTC day, in days since 1970-01-01.
    pub day: i64,
    /// The secret for that day.
    pub salt: Salt,
}

/// Who an event belongs to: its id under its day's salt and, in the first window of a UTC day,
/// the id the same person had under yesterday's salt. The engine counts the event for
/// `carried_from` when that id is still active, so midnight does not double-count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The id under the salt of the event's own UTC day.
    pub visitor: VisitorId,
    /// The id under yesterday's salt, for events within the carry-over after midnight
    /// (`SaltSchedule::carry_ms`); `None` otherwise.
    pub carried_from: Option<VisitorId>,
}

/// Today's salt and, during the carry-over after midnight, yesterday's.
///
/// The caller drives it with its clock: `day_to_rotate(now)` says when a new salt is needed,
/// `rotate` installs it, and `expire_previous(now)` hands back yesterday's salt once no live
/// window can need it, so the caller can destroy its copy.
#[derive(Debug, Clone)]
pub struct SaltSchedule {
    current: DailySalt,
    previous: Option<DailySalt>,
    carry_ms: i64,
}

impl SaltSchedule {
    /// A schedule holding `current` and optionally the day before it; `carry_ms` is how long
    /// after midnight yesterday's ids still matter (the active window).
    pub fn new(current: DailySalt, previous: Option<DailySalt>, carry_ms: i64) -> Self {
        let previous = previous.filter(|p| p.day == current.day - 1);
        Self {
            current,
            previous,
            carry_ms,
        }
    }

    /// The salt of the newest day the schedule holds.
    pub fn current(&self) -> &DailySalt {
        &self.current
    }

    /// The previous day's salt, while the carry-over may still need it.
    pub fn previous(&self) -> Option<&DailySalt> {
        self.previous.as_ref()
    }

    /// How long after midnight yesterday's ids still matter.
    pub fn carry_ms(&self) -> i64 {
        self.carry_ms
    }

    /// The day whose salt must be installed before identifying events at `now`, if any.
    pub fn day_to_rotate(&self, now: Timestamp) -> Option<i64> {
        let day = now.utc_day();
        (day > self.current.day).then_some(day)
    }

    /// Installs the salt of a later day. Today's salt becomes yesterday's when the days are
    /// consecutive; otherwise it is dropped, since no live window can span the gap. Returns the
    /// salt that is no longer held, if any, so the caller can delete its stored copy.
    pub fn rotate(&mut self, next: DailySalt) -> Option<DailySalt> {
        if next.day <= self.current.day {
            return None;
        }
        let old_current = std::mem::replace(&mut self.current, next);
        let dropped_previous = self.previous.take();
        if old_current.day == self.current.day - 1 {
            self.previous = Some(old_current);
            dropped_previous
        } else {
            Some(old_current)
        }
    }

    /// Drops yesterday's salt once `now` is past the carry-over, returning it so the caller can
    /// delete its stored copy.
    pub fn expire_previous(&mut self, now: Timestamp) -> Option<DailySalt> {
        let carry_end = self.current.day * Timestamp::DAY_MS + self.carry_ms;
        if now.unix_ms() >= carry_end {
            self.previous.take()
        } else {
            None
        }
    }

    /// The identity of an event at `ts` from `(ip, user_agent)`.
    ///
    /// Events of yesterday (late arrivals) use yesterday's salt while it is held. Any other day
    /// without a held salt is an error: the caller must rotate first.
    pub fn identify(
        &self,
        ts: Timestamp,
        ip: IpAddr,
        user_agent: &str,
    ) -> Result<Identity, EngineError> {
        self.identify_with(ts, |salt| visitor_id(salt, ip, user_agent))
    }

    /// The identity of an event at `ts` from the site-chosen `client_id` on `website` (see
    /// `client_visitor_id`), under the same salts and carry-over as `identify`.
    pub fn identify_client(
        &self,
        ts: Timestamp,
        website: &str,
        client_id: &str,
    ) -> Result<Identity, EngineError> {
        self.identify_with(ts, |salt| client_visitor_id(salt, website, client_id))
    }

    fn identify_with(
        &self,
        ts: Timestamp,
        id_under: impl Fn(&Salt) -> VisitorId,
    ) -> Result<Identity, EngineError> {
        let day = ts.utc_day();
        if day == self.current.day {
            let visitor = id_under(&self.current.salt);
            let carried_from = match &self.previous {
                Some(prev) if ts.ms_into_day() < self.carry_ms => Some(id_under(&prev.salt)),
                _ => None,
            };
            return Ok(Identity {
                visitor,
                carried_from,
            });
        }
        match &self.previous {
            Some(prev) if prev.day == day => Ok(Identity {
                visitor: id_under(&prev.salt),
                carried_from: None,
            }),
            _ => Err(EngineError::NoSaltForDay { day }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARRY_MS: i64 = 30 * 60 * 1000;

    fn salt(b: u8) -> Salt {
        Salt::from_bytes([b; 32])
    }

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    #[test]
    fn visitor_id_is_the_first_8_bytes_of_sha256_of_salt_ip_ua() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut input = vec![7u8; 32];
        input.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
        input.extend_from_slice(b"UA");
        let digest = Sha256::digest(&input);
        let expected = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(visitor_id(&salt(7), ip, "UA"), VisitorId(expected));
    }

    #[test]
    fn ids_differ_by_ip_ua_and_salt() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let base = visitor_id(&salt(1), a, "UA");
        assert_ne!(base, visitor_id(&salt(1), b, "UA"));
        assert_ne!(base, visitor_id(&salt(1), a, "UA2"));
        assert_ne!(base, visitor_id(&salt(2), a, "UA"));
        assert_eq!(base, visitor_id(&salt(1), a, "UA"));
    }

    #[test]
    fn client_ids_are_per_website_and_never_hash_an_ip_ua_input() {
        let s = salt(1);
        let base = client_visitor_id(&s, "site", "user-1");
        assert_ne!(base, client_visitor_id(&s, "site", "user-2"));
        assert_ne!(base, client_visitor_id(&s, "other", "user-1"));
        assert_ne!(base, client_visitor_id(&salt(2), "site", "user-1"));
        // The length byte frames the website: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(
            client_visitor_id(&s, "ab", "c"),
            client_visitor_id(&s, "a", "bc")
        );
        // The tag's first 16 bytes read as an IPv6 address; what follows is `0xFF`, which a
        // User-Agent (a `&str`) can never start with, so no (IP, UA) input equals a client one.
        let mut ip16 = [0u8; 16];
        ip16.copy_from_slice(&CLIENT_ID_DOMAIN[..16]);
        assert_eq!(CLIENT_ID_DOMAIN[16], 0xFF);
        let ip = IpAddr::from(ip16);
        assert_ne!(visitor_id(&s, ip, ""), base);
    }

    #[test]
    fn identify_client_uses_the_carry_over_like_identify() {
        let day = 20_000;
        let mut schedule = SaltSchedule::new(DailySalt { day, salt: salt(1) }, None, CARRY_MS);
        schedule.rotate(DailySalt {
            day: day + 1,
            salt: salt(2),
        });
        let midnight = (day + 1) * Timestamp::DAY_MS;
        let identity = schedule.identify_client(ts(midnight), "site", "u").unwrap();
        assert_eq!(identity.visitor, client_visitor_id(&salt(2), "site", "u"));
        assert_eq!(
            identity.carried_from,
            Some(client_visitor_id(&salt(1), "site", "u"))
        );
    }

    #[test]
    fn salt_debug_does_not_print_the_secret() {
        assert_eq!(format!("{:?}", salt(0xab)), "Salt(<secret>)");
    }

    #[test]
    fn carry_id_is_given_only_in_the_first_window_after_midnight() {
        let day = 20_000;
        let mut schedule = SaltSchedule::new(DailySalt { day, salt: salt(1) }, None, CARRY_MS);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let midnight = (day + 1) * Timestamp::DAY_MS;
        assert_eq!(schedule.day_to_rotate(ts(midnight - 1)), None);
        assert_eq!(schedule.day_to_rotate(ts(midnight)), Some(day + 1));
        assert_eq!(
            schedule.rotate(DailySalt {
                day: day + 1,
                salt: salt(2)
            }),
            None
        );

        let yesterday_id = visitor_id(&salt(1), ip, "UA");
        let at = |schedule: &SaltSchedule, ms| schedule.identify(ts(ms), ip, "UA").unwrap();
        assert_eq!(at(&schedule, midnight).carried_from, Some(yesterday_id));
        assert_eq!(
            at(&schedule, midnight + CARRY_MS - 1).carried_from,
            Some(yesterday_id)
        );
        assert_eq!(at(&schedule, midnight + CARRY_MS).carried_from, None);
        // A late event from before midnight keeps yesterday's id.
        assert_eq!(at(&schedule, midnight - 5).visitor, yesterday_id);

        assert_eq!(schedule.expire_previous(ts(midnight + CARRY_MS - 1)), None);
        let dropped = schedule.expire_previous(ts(midnight + CARRY_MS));
        assert_eq!(dropped.map(|d| d.day), Some(day));
        assert!(schedule.identify(ts(midnight - 5), ip, "UA").is_err());
        assert_eq!(at(&schedule, midnight).carried_from, None);
    }

    #[test]
    fn rotating_across_a_gap_drops_the_old_salt() {
        let mut schedule = SaltSchedule::new(
            DailySalt {
                day: 10,
                salt: salt(1),
            },
            None,
            CARRY_MS,
        );
        let dropped = schedule.rotate(DailySalt {
            day: 12,
            salt: salt(3),
        });
        assert_eq!(dropped.map(|d| d.day), Some(10));
        assert!(schedule.previous().is_none());
        assert_eq!(
            schedule.rotate(DailySalt {
                day: 12,
                salt: salt(4)
            }),
            None
        );
        assert_eq!(schedule.current().salt, salt(3));
    }
}
