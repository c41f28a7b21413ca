//! The server side of an exchange: one request written at once, the response head parsed with
//! `httparse`, the body handed out in place from the read buffer (decoded when chunked).

use super::chunked::{ChunkError, Chunked, Step};
use super::fields::{self, Codings};
use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use std::io;
use std::ops::Range;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most header fields in a response.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read size for the response.
const READ_SIZE: usize = 16 * 1024;
/// Most 1xx responses skipped before the final one.
const MAX_INFORMATIONAL: usize = 8;
/// A pooled connection keeps its read buffer up to this capacity.
const KEEP_BUFFER: usize = 64 * 1024;

/// Headers a proxy does not forward (hop-by-hop), plus the framing it sets itself.
const NOT_FORWARDED: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"transfer-encoding",
    b"content-length",
];

/// How an exchange with a server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the server closed the connection")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] ChunkError),
}

impl UpstreamError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout)
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes.
    Close,
    Done,
}

/// A parsed response head (offsets into its own copy of the bytes).
#[derive(Default)]
pub struct ResponseHead {
    raw: Vec<u8>,
    pub status: u16,
    reason: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Values of `Connection` fields.
    connection: Vec<Range<usize>>,
    pub content_length: Option<u64>,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
    codings: Codings,
    close: bool,
}

impl ResponseHead {
    /// The reason phrase, if the server sent one.
    pub fn reason(&self) -> Option<&[u8]> {
        Some(&self.raw[self.reason.clone()]).filter(|r| !r.is_empty())
    }

    /// The header fields a client gets: all but hop-by-hop ones (fixed, and those the server's
    /// `Connection` names) and the framing.
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        for (n, v) in &self.headers {
            let name = &self.raw[n.clone()];
            if NOT_FORWARDED.iter().any(|h| name.eq_ignore_ascii_case(h))
                || self
                    .connection
                    .iter()
                    .any(|c| fields::listed_in(&self.raw[c.clone()], name))
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.raw[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.raw[v.clone()])
    }

    /// Parse `buf`; `Some(len)` when complete.
    fn parse(&mut self, buf: &[u8]) -> Result<Option<usize>, UpstreamError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(UpstreamError::Malformed(e.to_string())),
        };
        let at = |s: &[u8]| fields::offsets(buf, s);
        self.raw.clear();
        self.raw.extend_from_slice(&buf[..len]);
        self.headers.clear();
        self.connection.clear();
        self.status = resp.code.unwrap_or_default();
        if !(100..=599).contains(&self.status) {
            return Err(UpstreamError::Malformed(format!("status {}", self.status)));
        }
        self.reason = at(resp.reason.unwrap_or_default().as_bytes());
        self.content_length = None;
        self.event_stream = false;
        self.codings = Codings::default();
        self.close = resp.version != Some(1);
        for h in resp.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            self.headers.push((at(name), at(value)));
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = super::request::parse_length(value)
                    .ok_or_else(|| UpstreamError::Malformed("invalid Content-Length".into()))?;
                if self.content_length.is_some_and(|l| l != n) {
                    return Err(UpstreamError::Malformed(
                        "conflicting Content-Length".into(),
                    ));
                }
                self.content_length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                self.codings.add(value);
            } else if name.eq_ignore_ascii_case(b"connection") {
                self.connection.push(at(value));
                // (An HTTP/1.0 server's connection is never reused.)
                if fields::listed_in(value, b"close") {
                    self.close = true;
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                self.event_stream = value.starts_with(b"text/event-stream");
            }
        }
        if self.codings.present() && self.has_body() {
            // A body under another coding than chunked (`gzip, chunked`, `identity`, ...)
            // cannot be relayed: decoding only the chunking would hand the client a
            // still-encoded body with nothing saying so (the gateway never sends TE, so the
            // server had no leave to use one either).
            if !self.codings.only_chunked() {
                return Err(UpstreamError::Malformed(format!(
                    "unsupported Transfer-Encoding `{}` (only chunked is relayed)",
                    self.values("transfer-encoding")
                )));
            }
            // HTTP/1.0 has no chunked coding: such framing is faulty (RFC 9112 6.1).
            if resp.version != Some(1) {
                return Err(UpstreamError::Malformed(
                    "Transfer-Encoding on an HTTP/1.0 response".into(),
                ));
            }
        }
        Ok(Some(len))
    }

    /// Whether the server's framing leaves doubt about where this response ends, so its
    /// connection is not reused: both Transfer-Encoding and Content-Length (read by the former,
    /// RFC 9112 6.3), or a 204 announcing a body it may not have (RFC 9112 6.1, 6.2).
    fn framing_in_doubt(&self) -> bool {
        (self.content_length.is_some() && self.codings.present())
            || (self.status == 204
                && (self.codings.present() || self.content_length.is_some_and(|n| n > 0)))
    }

    /// Whether the response has a body (by its status; the gateway forwards no HEAD request).
    fn has_body(&self) -> bool {
        self.status >= 200 && !matches!(self.status, 204 | 304)
    }

    /// Every value of a header, joined by `, ` and cut to 200 characters (for messages).
    fn values(&self, name: &str) -> String {
        let joined = self
            .headers
            .iter()
            .filter(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(&self.raw[v.clone()]))
            .collect::<Vec<_>>()
            .join(", ");
        joined.chars().take(200).collect()
    }

    /// How the body is delimited; Transfer-Encoding (only ever `chunked` here, see `parse`)
    /// overrides Content-Length (RFC 9112 6.3).
    fn framing(&self) -> Framing {
        if !self.has_body() {
            Framing::Length(0)
        } else if self.codings.present() {
            Framing::Chunked(Chunked::default())
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::Close
        }
    }

    /// The body length when the body is delimited by it (not chunked, not until close).
    pub fn body_length(&self) -> Option<u64> {
        match self.framing() {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// A connection to a server, with its read buffer and the state of the current response.
pub struct UpstreamConn {
    io: Stream,
    buf: BytesMut,
    framing: Framing,
    /// Body bytes at the front of `buf` handed out by the last `step`/`fill`.
    pending: usize,
    keepalive: bool,
    /// Taken from the pool (it may have been closed by the server while idle).
    pub reused: bool,
    /// Bytes of the current response have been received.
    pub received: bool,
    pub head: ResponseHead,
}

impl UpstreamConn {
    pub fn new(io: Stream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            framing: Framing::Done,
            pending: 0,
            keepalive: false,
            reused: false,
            received: false,
            head: ResponseHead::default(),
        }
    }

    /// Write a request (`first`, then `second` if not empty) and flush.
    pub async fn send(
        &mut self,
        first: &[u8],
        second: &[u8],
        wait: Duration,
    ) -> Result<(), UpstreamError> {
        self.buf.clear();
        self.pending = 0;
        self.received = false;
        let write = async {
            self.io.write_all(first).await?;
            if !second.is_empty() {
                self.io.write_all(second).await?;
            }
            self.io.flush().await
        };
        match super::timed::timed(wait, write).await {
            Ok(r) => r.map_err(UpstreamError::Io),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn read_more(&mut self, wait: Duration) -> Result<usize, UpstreamError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        let n = match super::timed::timed(wait, self.io.read_buf(&mut self.buf)).await {
            Ok(r) => r.map_err(UpstreamError::Io)?,
            Err(_) => return Err(UpstreamError::Timeout),
        };
        self.received |= n > 0;
        Ok(n)
    }

    /// Whether a failure shows the server never saw the request: a pooled connection that was
    /// closed while idle fails on first use with a reset or an end of stream before any byte of
    /// a response. Only then is the request sent again (on a new connection).
    pub fn failed_unseen(&self, e: &UpstreamError) -> bool {
        self.reused && !self.received && matches!(e, UpstreamError::Io(_) | UpstreamError::Closed)
    }

    /// Read the response head (skipping 1xx informational ones) into `self.head`.
    pub async fn read_head(&mut self, wait: Duration) -> Result<(), UpstreamError> {
        let mut informational = 0;
        loop {
            match self.head.parse(&self.buf)? {
                Some(n) => {
                    self.buf.advance(n);
                    match self.head.status {
                        101 => {
                            return Err(UpstreamError::Malformed(
                                "unexpected 101 Switching Protocols".into(),
                            ))
                        }
                        100..=199 if informational < MAX_INFORMATIONAL => {
                            informational += 1;
                            continue;
                        }
                        100..=199 => {
                            return Err(UpstreamError::Malformed(
                                "too many informational responses".into(),
                            ))
                        }
                        _ => {}
                    }
                    self.framing = self.head.framing();
                    self.keepalive = !self.head.close && !self.head.framing_in_doubt();
                    return Ok(());
                }
                None if self.buf.len() >= MAX_HEAD_BYTES => {
                    return Err(UpstreamError::Malformed("response head too large".into()))
                }
                None => {}
            }
            if self.read_more(wait).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// Body bytes available without reading: `Some(n)` (`n` = 0 at the end of the body) or
    /// `None` when more input is needed.
    pub fn step(&mut self) -> Result<Option<usize>, UpstreamError> {
        self.consume();
        let n = match &mut self.framing {
            Framing::Done => return Ok(Some(0)),
            Framing::Length(0) => {
                self.framing = Framing::Done;
                return Ok(Some(0));
            }
            Framing::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                (self.buf.len() as u64).min(*left) as usize
            }
            Framing::Chunked(d) => match d.step(&mut self.buf)? {
                Step::Data(n) => n,
                Step::NeedMore => return Ok(None),
                Step::Done => {
                    self.framing = Framing::Done;
                    return Ok(Some(0));
                }
            },
            Framing::Close => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.buf.len()
            }
        };
        self.pending = n;
        Ok(Some(n))
    }

    /// The next body bytes (reading as needed): their length, 0 at the end of the body. They
    /// are [`Self::data`] until the next call.
    pub async fn fill(&mut self, wait: Duration) -> Result<usize, UpstreamError> {
        loop {
            if let Some(n) = self.step()? {
                return Ok(n);
            }
            if self.read_more(wait).await? == 0 {
                if matches!(self.framing, Framing::Close) {
                    self.framing = Framing::Done;
                    self.keepalive = false;
                    return Ok(0);
                }
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// The body bytes handed out by the last `step`/`fill`.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.pending]
    }

    fn consume(&mut self) {
        if self.pending > 0 {
            self.buf.advance(self.pending);
            if let Framing::Length(left) = &mut self.framing {
                *left -= self.pending as u64;
            }
            self.pending = 0;
        }
    }

    /// Whether the response is complete and the connection can carry another request.
    pub fn reusable(&mut self) -> bool {
        self.consume();
        matches!(self.framing, Framing::Done) && self.keepalive && self.buf.is_empty()
    }

    /// Prepare for the pool: drop an oversized buffer.
    pub fn park(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        }
    }

    /// Whether the idle connection has been closed or has sent something unexpected (checked
    /// without a system call unless the socket reported readiness).
    pub fn idle_broken(&mut self) -> bool {
        use std::task::{Context, Poll, Waker};
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        let poll =
            tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.io), &mut cx, &mut probe);
        !matches!(poll, Poll::Pending)
    }

    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<ResponseHead, UpstreamError> {
        let mut h = ResponseHead::default();
        h.parse(raw.as_bytes())?.expect("complete");
        Ok(h)
    }

    #[test]
    fn a_missing_or_odd_reason_phrase_is_fine() {
        let h = head("HTTP/1.1 200\r\ncontent-length: 2\r\n\r\n").unwrap();
        assert_eq!((h.status, h.reason()), (200, None));
        let h = head("HTTP/1.1 404 Nicht gefunden \u{e4}\r\n\r\n").unwrap();
        assert_eq!(h.status, 404);
        let mut out = Vec::new();
        h.write_fields(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap();
        assert!(matches!(h.framing(), Framing::Chunked(_)));
        assert_eq!(h.body_length(), None);
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").unwrap();
        assert_eq!(h.body_length(), Some(0));
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert!(matches!(h.framing(), Framing::Close));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 600 Odd\r\n\r\n").is_err());
        // A coding other than one `chunked` is refused rather than relayed still encoded.
        for te in [
            "gzip, chunked",
            "chunked, gzip",
            "gzip",
            "identity",
            "chunked,",
            "chunked\r\ntransfer-encoding: chunked",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n");
            let err = head(&raw).err().expect(te).to_string();
            assert!(err.contains("unsupported Transfer-Encoding"), "{te}: {err}");
        }
        let err = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("`gzip, chunked`"), "{err}");
        // Without a body the coding changes nothing.
        let h =
            head("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(h.body_length(), Some(0));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\n").unwrap();
        assert!(matches!(h.framing(), Framing::Chunked(_)));
        assert!(!h.framing_in_doubt());
        // HTTP/1.0 has no chunked coding.
        let err = head("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").err();
        assert!(err.unwrap().to_string().contains("HTTP/1.0"));
        // A 204 that announces a body, or both framings: read, then not reused.
        for raw in [
            "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            let h = head(raw).unwrap();
            assert!(h.framing_in_doubt(), "{raw}");
        }
        for raw in [
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        ] {
            assert!(!head(raw).unwrap().framing_in_doubt(), "{raw}");
        }
        let mut out = Vec::new();
        head("HTTP/1.1 200 OK\r\nconnection: x-hop\r\nx-hop: 1\r\nkeep-alive: 5\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .write_fields(&mut out);
        assert_eq!(out, b"x-a: 1\r\n");
    }
}
