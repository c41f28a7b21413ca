//! Scraping every server in the routing table (config, registry and managed engines alike):
//! one round per interval, however many callers read the figures; scrapes run concurrently,
//! each with a deadline; a failure is kept per server with its reason. Each server keeps the
//! readings of the last [`WINDOW_MS`], and the figures they show are computed once per scrape
//! (on the monitoring thread), so readers only copy them.

use super::engine_figures::{Figures, Reading};
use super::fetch;
use crate::telemetry::now_ms;
use crate::upstream::Backend;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rates and percentiles cover this much of the past (when the readings reach back so far).
pub const WINDOW_MS: u64 = 5 * 60_000;

/// One server's scrapes.
#[derive(Debug, Default)]
struct ServerScrapes {
    /// Oldest first, none older than the window.
    readings: VecDeque<Reading>,
    /// What `readings` show (None: no reading in the window).
    figures: Option<Figures>,
    /// The last scrape's failure (cleared by a success).
    error: Option<String>,
    /// How long the last attempt took.
    took: Duration,
}

/// One server's state as reported.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub server: Arc<str>,
    /// The last successful scrape in the window (None: none).
    pub newest: Option<Reading>,
    /// What the window's readings show; when the last scrape failed, these are older figures
    /// (see `error` and the newest reading's time).
    pub figures: Option<Figures>,
    pub error: Option<String>,
    pub took: Duration,
}

/// A server's metrics page: beside its API (`http://h:8000/v1` → `http://h:8000/metrics`,
/// `https://h/team/v1` → `https://h/team/metrics`), never outside its base path, since its
/// key goes with the request (llama-server asks for it; vLLM does not).
pub fn metrics_url(b: &Backend) -> String {
    let base = &b.url.base_path;
    let prefix = base.strip_suffix("/v1").unwrap_or(base);
    format!("{}{prefix}/metrics", b.url.origin())
}

/// Every server's scrapes.
pub struct Engines {
    client: reqwest::Client,
    timeout: Duration,
    concurrency: usize,
    servers: Mutex<HashMap<Arc<str>, ServerScrapes>>,
}

impl Engines {
    pub fn new(client: reqwest::Client, timeout: Duration, concurrency: usize) -> Self {
        Self {
            client,
            timeout,
            concurrency: concurrency.max(1),
            servers: Mutex::new(HashMap::new()),
        }
    }

    /// Scrape every one of `backends` (at most `concurrency` at once) and forget servers no
    /// longer listed. Returns when every scrape has finished or timed out.
    pub async fn scrape(&self, backends: &[Arc<Backend>]) {
        if let Ok(mut servers) = self.servers.lock() {
            servers.retain(|id, _| backends.iter().any(|b| b.id == *id));
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let mut set = tokio::task::JoinSet::new();
        for b in backends {
            let (b, client, permits, timeout) = (
                b.clone(),
                self.client.clone(),
                permits.clone(),
                self.timeout,
            );
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let started = std::time::Instant::now();
                let page =
                    fetch::page(&client, &metrics_url(&b), b.auth_header.as_ref(), timeout).await;
                // Read the page here, not under the lock readers take.
                let reading = page.map(|p| Reading::from_page(&p, now_ms()));
                (b.id.clone(), reading, started.elapsed())
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((id, reading, took)) = done else {
                continue;
            };
            let now = now_ms();
            let Ok(mut servers) = self.servers.lock() else {
                return;
            };
            let s = servers.entry(id).or_default();
            s.took = took;
            match reading {
                Ok(r) => {
                    s.error = None;
                    s.readings.push_back(r);
                }
                Err(why) => s.error = Some(why),
            }
            // A server that stopped answering keeps nothing older than the window.
            while s
                .readings
                .front()
                .is_some_and(|r| r.at_ms + WINDOW_MS < now)
            {
                s.readings.pop_front();
            }
            // Tens of microseconds for a full window: computed once here, copied by readers.
            s.figures = Figures::over(s.readings.make_contiguous());
        }
    }

    /// What is known of `server` (None: never tried).
    pub fn state(&self, server: &Arc<str>) -> Option<ServerState> {
        let servers = self.servers.lock().ok()?;
        let s = servers.get(server)?;
        Some(ServerState {
            server: server.clone(),
            newest: s.readings.back().cloned(),
            figures: s.figures.clone(),
            error: s.error.clone(),
            took: s.took,
        })
    }
}
