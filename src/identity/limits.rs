//! Per-key rate limits: requests per minute (`rpm`) and tokens per minute (`tpm`) in fixed
//! one-minute windows. The request path reads and bumps local atomics only; with a shared
//! store a background task adds each key's local counts to shared per-minute counters every
//! 250 ms and reads back the totals of every instance, so a limit holds across instances to
//! within that interval.

use super::KeyEntry;
use crate::gateway::Gateway;
use async_trait::async_trait;
use dashmap::DashMap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const SYNC_EVERY: Duration = Duration::from_millis(250);

/// One key's counts in one minute.
#[derive(Default)]
struct Window {
    minute: AtomicU64,
    /// Best-known totals over every instance (ours included).
    requests: AtomicU64,
    tokens: AtomicU64,
    /// Our counts not yet added to the shared counters.
    unsynced_requests: AtomicU64,
    unsynced_tokens: AtomicU64,
}

impl Window {
    /// Start a new minute when the window is an old one.
    fn roll(&self, minute: u64) {
        let seen = self.minute.load(Relaxed);
        if seen != minute
            && self
                .minute
                .compare_exchange(seen, minute, Relaxed, Relaxed)
                .is_ok()
        {
            self.requests.store(0, Relaxed);
            self.tokens.store(0, Relaxed);
            self.unsynced_requests.store(0, Relaxed);
            self.unsynced_tokens.store(0, Relaxed);
        }
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests { limit: u64, retry_after_secs: u64 },
    Tokens { limit: u64, retry_after_secs: u64 },
}

/// Counts of every key that has a limit.
#[derive(Default)]
pub struct RateLimiter {
    windows: DashMap<Arc<str>, Arc<Window>>,
}

fn retry_after(now_ms: u64) -> u64 {
    (60_000 - now_ms % 60_000).div_ceil(1000).max(1)
}

impl RateLimiter {
    fn window(&self, key: &KeyEntry) -> Arc<Window> {
        if let Some(w) = self.windows.get(&key.id) {
            return w.clone();
        }
        self.windows.entry(key.id.clone()).or_default().clone()
    }

    /// Admit one request of `key` at `now_ms` (counting it), or say which limit it hits.
    pub fn admit(&self, key: &KeyEntry, now_ms: u64) -> Result<(), Limited> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return Ok(());
        }
        let w = self.window(key);
        w.roll(now_ms / 60_000);
        if let Some(limit) = key.tpm {
            if w.tokens.load(Relaxed) >= limit {
                return Err(Limited::Tokens {
                    limit,
                    retry_after_secs: retry_after(now_ms),
                });
            }
        }
        // Count first, then check: concurrent requests cannot all pass one free slot.
        let before = w.requests.fetch_add(1, Relaxed);
        if let Some(limit) = key.rpm {
            if before >= limit {
                w.requests.fetch_sub(1, Relaxed);
                return Err(Limited::Requests {
                    limit,
                    retry_after_secs: retry_after(now_ms),
                });
            }
        }
        w.unsynced_requests.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Count tokens a request of `key` used (after its response).
    pub fn add_tokens(&self, key: &KeyEntry, tokens: u64, now_ms: u64) {
        if key.tpm.is_none() || tokens == 0 {
            return;
        }
        let w = self.window(key);
        w.roll(now_ms / 60_000);
        w.tokens.fetch_add(tokens, Relaxed);
        w.unsynced_tokens.fetch_add(tokens, Relaxed);
    }

    /// Add local counts to the shared counters and take back the totals of every instance
    /// (one pipelined round trip for every key).
    pub async fn sync(&self, gw: &Gateway) {
        let minute = crate::telemetry::now_ms() / 60_000;
        let mut live = Vec::new();
        let mut counts = Vec::new();
        let windows: Vec<(Arc<str>, Arc<Window>)> = self
            .windows
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (key, w) in windows {
            let m = w.minute.load(Relaxed);
            if m < minute.saturating_sub(1) {
                // Idle for over a minute: forget it.
                self.windows.remove_if(&key, |_, v| Arc::ptr_eq(v, &w));
                continue;
            }
            if m != minute {
                continue;
            }
            let r = w.unsynced_requests.swap(0, Relaxed);
            let t = w.unsynced_tokens.swap(0, Relaxed);
            counts.push((key, minute, r, t));
            live.push(w);
        }
        if counts.is_empty() {
            return;
        }
        match gw.store.rate_add(&counts).await {
            Ok(Some(totals)) => {
                for (w, (requests, tokens)) in live.iter().zip(totals) {
                    if w.minute.load(Relaxed) == minute {
                        // The totals include ours up to the swap; add what came since.
                        w.requests
                            .store(requests + w.unsynced_requests.load(Relaxed), Relaxed);
                        w.tokens
                            .store(tokens + w.unsynced_tokens.load(Relaxed), Relaxed);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Put them back for the next try; the local counts still limit.
                for (w, (_, _, r, t)) in live.iter().zip(&counts) {
                    w.unsynced_requests.fetch_add(*r, Relaxed);
                    w.unsynced_tokens.fetch_add(*t, Relaxed);
                }
                tracing::debug!(error = %e, "rate counters not shared");
            }
        }
    }
}

/// The 250 ms sync as a background service (only with a shared store).
pub struct LimitSync {
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for LimitSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.gw.config.store.is_valkey() {
            return;
        }
        let mut tick = tokio::time::interval(SYNC_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.gw.limiter.sync(&self.gw).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u64>, tpm: Option<u64>) -> KeyEntry {
        let k = crate::identity::ApiKey {
            id: "k".into(),
            name: None,
            secret_sha256: "0".repeat(64),
            scopes: vec![],
            roles: vec![],
            user_id: None,
            org_id: None,
            expires_ms: None,
            rpm,
            tpm,
            created_ms: 0,
            revoked_ms: None,
        };
        KeyEntry::from_key(&k).unwrap()
    }

    #[test]
    fn requests_per_minute_in_fixed_windows() {
        let l = RateLimiter::default();
        let k = key(Some(2), None);
        let t = 10 * 60_000 + 15_000;
        assert!(l.admit(&k, t).is_ok());
        assert!(l.admit(&k, t + 1).is_ok());
        assert_eq!(
            l.admit(&k, t + 2),
            Err(Limited::Requests {
                limit: 2,
                retry_after_secs: 45
            })
        );
        assert!(l.admit(&k, 11 * 60_000).is_ok(), "a new minute");
    }

    #[test]
    fn tokens_per_minute_count_after_the_response() {
        let l = RateLimiter::default();
        let k = key(None, Some(100));
        assert!(l.admit(&k, 0).is_ok());
        l.add_tokens(&k, 100, 10);
        assert!(matches!(
            l.admit(&k, 20),
            Err(Limited::Tokens { limit: 100, .. })
        ));
        assert!(l.admit(&k, 60_000).is_ok());
        let free = key(None, None);
        for _ in 0..1000 {
            assert!(l.admit(&free, 0).is_ok());
        }
        assert_eq!(l.windows.len(), 1, "keys without limits are not tracked");
    }
}
