//! The client side of a connection: reads request heads and bodies into one buffer (pipelined
//! bytes stay in it for the next request), writes responses assembled in one output buffer so a
//! head and a small body leave in a single write.

use super::chunked::{ChunkError, Chunked, Step};
use super::request::{BodyFraming, HeadError, Parsed, RequestHead};
use bytes::{Bytes, BytesMut};
use pingora::protocols::Stream;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A body buffer grows by at most its size, starting from this.
const BODY_STEP: usize = 64 * 1024;
/// Closing after a response, unread input is drained for at most this long and this many
/// bytes, so the client reads the response before the close (an unread input would make the
/// kernel reset the connection and discard it).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit (by Content-Length or by counting).
    TooLarge,
    /// Broken chunked framing.
    Framing(ChunkError),
    /// The client went away, timed out or the connection failed.
    Io,
}

/// How waiting for the next request ended.
pub enum NextRequest {
    Ready,
    /// The client closed, idled out, or the server is shutting down.
    Closed,
    Bad(HeadError),
}

/// One client connection.
pub struct ClientConn {
    io: Stream,
    rbuf: BytesMut,
    read_size: usize,
    /// Output assembled here, then written at once.
    pub out: Vec<u8>,
    /// Where requests to servers are assembled (kept between requests).
    pub scratch: Vec<u8>,
    timeout: Duration,
}

impl ClientConn {
    pub fn new(io: Stream, read_size: usize, timeout: Duration) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            read_size: read_size.max(1024),
            out: Vec::with_capacity(1024),
            scratch: Vec::new(),
            timeout,
        }
    }

    /// Read into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self, wait: Duration) -> io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            self.rbuf.reserve(self.read_size);
        }
        match super::timed::timed(wait, self.io.read_buf(&mut self.rbuf)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Wait for and parse the next request head into `head`. Between requests the wait is
    /// `idle`; once the first byte has come, the read timeout applies.
    pub async fn next_request(
        &mut self,
        head: &mut RequestHead,
        idle: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> NextRequest {
        if self.rbuf.is_empty() {
            // An idle connection holds no read buffer.
            self.rbuf = BytesMut::new();
            let first = tokio::select! {
                biased;
                r = self.fill(idle) => r,
                _ = shutdown.changed() => return NextRequest::Closed,
            };
            if !matches!(first, Ok(n) if n > 0) {
                return NextRequest::Closed;
            }
        }
        // The whole head must arrive within the timeout, however it is split (the deadline is
        // set when a second read is needed).
        let mut deadline = None;
        let mut scanned = 0;
        loop {
            // Parse only once the blank line is in (a head sent in pieces is not re-parsed
            // for every piece).
            if ends_head(&self.rbuf, scanned) {
                match head.parse(&self.rbuf) {
                    Ok(Parsed::Complete(n)) => {
                        bytes::Buf::advance(&mut self.rbuf, n);
                        return NextRequest::Ready;
                    }
                    Ok(Parsed::Partial) => {}
                    Err(e) => return NextRequest::Bad(e),
                }
            }
            if self.rbuf.len() >= MAX_HEAD_BYTES {
                return NextRequest::Bad(HeadError::TooLarge(MAX_HEAD_BYTES));
            }
            scanned = self.rbuf.len();
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.timeout);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !matches!(self.fill(left).await, Ok(n) if n > 0) {
                return NextRequest::Closed;
            }
        }
    }

    /// Whether the body (by Content-Length) is already in the buffer.
    pub fn body_buffered(&self, head: &RequestHead) -> bool {
        match head.framing {
            Some(BodyFraming::Length(n)) => self.rbuf.len() as u64 >= n,
            Some(BodyFraming::Chunked) => false,
            None => true,
        }
    }

    /// Read the whole body, at most `max` bytes. A body already in the buffer is split off
    /// without a copy.
    pub async fn read_body(&mut self, head: &RequestHead, max: usize) -> Result<Bytes, BodyError> {
        match head.framing {
            None => Ok(Bytes::new()),
            Some(BodyFraming::Length(n)) => {
                if n > max as u64 {
                    return Err(BodyError::TooLarge);
                }
                let n = n as usize;
                if self.rbuf.len() >= n {
                    return Ok(self.rbuf.split_to(n).freeze());
                }
                // Grown as bytes arrive, not reserved up front from the declared length.
                let mut body = BytesMut::with_capacity(n.min(BODY_STEP));
                body.extend_from_slice(&self.rbuf);
                self.rbuf.clear();
                while body.len() < n {
                    if body.capacity() == body.len() {
                        body.reserve((n - body.len()).min(body.len().max(BODY_STEP)));
                    }
                    let read = super::timed::timed(self.timeout, self.io.read_buf(&mut body));
                    match read.await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(BodyError::Io),
                        Ok(Ok(_)) => {}
                    }
                }
                // Bytes past the body (a pipelined request) go back to the buffer.
                if body.len() > n {
                    self.rbuf.extend_from_slice(&body.split_off(n));
                }
                Ok(body.freeze())
            }
            Some(BodyFraming::Chunked) => {
                let mut decoder = Chunked::default();
                let mut body = BytesMut::new();
                loop {
                    match decoder.step(&mut self.rbuf).map_err(BodyError::Framing)? {
                        Step::Data(n) => {
                            if body.len() + n > max {
                                return Err(BodyError::TooLarge);
                            }
                            body.extend_from_slice(&self.rbuf[..n]);
                            bytes::Buf::advance(&mut self.rbuf, n);
                        }
                        Step::NeedMore => {
                            if !matches!(self.fill(self.timeout).await, Ok(n) if n > 0) {
                                return Err(BodyError::Io);
                            }
                        }
                        Step::Done => return Ok(body.freeze()),
                    }
                }
            }
        }
    }

    /// Write `out` (and then `extra`, if any) and flush.
    pub async fn send(&mut self, extra: &[u8]) -> io::Result<()> {
        let write = async {
            if !self.out.is_empty() {
                self.io.write_all(&self.out).await?;
            }
            if !extra.is_empty() {
                self.io.write_all(extra).await?;
            }
            self.io.flush().await
        };
        let r = match super::timed::timed(self.timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        };
        self.out.clear();
        r
    }

    /// Resolves when the client closes or breaks the connection while a response is pending
    /// (bytes it sends meanwhile, a pipelined request, are kept). Cancel-safe.
    pub async fn gone(&mut self) {
        loop {
            if self.rbuf.len() >= MAX_HEAD_BYTES {
                // Enough pipelined input buffered: stop reading, wait for the response.
                std::future::pending::<()>().await;
            }
            if self.rbuf.capacity() - self.rbuf.len() < 512 {
                self.rbuf.reserve(self.read_size);
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Whether the request has body bytes not yet received: a request answered without its
    /// body is then the last on the connection.
    pub fn body_pending(&self, head: &RequestHead) -> bool {
        head.has_body() && !self.body_buffered(head)
    }

    /// Discard a fully buffered body (of a request answered without it).
    pub fn skip_buffered_body(&mut self, head: &RequestHead) {
        if let Some(BodyFraming::Length(n)) = head.framing {
            if self.rbuf.len() as u64 >= n {
                bytes::Buf::advance(&mut self.rbuf, n as usize);
            }
        }
    }

    /// Close after the last response: send FIN, then drain what the client still sends until
    /// it closes too (bounded by [`LINGER`] and [`LINGER_BYTES`]).
    pub async fn shutdown(&mut self) {
        let linger = async {
            self.io.shutdown().await?;
            let mut drained = 0;
            let mut sink = [0u8; 4096];
            while drained < LINGER_BYTES {
                match self.io.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

/// Whether `buf` holds the blank line that ends a head, looking from `from` (minus the three
/// bytes a CRLFCRLF split across reads could start in).
fn ends_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3)..];
    memchr::memchr_iter(b'\n', tail).any(|i| match tail.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => tail.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(super::ends_head(head, 0));
        assert!(!super::ends_head(&head[..head.len() - 1], 0));
        for from in 0..head.len() {
            assert!(super::ends_head(head, from), "from {from}");
        }
        assert!(super::ends_head(b"GET / HTTP/1.0\n\n", 14));
    }
}
