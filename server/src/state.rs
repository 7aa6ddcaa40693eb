//! `AppState`: what every request handler shares — the engine, the websites, the salts, the
//! proxy and auth settings, the optional GeoIP database, the live streams' hub, and readiness.
//!
//! Built once at start-up from `Config` (opening the data directory); it does not know HTTP.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use pulse_engine::{Engine, EngineError, Timestamp};

use crate::body::BodyBudget;
use crate::catalog::{CatalogOpenError, WebsiteCatalog};
use crate::checkpoints::CheckpointSettings;
use crate::client_ip::TrustedProxies;
use crate::config::{Config, HttpLimits};
use crate::connections::{ConnectionPool, PoolLimits, EVICTABLE_AFTER, PRESSURE_IDLE};
use crate::error::ServerError;
use crate::event_log::EventLog;
use crate::geoip::GeoIp;
use crate::live::LiveHub;
use crate::memory::MemoryPlan;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::salts::SaltStore;
use crate::user_agent::ClassCache;

#[derive(Debug)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// The write queue and the writer thread (which replays the log at start-up).
    pub log: EventLog,
    /// Where and how often the engine is checkpointed.
    pub checkpoints: CheckpointSettings,
    /// The websites: the only way to read or change them, here and in the engine.
    pub websites: WebsiteCatalog,
    pub salts: SaltStore,
    pub proxies: TrustedProxies,
    pub admin_token: Option<String>,
    pub geoip: Option<GeoIp>,
    pub http: HttpLimits,
    pub memory: MemoryPlan,
    pub bodies: BodyBudget,
    pub rate_limiter: RateLimiter,
    /// Recent User-Agent verdicts (keyed hashes, never headers).
    pub user_agents: ClassCache,
    pub metrics: Arc<Metrics>,
    /// Client connections being served now.
    pub open_connections: AtomicUsize,
    /// The admitted connections and the rules for shedding them (`connections.rs`).
    pub connections: Arc<ConnectionPool>,
    /// The live streams' topics and subscribers (`live.rs`).
    pub live: LiveHub,
}

impl AppState {
    /// Opens the data directory and everything in it, and starts the log writer, which replays
    /// the event log in the background (`log.status().is_ready()` says when it is done).
    /// `now_ms` decides which salts are live.
    pub fn open(config: &Config, now_ms: i64) -> Result<Self, ServerError> {
        let data_dir = config.data_dir.as_path();
        // Owner-only: the data directory holds salts, websites and the event log.
        pulse_snapshot::writer::create_private_dir(data_dir).map_err(|e| ServerError::DataDir {
            path: data_dir.to_owned(),
            source: std::io::Error::other(e),
        })?;
        let memory = config.memory_plan();
        let limits = config.engine_limits(&memory);
        let engine = Arc::new(Engine::new(limits)?);
        let websites =
            WebsiteCatalog::open(data_dir, Arc::clone(&engine)).map_err(|source| match source {
                CatalogOpenError::EngineRefused {
                    stored,
                    source: EngineError::TooManyWebsites { limit },
                    ..
                } if limit == memory.max_websites && limit < config.max_websites => {
                    memory_too_small(config, &memory, stored)
                }
                source => ServerError::WebsitesFile {
                    path: data_dir.join("websites.json"),
                    source,
                },
            })?;
        let now = Timestamp::from_unix_ms(now_ms)?;
        let salts = open_salts(data_dir, now, limits.window_ms())?;
        let geoip = config.geoip_db.as_deref().map(GeoIp::open).transpose()?;
        // Websites are registered before replay starts, so replayed events find their website.
        let metrics = Arc::new(Metrics::default());
        let mut log_options = config.log_options(&memory);
        log_options.log_starts = websites.log_starts().into_iter().collect();
        let checkpoints = config.checkpoint_settings();
        log_options.checkpoint_dir = checkpoints
            .interval
            .is_some()
            .then(|| checkpoints.dir.clone());
        let log = EventLog::start(log_options, Arc::clone(&engine), Arc::clone(&metrics));
        let http = config.http_limits(&memory);
        Ok(Self {
            engine,
            log,
            checkpoints,
            websites,
            salts,
            proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            admin_token: config.admin_token()?,
            geoip,
            http,
            memory,
            bodies: BodyBudget::new(http.body_bytes_in_flight),
            rate_limiter: RateLimiter::new(config.rate_limit_per_ip, now_ms),
            user_agents: ClassCache::new(),
            metrics,
            open_connections: AtomicUsize::new(0),
            connections: Arc::new(ConnectionPool::new(PoolLimits {
                max_connections: http.max_connections,
                max_per_address: http.max_connections_per_ip,
                pressure_idle: http.header_timeout.min(PRESSURE_IDLE),
                evictable_after: EVICTABLE_AFTER,
            })),
            live: LiveHub::new(
                memory.max_streams,
                std::time::Duration::from_millis(config.stream_heartbeat_ms),
            ),
        })
    }
}

/// The error for a data directory holding more websites than `--memory-limit` has rings for,
/// naming what to raise and to what.
fn memory_too_small(config: &Config, memory: &MemoryPlan, stored: usize) -> ServerError {
    let per_website_bytes = config.ring_capacity.max(1) * 2 * crate::memory::RING_EVENT_BYTES;
    // Rings get a fifth of the limit (`MemoryPlan::new`).
    let needed_bytes = (stored as u64)
        .saturating_mul(per_website_bytes as u64)
        .saturating_mul(5);
    ServerError::MemoryTooSmallForWebsites {
        stored,
        fits: memory.max_websites,
        memory_limit_bytes: memory.limit_bytes,
        per_website_bytes,
        ring_capacity: config.ring_capacity,
        needed_bytes,
    }
}

fn open_salts(data_dir: &Path, now: Timestamp, carry_ms: i64) -> Result<SaltStore, ServerError> {
    SaltStore::open(data_dir, now, carry_ms).map_err(|source| ServerError::Salts {
        path: data_dir.join("salts"),
        source,
    })
}
