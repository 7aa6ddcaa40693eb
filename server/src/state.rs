//! `AppState`: what every request handler shares — the engine, the websites, the salts, the
//! proxy and auth settings, the optional GeoIP database, and readiness.
//!
//! Built once at start-up from `Config` (opening the data directory); it does not know HTTP.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use pulse_engine::{Engine, Timestamp};

use crate::client_ip::TrustedProxies;
use crate::config::{Config, HttpLimits};
use crate::error::ServerError;
use crate::geoip::GeoIp;
use crate::salts::SaltStore;
use crate::websites::WebsiteRegistry;

#[derive(Debug)]
pub struct AppState {
    pub engine: Engine,
    pub websites: WebsiteRegistry,
    pub salts: SaltStore,
    pub proxies: TrustedProxies,
    pub admin_token: Option<String>,
    pub geoip: Option<GeoIp>,
    pub http: HttpLimits,
    /// True once start-up work is done and the server answers with complete data.
    pub ready: AtomicBool,
}

impl AppState {
    /// Opens the data directory and everything in it. `now_ms` decides which salts are live.
    pub fn open(config: &Config, now_ms: i64) -> Result<Self, ServerError> {
        let data_dir = config.data_dir.as_path();
        let dir_error = |source| ServerError::DataDir {
            path: data_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(dir_error)?;
        let limits = config.engine_limits();
        let engine = Engine::new(limits)?;
        let websites = WebsiteRegistry::open(data_dir)?;
        for website in websites.list() {
            if let Some(entry) = websites.get(&website.id) {
                engine.add_website(entry.id.clone())?;
            }
        }
        let now = Timestamp::from_unix_ms(now_ms)?;
        let salts = open_salts(data_dir, now, limits.window_ms())?;
        let geoip = config.geoip_db.as_deref().map(GeoIp::open).transpose()?;
        Ok(Self {
            engine,
            websites,
            salts,
            proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
            geoip,
            http: config.http_limits(),
            ready: AtomicBool::new(false),
        })
    }
}

fn open_salts(data_dir: &Path, now: Timestamp, carry_ms: i64) -> Result<SaltStore, ServerError> {
    SaltStore::open(data_dir, now, carry_ms).map_err(|source| ServerError::Salts {
        path: data_dir.join("salts"),
        source,
    })
}
