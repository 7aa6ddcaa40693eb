//! The one HTTP/1.1 client of the tests and the load generator. Requests are bytes written with
//! one `write`; responses are parsed in place with `httparse` (status, headers, `Content-Length`,
//! chunked bodies, `Connection: close`, bodiless HEAD/204/304 answers). One request at a time per
//! connection, keep-alive, no pipelining — what a browser does.
//!
//! Three ways in: `AsyncConn` (tokio) keeps a connection open across requests and carries the
//! load generator's traffic and the overload flood; `BlockingConn` (std, its own thread) carries
//! the load generator's realtime poller, so its latency is not inflated by the load tasks'
//! scheduling; `Client` builds a request (`header`, `bearer_auth`, `json`, `body`) and sends it
//! on a fresh connection, for the integration tests. `raw_exchange` writes arbitrary bytes
//! (malformed or oversized requests) and reports how the server reacted. `Request::open_stream`
//! reads a Server-Sent Events response as it arrives (`EventStream`: `data:` messages and
//! comments, one at a time). This module never panics and knows nothing about Pulse's API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most header lines read from a response.
const MAX_RESPONSE_HEADERS: usize = 32;
/// Largest response accepted (the realtime body is ~25 KB).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection before a full response")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("expected an event stream, got {0:?}")]
    NotAStream(Box<Response>),
}

/// A parsed response. `headers` and `body` are filled only when asked for (`want_body`), so the
/// load generator's hot path allocates nothing per response.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    /// Every header in order, names lower-cased, values as (lossy) text.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The server will close the connection (or already did): reconnect before reusing it.
    pub close: bool,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(2000)])
        )
    }
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// Every value of the headers called `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The body as JSON; panics (a failed check in a test) when it is not JSON.
    #[allow(clippy::panic)]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum BodyLength {
    Fixed(usize),
    Chunked,
}

/// Tries to parse one complete response at the start of `buf`. `Ok(None)`: more bytes needed.
/// On success, also returns how many bytes of `buf` it used. `head_request`: the response
/// answers a HEAD, so it has no body whatever its `Content-Length` says.
pub fn parse_response(
    buf: &[u8],
    want_body: bool,
    head_request: bool,
) -> Result<Option<(Response, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = parsed.code.unwrap_or(0);
    let mut length = BodyLength::Fixed(0);
    let mut close = parsed.version == Some(0);
    let mut kept = Vec::new();
    for header in parsed.headers.iter() {
        if want_body {
            kept.push((
                header.name.to_ascii_lowercase(),
                String::from_utf8_lossy(header.value).into_owned(),
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("bad content-length".to_owned()))?;
            length = BodyLength::Fixed(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if header.value.eq_ignore_ascii_case(b"chunked") {
                length = BodyLength::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    // RFC 9112 §6.3: these answers end at the blank line whatever their headers say.
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        length = BodyLength::Fixed(0);
    }
    let rest = &buf[head_len..];
    match length {
        BodyLength::Fixed(n) => {
            if n > MAX_RESPONSE_BYTES {
                return Err(HttpError::Malformed(format!(
                    "a {n}-byte body is too large"
                )));
            }
            if rest.len() < n {
                return Ok(None);
            }
            let body = if want_body {
                rest[..n].to_vec()
            } else {
                Vec::new()
            };
            Ok(Some((
                Response {
                    status,
                    headers: kept,
                    body,
                    close,
                },
                head_len + n,
            )))
        }
        BodyLength::Chunked => {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                let (data_start, size) = match httparse::parse_chunk_size(&rest[at..]) {
                    Ok(httparse::Status::Complete((start, size))) => (at + start, size),
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(HttpError::Malformed("bad chunk size".to_owned())),
                };
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&s| s <= MAX_RESPONSE_BYTES)
                    .ok_or_else(|| HttpError::Malformed("chunk too large".to_owned()))?;
                if size == 0 {
                    // No trailers from the servers we talk to: the last chunk ends with CRLF.
                    if rest.len() < data_start + 2 {
                        return Ok(None);
                    }
                    let response = Response {
                        status,
                        headers: kept,
                        body,
                        close,
                    };
                    return Ok(Some((response, head_len + data_start + 2)));
                }
                if rest.len() < data_start + size + 2 {
                    return Ok(None);
                }
                if want_body {
                    body.extend_from_slice(&rest[data_start..data_start + size]);
                }
                at = data_start + size + 2;
            }
        }
    }
}

/// Formats a request with no body (or a small JSON body) for the API calls.
pub fn format_request(
    method: &str,
    target: &str,
    host: &str,
    token: Option<&str>,
    json_body: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n");
    if let Some(token) = token {
        out.push_str("authorization: Bearer ");
        out.push_str(token);
        out.push_str("\r\n");
    }
    if let Some(body) = json_body {
        out.push_str("content-type: application/json\r\n");
        out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// A keep-alive connection driven by tokio.
#[derive(Debug)]
pub struct AsyncConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl AsyncConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self, HttpError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Writes `request` and reads one response.
    pub async fn send(&mut self, request: &[u8], want_body: bool) -> Result<Response, HttpError> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            if let Some((response, used)) = parse_response(&self.buf, want_body, is_head(request))?
            {
                if used != self.buf.len() {
                    return Err(HttpError::Malformed(
                        "bytes after the response to a non-pipelined request".to_owned(),
                    ));
                }
                return Ok(response);
            }
            if self.buf.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::Malformed("response too large".to_owned()));
            }
        }
    }
}

/// A keep-alive connection with blocking sockets, for a dedicated thread.
#[derive(Debug)]
pub struct BlockingConn {
    stream: StdTcpStream,
    buf: Vec<u8>,
}

impl BlockingConn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, HttpError> {
        let stream = StdTcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| HttpError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn send(&mut self, request: &[u8], want_body: bool) -> Result<Response, HttpError> {
        self.stream.write_all(request).map_err(timeout_or_io)?;
        self.buf.clear();
        let mut chunk = [0_u8; 32 * 1024];
        loop {
            let n = self.stream.read(&mut chunk).map_err(timeout_or_io)?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some((response, _)) = parse_response(&self.buf, want_body, is_head(request))? {
                return Ok(response);
            }
            if self.buf.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::Malformed("response too large".to_owned()));
            }
        }
    }
}

/// Whether `request` is a HEAD, whose answer has no body.
fn is_head(request: &[u8]) -> bool {
    request.starts_with(b"HEAD ")
}

fn timeout_or_io(error: std::io::Error) -> HttpError {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(error),
    }
}

/// One request on a fresh blocking connection (set-up calls, not the measured path).
pub fn request_once(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    BlockingConn::connect(addr, timeout)?.send(request, true)
}

/// Builds requests to one server and sends each on a fresh connection, so a test never trips
/// over a pooled connection the server closed (or a process that was restarted). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
}

impl Client {
    /// A client for the server at `addr`; every request must be answered within `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout }
    }

    /// The address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `method` request for `target` (`/path?query`).
    pub fn request(&self, method: &str, target: &str) -> Request {
        Request {
            addr: self.addr,
            timeout: self.timeout,
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn get(&self, target: &str) -> Request {
        self.request("GET", target)
    }

    pub fn post(&self, target: &str) -> Request {
        self.request("POST", target)
    }
}

/// A request being built by a `Client`; `send` writes it and reads the answer.
#[derive(Debug, Clone)]
pub struct Request {
    addr: SocketAddr,
    timeout: Duration,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    /// Adds a header line (several with one name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Authorization: Bearer TOKEN`.
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string().into_bytes())
    }

    /// A body (sent with its `Content-Length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// `METHOD TARGET`, for failure messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }

    /// The request as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {}\r\n",
            self.method, self.target, self.addr
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = &self.body {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(body) = &self.body {
            out.extend_from_slice(body);
        }
        out
    }

    /// Sends the request on a new connection and reads the whole answer. The body is written in
    /// the background, so an answer the server sends before reading it all (a 413) is still
    /// seen rather than lost to a failed write.
    pub async fn send(self) -> Result<Response, HttpError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.exchange())
            .await
            .unwrap_or(Err(HttpError::Timeout))
    }

    /// A new connection to the request's server, Nagle off (requests are written whole).
    async fn connect(&self) -> Result<TcpStream, HttpError> {
        let addr = self.addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn exchange(self) -> Result<Response, HttpError> {
        let stream = self.connect().await?;
        let head_request = self.method.eq_ignore_ascii_case("HEAD");
        let (mut reader, mut writer) = stream.into_split();
        let request = self.to_bytes();
        let write = tokio::spawn(async move {
            // A failed write shows up as a missing answer below.
            let _ = writer.write_all(&request).await;
            // Keep the write half open (no FIN) until the answer is read.
            writer
        });
        let mut buf = Vec::with_capacity(16 * 1024);
        let result = loop {
            match reader.read_buf(&mut buf).await {
                Ok(0) => break Err(HttpError::Closed),
                Ok(_) => {}
                Err(e) => break Err(HttpError::Io(e)),
            }
            match parse_response(&buf, true, head_request) {
                Ok(Some((response, _))) => break Ok(response),
                Ok(None) if buf.len() > MAX_RESPONSE_BYTES => {
                    break Err(HttpError::Malformed("response too large".to_owned()))
                }
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        write.abort();
        result
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseMessage {
    /// The `data:` lines of one event, joined by newlines.
    Data(String),
    /// A comment line (`: text`), as heartbeats are sent; the text after the colon, trimmed.
    Comment(String),
}

/// A Server-Sent Events response being read as it arrives (`Request::open_stream`).
#[derive(Debug)]
pub struct EventStream {
    reader: tokio::net::tcp::OwnedReadHalf,
    /// Keeps the connection's write half open while the stream is read.
    _writer: tokio::net::tcp::OwnedWriteHalf,
    pub status: u16,
    /// Every header in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes read but not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet parsed into messages.
    body: Vec<u8>,
    /// The body ended (last chunk, or the server closed the connection).
    ended: bool,
}

impl Request {
    /// Sends the request on a new connection and, if the answer is a 200 `text/event-stream`,
    /// returns it open for reading; any other answer is read whole and returned as
    /// `HttpError::NotAStream`.
    pub async fn open_stream(self) -> Result<EventStream, HttpError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.open_stream_now())
            .await
            .unwrap_or(Err(HttpError::Timeout))
    }

    async fn open_stream_now(self) -> Result<EventStream, HttpError> {
        let stream = self.connect().await?;
        let (mut reader, mut writer) = stream.into_split();
        writer.write_all(&self.to_bytes()).await?;
        let mut raw = Vec::with_capacity(16 * 1024);
        let (status, headers, chunked, head_len) = loop {
            if reader.read_buf(&mut raw).await? == 0 {
                return Err(HttpError::Closed);
            }
            let mut parsed_headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut parsed = httparse::Response::new(&mut parsed_headers);
            match parsed.parse(&raw) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let chunked = headers.iter().any(|(name, value)| {
                        name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked")
                    });
                    break (parsed.code.unwrap_or(0), headers, chunked, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(HttpError::Malformed(e.to_string())),
            }
            if raw.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::Malformed("response head too large".to_owned()));
            }
        };
        let is_stream = headers
            .iter()
            .any(|(name, value)| name == "content-type" && value.starts_with("text/event-stream"));
        if status != 200 || !is_stream {
            // Read the rest of an ordinary answer to report it whole.
            loop {
                if let Some((response, _)) = parse_response(&raw, true, false)? {
                    return Err(HttpError::NotAStream(Box::new(response)));
                }
                if reader.read_buf(&mut raw).await? == 0 || raw.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError::Closed);
                }
            }
        }
        raw.drain(..head_len);
        Ok(EventStream {
            reader,
            _writer: writer,
            status,
            headers,
            chunked,
            raw,
            body: Vec::new(),
            ended: false,
        })
    }
}

impl EventStream {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// The next message, waiting at most `deadline` for it. `Ok(None)`: the stream ended (the
    /// server finished the response or closed the connection). `Err(Timeout)`: none came.
    pub async fn next(&mut self, deadline: Duration) -> Result<Option<SseMessage>, HttpError> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            self.dechunk()?;
            if let Some(message) = self.take_message() {
                return Ok(Some(message));
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(end, self.reader.read_buf(&mut self.raw)).await {
                Err(_) => return Err(HttpError::Timeout),
                Ok(Ok(0)) => self.ended = true,
                Ok(Ok(_)) => {}
                // A reset at the end is an end too: the server is gone.
                Ok(Err(_)) => self.ended = true,
            }
            if self.raw.len() + self.body.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::Malformed(
                    "an event larger than 4 MiB".to_owned(),
                ));
            }
        }
    }

    /// Moves complete chunks from `raw` to `body` (everything, when not chunked).
    fn dechunk(&mut self) -> Result<(), HttpError> {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return Ok(());
        }
        loop {
            let (data_start, size) = match httparse::parse_chunk_size(&self.raw) {
                Ok(httparse::Status::Complete((start, size))) => (start, size),
                Ok(httparse::Status::Partial) => return Ok(()),
                Err(_) => return Err(HttpError::Malformed("bad chunk size".to_owned())),
            };
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s <= MAX_RESPONSE_BYTES)
                .ok_or_else(|| HttpError::Malformed("chunk too large".to_owned()))?;
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return Ok(());
            }
            if self.raw.len() < data_start + size + 2 {
                return Ok(());
            }
            self.body
                .extend_from_slice(&self.raw[data_start..data_start + size]);
            self.raw.drain(..data_start + size + 2);
        }
    }

    /// The first complete message in `body` (ended by a blank line), removed from it.
    fn take_message(&mut self) -> Option<SseMessage> {
        loop {
            let end = self.body.windows(2).position(|w| w == b"\n\n")?;
            let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
            self.body.drain(..end + 2);
            let mut data: Vec<&str> = Vec::new();
            let mut comment = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                } else if let Some(text) = line.strip_prefix(':') {
                    comment = Some(text.trim().to_owned());
                }
            }
            if !data.is_empty() {
                return Some(SseMessage::Data(data.join("\n")));
            }
            if let Some(text) = comment {
                return Some(SseMessage::Comment(text));
            }
        }
    }
}

/// How a raw exchange ended.
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

/// Connects to `addr`, writes `request` (in the background, ignoring write errors, so an early
/// response is never lost), and reads until a complete response, the server closing the
/// connection, or `deadline`. The connection is closed afterwards. For requests no well-formed
/// client would send: a head too large, a lying `Content-Length`, a body that never comes.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: Vec<u8>,
    deadline: Duration,
) -> Result<RawOutcome, HttpError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
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
                if matches!(parse_response(&bytes, false, false), Ok(Some(_))) {
                    break;
                }
            }
        }
    }
    write.abort();
    Ok(RawOutcome {
        bytes,
        closed,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed check.
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_fixed_length_responses_split_anywhere() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        for cut in 0..raw.len() {
            assert!(
                parse_response(&raw[..cut], true, false).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (response, used) = parse_response(raw, true, false).unwrap().unwrap();
        assert_eq!(response.status, 202);
        assert_eq!(response.body, b"{\"ok\":true}");
        assert!(!response.close);
        assert_eq!(used, raw.len());
    }

    #[test]
    fn parses_chunked_bodies_and_connection_close() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(
                parse_response(&raw[..cut], true, false).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (response, used) = parse_response(raw, true, false).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"abcde");
        assert!(response.close);
        assert_eq!(used, raw.len());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", false, false).is_err());
    }

    #[test]
    fn keeps_headers_when_asked_and_reads_no_body_after_head_or_304() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"x\"\r\nVary: a\r\nVary: b\r\n\r\n";
        let (response, used) = parse_response(raw, true, true).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert!(response.body.is_empty());
        assert_eq!(response.header("etag").as_deref(), Some("\"x\""));
        assert_eq!(response.header_all("VARY"), ["a", "b"]);
        assert!(parse_response(raw, true, false).unwrap().is_none());
        let (response, _) = parse_response(raw, false, true).unwrap().unwrap();
        assert!(response.headers.is_empty());
        let not_modified = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n";
        let (response, used) = parse_response(not_modified, true, false).unwrap().unwrap();
        assert_eq!((response.status, used), (304, not_modified.len()));
    }

    #[tokio::test]
    async fn event_streams_are_read_message_by_message_across_chunks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = [0_u8; 1024];
            let _ = socket.read(&mut head).await.unwrap();
            let body = "data: {\"a\":1}\n\n: keepalive\n\ndata: x\ndata: y\n\n";
            let mut wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            // Chunks that split messages, and a message split over two chunks.
            for piece in [&body[..5], &body[5..20], &body[20..]] {
                wire.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            for byte in wire {
                socket.write_all(&[byte]).await.unwrap();
            }
        });
        let client = Client::new(addr, Duration::from_secs(5));
        let mut stream = client.get("/s").open_stream().await.unwrap();
        let wait = Duration::from_secs(5);
        assert_eq!(stream.status, 200);
        assert_eq!(
            stream.next(wait).await.unwrap(),
            Some(SseMessage::Data("{\"a\":1}".to_owned()))
        );
        assert_eq!(
            stream.next(wait).await.unwrap(),
            Some(SseMessage::Comment("keepalive".to_owned()))
        );
        assert_eq!(
            stream.next(wait).await.unwrap(),
            Some(SseMessage::Data("x\ny".to_owned()))
        );
        assert_eq!(stream.next(wait).await.unwrap(), None);
        server.await.unwrap();
    }

    #[test]
    fn request_bytes_carry_headers_and_the_body_length() {
        let client = Client::new(
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            Duration::from_secs(1),
        );
        let bytes = client
            .post("/api/collect")
            .bearer_auth("t")
            .json(&serde_json::json!({"a": 1}))
            .to_bytes();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /api/collect HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nauthorization: Bearer t\r\n\
             content-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }
}
