//! A lean HTTP/1.1 client for the load generator: requests are pre-formatted bytes written with
//! one `write`, responses are parsed in place with `httparse` (status, `Content-Length`,
//! chunked bodies, `Connection: close`). One request at a time per connection, keep-alive, no
//! pipelining — what a browser does. `AsyncConn` (tokio) carries the load; `BlockingConn`
//! (std, its own thread) carries the realtime poller, so its latency is not inflated by the load
//! tasks' scheduling.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;

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
}

/// A parsed response. `body` is filled only when asked for.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server will close the connection (or already did): reconnect before reusing it.
    pub close: bool,
}

enum BodyLength {
    Fixed(usize),
    Chunked,
}

/// Tries to parse one complete response at the start of `buf`. `Ok(None)`: more bytes needed.
/// On success, also returns how many bytes of `buf` it used.
pub fn parse_response(buf: &[u8], want_body: bool) -> Result<Option<(Response, usize)>, HttpError> {
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
    for header in parsed.headers.iter() {
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
            if let Some((response, used)) = parse_response(&self.buf, want_body)? {
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
            if let Some((response, _)) = parse_response(&self.buf, want_body)? {
                return Ok(response);
            }
            if self.buf.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::Malformed("response too large".to_owned()));
            }
        }
    }
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
                parse_response(&raw[..cut], true).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (response, used) = parse_response(raw, true).unwrap().unwrap();
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
                parse_response(&raw[..cut], true).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (response, used) = parse_response(raw, true).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"abcde");
        assert!(response.close);
        assert_eq!(used, raw.len());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
    }
}
