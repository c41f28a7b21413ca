//! Scraping every server in the routing table (config, registry and managed engines alike):
//! one round per interval, however many callers read the figures; scrapes run concurrently,
//! each with a deadline; a failure is kept per server with its reason. Each server keeps the
//! readings of the last [`WINDOW_MS`] for rates and percentiles.

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
    /// Oldest first, spanning at most the window.
    readings: VecDeque<Reading>,
    /// The last scrape's failure (cleared by a success).
    error: Option<String>,
    /// Unix ms of the last attempt.
    tried_ms: u64,
    /// How long the last attempt took.
    took: Duration,
}

/// One server's state as reported.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub server: Arc<str>,
    /// The last successful scrape (None: never).
    pub newest: Option<Reading>,
    pub figures: Option<Figures>,
    pub error: Option<String>,
    pub tried_ms: u64,
    pub took: Duration,
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
                let url = format!("{}/metrics", b.url.origin());
                let page = fetch::page(&client, &url, b.auth_header.as_ref(), timeout).await;
                (b.id.clone(), page, started.elapsed())
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((id, page, took)) = done else { continue };
            let now = now_ms();
            let Ok(mut servers) = self.servers.lock() else {
                return;
            };
            let s = servers.entry(id).or_default();
            s.tried_ms = now;
            s.took = took;
            match page {
                Ok(page) => {
                    s.error = None;
                    s.readings.push_back(Reading::from_page(&page, now));
                    while s
                        .readings
                        .front()
                        .is_some_and(|r| r.at_ms + WINDOW_MS < now)
                    {
                        s.readings.pop_front();
                    }
                }
                Err(why) => s.error = Some(why),
            }
        }
    }

    /// What is known of `server` (None: never tried).
    pub fn state(&self, server: &Arc<str>) -> Option<ServerState> {
        let servers = self.servers.lock().ok()?;
        let s = servers.get(server)?;
        Some(ServerState {
            server: server.clone(),
            newest: s.readings.back().cloned(),
            figures: match (s.readings.front(), s.readings.back()) {
                (Some(oldest), Some(newest)) => Some(Figures::between(oldest, newest)),
                _ => None,
            },
            error: s.error.clone(),
            tried_ms: s.tried_ms,
            took: s.took,
        })
    }
}
