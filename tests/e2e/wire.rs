//! Raw-socket tools for tests of the data plane's HTTP/1.1 handling: reading responses off a
//! client socket as sent, and a raw server that records every byte the gateway sends it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read until the peer closes (or 10 s pass), returning everything.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

/// Read one response with a content-length body; bytes after it stay in `buf`.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return (head, body);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A raw HTTP/1.1 server on loopback. It answers every POST with `response`, sent as given (so
/// it may be as odd as a test needs), and anything else (health probes) with a plain 200; it
/// counts the connections it accepts and records every byte it receives on any of them.
pub struct RawUpstream {
    /// Its base URL (`http://127.0.0.1:port/v1`).
    pub url: String,
    pub accepted: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<u8>>>,
    /// Each POST received: the number of the connection it came on, and its text.
    posts: Posts,
}

type Posts = Arc<Mutex<Vec<(u64, String)>>>;

const PROBE_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

impl RawUpstream {
    pub async fn start(response: &'static [u8]) -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let up = RawUpstream {
            url,
            accepted: Arc::default(),
            received: Arc::default(),
            posts: Arc::default(),
        };
        let (accepted, received, posts) =
            (up.accepted.clone(), up.received.clone(), up.posts.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let number = accepted.fetch_add(1, Relaxed);
                let (received, posts) = (received.clone(), posts.clone());
                tokio::spawn(serve(s, number, response, received, posts));
            }
        });
        up
    }

    /// Every byte received so far, on every connection (lossy text).
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// The POST requests received so far (head and body, as text).
    pub fn posts(&self) -> Vec<String> {
        let posts = self.posts.lock().unwrap();
        posts.iter().map(|(_, text)| text.clone()).collect()
    }

    /// The number of the connection each POST came on (connections count from 0 as accepted).
    pub fn post_connections(&self) -> Vec<u64> {
        let posts = self.posts.lock().unwrap();
        posts.iter().map(|(c, _)| *c).collect()
    }
}

/// One connection: a response per complete request (a head, plus a body by Content-Length,
/// the only framing the gateway sends).
async fn serve(
    mut s: TcpStream,
    number: u64,
    response: &'static [u8],
    received: Arc<Mutex<Vec<u8>>>,
    posts: Posts,
) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        received.lock().unwrap().extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + len {
                break;
            }
            let request: Vec<u8> = buf.drain(..end + 4 + len).collect();
            let answer = if head.starts_with("post ") {
                let text = String::from_utf8_lossy(&request).into_owned();
                posts.lock().unwrap().push((number, text));
                response
            } else {
                PROBE_ANSWER
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    }
}

/// Wait, at most `within`, for the gateway to close `s` without sending anything more; how
/// long that took.
pub async fn closed_silently(s: &mut TcpStream, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(within, s.read_to_end(&mut rest))
        .await
        .expect("closed by the gateway")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "nothing more is sent: {:?}",
        String::from_utf8_lossy(&rest)
    );
    started.elapsed()
}
