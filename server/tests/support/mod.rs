//! Test harness for the `pulse` binary: starts a real server process on `127.0.0.1:0` with its own
//! temporary data directory, waits for its `listening on ADDR` line, sends HTTP requests to it
//! (reqwest, or raw bytes over TCP for protocol abuse), checks error bodies, and stops it with
//! SIGTERM. Every wait has a deadline; nothing sleeps and hopes.

// Test code: a failed unwrap is a failed check, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each helper is used by some tests but not all of them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the binary may take to print its `listening on` line.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the binary may take to exit after SIGTERM (or to refuse to start).
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of every HTTP request made through the harness.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A desktop Chrome on Windows: classified as a human, "Chrome", "desktop".
pub const CHROME_DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
/// A desktop Firefox on Linux: a second human browser.
pub const FIREFOX_DESKTOP: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
/// Safari on an iPhone: classified as a human, "Safari", "mobile".
pub const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) \
     AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
/// Google's crawler: a bot.
pub const GOOGLEBOT: &str =
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// A command-line client: a bot.
pub const CURL: &str = "curl/8.5.0";

/// The MaxMind test database committed in `testdata/`.
pub fn geoip_test_db() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/GeoLite2-Country-Test.mmdb"
    ));
    assert!(
        path.is_file(),
        "the GeoIP test database is missing: expected it at {} (see testdata/README.md)",
        path.display()
    );
    path
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `--listen`; `127.0.0.1:0` by default.
    pub listen: String,
    /// `--admin-token`.
    pub admin_token: Option<String>,
    /// `--trusted-proxies`, comma-separated CIDRs.
    pub trusted_proxies: Option<String>,
    /// `--geoip-db`.
    pub geoip_db: Option<PathBuf>,
    /// Pass the configuration as `PULSE_*` environment variables instead of flags.
    pub via_env: bool,
    /// Further flags, always passed as arguments (`--durability sync`, …).
    pub extra_args: Vec<String>,
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

    pub fn args(mut self, args: &[String]) -> Self {
        self.extra_args.extend_from_slice(args);
        self
    }
}

/// The `pulse` command for `opts` and `data_dir`, with inherited `PULSE_*` variables removed.
pub fn command(opts: &Opts, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PULSE_") {
            cmd.env_remove(&key);
        }
    }
    let mut settings: Vec<(&str, &str, String)> = vec![
        ("--listen", "PULSE_LISTEN", opts.listen.clone()),
        (
            "--data-dir",
            "PULSE_DATA_DIR",
            data_dir.display().to_string(),
        ),
    ];
    if let Some(token) = &opts.admin_token {
        settings.push(("--admin-token", "PULSE_ADMIN_TOKEN", token.clone()));
    }
    if let Some(cidrs) = &opts.trusted_proxies {
        settings.push(("--trusted-proxies", "PULSE_TRUSTED_PROXIES", cidrs.clone()));
    }
    if let Some(db) = &opts.geoip_db {
        settings.push(("--geoip-db", "PULSE_GEOIP_DB", db.display().to_string()));
    }
    for (flag, var, value) in settings {
        if opts.via_env {
            cmd.env(var, value);
        } else {
            cmd.arg(flag).arg(value);
        }
    }
    cmd.args(&opts.extra_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Sends SIGTERM to `child` and waits (up to `STOP_DEADLINE`) for it to exit; kills it and
/// panics with its `stderr` when it does not.
fn terminate(mut child: Child, stderr: impl FnOnce() -> String) -> ExitStatus {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
    match wait_with_deadline(&mut child, STOP_DEADLINE) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not exit within {STOP_DEADLINE:?} of SIGTERM; stderr:\n{}",
                stderr()
            );
        }
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

/// What a run of the binary that was expected to exit by itself produced.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `opts` and waits for it to exit on its own (e.g. a refused
/// configuration). Panics if it is still running after `STOP_DEADLINE`, after killing it.
pub fn run_expecting_exit(opts: &Opts, data_dir: &Path) -> Exited {
    let mut child = command(opts, data_dir).spawn().unwrap();
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

/// A running `pulse` process and everything needed to talk to it.
pub struct Server {
    opts: Opts,
    data_dir: PathBuf,
    /// Keeps the temporary data directory alive (and removes it at the end).
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// An HTTP client that ignores proxy settings from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

impl Server {
    /// Starts a server with a fresh temporary data directory.
    pub fn start(opts: Opts) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().to_path_buf();
        Self::launch(opts, data_dir, Some(tmp))
    }

    /// Starts a server on an existing data directory (owned by the caller).
    pub fn start_in(opts: Opts, data_dir: &Path) -> Self {
        Self::launch(opts, data_dir.to_path_buf(), None)
    }

    fn launch(opts: Opts, data_dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        let (child, addr, stdout, stderr) = spawn_ready(&opts, &data_dir);
        Self {
            opts,
            data_dir,
            _tmp: tmp,
            child: Some(child),
            addr,
            stdout,
            stderr,
            client: client(),
        }
    }

    /// Stops the server (SIGTERM, then waits for it to exit) and starts it again on the same
    /// data directory with the same options. Returns the exit status of the first process.
    pub fn restart(&mut self) -> ExitStatus {
        let status = self.stop();
        self.respawn();
        status
    }

    /// Starts the process again on the same data directory with the same options, after it was
    /// killed or stopped.
    pub fn respawn(&mut self) {
        assert!(
            self.child.is_none(),
            "respawn: the previous process still runs"
        );
        let (child, addr, stdout, stderr) = spawn_ready(&self.opts, &self.data_dir);
        self.child = Some(child);
        self.addr = addr;
        self.stdout = stdout;
        self.stderr = stderr;
        // A fresh pool: the old connections went to the old process.
        self.client = client();
    }

    /// Sends SIGTERM and waits (up to `STOP_DEADLINE`) for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("the server is not running");
        terminate(child, || self.stderr())
    }

    /// The address to connect to (loopback even when listening on an unspecified address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the process wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Every line the current process wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request to `path`, carrying the admin token when the server has one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match &self.opts.admin_token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Resp {
        send(self.request(reqwest::Method::PATCH, path).json(body)).await
    }

    /// `POST /api/collect` with a JSON body, as desktop Chrome, no token.
    pub async fn collect(&self, body: &Value) -> Resp {
        self.collect_with(body, Some(CHROME_DESKTOP), &[]).await
    }

    /// `POST /api/collect` with a JSON body, the given User-Agent (none when `None`) and extra
    /// headers. Never sends the admin token: collect must not need it.
    pub async fn collect_with(
        &self,
        body: &Value,
        user_agent: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut builder = self
            .client
            .post(self.url("/api/collect"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
        if let Some(ua) = user_agent {
            builder = builder.header("user-agent", ua);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        send(builder).await
    }

    /// `POST /api/collect` with raw body bytes and a Content-Type, as desktop Chrome.
    pub async fn collect_raw(&self, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        let mut builder = self
            .client
            .post(self.url("/api/collect"))
            .header("user-agent", CHROME_DESKTOP)
            .body(body);
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        send(builder).await
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

    /// Realtime with the website's default bot policy.
    pub async fn realtime(&self, id: &str) -> Value {
        self.realtime_q(id, "").await
    }

    /// `(active_visitors, total_in_window)` with the default bot policy.
    pub async fn counts(&self, id: &str) -> (u64, u64) {
        counts_of(&self.realtime(id).await)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

type Spawned = (
    Child,
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<u8>>>,
);

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
fn spawn_ready(opts: &Opts, data_dir: &Path) -> Spawned {
    let mut child = command(opts, data_dir).spawn().unwrap();
    let stderr = drain_stderr(&mut child);
    let (stdout, rx) = drain_stdout(&mut child);
    let end = Instant::now() + START_DEADLINE;
    let line = match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
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
    (child, addr, stdout, stderr)
}

/// A complete HTTP response, read eagerly.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(2000)])
        )
    }
}

impl Resp {
    /// The body as JSON; panics (a failed check) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Sends a request and reads the whole response.
pub async fn send(builder: reqwest::RequestBuilder) -> Resp {
    let resp = builder.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// Checks that `resp` is the error `status` / `code` with the documented body shape
/// `{"error":{"code":"...","message":"..."}}` and nothing else.
pub fn error_check(resp: &Resp, status: u16, code: &str) -> Result<(), String> {
    if resp.status != status {
        return Err(format!("expected {status} `{code}`, got {resp:?}"));
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("expected a JSON error body ({e}), got {resp:?}"))?;
    let shape_ok = body.as_object().is_some_and(|o| o.len() == 1)
        && body["error"].as_object().is_some_and(|e| {
            e.len() == 2
                && e.get("code").is_some_and(Value::is_string)
                && e.get("message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| !m.trim().is_empty())
        });
    if !shape_ok {
        return Err(format!(
            "error body must be exactly {{\"error\":{{\"code\",\"message\"}}}} with a \
             non-empty message, got {body}"
        ));
    }
    if body["error"]["code"] != code {
        return Err(format!(
            "expected code `{code}`, got {} ({status})",
            body["error"]["code"]
        ));
    }
    Ok(())
}

/// Asserts `error_check`.
#[track_caller]
pub fn assert_error(resp: &Resp, status: u16, code: &str, context: &str) {
    if let Err(why) = error_check(resp, status, code) {
        panic!("{context}: {why}");
    }
}

/// Collects failed checks so a table-driven test reports all of them at once.
#[derive(Debug, Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn check(&mut self, context: &str, result: Result<(), String>) {
        if let Err(why) = result {
            self.0.push(format!("{context}: {why}"));
        }
    }

    pub fn push(&mut self, failure: String) {
        self.0.push(failure);
    }

    #[track_caller]
    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failed check(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// The website object of a `POST /api/websites` answer. The contract calls it "the website
/// object" while GET and PATCH wrap theirs in `{"data": …}`; both forms are accepted here and
/// `websites_can_be_created_listed_read_patched_and_deleted` checks the shape.
pub fn website_of(body: &Value) -> Value {
    match body.get("data") {
        Some(inner) if body.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => body.clone(),
    }
}

/// A pageview event for `site` at `url`.
pub fn pageview(site: &str, url: &str) -> Value {
    json!({"website_id": site, "type": "pageview", "url": url})
}

/// `(active_visitors, total_in_window)` of a realtime `data` object.
pub fn counts_of(data: &Value) -> (u64, u64) {
    let active = data["active_visitors"]
        .as_u64()
        .unwrap_or_else(|| panic!("active_visitors is not a count: {data}"));
    let total = data["pagination"]["total_in_window"]
        .as_u64()
        .unwrap_or_else(|| panic!("total_in_window is not a count: {data}"));
    (active, total)
}

/// The `recent_events` array of a realtime `data` object.
pub fn recent(data: &Value) -> Vec<Value> {
    data["recent_events"]
        .as_array()
        .unwrap_or_else(|| panic!("recent_events is not an array: {data}"))
        .clone()
}

/// The recent event whose `url` is `url`; panics when there is none or several.
pub fn event_with_url(data: &Value, url: &str) -> Value {
    let found: Vec<Value> = recent(data)
        .into_iter()
        .filter(|e| e["url"] == url)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one recent event with url {url:?} in {data}"
    );
    found[0].clone()
}

/// The sorted keys of a JSON object.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (exactly that form) into Unix seconds.
pub fn parse_utc_second(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = ts.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Every regular file under `dir`, recursively, with its bytes.
pub fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How a raw TCP exchange ended.
#[derive(Debug)]
pub struct RawOutcome {
    /// Everything read before the end.
    pub bytes: Vec<u8>,
    /// The server closed the connection (end of file or reset).
    pub closed: bool,
    /// The deadline passed with the connection still open and no complete response.
    pub timed_out: bool,
}

impl RawOutcome {
    /// The status code of the response, if one started.
    pub fn status(&self) -> Option<u16> {
        let text = std::str::from_utf8(self.bytes.get(..12)?).ok()?;
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The body of the response (everything after the blank line), as text.
    pub fn body_text(&self) -> String {
        let at = self
            .bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.bytes.len(), |p| p + 4);
        String::from_utf8_lossy(&self.bytes[at..]).into_owned()
    }
}

/// Whether `buf` holds a complete response with a `content-length` body (or no body).
fn response_complete(buf: &[u8]) -> bool {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(len) => buf.len() >= head_end + 4 + len,
        // Chunked: complete at the last chunk.
        None if head.contains("transfer-encoding: chunked") => buf.ends_with(b"0\r\n\r\n"),
        None => false,
    }
}

/// Connects to `addr`, writes `request` (in the background, ignoring write errors, so an early
/// response is never lost), and reads until a complete response, the server closing the
/// connection, or `deadline`. The connection is closed afterwards.
pub async fn raw_exchange(addr: SocketAddr, request: Vec<u8>, deadline: Duration) -> RawOutcome {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        for chunk in request.chunks(16 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                break;
            }
        }
        // Keep the write half open (no FIN) until the exchange is over.
        writer
    });
    let mut bytes = Vec::new();
    let mut closed = false;
    let mut timed_out = false;
    let end = tokio::time::Instant::now() + deadline;
    let mut chunk = vec![0_u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(end, reader.read(&mut chunk)).await {
            Err(_) => {
                timed_out = true;
                break;
            }
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&chunk[..n]);
                if response_complete(&bytes) {
                    break;
                }
            }
        }
    }
    write.abort();
    RawOutcome {
        bytes,
        closed,
        timed_out,
    }
}

/// Polls `probe` until it returns true or `deadline` passes; returns whether it succeeded.
pub async fn eventually<F, Fut>(deadline: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Crash testing: a server started with extra flags on a data directory the test owns, killed
// with SIGKILL or stopped with SIGTERM, and started again on the same directory.
// ---------------------------------------------------------------------------------------------

/// Sends a request and reads the whole response, returning the transport error instead of
/// panicking: for requests to a server that may be killed meanwhile.
pub async fn try_send(builder: reqwest::RequestBuilder) -> Result<Resp, reqwest::Error> {
    let resp = builder.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?.to_vec();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A `pulse` process started with extra flags (`--durability sync`, …) on a data directory the
/// caller owns, so that it can be SIGKILLed and started again on the same directory: a `Server`
/// (everything else is there), built from flags.
#[derive(Debug)]
pub struct Proc(Server);

impl Proc {
    /// Starts `pulse --listen 127.0.0.1:0 --data-dir DATA_DIR ARGS…` and waits for its
    /// `listening on` line (not for readiness: see `Server::wait_ready`).
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self(Server::start_in(Opts::default().args(&args), data_dir))
    }

    /// SIGTERM, then waits (up to `STOP_DEADLINE`) for the process to exit; panics with its
    /// stderr when it does not.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.0.stop()
    }
}

impl std::ops::Deref for Proc {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

/// Crash-test operations on any server.
impl Server {
    /// SIGKILL (`Child::kill`), then waits for the process to be gone. The status says whether
    /// the signal hit a running process (`signal() == Some(9)`) or it had already exited.
    pub fn kill_9(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("kill_9: the server is not running");
        // An error only means it had already exited; the status below says how.
        let _ = child.kill();
        child.wait().unwrap()
    }
    /// `POST /api/collect` with a JSON body (one event or an array) as `user_agent`; a transport
    /// error (the process is gone) is returned, not a panic.
    pub async fn collect_as(&self, user_agent: &str, body: &Value) -> Result<Resp, reqwest::Error> {
        try_send(
            self.client
                .post(self.url("/api/collect"))
                .header("content-type", "application/json")
                .header("user-agent", user_agent)
                .body(serde_json::to_vec(body).unwrap()),
        )
        .await
    }
    /// `GET /readyz` as it is: 503 `not_ready` during replay, 200 with the replay report after.
    pub async fn readyz(&self) -> Resp {
        self.get("/readyz").await
    }
    /// Polls `/readyz` until it answers 200 and returns its `replay` object. Panics when the
    /// deadline passes, or at once when it answers anything but 200 or 503 `not_ready`.
    pub async fn wait_ready(&self, deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let resp = match try_send(self.client.get(self.url("/readyz"))).await {
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
}

/// The live segment files (`*.seg`) of `data_dir`'s event log, oldest first (by name).
pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("segments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

impl Failures {
    /// Whether no check has failed so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Memory: the resident set of a running server, from /proc (overload tests).
// ---------------------------------------------------------------------------------------------

impl Server {
    /// The process id of the running server; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("pid: the server is not running")
            .id()
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in bytes; `None` once the process
/// is gone or the field is missing.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}
