//! A steady client load for fault tests: non-streaming and streaming chat requests in closed
//! loops, each client on its own keep-alive connection, counting what was served whole, what
//! failed (with when it started and why), and which server answered (`x-mock-server`).

use reqwest::Client;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens each request asks for (a stream must carry all of them).
const TOKENS: usize = 10;

/// A request that was not served whole.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it was sent and when it failed.
    pub sent: Instant,
    pub failed: Instant,
    pub why: String,
}

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    streams: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
    /// Served requests by answering server, each with the time it was sent.
    served_by: Mutex<BTreeMap<String, Vec<Instant>>>,
}

/// A running load; [`Load::stop`] ends it and returns its [`Report`].
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What a load saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub ok: usize,
    pub streams: usize,
    pub failures: Vec<Failure>,
    pub served_by: BTreeMap<String, Vec<Instant>>,
}

impl Load {
    /// `plain` non-streaming and `streaming` streaming clients posting to `url` for `model`.
    /// Every request names its own user, so session affinity spreads them over the pool.
    pub fn start(url: &str, model: &str, plain: usize, streaming: usize) -> Load {
        let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let clients = (0..plain + streaming)
            .map(|i| {
                let client = ClientLoop {
                    id: i,
                    url: url.to_string(),
                    model: model.to_string(),
                    stream: i >= plain,
                    stop: Arc::clone(&stop),
                    counts: Arc::clone(&counts),
                };
                tokio::spawn(client.run())
            })
            .collect();
        Load {
            stop,
            counts,
            clients,
        }
    }

    /// Requests served whole so far.
    pub fn served(&self) -> usize {
        self.counts.ok.load(Relaxed) + self.counts.streams.load(Relaxed)
    }

    /// Requests server `name` answered (whole) that were sent after `since`.
    pub fn served_by_since(&self, name: &str, since: Instant) -> usize {
        let served = self.counts.served_by.lock().unwrap();
        served
            .get(name)
            .map_or(0, |at| at.iter().filter(|t| **t >= since).count())
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> usize {
        self.counts.failures.lock().unwrap().len()
    }

    /// Stop every client (each finishes its request) and report.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        let served_by = self.counts.served_by.lock().unwrap().clone();
        let failures = self.counts.failures.lock().unwrap().clone();
        Report {
            ok: self.counts.ok.load(Relaxed),
            streams: self.counts.streams.load(Relaxed),
            failures,
            served_by,
        }
    }
}

impl Report {
    pub fn served(&self) -> usize {
        self.ok + self.streams
    }
}

impl fmt::Display for Report {
    /// `answers=… streams=… failed=… by_server=a:…,b:…`, one line for the chaos script.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by: Vec<String> = self
            .served_by
            .iter()
            .map(|(name, at)| format!("{name}:{}", at.len()))
            .collect();
        write!(
            f,
            "answers={} streams={} failed={} by_server={}",
            self.ok,
            self.streams,
            self.failures.len(),
            by.join(",")
        )
    }
}

struct ClientLoop {
    id: usize,
    url: String,
    model: String,
    stream: bool,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
}

impl ClientLoop {
    async fn run(self) {
        let c = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut n = 0u64;
        while !self.stop.load(Relaxed) {
            n += 1;
            let body = json!({"model": self.model, "stream": self.stream, "max_tokens": TOKENS,
                "user": format!("load-{}-{n}", self.id),
                "messages": [{"role": "user", "content": "hi"}],
                "stream_options": {"include_usage": true}});
            let sent = Instant::now();
            match self.one(&c, &body).await {
                Ok(server) => {
                    let count = if self.stream {
                        &self.counts.streams
                    } else {
                        &self.counts.ok
                    };
                    count.fetch_add(1, Relaxed);
                    let mut by = self.counts.served_by.lock().unwrap();
                    by.entry(server).or_default().push(sent);
                }
                Err(why) => self.counts.failures.lock().unwrap().push(Failure {
                    sent,
                    failed: Instant::now(),
                    why,
                }),
            }
        }
    }

    /// One request: the answering server's name, or why it was not served whole. A stream
    /// must end with `[DONE]` and carry every token.
    async fn one(&self, c: &Client, body: &serde_json::Value) -> Result<String, String> {
        let r = c
            .post(&self.url)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("connection error: {e:?}"))?;
        if r.status() != 200 {
            return Err(format!("status {}", r.status()));
        }
        let server = r
            .headers()
            .get("x-mock-server")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        let text = r.text().await.map_err(|e| format!("body cut: {e}"))?;
        let whole = !self.stream
            || (text.ends_with("data: [DONE]\n\n")
                && text.matches("\"content\":\"tok").count() == TOKENS);
        if whole {
            Ok(server)
        } else {
            Err(format!("incomplete stream: {text}"))
        }
    }
}
