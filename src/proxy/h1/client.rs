//! The client side of a connection: reads request heads and bodies into one buffer (pipelined
//! bytes stay in it for the next request), writes responses assembled in one output buffer so a
//! head and a small body leave in a single write.

use super::chunked::{ChunkError, Chunked, Step};
use super::head_scan::{HeadScan, MAX_HEAD_BYTES};
use super::request::{BodyFraming, HeadError, RequestHead};
use bytes::{Bytes, BytesMut};
use pingora::protocols::Stream;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A body buffer grows by at most its size, starting from this.
const BODY_STEP: usize = 64 * 1024;
/// A read into a stack buffer (the first after an idle wait, the drain at close) takes at
/// most this (a whole head, usually).
const IDLE_READ: usize = 4096;
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
    /// The client sent it too slowly (a pause over the body timeout, or under the minimum rate).
    TimedOut,
    /// The client went away or the connection failed.
    Io,
}

/// How waiting for the next request ended.
pub enum NextRequest {
    Ready,
    /// The client closed, idled out, or the server is shutting down.
    Closed,
    /// A head was started but not finished within the header timeout.
    TimedOut,
    Bad(HeadError),
}

/// How long a client may take (slow clients hold a connection and its buffer).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// The whole request head, from its first bytes.
    pub header: Duration,
    /// Longest pause between two reads of a body.
    pub body_pause: Duration,
    /// A body must arrive at least this fast on average, once `header` has passed since it
    /// started (0: no minimum).
    pub body_min_rate: u64,
    /// Longest wait for a write to the client to progress.
    pub write: Duration,
}

/// The pace of one body: how long the next read may wait.
struct BodyPace {
    limits: ClientLimits,
    /// Set at the first read that has to wait (no clock read for a body already buffered).
    started: Option<tokio::time::Instant>,
}

impl BodyPace {
    fn new(limits: ClientLimits) -> Self {
        Self {
            limits,
            started: None,
        }
    }

    /// The wait allowed for the next read, `received` bytes in; zero: too slow already.
    fn next_wait(&mut self, received: usize) -> Duration {
        let now = tokio::time::Instant::now();
        let started = *self.started.get_or_insert(now);
        let l = self.limits;
        if l.body_min_rate == 0 {
            return l.body_pause;
        }
        // By when `received` bytes must have been followed by more, at the minimum rate.
        let due =
            started + l.header + Duration::from_secs_f64(received as f64 / l.body_min_rate as f64);
        due.saturating_duration_since(now).min(l.body_pause)
    }
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
    /// The prompt's block hashes (cache-aware routing), kept between requests.
    pub chain: Vec<u64>,
    limits: ClientLimits,
}

impl ClientConn {
    pub fn new(io: Stream, read_size: usize, limits: ClientLimits) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            read_size: read_size.max(1024),
            out: Vec::new(),
            scratch: Vec::new(),
            chain: Vec::new(),
            limits,
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

    /// The first read after an idle wait. It lands in a buffer on the stack, taken only while
    /// the read is polled, and is then copied into the read buffer: an idle connection holds no
    /// read buffer (8 KiB of `read_size` each, reserved before the wait, was most of an idle
    /// connection's memory). `Ok(0)` at end of stream.
    async fn fill_idle(&mut self, wait: Duration) -> io::Result<usize> {
        let (io, rbuf, read_size) = (&mut self.io, &mut self.rbuf, self.read_size);
        let read = read_on_stack(io, |got| {
            if !got.is_empty() {
                rbuf.reserve(read_size.max(got.len()));
                rbuf.extend_from_slice(got);
            }
        });
        match super::timed::timed(wait, read).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Wait for and parse the next request head into `head`. Between requests the wait is
    /// `idle`; once the first byte has come, the read timeout applies.
    /// An idle wait also ends, `Closed`, when `stop` changes to a value for which `closes` holds.
    pub async fn next_request<T>(
        &mut self,
        head: &mut RequestHead,
        idle: Duration,
        stop: &mut tokio::sync::watch::Receiver<T>,
        closes: impl Fn(&T) -> bool,
    ) -> NextRequest {
        let mut scan = HeadScan::default();
        // Whether anything has come since the wait began (blank lines left after the previous
        // request do not start a head; blank lines sent now do).
        let mut started = false;
        // The whole head must arrive within the header timeout, however it is split. The
        // deadline is set when a second read is needed, which starts as soon as the first
        // bytes were read: it counts from them, without a clock read for a head that came whole.
        // One timer serves every later read of the head (a slow client's bytes each cost a
        // read, not a timer too).
        let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            match scan.poll(&mut self.rbuf, head) {
                Ok(true) => return NextRequest::Ready,
                Ok(false) => {}
                Err(e) => return NextRequest::Bad(e),
            }
            if !started && self.rbuf.is_empty() {
                // An idle connection holds no read buffer.
                self.rbuf = BytesMut::new();
                let first = {
                    let read = self.fill_idle(idle);
                    tokio::pin!(read);
                    loop {
                        tokio::select! {
                            biased;
                            r = &mut read => break r,
                            changed = stop.changed() => {
                                if changed.is_err() || closes(&stop.borrow_and_update()) {
                                    return NextRequest::Closed;
                                }
                            }
                        }
                    }
                };
                if !matches!(first, Ok(n) if n > 0) {
                    return NextRequest::Closed;
                }
                started = true;
                continue;
            }
            started = true;
            let header = self.limits.header;
            let timer = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(header)));
            if self.rbuf.capacity() - self.rbuf.len() < 512 {
                self.rbuf.reserve(self.read_size);
            }
            tokio::select! {
                biased;
                r = self.io.read_buf(&mut self.rbuf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return NextRequest::Closed,
                },
                _ = timer.as_mut() => return NextRequest::TimedOut,
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
                let mut pace = BodyPace::new(self.limits);
                while body.len() < n {
                    if body.capacity() == body.len() {
                        body.reserve((n - body.len()).min(body.len().max(BODY_STEP)));
                    }
                    let wait = pace.next_wait(body.len());
                    let read = super::timed::timed(wait, self.io.read_buf(&mut body));
                    match read.await {
                        Err(_) => return Err(BodyError::TimedOut),
                        Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::Io),
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
                let mut pace = BodyPace::new(self.limits);
                // Bytes of the body read so far, framing included.
                let mut received = self.rbuf.len();
                loop {
                    match decoder.step(&mut self.rbuf).map_err(BodyError::Framing)? {
                        Step::Data(n) => {
                            if body.len() + n > max {
                                return Err(BodyError::TooLarge);
                            }
                            body.extend_from_slice(&self.rbuf[..n]);
                            bytes::Buf::advance(&mut self.rbuf, n);
                        }
                        Step::NeedMore => match self.fill(pace.next_wait(received)).await {
                            Ok(n) if n > 0 => received += n,
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                                return Err(BodyError::TimedOut)
                            }
                            _ => return Err(BodyError::Io),
                        },
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
        let r = match super::timed::timed(self.limits.write, write).await {
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

    /// Close with a short linger (a refused connection: 100 ms and 4 KiB at most, so that
    /// refusing costs little).
    pub async fn close_soon(&mut self) {
        self.linger(Duration::from_millis(100), 4096).await;
    }

    /// Close after the last response: send FIN, then drain what the client still sends until
    /// it closes too (bounded by [`LINGER`] and [`LINGER_BYTES`]).
    pub async fn shutdown(&mut self) {
        self.linger(LINGER, LINGER_BYTES).await;
    }

    async fn linger(&mut self, limit: Duration, bytes: usize) {
        let linger = async {
            self.io.shutdown().await?;
            let mut drained = 0;
            while drained < bytes {
                match read_on_stack(&mut self.io, |_| {}).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(limit, linger).await;
    }
}

/// One read into a buffer on the stack, taken only while the read is polled (never kept in
/// the task's state); `take` sees the bytes read. The number of bytes, 0 at end of stream.
fn read_on_stack<'a>(
    io: &'a mut Stream,
    mut take: impl FnMut(&[u8]) + 'a,
) -> impl std::future::Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
        let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        take(buf.filled());
        std::task::Poll::Ready(Ok(buf.filled().len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_may_pause_within_its_timeout_and_must_keep_the_minimum_rate() {
        let limits = ClientLimits {
            header: Duration::from_secs(10),
            body_pause: Duration::from_secs(60),
            body_min_rate: 1000,
            write: Duration::from_secs(60),
        };
        let mut pace = BodyPace::new(limits);
        // The first 10 s are free, whatever has arrived.
        assert_eq!(pace.next_wait(0), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(pace.next_wait(0), Duration::from_secs(5));
        // 10,000 bytes buy 10 s more at 1,000 B/s: due at 20 s, 15 s from now.
        assert_eq!(pace.next_wait(10_000), Duration::from_secs(15));
        // A megabyte buys more than the longest pause: the pause bounds the wait.
        assert_eq!(pace.next_wait(1_000_000), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(pace.next_wait(10_000), Duration::ZERO, "too slow already");
        let mut no_minimum = BodyPace::new(ClientLimits {
            body_min_rate: 0,
            ..limits
        });
        assert_eq!(no_minimum.next_wait(0), Duration::from_secs(60));
    }
}
