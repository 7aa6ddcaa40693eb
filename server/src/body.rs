//! Reading a request body under the server's limits: refused at once when `Content-Length`
//! announces more than the limit, cut off as soon as a streamed (or chunked) body passes it,
//! abandoned when it arrives slower than a minimum rate or not within the body timeout. Never
//! buffers more than the limit, and all requests together never buffer more than the
//! `BodyBudget`, of which one client address gets a bounded share.
//!
//! The budget counts the bytes actually received, as they arrive — never the announced length —
//! so a client that announces a large body and sends nothing holds (almost) nothing; and a body
//! that stops arriving loses what it holds after `BODY_RATE_GRACE` plus one second per KiB
//! received (`MIN_BODY_BYTES_PER_SEC`). The client address comes from `CLIENT_ADDRESS`, which the
//! accept loop sets around every request. Not here: the connection-level limits
//! (`connections.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::config::{HttpLimits, MAX_BODY_BYTES};
use crate::error::ApiError;

/// Time a body gets before the minimum rate applies: a collect body arrives in its first packet.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);
/// The average rate a body must keep after the grace, in bytes per second.
pub const MIN_BODY_BYTES_PER_SEC: u64 = 1024;
/// One client address may hold at most this fraction (1/N) of the budget, and never less than
/// one largest body.
pub const ADDRESS_SHARE_DIVISOR: usize = 8;

tokio::task_local! {
    /// The client whose request is being served (its address after trusted proxies), set by the
    /// accept loop around every request so that the body budget can bound each client's share.
    pub static CLIENT_ADDRESS: IpAddr;
}

/// Request-body bytes all requests may hold at once, counted in KiB as they arrive, with a
/// bounded share per client address.
#[derive(Debug)]
pub struct BodyBudget {
    total_kib: usize,
    per_address_kib: usize,
    held: Mutex<Held>,
    counts: BodyRefusals,
}

#[derive(Debug, Default)]
struct Held {
    kib: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Bodies refused or abandoned, by reason, since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct BodyRefusals {
    /// 503 `busy`: the whole budget is held.
    pub budget_full: AtomicU64,
    /// 503 `busy`: the client's address holds its whole share.
    pub address_share_full: AtomicU64,
    /// 408 `body_timeout`: slower than the minimum rate.
    pub too_slow: AtomicU64,
    /// 408 `body_timeout`: not complete within the body timeout.
    pub timed_out: AtomicU64,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_kib = (bytes / 1024).max(1);
        let per_address_kib = (total_kib / ADDRESS_SHARE_DIVISOR)
            .max(MAX_BODY_BYTES / 1024)
            .min(total_kib);
        Self {
            total_kib,
            per_address_kib,
            held: Mutex::new(Held::default()),
            counts: BodyRefusals::default(),
        }
    }

    /// Bytes currently held by bodies being read, and the total.
    pub fn in_use_bytes(&self) -> (usize, usize) {
        (self.lock().kib * 1024, self.total_kib * 1024)
    }

    /// Bytes one client address may hold at once.
    pub fn per_address_bytes(&self) -> usize {
        self.per_address_kib * 1024
    }

    pub fn refusals(&self) -> &BodyRefusals {
        &self.counts
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Every update is one step under the lock, so a poisoned state is still consistent.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `kib` more for `address`, or says why not.
    fn take(&self, address: Option<IpAddr>, kib: usize) -> Result<(), ApiError> {
        let mut held = self.lock();
        if held.kib + kib > self.total_kib {
            drop(held);
            self.counts.budget_full.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many request bodies are being received; retry shortly",
            )
            .retry_after(1));
        }
        if let Some(address) = address {
            let mine = held.per_address.get(&address).copied().unwrap_or(0);
            if mine + kib > self.per_address_kib {
                drop(held);
                self.counts
                    .address_share_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many request bodies from this address are being received; retry shortly",
                )
                .retry_after(1));
            }
            held.per_address.insert(address, mine + kib);
        }
        held.kib += kib;
        Ok(())
    }

    fn give_back(&self, address: Option<IpAddr>, kib: usize) {
        let mut held = self.lock();
        held.kib = held.kib.saturating_sub(kib);
        if let Some(address) = address {
            if let Some(mine) = held.per_address.get_mut(&address) {
                *mine = mine.saturating_sub(kib);
                if *mine == 0 {
                    held.per_address.remove(&address);
                }
            }
        }
    }
}

/// What one body holds of the budget; given back when dropped.
struct Reservation<'a> {
    budget: &'a BodyBudget,
    address: Option<IpAddr>,
    kib: usize,
}

impl Reservation<'_> {
    /// Grows the reservation to cover `bytes` received.
    fn cover(&mut self, bytes: usize) -> Result<(), ApiError> {
        let needed = bytes.div_ceil(1024);
        if needed > self.kib {
            self.budget.take(self.address, needed - self.kib)?;
            self.kib = needed;
        }
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.kib > 0 {
            self.budget.give_back(self.address, self.kib);
        }
    }
}

/// When a body that has received `received` bytes since `started` falls behind the minimum rate.
fn falls_behind_at(started: Instant, received: usize) -> Instant {
    let allowed_ms = (received as u64).saturating_mul(1000) / MIN_BODY_BYTES_PER_SEC;
    started + BODY_RATE_GRACE + Duration::from_millis(allowed_ms)
}

/// Reads the whole body under the limits and the budget (module docs), for the client in
/// `CLIENT_ADDRESS`.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &HttpLimits,
    budget: &BodyBudget,
) -> Result<Bytes, ApiError> {
    let address = CLIENT_ADDRESS.try_with(|address| *address).ok();
    read_body_for(address, body, headers, limits, budget).await
}

/// `read_body` for a caller that knows the client's address (`None`: no per-address share), and
/// any body type: collect reads hyper's body directly, without the router's boxing.
pub async fn read_body_for<B>(
    address: Option<IpAddr>,
    mut body: B,
    headers: &HeaderMap,
    limits: &HttpLimits,
    budget: &BodyBudget,
) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let max = limits.max_body_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(ApiError::payload_too_large(max));
    }
    let started = Instant::now();
    let deadline = started + limits.body_timeout;
    let mut reservation = Reservation {
        budget,
        address,
        kib: 0,
    };
    // Hyper's chunks as they came: a body that arrives in one piece is never copied.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0_usize;
    loop {
        let behind_at = falls_behind_at(started, received);
        let frame = match tokio::time::timeout_at(behind_at.min(deadline), body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the request body could not be read",
                ))
            }
            Err(_) if behind_at < deadline => {
                budget.counts.too_slow.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body arrived slower than {MIN_BODY_BYTES_PER_SEC} bytes per \
                         second"
                    ),
                ));
            }
            Err(_) => {
                budget.counts.timed_out.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                ));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: nothing to keep
        };
        received += data.len();
        if received > max {
            return Err(ApiError::payload_too_large(max));
        }
        reservation.cover(received)?;
        chunks.push(data);
        // A body of known length is done with its last byte: no further poll, timer or wake-up.
        if body.is_end_stream() {
            break;
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn one_address_holds_at_most_its_share_and_others_still_fit() {
        // 1600 KiB in all: 200 KiB per address (an eighth).
        let budget = BodyBudget::new(1600 * 1024);
        assert_eq!(budget.per_address_bytes(), 200 * 1024);
        let mut mine = Reservation {
            budget: &budget,
            address: Some(A),
            kib: 0,
        };
        mine.cover(200 * 1024).unwrap();
        let refused = mine.cover(200 * 1024 + 1).unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.code), (503, "busy"));
        let mut theirs = Reservation {
            budget: &budget,
            address: Some(B),
            kib: 0,
        };
        theirs.cover(1).unwrap();
        assert_eq!(budget.in_use_bytes().0, 201 * 1024);
        drop(mine);
        drop(theirs);
        assert_eq!(budget.in_use_bytes().0, 0);
        assert!(budget.lock().per_address.is_empty());
    }

    #[test]
    fn a_share_is_never_smaller_than_one_largest_body() {
        let budget = BodyBudget::new(MAX_BODY_BYTES * 2);
        assert_eq!(budget.per_address_bytes(), MAX_BODY_BYTES);
    }

    #[test]
    fn the_minimum_rate_allows_a_second_per_kib_after_the_grace() {
        let started = Instant::now();
        assert_eq!(falls_behind_at(started, 0), started + BODY_RATE_GRACE);
        assert_eq!(
            falls_behind_at(started, 10 * 1024),
            started + BODY_RATE_GRACE + Duration::from_secs(10)
        );
    }
}
