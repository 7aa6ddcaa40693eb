//! Cluster mode (`--cluster nats://…`): every node shares one event log, one salt schedule and
//! one set of websites through NATS JetStream, so any node accepts any event and answers
//! realtime exactly as the others do. Without `--cluster` none of this runs.
//!
//! - This module: `Cluster` — the connection (credentials, TLS), the stream and the two
//!   key-value buckets it sets up, and its `ClusterStatus` (connected, caught up, counts).
//! - `events`: publishing ingested events to the stream (a 202 waits for the JetStream ack)
//!   and consuming the stream into this node's engine (`/readyz` waits for the catch-up).
//! - `salts`: `KvSalts`, the `SaltVault` in the `PULSE_SALTS` bucket.
//! - `websites`: `KvWebsites`, the `CatalogStorage` in the `PULSE_WEBSITES` bucket, and the
//!   watcher that applies other nodes' changes to this node's `WebsiteCatalog`.
//!
//! It does not validate or enrich events (collect does, as in local mode), and it keeps nothing
//! on local disk: the stream is the log.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::state::AppState;

pub mod events;
pub mod salts;
pub mod websites;

pub use events::PublishError;
pub use salts::KvSalts;
pub use websites::{KvWebsites, SharedWebsites};

/// The stream every node publishes events to and consumes from.
pub const EVENTS_STREAM: &str = "PULSE_EVENTS";
/// Events of website `W` are published on `pulse.events.W`.
pub const EVENTS_SUBJECT_PREFIX: &str = "pulse.events.";
/// The bucket of websites, one key per website id.
pub const WEBSITES_BUCKET: &str = "PULSE_WEBSITES";
/// The bucket of daily salts, one key per UTC day.
pub const SALTS_BUCKET: &str = "PULSE_SALTS";

/// How long the first connection may take before start-up fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish may wait for its JetStream ack before collect answers 503, publishing
/// again meanwhile while the stream has no leader (`events`). Much longer than a leader change
/// in which the old leader hands over (tens of milliseconds on loopback); the election that
/// replaces a dead leader waits out JetStream's election timeout (seconds) and may outlast it.
/// Short enough that a client's retry is not held up for long.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one set-up request (stream, buckets) may take, how long set-up keeps retrying
/// before start-up fails, and the pause between tries.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
const SETUP_DEADLINE: Duration = Duration::from_secs(20);
const SETUP_RETRY: Duration = Duration::from_millis(500);
/// How long a key-value read or write may take (websites, salts).
pub const KV_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the cluster and how to set it up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `nats://host:port` URLs of the NATS servers (any of them will do; the client learns the
    /// others).
    pub servers: Vec<String>,
    /// Replicas of the stream and buckets (3 on a 3-node cluster; 1 against a single server).
    pub replicas: usize,
    /// NATS credentials file (`.creds`: JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) the NATS servers' TLS certificates are checked against; TLS is
    /// required when set.
    pub tls_ca: Option<PathBuf>,
    /// How long the stream keeps events (`--retention-days`).
    pub retention: Duration,
    /// The realtime window: how far back a starting node reads the stream.
    pub window_ms: i64,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--cluster names no NATS server")]
    NoServers,
    #[error("--cluster has an invalid NATS URL {url:?}: {source}")]
    BadUrl { url: String, source: io::Error },
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Creds { path: PathBuf, source: io::Error },
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream {what} {name}: {reason}")]
    Setup {
        what: &'static str,
        name: &'static str,
        reason: String,
    },
}

/// What the rest of the server can see of the cluster: whether the connection is up, whether
/// this node has caught up with the stream, and counts for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    connected: AtomicBool,
    caught_up: AtomicBool,
    /// The stream's last sequence when this node started reading it.
    head_at_start: AtomicU64,
    /// The stream sequence of the last event this node counted.
    consumed_seq: AtomicU64,
    consumed_events: AtomicU64,
    publish_failures: AtomicU64,
    disconnects: AtomicU64,
    /// Website changes the watcher has applied.
    catalog_changes: AtomicU64,
}

impl ClusterStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// True once the consumer has read the stream up to its head as of start-up.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// True while realtime answers come from memory that may miss events: the connection to
    /// NATS is down, so events other nodes accept now are not reaching this one.
    pub fn is_stale(&self) -> bool {
        !self.is_connected()
    }

    pub fn head_at_start(&self) -> u64 {
        self.head_at_start.load(Ordering::Relaxed)
    }

    pub fn consumed_seq(&self) -> u64 {
        self.consumed_seq.load(Ordering::Relaxed)
    }

    pub fn consumed_events(&self) -> u64 {
        self.consumed_events.load(Ordering::Relaxed)
    }

    pub fn publish_failures(&self) -> u64 {
        self.publish_failures.load(Ordering::Relaxed)
    }

    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    pub fn catalog_changes(&self) -> u64 {
        self.catalog_changes.load(Ordering::Relaxed)
    }

    fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::AcqRel);
        if was && !connected {
            self.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::error!("lost the connection to NATS: collect answers 503, realtime is stale");
        } else if !was && connected {
            tracing::info!("connected to NATS");
        }
    }
}

/// A node's link to the cluster: the NATS client, the JetStream context, the events stream and
/// the two buckets.
#[derive(Debug)]
pub struct Cluster {
    jetstream: jetstream::Context,
    events: stream::Stream,
    websites: Arc<KvWebsites>,
    salts: kv::Store,
    status: Arc<ClusterStatus>,
    window_ms: i64,
}

impl Cluster {
    /// Connects to the NATS servers and creates the stream and buckets when they do not exist
    /// yet (any node may be the first).
    pub async fn connect(options: &ClusterOptions) -> Result<Self, ClusterError> {
        if options.servers.is_empty() {
            return Err(ClusterError::NoServers);
        }
        let servers = options
            .servers
            .iter()
            .map(|url| {
                url.trim()
                    .parse::<ServerAddr>()
                    .map_err(|source| ClusterError::BadUrl {
                        url: url.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let status = Arc::new(ClusterStatus::default());
        let events_status = Arc::clone(&status);
        let mut connect = ConnectOptions::new()
            .name("pulse")
            .connection_timeout(CONNECT_TIMEOUT)
            // Keep reconnecting for as long as the process runs: a cluster that comes back
            // must find its nodes again without a restart.
            .max_reconnects(None)
            .event_callback(move |event| {
                let status = Arc::clone(&events_status);
                async move {
                    match event {
                        Event::Connected => status.set_connected(true),
                        Event::Disconnected | Event::Closed => status.set_connected(false),
                        other => tracing::warn!(event = %other, "NATS"),
                    }
                }
            });
        if let Some(path) = &options.creds {
            connect =
                connect
                    .credentials_file(path)
                    .await
                    .map_err(|source| ClusterError::Creds {
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = connect
            .connect(servers)
            .await
            .map_err(|source| ClusterError::Connect {
                servers: options.servers.join(","),
                source,
            })?;
        status.set_connected(true);
        let replicas = options.replicas.max(1);
        // A cluster that has just formed, or a busy one, may need a while to place a replicated
        // stream: set-up gets longer requests and retries until `SETUP_DEADLINE`.
        let mut setup = jetstream::new(client.clone());
        setup.set_timeout(SETUP_TIMEOUT);
        let deadline = tokio::time::Instant::now() + SETUP_DEADLINE;
        let (events, websites, salts) = loop {
            match set_up(&setup, options, replicas).await {
                Ok(parts) => break parts,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "JetStream set-up failed; retrying");
                    tokio::time::sleep(SETUP_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        };
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(PUBLISH_TIMEOUT);
        tracing::info!(
            servers = %options.servers.join(","),
            replicas,
            "cluster mode: events in stream {EVENTS_STREAM}, websites and salts in key-value buckets"
        );
        Ok(Self {
            jetstream,
            events,
            websites,
            salts,
            status,
            window_ms: options.window_ms,
        })
    }

    pub fn status(&self) -> &Arc<ClusterStatus> {
        &self.status
    }

    /// The catalog's storage: the websites bucket, as read at connection.
    pub fn catalog_storage(&self) -> SharedWebsites {
        SharedWebsites(Arc::clone(&self.websites))
    }

    /// The salt store's vault: the salts bucket.
    pub fn salt_vault(&self) -> KvSalts {
        KvSalts::new(self.salts.clone())
    }

    /// The stream sequence the next event published will get at the earliest: a website created
    /// now begins there (`WebsiteEntry::log_start_seq`), so events of a deleted website of the
    /// same id, all stored before it, are never counted for the new one.
    pub async fn next_seq(&self) -> Result<u64, PublishError> {
        let info = tokio::time::timeout(KV_TIMEOUT, self.events.get_info())
            .await
            .map_err(|_| PublishError::TimedOut)?
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        Ok(info.state.last_sequence + 1)
    }

    /// Starts the tasks a cluster node runs for as long as it serves: the stream consumer and
    /// the websites watcher.
    pub fn spawn_tasks(state: &Arc<AppState>) {
        let Some(cluster) = state.cluster.as_ref() else {
            return;
        };
        let start_ms = crate::clock::now_ms() - cluster.window_ms;
        tokio::spawn(events::consume(Arc::clone(state), start_ms));
        tokio::spawn(websites::watch(Arc::clone(state)));
    }
}

/// The events stream, the websites (as read now) and the salts bucket, each created when it
/// does not exist yet.
async fn set_up(
    jetstream: &jetstream::Context,
    options: &ClusterOptions,
    replicas: usize,
) -> Result<(stream::Stream, Arc<KvWebsites>, kv::Store), ClusterError> {
    let events = jetstream
        .get_or_create_stream(stream::Config {
            name: EVENTS_STREAM.to_owned(),
            subjects: vec![format!("{EVENTS_SUBJECT_PREFIX}>")],
            num_replicas: replicas,
            max_age: options.retention,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| setup_error("stream", EVENTS_STREAM, e))?;
    let websites =
        Arc::new(KvWebsites::open(bucket(jetstream, WEBSITES_BUCKET, replicas).await?).await?);
    let salts = bucket(jetstream, SALTS_BUCKET, replicas).await?;
    Ok((events, websites, salts))
}

/// The key-value bucket `name` (one value per key, replicated like the stream), created when it
/// does not exist yet.
async fn bucket(
    jetstream: &jetstream::Context,
    name: &'static str,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let store = found_or_created_bucket(jetstream, name, replicas).await?;
    // A bucket just created (or whose stream is electing a leader) can answer a read with "no
    // responders" for a moment: a read here makes set-up (which retries) wait for that, instead
    // of the first real read (the salts at start-up) failing the start.
    store
        .get(SETUP_PROBE_KEY)
        .await
        .map_err(|e| setup_error("bucket", name, e))?;
    Ok(store)
}

/// Any key will do for the probe read: only that the bucket answers matters, not the value.
const SETUP_PROBE_KEY: &str = "setup-probe";

async fn found_or_created_bucket(
    jetstream: &jetstream::Context,
    name: &'static str,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = jetstream.get_key_value(name).await {
        return Ok(store);
    }
    match jetstream
        .create_key_value(kv::Config {
            bucket: name.to_owned(),
            history: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        // Another node created it between the two calls.
        Err(create) => jetstream
            .get_key_value(name)
            .await
            .map_err(|_| setup_error("bucket", name, create)),
    }
}

fn setup_error(
    what: &'static str,
    name: &'static str,
    error: impl std::fmt::Display,
) -> ClusterError {
    ClusterError::Setup {
        what,
        name,
        reason: error.to_string(),
    }
}

/// Runs `future` to completion from synchronous code (the catalog's and the salt store's
/// storage steps), on the runtime behind `handle`, for at most `timeout`. Works on the
/// multi-threaded runtime's threads and on blocking threads; refuses on a current-thread runtime,
/// where blocking would stop the very runtime the future needs.
pub fn wait_for<F: Future>(handle: &Handle, timeout: Duration, future: F) -> io::Result<F::Output> {
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread) {
        return Err(io::Error::other(
            "cluster storage needs the multi-threaded runtime",
        ));
    }
    tokio::task::block_in_place(|| {
        handle.block_on(async { tokio::time::timeout(timeout, future).await })
    })
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "NATS did not answer in time (key-value request)",
        )
    })
}
