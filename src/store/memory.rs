//! The embedded store: sharded concurrent maps, no external service.

use super::{AffinityCounts, Store};
use crate::config::Provider;
use crate::telemetry::AffinityOutcome;
use dashmap::DashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

struct Entry {
    user: Box<str>,
    model: Box<str>,
    server: Arc<str>,
    expires_ms: AtomicU64,
}

/// In-memory affinity with a sliding TTL and a bound on the number of entries.
pub struct MemoryStore {
    ttl_ms: u64,
    max_entries: usize,
    hasher: std::collections::hash_map::RandomState,
    /// Keyed by a keyed hash of (user, model); the entry keeps both to rule out collisions.
    entries: DashMap<u64, Entry>,
    counts: [[AtomicU64; 3]; 3],
}

impl MemoryStore {
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        Self {
            ttl_ms,
            max_entries,
            hasher: Default::default(),
            entries: DashMap::new(),
            counts: Default::default(),
        }
    }

    fn key(&self, user: &str, model: &str) -> u64 {
        self.hasher.hash_one((user, model))
    }
}

fn provider_index(p: Provider) -> usize {
    match p {
        Provider::Vllm => 0,
        Provider::Sglang => 1,
        Provider::Speaches => 2,
    }
}

fn outcome_index(o: AffinityOutcome) -> usize {
    match o {
        AffinityOutcome::Hit => 0,
        AffinityOutcome::Miss => 1,
        AffinityOutcome::Fallback => 2,
    }
}

impl Store for MemoryStore {
    fn affinity_get(&self, user: &str, model: &str, now_ms: u64) -> Option<Arc<str>> {
        let e = self.entries.get(&self.key(user, model))?;
        if &*e.user != user || &*e.model != model || e.expires_ms.load(Relaxed) <= now_ms {
            return None;
        }
        e.expires_ms.store(now_ms + self.ttl_ms, Relaxed);
        Some(e.server.clone())
    }

    fn affinity_set(&self, user: &str, model: &str, server: &Arc<str>, now_ms: u64) {
        let key = self.key(user, model);
        if let Some(e) = self.entries.get(&key) {
            if &*e.user == user && &*e.model == model {
                let e = e.value();
                // Same server: only the TTL moves.
                if Arc::ptr_eq(&e.server, server) || *e.server == **server {
                    e.expires_ms.store(now_ms + self.ttl_ms, Relaxed);
                    return;
                }
            }
        }
        if self.entries.len() >= self.max_entries {
            self.sweep(now_ms);
            if self.entries.len() >= self.max_entries {
                tracing::warn!(
                    max_entries = self.max_entries,
                    "affinity table full; request served without a new entry"
                );
                return;
            }
        }
        self.entries.insert(
            key,
            Entry {
                user: user.into(),
                model: model.into(),
                server: server.clone(),
                expires_ms: AtomicU64::new(now_ms + self.ttl_ms),
            },
        );
    }

    fn affinity_clear(&self, user: &str, model: Option<&str>) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| !(&*e.user == user && model.is_none_or(|m| &*e.model == m)));
        before.saturating_sub(self.entries.len())
    }

    fn affinity_record(&self, provider: Provider, outcome: AffinityOutcome) {
        self.counts[provider_index(provider)][outcome_index(outcome)].fetch_add(1, Relaxed);
    }

    fn affinity_counts(&self, provider: Provider) -> AffinityCounts {
        let c = &self.counts[provider_index(provider)];
        AffinityCounts {
            hits: c[0].load(Relaxed),
            misses: c[1].load(Relaxed),
            fallbacks: c[2].load(Relaxed),
        }
    }

    fn affinity_len(&self) -> usize {
        self.entries.len()
    }

    fn sweep(&self, now_ms: u64) {
        self.entries
            .retain(|_, e| e.expires_ms.load(Relaxed) > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_ttl_keeps_active_entries_and_expires_idle_ones() {
        let s = MemoryStore::new(1_000, 100);
        let a: Arc<str> = "http://a/v1".into();
        s.affinity_set("u", "m", &a, 0);
        assert_eq!(
            s.affinity_get("u", "m", 900).as_deref(),
            Some("http://a/v1")
        );
        // The read at 900 moved expiry to 1900.
        assert!(s.affinity_get("u", "m", 1_800).is_some());
        assert!(s.affinity_get("u", "m", 2_900).is_none());
        s.sweep(2_900);
        assert_eq!(s.affinity_len(), 0);
    }

    #[test]
    fn entries_are_per_user_and_model_and_clear_is_scoped() {
        let s = MemoryStore::new(60_000, 100);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        s.affinity_set("u1", "m1", &a, 0);
        s.affinity_set("u1", "m2", &b, 0);
        s.affinity_set("u2", "m1", &b, 0);
        assert_eq!(s.affinity_get("u1", "m2", 1).as_deref(), Some("b"));
        assert_eq!(s.affinity_clear("u1", Some("m1")), 1);
        assert!(s.affinity_get("u1", "m1", 1).is_none());
        assert_eq!(s.affinity_clear("u1", None), 1);
        assert_eq!(s.affinity_get("u2", "m1", 1).as_deref(), Some("b"));
    }

    #[test]
    fn the_table_is_bounded() {
        let s = MemoryStore::new(60_000, 2);
        let a: Arc<str> = "a".into();
        s.affinity_set("u1", "m", &a, 0);
        s.affinity_set("u2", "m", &a, 0);
        s.affinity_set("u3", "m", &a, 0);
        assert_eq!(s.affinity_len(), 2);
        assert!(s.affinity_get("u3", "m", 1).is_none());
    }

    #[test]
    fn counts_per_provider() {
        let s = MemoryStore::new(1, 1);
        s.affinity_record(Provider::Vllm, AffinityOutcome::Hit);
        s.affinity_record(Provider::Vllm, AffinityOutcome::Fallback);
        s.affinity_record(Provider::Sglang, AffinityOutcome::Miss);
        assert_eq!(
            s.affinity_counts(Provider::Vllm),
            AffinityCounts {
                hits: 1,
                misses: 0,
                fallbacks: 1
            }
        );
        assert_eq!(s.affinity_counts(Provider::Sglang).misses, 1);
    }
}
