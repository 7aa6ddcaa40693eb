//! The process harness: starts the real `pulse` binary (whose path the caller passes in — only
//! the server's own tests know it, as `CARGO_BIN_EXE_pulse`) on `127.0.0.1:0` with its own or a
//! given data directory, waits for its `listening on ADDR` line, talks to it through the one
//! HTTP client (`crate::http`), scrapes its `/metrics`, and stops it with SIGTERM or SIGKILL,
//! checking how it exited. Every wait has a deadline; nothing sleeps and hopes. What the tests
//! assert about the answers is theirs; the shapes they share are in `crate::fixtures`.

// Test code: a failed unwrap or panic is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fixtures::{counts_of, error_check, website_of, CHROME_DESKTOP};
use crate::http::{Client, EventStream, HttpError, Request, Response};
use crate::metrics::Scrape;

/// How long the binary may take to print its `listening on` line.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the binary may take to exit after SIGTERM (or to refuse to start).
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of every HTTP request made through the harness.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `--listen`; `127.0.0.1:0` by default.
    pub listen: String,
    /// `--admin-token`; the harness's requests carry it.
    pub admin_token: Option<String>,
    /// `--trusted-proxies`, comma-separated CIDRs.
    pub trusted_proxies: Option<String>,
    /// `--geoip-db`.
    pub geoip_db: Option<PathBuf>,
    /// Pass the configuration as `PULSE_*` environment variables instead of flags.
    pub via_env: bool,
    /// Further flags, always passed as arguments (`--durability sync`, …).
    pub extra_args: Vec<String>,
    /// Further environment variables (`LD_PRELOAD` for libfaketime, …).
    pub extra_env: Vec<(String, String)>,
    /// `--test-clock`: "now" stands still at this unix millisecond until `Server::set_clock`
    /// moves it (the binary must be a `test-clock` build, as `cargo test` makes it).
    pub test_clock_ms: Option<i64>,
    /// `--test-window-secs`: the active window (and the salts' carry-over) in seconds.
    pub test_window_secs: Option<u32>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
            admin_token: None,
            trusted_proxies: None,
            geoip_db: None,
            via_env: false,
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            test_clock_ms: None,
            test_window_secs: None,
        }
    }
}

impl Opts {
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_owned());
        self
    }

    pub fn trusted_proxies(mut self, cidrs: &str) -> Self {
        self.trusted_proxies = Some(cidrs.to_owned());
        self
    }

    pub fn geoip_db(mut self, path: PathBuf) -> Self {
        self.geoip_db = Some(path);
        self
    }

    pub fn listen(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.listen);
        self
    }

    pub fn via_env(mut self) -> Self {
        self.via_env = true;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs on the test clock, starting at `unix_ms`.
    pub fn test_clock(mut self, unix_ms: i64) -> Self {
        self.test_clock_ms = Some(unix_ms);
        self
    }

    /// Runs with a `secs`-second window instead of 30 minutes.
    pub fn test_window_secs(mut self, secs: u32) -> Self {
        self.test_window_secs = Some(secs);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The command that runs `bin` with these options on `data_dir`, with inherited `PULSE_*`
    /// variables removed.
    pub fn command(&self, bin: &Path, data_dir: &Path) -> Command {
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PULSE_") {
                cmd.env_remove(&key);
            }
        }
        let mut settings: Vec<(&str, &str, String)> = vec![
            ("--listen", "PULSE_LISTEN", self.listen.clone()),
            (
                "--data-dir",
                "PULSE_DATA_DIR",
                data_dir.display().to_string(),
            ),
        ];
        if let Some(token) = &self.admin_token {
            settings.push(("--admin-token", "PULSE_ADMIN_TOKEN", token.clone()));
        }
        if let Some(cidrs) = &self.trusted_proxies {
            settings.push(("--trusted-proxies", "PULSE_TRUSTED_PROXIES", cidrs.clone()));
        }
        if let Some(db) = &self.geoip_db {
            settings.push(("--geoip-db", "PULSE_GEOIP_DB", db.display().to_string()));
        }
        for (flag, var, value) in settings {
            if self.via_env {
                cmd.env(var, value);
            } else {
                cmd.arg(flag).arg(value);
            }
        }
        // Test-only flags are never environment variables, so no deployment can set them.
        if let Some(unix_ms) = self.test_clock_ms {
            cmd.arg("--test-clock").arg(unix_ms.to_string());
        }
        if let Some(secs) = self.test_window_secs {
            cmd.arg("--test-window-secs").arg(secs.to_string());
        }
        cmd.args(&self.extra_args);
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Waits for `child` to exit, up to `deadline` from now.
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collects a child's stderr in the background, so it never blocks on a full pipe and can be
/// shown when something goes wrong.
fn drain_stderr(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut stderr) = child.stderr.take() {
        let sink = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0_u8; 8192];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
    }
    buf
}

/// Reads a child's stdout lines in the background: each line is stored and also sent on the
/// returned channel (which disconnects at end of file).
fn drain_stdout(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    (lines, rx)
}

/// What a run of the binary that was expected to exit by itself produced.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin` with `opts` and waits for it to exit on its own (e.g. a refused configuration).
/// Panics if it is still running after `STOP_DEADLINE`, after killing it.
pub fn run_expecting_exit(bin: &Path, opts: &Opts, data_dir: &Path) -> Exited {
    let mut child = opts.command(bin, data_dir).spawn().unwrap();
    let stderr = drain_stderr(&mut child);
    let (stdout, _rx) = drain_stdout(&mut child);
    let Some(status) = wait_with_deadline(&mut child, STOP_DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the binary was expected to exit by itself with {opts:?}, but it kept running; \
             stdout: {:?}",
            stdout.lock().unwrap()
        );
    };
    // The reader threads finish at end of file; give them a moment to pick up the last bytes.
    let end = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&stderr) > 1 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    let stdout = stdout.lock().unwrap().join("\n");
    Exited {
        status,
        stdout,
        stderr,
    }
}

/// Asserts a clean exit after SIGTERM: status 0.
#[track_caller]
pub fn assert_exit_zero(status: ExitStatus, context: &str, stderr: &str) {
    assert!(
        status.success(),
        "{context}: SIGTERM should end the server with exit status 0, got {status}; \
         stderr:\n{stderr}"
    );
}

/// Asserts that `status` is death by SIGKILL: the kill hit a running server, which had not
/// exited (crashed) by itself before.
#[cfg(unix)]
#[track_caller]
pub fn assert_killed(status: ExitStatus, context: &str, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{context}: the server should have died of SIGKILL, but exited with {status}; \
         stderr:\n{stderr}"
    );
}

/// A running process, its address and its captured output.
struct Running {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Kills a server that failed to start and panics with why and its stderr.
fn fail_start(child: &mut Child, stderr: &Mutex<Vec<u8>>, opts: &Opts, why: &str) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    // Let the stderr reader catch up after the process is gone.
    std::thread::sleep(Duration::from_millis(50));
    panic!(
        "the server did not start ({why}); options {opts:?}; stderr:\n{}",
        String::from_utf8_lossy(&stderr.lock().unwrap())
    );
}

/// Spawns the binary and waits for its `listening on ADDR` line.
fn spawn_ready(bin: &Path, opts: &Opts, data_dir: &Path) -> Running {
    let mut child = opts.command(bin, data_dir).spawn().unwrap_or_else(|e| {
        panic!("cannot run {}: {e}", bin.display());
    });
    let stderr = drain_stderr(&mut child);
    let (stdout, rx) = drain_stdout(&mut child);
    let line = match rx.recv_timeout(START_DEADLINE) {
        Ok(line) => line,
        Err(mpsc::RecvTimeoutError::Timeout) => fail_start(
            &mut child,
            &stderr,
            opts,
            &format!("no stdout line within {START_DEADLINE:?}"),
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = wait_with_deadline(&mut child, Duration::from_secs(2));
            fail_start(
                &mut child,
                &stderr,
                opts,
                &format!("stdout closed before `listening on`; exit status {status:?}"),
            )
        }
    };
    let Some(addr) = line
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
    else {
        fail_start(
            &mut child,
            &stderr,
            opts,
            &format!("the first stdout line should be `listening on ADDR`, got {line:?}"),
        )
    };
    if addr.port() == 0 {
        fail_start(
            &mut child,
            &stderr,
            opts,
            &format!("announced port 0 in {line:?}"),
        );
    }
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    Running {
        child,
        addr,
        stdout,
        stderr,
    }
}

/// Sends a request through the harness and reads the whole answer; a transport error is a
/// failed check.
pub async fn send(request: Request) -> Response {
    let described = request.line();
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed ({e}): {described}"))
}

/// A `pulse` process and everything needed to talk to it. Stopped (SIGTERM) or killed
/// (SIGKILL), it can be started again on the same data directory with the same options; it is
/// killed when dropped.
pub struct Server {
    bin: PathBuf,
    opts: Opts,
    data_dir: PathBuf,
    /// Keeps the temporary data directory alive (and removes it at the end).
    _tmp: Option<tempfile::TempDir>,
    /// `None` between a stop and the next `respawn`.
    running: Option<Running>,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    client: Client,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts `bin` with a fresh temporary data directory and waits for `listening on`.
    pub fn start(bin: &Path, opts: Opts) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().to_path_buf();
        Self::launch(bin, opts, data_dir, Some(tmp))
    }

    /// Starts `bin` on an existing data directory (owned by the caller, so it outlives the
    /// process: SIGKILL it and start again) and waits for `listening on` — not for readiness:
    /// see `wait_ready`.
    pub fn start_in(bin: &Path, opts: Opts, data_dir: &Path) -> Self {
        Self::launch(bin, opts, data_dir.to_path_buf(), None)
    }

    fn launch(bin: &Path, opts: Opts, data_dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        let running = spawn_ready(bin, &opts, &data_dir);
        Self {
            bin: bin.to_path_buf(),
            opts,
            data_dir,
            _tmp: tmp,
            addr: running.addr,
            stdout: Arc::clone(&running.stdout),
            stderr: Arc::clone(&running.stderr),
            client: Client::new(running.addr, REQUEST_TIMEOUT),
            running: Some(running),
        }
    }

    /// Stops the server (SIGTERM, then waits for it to exit) and starts it again on the same
    /// data directory with the same options. Returns the exit status of the first process.
    pub fn restart(&mut self) -> ExitStatus {
        let status = self.stop();
        self.respawn();
        status
    }

    /// The options the next `respawn` starts with (e.g. a later `test_clock_ms` for a restart at
    /// another time).
    pub fn opts_mut(&mut self) -> &mut Opts {
        &mut self.opts
    }

    /// Starts the process again on the same data directory with the same options, after it was
    /// killed or stopped.
    pub fn respawn(&mut self) {
        assert!(
            self.running.is_none(),
            "respawn: the previous process still runs"
        );
        let running = spawn_ready(&self.bin, &self.opts, &self.data_dir);
        self.addr = running.addr;
        self.stdout = Arc::clone(&running.stdout);
        self.stderr = Arc::clone(&running.stderr);
        self.client = Client::new(running.addr, REQUEST_TIMEOUT);
        self.running = Some(running);
    }

    /// Sends SIGTERM and waits (up to `STOP_DEADLINE`) for the process to exit; kills it and
    /// panics with its stderr when it does not.
    pub fn stop(&mut self) -> ExitStatus {
        let mut running = self
            .running
            .take()
            .expect("stop: the server is not running");
        let pid = running.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        match wait_with_deadline(&mut running.child, STOP_DEADLINE) {
            Some(status) => status,
            None => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                panic!(
                    "the server did not exit within {STOP_DEADLINE:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL (`Child::kill`), then waits for the process to be gone. The status says whether
    /// the signal hit a running process (`signal() == Some(9)`) or it had already exited.
    pub fn kill_9(&mut self) -> ExitStatus {
        let mut running = self
            .running
            .take()
            .expect("kill_9: the server is not running");
        // An error only means it had already exited; the status below says how.
        let _ = running.child.kill();
        running.child.wait().unwrap()
    }

    /// The process id of the running server; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.running
            .as_ref()
            .expect("pid: the server is not running")
            .child
            .id()
    }

    /// The address to connect to (loopback even when listening on an unspecified address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the current process wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Every line the current process wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// A client for the current process that sends no token.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A request to `path`, carrying the admin token when the server has one.
    pub fn request(&self, method: &str, path: &str) -> Request {
        let request = self.client.request(method, path);
        match &self.opts.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        send(self.request("GET", path)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        send(self.request("DELETE", path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        send(self.request("POST", path).json(body)).await
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Response {
        send(self.request("PATCH", path).json(body)).await
    }

    /// `POST /api/collect` with a JSON body, as desktop Chrome, no token.
    pub async fn collect(&self, body: &Value) -> Response {
        self.collect_with(body, Some(CHROME_DESKTOP), &[]).await
    }

    /// `POST /api/collect` with a JSON body, the given User-Agent (none when `None`) and extra
    /// headers. Never sends the admin token: collect must not need it.
    pub async fn collect_with(
        &self,
        body: &Value,
        user_agent: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = self.client.post("/api/collect").json(body);
        if let Some(ua) = user_agent {
            request = request.header("user-agent", ua);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        send(request).await
    }

    /// `POST /api/collect` with raw body bytes and a Content-Type, as desktop Chrome.
    pub async fn collect_raw(&self, content_type: Option<&str>, body: Vec<u8>) -> Response {
        let mut request = self
            .client
            .post("/api/collect")
            .header("user-agent", CHROME_DESKTOP);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        send(request.body(body)).await
    }

    /// `POST /api/collect` with a JSON body (one event or an array) as `user_agent`; a transport
    /// error (the process is gone) is returned, not a panic.
    pub async fn collect_as(&self, user_agent: &str, body: &Value) -> Result<Response, HttpError> {
        self.client
            .post("/api/collect")
            .json(body)
            .header("user-agent", user_agent)
            .send()
            .await
    }

    /// Creates a website from `body`, asserting 201, and returns the website object.
    pub async fn create_website(&self, body: &Value) -> Value {
        let resp = self.post_json("/api/websites", body).await;
        assert_eq!(
            resp.status, 201,
            "POST /api/websites {body} should be 201, got {resp:?}"
        );
        website_of(&resp.json())
    }

    /// Creates website `id` for `domain` with default policies.
    pub async fn site(&self, id: &str, domain: &str) -> Value {
        self.create_website(&json!({"id": id, "name": format!("Site {id}"), "domain": domain}))
            .await
    }

    /// The ids `GET /api/websites` lists, in its order (by id), asserting 200.
    pub async fn website_ids(&self) -> Vec<String> {
        let resp = self.get("/api/websites").await;
        assert_eq!(resp.status, 200, "GET /api/websites: {resp:?}");
        resp.json()["data"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /api/websites has no data list: {resp:?}"))
            .iter()
            .map(|w| w["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `GET /api/websites/{id}/realtime{query}`, asserting 200, returning `data`.
    pub async fn realtime_q(&self, id: &str, query: &str) -> Value {
        let resp = self
            .get(&format!("/api/websites/{id}/realtime{query}"))
            .await;
        assert_eq!(resp.status, 200, "realtime of {id}{query}: {resp:?}");
        let body = resp.json();
        body.get("data")
            .cloned()
            .unwrap_or_else(|| panic!("realtime body has no `data`: {body}"))
    }

    /// Opens `GET /api/websites/{id}/realtime/stream{query}` (with the admin token when the
    /// server has one), asserting a 200 event stream.
    pub async fn open_stream(&self, id: &str, query: &str) -> EventStream {
        let target = format!("/api/websites/{id}/realtime/stream{query}");
        self.request("GET", &target)
            .open_stream()
            .await
            .unwrap_or_else(|e| panic!("GET {target}: {e}"))
    }

    /// `GET /api/websites/{id}/realtime/breakdown{query}`, asserting 200, returning `data`.
    pub async fn breakdown_q(&self, id: &str, query: &str) -> Value {
        let resp = self
            .get(&format!("/api/websites/{id}/realtime/breakdown{query}"))
            .await;
        assert_eq!(resp.status, 200, "breakdown of {id}{query}: {resp:?}");
        let body = resp.json();
        body.get("data")
            .cloned()
            .unwrap_or_else(|| panic!("breakdown body has no `data`: {body}"))
    }

    /// Realtime with the website's default bot policy.
    pub async fn realtime(&self, id: &str) -> Value {
        self.realtime_q(id, "").await
    }

    /// `(active_visitors, total_in_window)` with the default bot policy.
    pub async fn counts(&self, id: &str) -> (u64, u64) {
        counts_of(&self.realtime(id).await)
    }

    /// Moves the test clock (`--test-clock`) forward to `unix_ms` with `POST /api/test/clock`,
    /// asserting 200.
    pub async fn set_clock(&self, unix_ms: i64) {
        let resp = self
            .post_json("/api/test/clock", &json!({ "now_ms": unix_ms }))
            .await;
        assert_eq!(resp.status, 200, "POST /api/test/clock {unix_ms}: {resp:?}");
    }

    /// `GET /readyz` as it is: 503 `not_ready` during replay, 200 with the replay report after.
    pub async fn readyz(&self) -> Response {
        self.get("/readyz").await
    }

    /// Polls `/readyz` until it answers 200 and returns its `replay` object (sent with the admin
    /// token when the server has one: without it `/readyz` hides the report). Panics when the
    /// deadline passes, or at once when it answers anything but 200 or 503 `not_ready`.
    pub async fn wait_ready(&self, deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let resp = match self.request("GET", "/readyz").send().await {
                Ok(resp) => resp,
                Err(e) => panic!(
                    "GET /readyz failed ({e}): did the server exit? stderr:\n{}",
                    self.stderr()
                ),
            };
            if resp.status == 200 {
                let body = resp.json();
                assert_eq!(body["status"], "ready", "/readyz 200 body: {body}");
                assert!(
                    body["replay"].is_object(),
                    "/readyz 200 has no `replay` object: {body}"
                );
                return body["replay"].clone();
            }
            if let Err(why) = error_check(&resp, 503, "not_ready") {
                panic!(
                    "/readyz during start-up should be 200 or 503 not_ready: {why}; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < end,
                "/readyz still 503 not_ready after {deadline:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET /metrics` (with the admin token when the server has one), asserting 200, a text
    /// exposition content type (classic Prometheus or OpenMetrics) and a well-formed body.
    pub async fn scrape(&self) -> Scrape {
        let resp = self.get("/metrics").await;
        assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
        let content_type = resp.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain")
                || content_type.starts_with("application/openmetrics-text"),
            "/metrics content-type {content_type:?}"
        );
        let text = String::from_utf8(resp.body).expect("/metrics is not UTF-8");
        Scrape::parse(&text).unwrap_or_else(|errors| {
            panic!(
                "/metrics is not valid exposition text:\n  {}\n--- body:\n{text}",
                errors.join("\n  ")
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            if let Ok(None) = running.child.try_wait() {
                let _ = running.child.kill();
            }
            let _ = running.child.wait();
        }
    }
}
