//! `Config`: every flag of the `pulse` binary, each also readable from a `PULSE_*` environment
//! variable, with its default. The one place that knows configuration; the engine gets an
//! `EngineLimits` built from it, and the HTTP layer an `HttpLimits`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use pulse_engine::EngineLimits;
use pulse_snapshot::SegmentLimits;

use crate::checkpoints::CheckpointSettings;
use crate::client_ip::Cidr;
use crate::cluster::ClusterOptions;
use crate::connections::default_max_per_address;
use crate::error::ServerError;
use crate::event_log::{Durability, LogOptions};
use crate::memory::{default_memory_limit, MemoryPlan};

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

    /// Most simultaneous client connections. When all are open, the idlest one (no request in
    /// flight) is closed to admit a new one; the new one waits only if none is idle. Default:
    /// what the connections' share of --memory-limit holds (32 KiB each), at most 4096.
    #[arg(long, env = "PULSE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most simultaneous connections from one client address (the socket peer; peers in
    /// --trusted-proxies are exempt, as their connections carry many clients). At the cap, that address's
    /// idlest connection is closed to admit its new one, or the new one is refused when all of
    /// its connections are busy. 0 disables the cap. Default: an eighth of --max-connections,
    /// at least 32.
    #[arg(long, env = "PULSE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// Memory the server may use for everything that grows with traffic (KiB/MiB/GiB suffixes
    /// allowed). Default: a quarter of the machine's memory. See README for how it is divided.
    #[arg(long, env = "PULSE_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,

    /// Collect requests per second allowed from one client address (bursts of twice that);
    /// beyond it collect answers 429. 0 disables the limit.
    #[arg(long, env = "PULSE_RATE_LIMIT_PER_IP", default_value_t = 1000)]
    pub rate_limit_per_ip: u32,

    /// Time allowed to receive a request's headers, in milliseconds.
    #[arg(long, env = "PULSE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Time allowed to receive a request's body, in milliseconds.
    #[arg(long, env = "PULSE_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// When an accepted event reaches the disk: `interval` (written at once, fsynced every
    /// --fsync-interval-ms), `sync` (the 202 waits for the fsync) or `none` (the OS decides).
    #[arg(long, env = "PULSE_DURABILITY", value_enum, default_value_t = Durability::Interval)]
    pub durability: Durability,

    /// Longest time between fsyncs in `interval` mode, in milliseconds.
    #[arg(long, env = "PULSE_FSYNC_INTERVAL_MS", default_value_t = 1000)]
    pub fsync_interval_ms: u64,

    /// Size at which the event log rolls to a new segment (bytes; KiB/MiB/GiB suffixes allowed).
    #[arg(long, env = "PULSE_SEGMENT_MAX_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub segment_max_bytes: u64,

    /// Free space the event log keeps in hand on its file system (bytes; KiB/MiB/GiB suffixes
    /// allowed). Below it collect answers 503 `disk_full` while what is already queued is still
    /// written, so a full disk never costs an acknowledged event. 0 disables the check.
    #[arg(long, env = "PULSE_DISK_RESERVE", default_value = "64MiB", value_parser = parse_bytes)]
    pub disk_reserve: u64,

    /// Age at which the event log rolls to a new segment, in seconds.
    #[arg(long, env = "PULSE_SEGMENT_MAX_AGE_SECS", default_value_t = 600)]
    pub segment_max_age_secs: u64,

    /// Days of events kept on disk; older segments are deleted whole.
    #[arg(long, env = "PULSE_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// Seconds between checkpoints of the in-memory state, which let a restart replay only the
    /// log written since the last one (`<data-dir>/checkpoints`). 0 disables them: neither
    /// written nor loaded, the whole log is replayed.
    #[arg(long, env = "PULSE_CHECKPOINT_INTERVAL_SECS", default_value_t = 30)]
    pub checkpoint_interval_secs: u64,

    /// Test knob: milliseconds slept between 64 KiB writes of a checkpoint file, so a test can
    /// stop the server while one is being written.
    #[arg(
        long,
        env = "PULSE_CHECKPOINT_WRITE_PACE_MS",
        default_value_t = 0,
        hide = true
    )]
    pub checkpoint_write_pace_ms: u64,

    /// Requests (batches of events) the write queue holds; when full, collect answers 503. The
    /// queue's bytes are bounded by --memory-limit as well; this count is large enough to ride
    /// out a slow fsync (about a second of single-event traffic at full speed).
    #[arg(long, env = "PULSE_QUEUE_CAPACITY", default_value_t = 65_536)]
    pub queue_capacity: usize,

    /// Milliseconds between the `: keepalive` comments of a live stream (hidden: tests shorten it).
    #[arg(
        long,
        env = "PULSE_STREAM_HEARTBEAT_MS",
        default_value_t = 15_000,
        hide = true
    )]
    pub stream_heartbeat_ms: u64,

    /// Threads that serve HTTP (tokio workers); default one per core. The event log's writer
    /// and the blocking pool are threads of their own besides these.
    #[arg(long, env = "PULSE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Log format on stderr.
    #[arg(long, env = "PULSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Tests only (`test-clock` builds): start with "now" standing still at this unix
    /// millisecond; `POST /api/test/clock` moves it. Flag only, never an environment variable.
    #[cfg(feature = "test-clock")]
    #[arg(long, hide = true, value_name = "UNIX_MS")]
    pub test_clock: Option<i64>,

    /// Tests only (`test-clock` builds): the active window in seconds instead of 30 minutes
    /// (also the salts' carry-over after midnight and the log's replay horizon).
    #[cfg(feature = "test-clock")]
    #[arg(long, hide = true, value_name = "SECS")]
    pub test_window_secs: Option<u32>,
    /// Cluster mode: the NATS JetStream servers (comma-separated nats:// URLs) that every node
    /// shares events, websites and salts through. Without it, the server keeps its own log.
    #[arg(long, env = "PULSE_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,

    /// Replicas of the cluster's stream and buckets (1 against a single NATS server).
    #[arg(long, env = "PULSE_CLUSTER_REPLICAS", default_value_t = 3)]
    pub cluster_replicas: usize,

    /// NATS credentials file (.creds) for cluster mode.
    #[arg(long, env = "PULSE_CLUSTER_CREDS")]
    pub cluster_creds: Option<PathBuf>,

    /// CA certificate (PEM) to check the NATS servers' TLS certificates against; requires TLS.
    #[arg(long, env = "PULSE_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
}

impl Config {
    /// How `--memory-limit` (or its default, read from /proc/meminfo) is divided. Compute it once
    /// and hand it to the methods below.
    pub fn memory_plan(&self) -> MemoryPlan {
        MemoryPlan::new(
            self.memory_limit.unwrap_or_else(default_memory_limit),
            self.ring_capacity,
            self.max_websites,
            self.max_connections,
        )
    }

    pub fn engine_limits(&self, plan: &MemoryPlan) -> EngineLimits {
        plan.engine_limits(EngineLimits {
            ring_capacity: self.ring_capacity,
            window_secs: self.window_secs(),
            ..EngineLimits::default()
        })
    }

    /// The active window: 30 minutes, or `--test-window-secs` in a test build.
    fn window_secs(&self) -> u32 {
        #[cfg(feature = "test-clock")]
        if let Some(secs) = self.test_window_secs {
            return secs;
        }
        EngineLimits::DEFAULT_WINDOW_SECS
    }

    /// The admin token, trimmed of surrounding whitespace (a token read from a file often ends
    /// in a newline, which no `Authorization` header could ever match); `Ok(None)` without one
    /// or with an empty one. A token that is only whitespace, or holds whitespace or control
    /// characters inside, is refused: it could never be presented.
    pub fn admin_token(&self) -> Result<Option<String>, ServerError> {
        let Some(raw) = self.admin_token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let token = raw.trim();
        if token.is_empty() {
            return Err(ServerError::AdminToken {
                reason: "it is only whitespace",
            });
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ServerError::AdminToken {
                reason: "it holds whitespace or control characters",
            });
        }
        Ok(Some(token.to_owned()))
    }

    pub fn log_options(&self, plan: &MemoryPlan) -> LogOptions {
        LogOptions {
            dir: self.data_dir.join("segments"),
            durability: self.durability,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms.max(1)),
            limits: SegmentLimits {
                max_segment_bytes: self.segment_max_bytes.max(1),
                max_segment_age_ms: i64::try_from(self.segment_max_age_secs.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                retention_ms: i64::from(self.retention_days) * 86_400_000,
            },
            disk_reserve_bytes: self.disk_reserve,
            queue_capacity: self.queue_capacity.max(1),
            queue_bytes: plan.queue_bytes,
            window_ms: self.engine_limits(plan).window_ms(),
            log_starts: std::collections::HashMap::new(),
            // In cluster mode the stream is the log: local segments are never counted.
            replay: !self.is_cluster(),
            checkpoint_dir: None,
        }
    }

    pub fn checkpoint_settings(&self) -> CheckpointSettings {
        CheckpointSettings {
            dir: self.data_dir.join("checkpoints"),
            // In cluster mode the engine is filled from the stream from now - window on every
            // start, so a checkpoint restored under it would count its events twice: none.
            interval: (self.checkpoint_interval_secs > 0 && !self.is_cluster())
                .then(|| Duration::from_secs(self.checkpoint_interval_secs)),
            write_pace: Duration::from_millis(self.checkpoint_write_pace_ms),
        }
    }

    /// Whether `--cluster` names NATS servers.
    pub fn is_cluster(&self) -> bool {
        self.cluster.iter().any(|url| !url.trim().is_empty())
    }

    /// How to reach and set up the cluster, when `--cluster` is given.
    pub fn cluster_options(&self, plan: &MemoryPlan) -> Option<ClusterOptions> {
        self.is_cluster().then(|| ClusterOptions {
            servers: self
                .cluster
                .iter()
                .filter(|url| !url.trim().is_empty())
                .cloned()
                .collect(),
            replicas: self.cluster_replicas,
            creds: self.cluster_creds.clone(),
            tls_ca: self.cluster_tls_ca.clone(),
            retention: Duration::from_secs(u64::from(self.retention_days.max(1)) * 86_400),
            window_ms: self.engine_limits(plan).window_ms(),
        })
    }

    pub fn http_limits(&self, plan: &MemoryPlan) -> HttpLimits {
        let max_connections = plan.max_connections.max(1);
        HttpLimits {
            max_connections,
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or_else(|| default_max_per_address(max_connections)),
            body_bytes_in_flight: plan.body_bytes.max(MAX_BODY_BYTES),
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// Parses a byte size: a number with an optional `B`, `KiB`, `MiB` or `GiB` suffix (also `K`,
/// `M`, `G`, `KB`, `MB`, `GB`, all powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?} has an unknown unit; use KiB, MiB or GiB")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Limits the HTTP layer enforces on every connection and request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Connections one client address may hold; 0: no cap.
    pub max_connections_per_ip: usize,
    /// Request-body bytes all connections may buffer at once.
    pub body_bytes_in_flight: usize,
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
        assert_eq!(config.admin_token().unwrap(), None);
        let limits = config.engine_limits(&config.memory_plan());
        assert_eq!(limits.ring_capacity, EngineLimits::DEFAULT_RING_CAPACITY);
        assert!(limits.max_websites <= EngineLimits::DEFAULT_MAX_WEBSITES);
        assert_eq!(config.rate_limit_per_ip, 1000);
        let http = config.http_limits(&config.memory_plan());
        assert_eq!(
            http.max_connections_per_ip,
            default_max_per_address(http.max_connections)
        );
    }

    #[test]
    fn the_per_address_connection_cap_follows_max_connections_unless_set() {
        let limits = |args: &[&str]| {
            let config = Config::try_parse_from(args).unwrap();
            config.http_limits(&config.memory_plan())
        };
        let derived = limits(&["pulse", "--max-connections", "256"]);
        assert_eq!(derived.max_connections_per_ip, 32);
        let set = limits(&["pulse", "--max-connections-per-ip", "0"]);
        assert_eq!(set.max_connections_per_ip, 0);
    }

    #[test]
    fn an_admin_token_is_trimmed_and_a_blank_or_spaced_one_is_refused() {
        let token = |value: &str| {
            Config::try_parse_from(["pulse", "--admin-token", value])
                .unwrap()
                .admin_token()
                .map_err(|e| e.to_string())
        };
        assert_eq!(token("s3cret\n"), Ok(Some("s3cret".to_owned())));
        assert_eq!(token("  s3cret \t"), Ok(Some("s3cret".to_owned())));
        assert_eq!(token(""), Ok(None));
        assert!(token("   ").unwrap_err().contains("only whitespace"));
        assert!(token("\n").unwrap_err().contains("only whitespace"));
        assert!(token("two words")
            .unwrap_err()
            .contains("whitespace or control"));
    }

    #[test]
    fn a_whitespace_token_does_not_unlock_a_public_address() {
        let config =
            Config::try_parse_from(["pulse", "--listen", "0.0.0.0:3000", "--admin-token", " "])
                .unwrap();
        assert!(crate::check_exposure(&config).is_err());
    }

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        let check = |text: &str, expected: Result<u64, ()>| {
            assert_eq!(parse_bytes(text).map_err(|_| ()), expected, "{text:?}");
        };
        check("1024", Ok(1024));
        check("64MiB", Ok(64 << 20));
        check("512 mb", Ok(512 << 20));
        check("2G", Ok(2 << 30));
        check("", Err(()));
        check("12XB", Err(()));
        check("MiB", Err(()));
        check("99999999999999999999GiB", Err(()));
    }

    #[test]
    fn cluster_mode_is_off_without_servers_and_takes_a_comma_list_with_three_replicas() {
        let local = Config::try_parse_from(["pulse"]).unwrap();
        assert!(!local.is_cluster());
        assert!(local.cluster_options(&local.memory_plan()).is_none());
        assert!(local.log_options(&local.memory_plan()).replay);
        let config = Config::try_parse_from([
            "pulse",
            "--cluster",
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
        ])
        .unwrap();
        let options = config.cluster_options(&config.memory_plan()).unwrap();
        assert_eq!(options.servers.len(), 2);
        assert_eq!(options.replicas, 3);
        assert_eq!(options.retention, Duration::from_secs(30 * 86_400));
        assert!(!config.log_options(&config.memory_plan()).replay);
    }

    #[test]
    fn trusted_proxies_parse_as_a_comma_list() {
        let config =
            Config::try_parse_from(["pulse", "--trusted-proxies", "10.0.0.0/8,::1"]).unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(Config::try_parse_from(["pulse", "--trusted-proxies", "10.0.0.0/33"]).is_err());
    }
}
