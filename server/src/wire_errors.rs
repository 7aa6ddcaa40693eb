//! JSON bodies for the errors hyper answers by itself. When hyper cannot parse a request head
//! (a bad `Content-Length` or `Transfer-Encoding`, a folded header, no HTTP version, too many or
//! too large headers, a target over its URI limit), it writes a bodiless `400`, `431` or `414`
//! and closes, before the router ever runs; hyper 1.x has no hook to change that answer.
//! `ParseErrorsAsJson` wraps a connection's IO and, when the bytes hyper writes are exactly
//! such an automatic answer, sends the same status with the documented
//! `{"error":{"code","message"}}` body instead. Everything else passes through untouched; which
//! requests are refused stays hyper's decision.
//!
//! The recognised shape is hyper's: `HTTP/1.1 {400|414|431} …`, `content-length: 0` and no
//! `content-type`, at the start of a write. The router never answers an error without a JSON
//! body (`routes::json_errors`), so nothing of Pulse's own matches.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest automatic answer hyper writes (status line, `connection`, `content-length` and
/// `date` headers); a longer head is not one.
const MAX_AUTOMATIC_HEAD_BYTES: usize = 256;

/// A connection's IO that rewrites hyper's bodiless parse-error answers to JSON errors.
#[derive(Debug)]
pub struct ParseErrorsAsJson<T> {
    inner: T,
    rewrite: Option<Rewrite>,
}

/// A replacement being written in place of hyper's answer.
#[derive(Debug)]
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// How many of hyper's bytes the replacement stands for (reported once it is all written).
    replaces: usize,
}

impl<T> ParseErrorsAsJson<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewrite: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ParseErrorsAsJson<T> {
    /// Writes the pending replacement; once all of it is out, tells hyper its own answer was.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some(rewrite) = self.rewrite.as_mut() {
            if rewrite.written == rewrite.bytes.len() {
                let replaces = rewrite.replaces;
                self.rewrite = None;
                return Poll::Ready(Ok(replaces));
            }
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &rewrite.bytes[rewrite.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rewrite.written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ParseErrorsAsJson<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ParseErrorsAsJson<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            match json_answer_for(buf) {
                Some(rewrite) => self.rewrite = Some(rewrite),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_rewrite(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            // Empty slices before the first byte count as written (zero bytes) either way.
            let first = bufs.iter().find(|buf| !buf.is_empty());
            match first.and_then(|buf| json_answer_for(buf)) {
                Some(rewrite) => self.rewrite = Some(rewrite),
                None => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        self.poll_rewrite(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When `written` starts with one of hyper's automatic error answers, the JSON answer to send
/// instead (same status line and other headers, plus a content type and a body).
fn json_answer_for(written: &[u8]) -> Option<Rewrite> {
    let rest = written.strip_prefix(b"HTTP/1.1 ")?;
    let (code, message) = match rest.get(..4)? {
        b"400 " => (
            "malformed_request",
            "the request line or headers are malformed (for example an invalid \
             Content-Length or Transfer-Encoding, a folded header, or no HTTP version)",
        ),
        b"414 " => (
            "uri_too_long",
            "the request target is longer than the server accepts",
        ),
        b"431 " => (
            "headers_too_large",
            "the request has too many headers or too large a head",
        ),
        _ => return None,
    };
    let window = &written[..written.len().min(MAX_AUTOMATIC_HEAD_BYTES)];
    let head_len = find(window, b"\r\n\r\n")? + 4;
    let head = &written[..head_len];
    const EMPTY_LENGTH: &[u8] = b"\r\ncontent-length: 0\r\n";
    let at = find(head, EMPTY_LENGTH)?;
    if find(&head.to_ascii_lowercase(), b"\r\ncontent-type:").is_some() {
        return None;
    }
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut bytes = Vec::with_capacity(head_len + 64 + body.len());
    bytes.extend_from_slice(&head[..at]);
    bytes.extend_from_slice(b"\r\ncontent-type: application/json");
    bytes.extend_from_slice(format!("\r\ncontent-length: {}\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(&head[at + EMPTY_LENGTH.len()..]);
    bytes.extend_from_slice(body.as_bytes());
    Some(Rewrite {
        bytes,
        written: 0,
        replaces: head_len,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Wed, 02 Dec 2026 12:56:50 GMT\r\n\r\n";

    #[test]
    fn hyper_automatic_answers_get_a_json_body_and_keep_their_other_headers() {
        let rewrite = json_answer_for(HYPER_400).unwrap();
        assert_eq!(rewrite.replaces, HYPER_400.len());
        let text = String::from_utf8(rewrite.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ndate: Wed, 02 Dec 2026"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "malformed_request");
    }

    #[test]
    fn answers_with_a_body_or_other_statuses_pass_through() {
        for written in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
              content-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"error\":{}}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"data\":[]}",
        ] {
            assert!(
                json_answer_for(written).is_none(),
                "{}",
                String::from_utf8_lossy(written)
            );
        }
    }

    #[tokio::test]
    async fn the_writer_reports_hyper_bytes_written_and_sends_the_replacement() {
        let mut io = ParseErrorsAsJson::new(Vec::new());
        let reported = io.write(HYPER_400).await.unwrap();
        assert_eq!(reported, HYPER_400.len());
        io.write_all(b"after").await.unwrap();
        let sent = String::from_utf8(io.inner).unwrap();
        assert!(sent.contains("\"code\":\"malformed_request\""), "{sent}");
        assert!(sent.ends_with("}after"), "{sent}");
    }
}
