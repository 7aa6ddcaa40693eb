//! `ConnectionPool`: every client connection the accept loop has admitted — its client address
//! (the socket peer), whether a request is in flight on it, and since when it has been idle — and
//! the rules for shedding them, so that one address holding idle or slow connections cannot lock
//! the others out:
//!
//! - **Per-address cap.** One address holds at most `max_per_address` connections. At the cap,
//!   its own idlest connection is closed to admit its new one; if none of them is evictable, the
//!   new one is refused (closed at once).
//! - **Full pool.** When `max_connections` are open, the idlest connection of the pool (no
//!   request in flight, idle the longest: never sent a complete request head, or a keep-alive
//!   connection between requests) is closed to admit the new one. Only when no connection is
//!   evictable does the accept loop wait, and then only until one is.
//! - **Evictable** means idle (no request in flight) for at least `EVICTABLE_AFTER`: a client
//!   that has just connected, or just had an answer on a keep-alive connection, gets that long
//!   to send its request head before a newcomer can take its place, so a flood of new
//!   connections cannot push out the legitimate ones as they arrive.
//! - **Pressure.** Once the pool is `PRESSURE_PERCENT` full, a connection idle for
//!   `pressure_idle` (far shorter than the header timeout) is closed by `reap`.
//! - **Shutdown.** Connections with no request in flight are closed at once; the others finish
//!   their request (the drain).
//!
//! It does not know HTTP: `lib.rs` drives hyper and reports requests starting and ending
//! (`ConnectionGuard::begin_request`). Trusted proxies do not apply: a proxy's connections are
//! its own, so behind one the cap is raised or disabled (`--max-connections-per-ip 0`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Share of `max_connections` from which idle connections get the short `pressure_idle`.
pub const PRESSURE_PERCENT: usize = 75;
/// The header timeout under pressure, at most: a client that connects sends its request head in
/// its first packet; one that has sent nothing for this long is the first to go.
pub const PRESSURE_IDLE: Duration = Duration::from_secs(1);

/// How long a connection must have been idle before it can be closed to make room for another.
pub const EVICTABLE_AFTER: Duration = Duration::from_millis(250);
/// The smallest default per-address cap: several browsers behind one NAT, each opening up to 6
/// connections to a host.
const MIN_DEFAULT_PER_ADDRESS: usize = 32;

/// The per-address cap when none is configured: an eighth of the pool, at least
/// `MIN_DEFAULT_PER_ADDRESS`, never more than the pool.
pub fn default_max_per_address(max_connections: usize) -> usize {
    (max_connections / 8)
        .max(MIN_DEFAULT_PER_ADDRESS)
        .min(max_connections)
}

/// The pool's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: usize,
    /// 0: no per-address cap.
    pub max_per_address: usize,
    /// Idle time after which `reap` closes a connection while the pool is under pressure.
    pub pressure_idle: Duration,
    /// Idle time after which a connection may be closed to admit another (`EVICTABLE_AFTER`).
    pub evictable_after: Duration,
}

/// Why connections were closed or refused by the pool, since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct ShedCounts {
    /// New connections refused: their address was at its cap with every connection busy.
    pub refused_per_address: AtomicU64,
    /// Idle connections closed to admit a new one from the same address at its cap.
    pub evicted_per_address: AtomicU64,
    /// Idle connections closed to admit a new one into a full pool.
    pub evicted_pool_full: AtomicU64,
    /// Idle connections closed by `reap` while the pool was under pressure.
    pub reaped_under_pressure: AtomicU64,
    /// Connections without a request in flight closed at once by shutdown.
    pub closed_at_shutdown: AtomicU64,
}

/// What `admit` decided for a new connection.
#[derive(Debug)]
pub enum Admission {
    Admitted(ConnectionGuard),
    /// Its address is at the cap and none of that address's connections is evictable.
    Refused,
    /// The pool is full and no connection is evictable.
    Full,
}

#[derive(Debug)]
struct Slots {
    open: HashMap<u64, Arc<Connection>>,
    per_address: HashMap<IpAddr, usize>,
    next_id: u64,
}

/// Every admitted connection, and the shedding rules (module docs).
#[derive(Debug)]
pub struct ConnectionPool {
    limits: PoolLimits,
    slots: Mutex<Slots>,
    /// Base of the connections' millisecond idle clocks.
    epoch: Instant,
    /// How many wait in `admit_or_wait` or `drained`: while any do, request ends and closes
    /// notify `changed` (otherwise they skip it, the common case).
    waiters: AtomicUsize,
    /// A connection went idle or closed.
    changed: Notify,
    shutting_down: AtomicBool,
    counts: ShedCounts,
}

/// One admitted connection, shared between the pool and its task.
#[derive(Debug)]
struct Connection {
    id: u64,
    address: IpAddr,
    requests_in_flight: AtomicUsize,
    /// Milliseconds since the pool's epoch at which it last became idle (admitted, or its last
    /// request ended).
    idle_since_ms: AtomicU64,
    /// Closed by the pool: the task drops the connection.
    evicted: Notify,
}

impl ConnectionPool {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            slots: Mutex::new(Slots {
                open: HashMap::new(),
                per_address: HashMap::new(),
                next_id: 0,
            }),
            epoch: Instant::now(),
            waiters: AtomicUsize::new(0),
            changed: Notify::new(),
            shutting_down: AtomicBool::new(false),
            counts: ShedCounts::default(),
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Connections open now (evicted ones count until the pool lets them go, at once).
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counts(&self) -> &ShedCounts {
        &self.counts
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The slots stay consistent even if a holder panicked: every update is one step.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Decides on a new connection from `address` (module docs), closing an idle one to make
    /// room when the rules say so. `capped`: whether the per-address cap applies (it does not
    /// to a trusted proxy, whose connections carry many clients).
    pub fn admit(self: &Arc<Self>, address: IpAddr, capped: bool) -> Admission {
        let mut slots = self.lock();
        // `None` until the pool is older than the threshold: nothing can have been idle as long.
        let idle_before_ms = self
            .now_ms()
            .checked_sub(millis(self.limits.evictable_after));
        let cap = self.limits.max_per_address;
        if capped && cap > 0 && slots.per_address.get(&address).copied().unwrap_or(0) >= cap {
            match idlest(&slots, idle_before_ms, |c| c.address == address) {
                Some(id) => {
                    self.evict(&mut slots, id);
                    self.counts
                        .evicted_per_address
                        .fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.counts
                        .refused_per_address
                        .fetch_add(1, Ordering::Relaxed);
                    return Admission::Refused;
                }
            }
        }
        if slots.open.len() >= self.limits.max_connections {
            match idlest(&slots, idle_before_ms, |_| true) {
                Some(id) => {
                    self.evict(&mut slots, id);
                    self.counts
                        .evicted_pool_full
                        .fetch_add(1, Ordering::Relaxed);
                }
                None => return Admission::Full,
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let connection = Arc::new(Connection {
            id,
            address,
            requests_in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evicted: Notify::new(),
        });
        slots.open.insert(id, Arc::clone(&connection));
        *slots.per_address.entry(address).or_insert(0) += 1;
        Admission::Admitted(ConnectionGuard {
            pool: Arc::clone(self),
            connection,
        })
    }

    /// `admit`, waiting while the pool is full and nothing is evictable, until a connection
    /// closes, goes idle or has been idle long enough. `None`: refused (per-address cap).
    pub async fn admit_or_wait(
        self: &Arc<Self>,
        address: IpAddr,
        capped: bool,
    ) -> Option<ConnectionGuard> {
        match self.admit(address, capped) {
            Admission::Admitted(guard) => return Some(guard),
            Admission::Refused => return None,
            Admission::Full => {}
        }
        let _waiting = Waiting::new(&self.waiters);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.admit(address, capped) {
                Admission::Admitted(guard) => return Some(guard),
                Admission::Refused => return None,
                Admission::Full => {
                    let recheck = self.limits.evictable_after.max(Duration::from_millis(10));
                    let _ = tokio::time::timeout(recheck, changed).await;
                }
            }
        }
    }

    /// Closes every connection idle for `pressure_idle` or more, if the pool is at least
    /// `PRESSURE_PERCENT` full. Returns how many it closed.
    pub fn reap(&self) -> usize {
        let mut slots = self.lock();
        if slots.open.len() * 100 < self.limits.max_connections * PRESSURE_PERCENT {
            return 0;
        }
        let Some(cutoff) = self.now_ms().checked_sub(millis(self.limits.pressure_idle)) else {
            return 0;
        };
        let stale: Vec<u64> = slots
            .open
            .values()
            .filter(|c| c.is_idle() && c.idle_since_ms.load(Ordering::SeqCst) <= cutoff)
            .map(|c| c.id)
            .collect();
        for &id in &stale {
            self.evict(&mut slots, id);
        }
        self.counts
            .reaped_under_pressure
            .fetch_add(stale.len() as u64, Ordering::Relaxed);
        stale.len()
    }

    /// Begins shutdown: every connection without a request in flight is closed at once (the
    /// others are told by their task's shutdown signal and drain).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let mut slots = self.lock();
        let idle: Vec<u64> = slots
            .open
            .values()
            .filter(|c| c.is_idle())
            .map(|c| c.id)
            .collect();
        for &id in &idle {
            self.evict(&mut slots, id);
        }
        self.counts
            .closed_at_shutdown
            .fetch_add(idle.len() as u64, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Completes once no connection is open.
    pub async fn drained(&self) {
        let _waiting = Waiting::new(&self.waiters);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_empty() {
                return;
            }
            changed.await;
        }
    }

    /// Removes `id` from the slots and tells its task to drop the connection.
    fn evict(&self, slots: &mut Slots, id: u64) {
        if let Some(connection) = remove(slots, id) {
            connection.evicted.notify_one();
        }
    }

    fn notify_changed(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

impl Connection {
    fn is_idle(&self) -> bool {
        self.requests_in_flight.load(Ordering::SeqCst) == 0
    }
}

/// Counts a waiter for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The idlest connection matching `filter` that has been idle since `idle_before_ms` or earlier.
fn idlest(
    slots: &Slots,
    idle_before_ms: Option<u64>,
    filter: impl Fn(&Connection) -> bool,
) -> Option<u64> {
    let idle_before_ms = idle_before_ms?;
    slots
        .open
        .values()
        .filter(|c| {
            filter(c) && c.is_idle() && c.idle_since_ms.load(Ordering::SeqCst) <= idle_before_ms
        })
        .min_by_key(|c| (c.idle_since_ms.load(Ordering::SeqCst), c.id))
        .map(|c| c.id)
}

fn remove(slots: &mut Slots, id: u64) -> Option<Arc<Connection>> {
    let connection = slots.open.remove(&id)?;
    if let Some(count) = slots.per_address.get_mut(&connection.address) {
        *count -= 1;
        if *count == 0 {
            slots.per_address.remove(&connection.address);
        }
    }
    Some(connection)
}

/// A connection's place in the pool, held by its task; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionGuard {
    pool: Arc<ConnectionPool>,
    connection: Arc<Connection>,
}

impl ConnectionGuard {
    /// A complete request head arrived: the connection is busy until the returned guard (held
    /// by the response body) is dropped.
    pub fn begin_request(&self) -> RequestGuard {
        self.connection
            .requests_in_flight
            .fetch_add(1, Ordering::SeqCst);
        RequestGuard {
            pool: Arc::clone(&self.pool),
            connection: Arc::clone(&self.connection),
        }
    }

    /// No request in flight: shutdown may close it at once.
    pub fn is_idle(&self) -> bool {
        self.connection.is_idle()
    }

    /// Completes when the pool closes this connection (to make room, or under pressure).
    pub async fn evicted(&self) {
        self.connection.evicted.notified().await;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut slots = self.pool.lock();
        remove(&mut slots, self.connection.id);
        drop(slots);
        self.pool.notify_changed();
    }
}

/// One request in flight on a connection; dropped when its response has been handed to hyper.
#[derive(Debug)]
pub struct RequestGuard {
    pool: Arc<ConnectionPool>,
    connection: Arc<Connection>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.connection
            .idle_since_ms
            .store(self.pool.now_ms(), Ordering::SeqCst);
        if self
            .connection
            .requests_in_flight
            .fetch_sub(1, Ordering::SeqCst)
            == 1
        {
            self.pool.notify_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_connections: usize, max_per_address: usize) -> Arc<ConnectionPool> {
        Arc::new(ConnectionPool::new(PoolLimits {
            max_connections,
            max_per_address,
            pressure_idle: Duration::ZERO,
            evictable_after: Duration::ZERO,
        }))
    }

    #[test]
    fn a_trusted_proxy_is_not_held_to_the_per_address_cap() {
        let pool = pool(8, 2);
        // Five from one address against a cap of two: none refused, none pushed out.
        let _proxied: Vec<_> = (0..5).map(|_| admitted(pool.admit(A, false))).collect();
        let counts = pool.counts();
        assert_eq!(counts.refused_per_address.load(Ordering::Relaxed), 0);
        assert_eq!(counts.evicted_per_address.load(Ordering::Relaxed), 0);
    }

    fn admitted(admission: Admission) -> ConnectionGuard {
        match admission {
            Admission::Admitted(guard) => guard,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn an_address_at_its_cap_loses_its_own_idlest_connection_or_is_refused() {
        let pool = pool(100, 2);
        let first = admitted(pool.admit(A, true));
        let second = admitted(pool.admit(A, true));
        let _busy = second.begin_request();
        // At the cap: the idle `first` makes room.
        let third = admitted(pool.admit(A, true));
        assert!(first.connection.evicted.notified().now_or_never_is_ready());
        assert_eq!(pool.len(), 2);
        let _busy_too = third.begin_request();
        // Both busy: refused. Another address is not affected.
        assert!(matches!(pool.admit(A, true), Admission::Refused));
        let _other = admitted(pool.admit(B, true));
        assert_eq!(pool.counts().refused_per_address.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_pool_sheds_its_idlest_connection_and_waits_only_when_all_are_busy() {
        let pool = pool(2, 0);
        let old = admitted(pool.admit(A, true));
        let busy = admitted(pool.admit(A, true));
        let request = busy.begin_request();
        let _new = admitted(pool.admit(B, true));
        assert!(old.connection.evicted.notified().now_or_never_is_ready());
        let _busy_too = _new.begin_request();
        assert!(matches!(pool.admit(B, true), Admission::Full));
        // The request ends: its connection is now the idlest and makes room.
        drop(request);
        let _admitted = admitted(pool.admit(B, true));
        assert_eq!(pool.counts().evicted_pool_full.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn shutdown_closes_only_connections_without_a_request_in_flight() {
        let pool = pool(10, 0);
        let idle = admitted(pool.admit(A, true));
        let busy = admitted(pool.admit(B, true));
        let _request = busy.begin_request();
        pool.shut_down();
        assert!(idle.connection.evicted.notified().now_or_never_is_ready());
        assert_eq!(pool.len(), 1);
        assert!(!busy.is_idle());
    }

    #[test]
    fn reap_closes_idle_connections_only_under_pressure() {
        let pool = pool(4, 0);
        let guards: Vec<_> = (0..2).map(|_| admitted(pool.admit(A, true))).collect();
        assert_eq!(pool.reap(), 0, "half full is no pressure");
        let more: Vec<_> = (0..2).map(|_| admitted(pool.admit(B, true))).collect();
        let _request = more[0].begin_request();
        assert_eq!(
            pool.reap(),
            3,
            "every idle connection goes, the busy one stays"
        );
        assert_eq!(pool.len(), 1);
        drop(guards);
    }

    #[test]
    fn a_connection_just_admitted_is_not_evicted_for_a_newcomer() {
        let pool = Arc::new(ConnectionPool::new(PoolLimits {
            max_connections: 1,
            max_per_address: 1,
            pressure_idle: Duration::from_secs(60),
            evictable_after: Duration::from_secs(60),
        }));
        let _fresh = admitted(pool.admit(B, true));
        assert!(matches!(pool.admit(A, true), Admission::Full));
        assert!(matches!(pool.admit(B, true), Admission::Refused));
    }

    #[test]
    fn the_default_cap_is_an_eighth_of_the_pool_within_bounds() {
        assert_eq!(default_max_per_address(4096), 512);
        assert_eq!(default_max_per_address(256), 32);
        assert_eq!(default_max_per_address(64), 32);
        assert_eq!(default_max_per_address(16), 16);
    }

    /// Whether a `Notified` future completes at once (a stored `notify_one` permit).
    trait ReadyNow {
        fn now_or_never_is_ready(self) -> bool;
    }

    impl<F: std::future::Future> ReadyNow for F {
        fn now_or_never_is_ready(self) -> bool {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut future = std::pin::pin!(self);
            future.as_mut().poll(&mut cx).is_ready()
        }
    }
}
