//! `Config`: every flag of the `pulse` binary, each also readable from a `PULSE_*` environment
//! variable, with its default. The one place that knows configuration; the engine gets an
//! `EngineLimits` built from it, and the HTTP layer an `HttpLimits`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use pulse_engine::EngineLimits;

use crate::client_ip::Cidr;

/// Largest request body accepted on any route, in bytes (100 KiB).
pub const MAX_BODY_BYTES: usize = 100 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Pulse: privacy-first realtime web analytics.
#[derive(Debug, Clone, Parser)]
#[command(name = "pulse", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. A non-loopback address requires --admin-token.
    #[arg(long, env = "PULSE_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Directory for websites, salts and the event log.
    #[arg(long, env = "PULSE_DATA_DIR", default_value = "./pulse-data")]
    pub data_dir: PathBuf,

    /// Comma-separated CIDRs of reverse proxies whose X-Forwarded-For / X-Real-IP are trusted.
    /// Empty by default: the socket peer is the client.
    #[arg(long, env = "PULSE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Bearer token required by every API except collect, health checks and static files.
    /// Without one the server only listens on loopback addresses.
    #[arg(long, env = "PULSE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// MaxMind country database (.mmdb) used to fill `country`; without it, country is null.
    #[arg(long, env = "PULSE_GEOIP_DB")]
    pub geoip_db: Option<PathBuf>,

    /// Events kept per website and class (humans, bots) for the recent-events list.
    #[arg(long, env = "PULSE_RING_CAPACITY", default_value_t = EngineLimits::DEFAULT_RING_CAPACITY)]
    pub ring_capacity: usize,

    /// Most websites this server holds.
    #[arg(long, env = "PULSE_MAX_WEBSITES", default_value_t = EngineLimits::DEFAULT_MAX_WEBSITES)]
    pub max_websites: usize,

    /// Most simultaneous client connections; more wait to be accepted.
    #[arg(long, env = "PULSE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Time allowed to receive a request's headers, in milliseconds.
    #[arg(long, env = "PULSE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Time allowed to receive a request's body, in milliseconds.
    #[arg(long, env = "PULSE_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// Log format on stderr.
    #[arg(long, env = "PULSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn engine_limits(&self) -> EngineLimits {
        EngineLimits {
            ring_capacity: self.ring_capacity,
            max_websites: self.max_websites,
            ..EngineLimits::default()
        }
    }

    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections.max(1),
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// Limits the HTTP layer enforces on every connection and request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_readme() {
        let config = Config::try_parse_from(["pulse"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./pulse-data"));
        assert!(config.trusted_proxies.is_empty());
        assert!(config.admin_token.is_none());
        assert_eq!(config.engine_limits(), EngineLimits::default());
    }

    #[test]
    fn trusted_proxies_parse_as_a_comma_list() {
        let config =
            Config::try_parse_from(["pulse", "--trusted-proxies", "10.0.0.0/8,::1"]).unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(Config::try_parse_from(["pulse", "--trusted-proxies", "10.0.0.0/33"]).is_err());
    }
}
