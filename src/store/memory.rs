//! The embedded store: sharded concurrent maps, no external service. Also the local cache under
//! the Valkey store.

use super::{AffinityCounts, Claim, Collection, Put, Store, StoreError};
use crate::config::Provider;
use crate::telemetry::AffinityOutcome;
use async_trait::async_trait;
use dashmap::DashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One (user, model) -> server entry.
pub struct Entry {
    pub user: Box<str>,
    pub model: Box<str>,
    pub server: Arc<str>,
    expires_ms: AtomicU64,
    /// Set on use; a shared store clears it when it pushes the TTL out.
    touched: AtomicBool,
}

/// Receives entries the first time they are used after their TTL was last pushed out.
pub type TouchSink = Box<dyn Fn(&Arc<Entry>) + Send + Sync>;

/// In-memory affinity with a sliding TTL and a bound on the number of entries.
pub struct MemoryStore {
    /// The affinity TTL and entry bound (`[affinity]`; a reload changes them).
    ttl_ms: AtomicU64,
    max_entries: std::sync::atomic::AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
    /// Keyed by a keyed hash of (user, model); the entry keeps both to rule out collisions.
    /// The key is already a keyed SipHash, so the map uses it as it is.
    entries: DashMap<u64, Arc<Entry>, PassThrough>,
    counts: [[AtomicU64; 3]; 3],
    on_touch: Option<TouchSink>,
    /// Identity documents (only used when this is the store, not a cache under Valkey).
    docs: super::docs::MemoryDocs,
    /// Heartbeats, messages and replies of the one node this store serves.
    nodes: super::nodes::MemoryNodes,
    /// Monitoring reports by kind, with the instant each stops counting (same).
    reports: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Vec<u8>)>>,
    /// Registry routes (same).
    registry: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    registry_tx: tokio::sync::watch::Sender<u64>,
    /// Usage records, oldest first (same).
    usage: std::sync::Mutex<std::collections::VecDeque<crate::usage::UsageRecord>>,
    usage_limits: UsageLimits,
    /// Audit records, oldest first (same).
    audit: std::sync::Mutex<std::collections::VecDeque<crate::audit::AuditRecord>>,
    audit_limits: UsageLimits,
}

/// How long and how many records (usage, or audit) the embedded store keeps.
#[derive(Debug, Clone, Copy)]
pub struct UsageLimits {
    pub retention_ms: u64,
    pub max_records: usize,
}

impl Default for UsageLimits {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 3_600_000,
            max_records: 1_000_000,
        }
    }
}

impl MemoryStore {
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        Self {
            ttl_ms: AtomicU64::new(ttl_ms),
            max_entries: max_entries.into(),
            hasher: Default::default(),
            entries: DashMap::with_hasher(PassThrough::default()),
            counts: Default::default(),
            on_touch: None,
            docs: Default::default(),
            nodes: Default::default(),
            reports: Default::default(),
            registry: Default::default(),
            registry_tx: tokio::sync::watch::channel(0).0,
            usage: Default::default(),
            usage_limits: UsageLimits::default(),
            audit: Default::default(),
            audit_limits: UsageLimits::default(),
        }
    }

    /// Keep audit records this long, and at most this many.
    pub fn with_audit_limits(mut self, limits: UsageLimits) -> Self {
        self.audit_limits = limits;
        self
    }

    /// Keep usage records this long, and at most this many.
    pub fn with_usage_limits(mut self, limits: UsageLimits) -> Self {
        self.usage_limits = limits;
        self
    }

    /// Report entries as they are used (once per [`Entry::take_touched`]).
    pub fn with_touch_sink(mut self, sink: TouchSink) -> Self {
        self.on_touch = Some(sink);
        self
    }

    /// The affinity TTL now.
    #[inline]
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms.load(Relaxed)
    }

    /// A new affinity TTL (entries take it the next time they are used) and entry bound
    /// (entries beyond a lowered one stay until they expire; no new one is added meanwhile).
    pub fn set_affinity_limits(&self, ttl_ms: u64, max_entries: usize) {
        self.ttl_ms.store(ttl_ms, Relaxed);
        self.max_entries.store(max_entries, Relaxed);
    }

    fn key(&self, user: &str, model: &str) -> u64 {
        self.hasher.hash_one((user, model))
    }

    /// Pin (user, model) to `server` locally.
    pub fn set(&self, user: &str, model: &str, server: &Arc<str>, now_ms: u64) {
        let key = self.key(user, model);
        if let Some(e) = self.entries.get(&key) {
            if &*e.user == user && &*e.model == model && *e.server == **server {
                e.expires_ms.store(now_ms + self.ttl_ms(), Relaxed);
                return;
            }
        }
        let max_entries = self.max_entries.load(Relaxed);
        if self.entries.len() >= max_entries {
            self.sweep(now_ms);
            if self.entries.len() >= max_entries {
                tracing::warn!(
                    max_entries,
                    "affinity table full; request served without a new entry"
                );
                return;
            }
        }
        let entry = Arc::new(Entry {
            user: user.into(),
            model: model.into(),
            server: server.clone(),
            expires_ms: AtomicU64::new(now_ms + self.ttl_ms()),
            touched: AtomicBool::new(false),
        });
        self.entries.insert(key, entry);
    }

    /// Remove local entries of `user` (only `model`'s when given); returns how many.
    pub fn remove(&self, user: &str, model: Option<&str>) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| !(&*e.user == user && model.is_none_or(|m| &*e.model == m)));
        before.saturating_sub(self.entries.len())
    }

    /// Every live entry (for repopulating a shared store).
    pub fn entries(&self, now_ms: u64) -> Vec<Arc<Entry>> {
        self.entries
            .iter()
            .filter(|e| e.expires_ms.load(Relaxed) > now_ms)
            .map(|e| e.value().clone())
            .collect()
    }

    /// Local counts, and reset them (for flushing deltas to a shared store). Returns
    /// `[provider][outcome]` deltas; the caller gives them back with [`Self::restore_counts`]
    /// when the flush fails, so no increment is lost.
    pub fn take_counts(&self) -> [[u64; 3]; 3] {
        let mut out = [[0; 3]; 3];
        for (p, row) in self.counts.iter().enumerate() {
            for (o, c) in row.iter().enumerate() {
                out[p][o] = c.swap(0, Relaxed);
            }
        }
        out
    }

    pub fn restore_counts(&self, deltas: [[u64; 3]; 3]) {
        for (p, row) in deltas.iter().enumerate() {
            for (o, d) in row.iter().enumerate() {
                self.counts[p][o].fetch_add(*d, Relaxed);
            }
        }
    }

    pub fn local_counts(&self, provider: Provider) -> AffinityCounts {
        let c = &self.counts[provider_index(provider)];
        AffinityCounts {
            hits: c[0].load(Relaxed),
            misses: c[1].load(Relaxed),
            fallbacks: c[2].load(Relaxed),
        }
    }
}

impl Entry {
    /// Whether the entry was used since the last call (and reset the mark).
    pub fn take_touched(&self) -> bool {
        self.touched.swap(false, Relaxed)
    }
}

pub(crate) fn provider_index(p: Provider) -> usize {
    match p {
        Provider::Vllm => 0,
        Provider::Sglang => 1,
        Provider::Speaches => 2,
    }
}

pub(crate) fn outcome_index(o: AffinityOutcome) -> usize {
    match o {
        AffinityOutcome::Hit => 0,
        AffinityOutcome::Miss => 1,
        AffinityOutcome::Fallback => 2,
    }
}

/// Append `records` to `list` (oldest first), then drop those past the retention and the
/// oldest beyond the most kept.
fn append_bounded<T: Clone>(
    list: &std::sync::Mutex<std::collections::VecDeque<T>>,
    records: &[T],
    limits: UsageLimits,
    ts_ms: impl Fn(&T) -> u64,
) -> Result<(), StoreError> {
    let mut l = list
        .lock()
        .map_err(|_| StoreError::Invalid("records poisoned".into()))?;
    l.extend(records.iter().cloned());
    let horizon = crate::telemetry::now_ms().saturating_sub(limits.retention_ms);
    while l.front().is_some_and(|r| ts_ms(r) < horizon) || l.len() > limits.max_records {
        l.pop_front();
    }
    Ok(())
}

/// The records of `list` with `from_ms <= ts < to_ms`; `None` when there are more than `max`.
fn scan_range<T: Clone>(
    list: &std::sync::Mutex<std::collections::VecDeque<T>>,
    from_ms: u64,
    to_ms: u64,
    max: usize,
    ts_ms: impl Fn(&T) -> u64,
) -> Result<Option<Vec<T>>, StoreError> {
    let l = list
        .lock()
        .map_err(|_| StoreError::Invalid("records poisoned".into()))?;
    let mut out = Vec::new();
    for r in l.iter().filter(|r| (from_ms..to_ms).contains(&ts_ms(r))) {
        if out.len() >= max {
            return Ok(None);
        }
        out.push(r.clone());
    }
    Ok(Some(out))
}

#[async_trait]
impl Store for MemoryStore {
    async fn doc_list(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.docs.list(c)
    }

    async fn doc_get(&self, c: Collection, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.docs.get(c, id)
    }

    async fn doc_put(
        &self,
        c: Collection,
        id: &str,
        doc: &[u8],
        unique: Option<&str>,
        old_unique: Option<&str>,
    ) -> Result<Put, StoreError> {
        self.docs.put(c, id, doc, unique, old_unique)
    }

    async fn doc_delete(
        &self,
        c: Collection,
        id: &str,
        unique: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.docs.delete(c, id, unique)
    }

    fn doc_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.docs.changes()
    }

    async fn report_put(&self, kind: &str, body: &[u8], ttl_ms: u64) -> Result<(), StoreError> {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ttl_ms);
        if let Ok(mut r) = self.reports.lock() {
            r.insert(kind.to_string(), (until, body.to_vec()));
        }
        Ok(())
    }

    async fn reports(&self, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let now = std::time::Instant::now();
        Ok(self
            .reports
            .lock()
            .ok()
            .and_then(|r| {
                r.get(kind)
                    .filter(|(until, _)| *until > now)
                    .map(|(_, b)| vec![b.clone()])
            })
            .unwrap_or_default())
    }

    async fn node_beat(&self, node: &str, info: &[u8]) -> Result<(), StoreError> {
        self.nodes.beat(node, info)
    }

    async fn node_beats(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.nodes.beats()
    }

    async fn node_send(&self, node: &str, body: &[u8]) -> Result<(), StoreError> {
        self.nodes.deliver(node, body);
        Ok(())
    }

    fn node_inbox(&self) -> tokio::sync::broadcast::Receiver<super::NodeMessage> {
        self.nodes.inbox()
    }

    async fn reply_put(&self, id: &str, body: &[u8]) -> Result<(), StoreError> {
        self.nodes.reply_put(id, body)
    }

    async fn reply_take(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.nodes.reply_take(id)
    }

    async fn registry(&self) -> Result<Vec<(String, String)>, StoreError> {
        let r = self
            .registry
            .lock()
            .map_err(|_| StoreError::Invalid("registry poisoned".into()))?;
        Ok(r.iter().cloned().collect())
    }

    async fn registry_add(&self, routes: &[(String, String)]) -> Result<(), StoreError> {
        let checked = routes
            .iter()
            .map(|(m, u)| super::checked_route(m, u))
            .collect::<Result<Vec<_>, _>>()?;
        let added = {
            let mut r = self
                .registry
                .lock()
                .map_err(|_| StoreError::Invalid("registry poisoned".into()))?;
            checked
                .into_iter()
                .filter(|route| r.insert(route.clone()))
                .count()
        };
        if added > 0 {
            self.registry_tx.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    async fn registry_remove(&self, model: &str, url: &str) -> Result<bool, StoreError> {
        let removed = self
            .registry
            .lock()
            .map_err(|_| StoreError::Invalid("registry poisoned".into()))?
            .remove(&(model.to_string(), url.trim_end_matches('/').to_string()));
        if removed {
            self.registry_tx.send_modify(|v| *v += 1);
        }
        Ok(removed)
    }

    fn set_affinity_limits(&self, ttl_ms: u64, max_entries: usize) {
        MemoryStore::set_affinity_limits(self, ttl_ms, max_entries);
    }

    fn registry_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.registry_tx.subscribe())
    }

    async fn usage_append(
        &self,
        // In-process: a call that returns Ok was applied once, and one that fails applied
        // nothing, so no batch can be applied twice.
        _batch: &str,
        records: &[crate::usage::UsageRecord],
    ) -> Result<(), StoreError> {
        append_bounded(&self.usage, records, self.usage_limits, |r| r.ts_ms)
    }

    async fn usage_scan(
        &self,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<crate::usage::UsageRecord>, StoreError> {
        scan_range(&self.usage, from_ms, to_ms, max, |r| r.ts_ms)?.ok_or(StoreError::TooMany(max))
    }

    async fn audit_append(
        &self,
        // As for usage: no batch can be applied twice in-process.
        _batch: &str,
        records: &[crate::audit::AuditRecord],
    ) -> Result<(), StoreError> {
        append_bounded(&self.audit, records, self.audit_limits, |r| r.ts_ms)
    }

    async fn audit_scan(
        &self,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError> {
        scan_range(&self.audit, from_ms, to_ms, max, |r| r.ts_ms)?
            .ok_or(StoreError::TooManyAudit(max))
    }

    fn affinity_get(&self, user: &str, model: &str, now_ms: u64) -> Option<Arc<str>> {
        let e = self.entries.get(&self.key(user, model))?;
        if &*e.user != user || &*e.model != model || e.expires_ms.load(Relaxed) <= now_ms {
            return None;
        }
        e.expires_ms.store(now_ms + self.ttl_ms(), Relaxed);
        if let Some(sink) = &self.on_touch {
            if !e.touched.swap(true, Relaxed) {
                sink(e.value());
            }
        }
        Some(e.server.clone())
    }

    async fn affinity_claim(
        &self,
        user: &str,
        model: &str,
        candidate: &Arc<str>,
        _stale: Option<&str>,
        now_ms: u64,
    ) -> Claim {
        self.set(user, model, candidate, now_ms);
        Claim::Agreed {
            server: candidate.clone(),
            existed: false,
        }
    }

    async fn affinity_clear(&self, user: &str, model: Option<&str>) -> Result<usize, StoreError> {
        Ok(self.remove(user, model))
    }

    fn affinity_record(&self, provider: Provider, outcome: AffinityOutcome) {
        self.counts[provider_index(provider)][outcome_index(outcome)].fetch_add(1, Relaxed);
    }

    async fn affinity_counts(&self, provider: Provider) -> Result<AffinityCounts, StoreError> {
        Ok(self.local_counts(provider))
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
        s.set("u", "m", &a, 0);
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

    #[tokio::test]
    async fn entries_are_per_user_and_model_and_clear_is_scoped() {
        let s = MemoryStore::new(60_000, 100);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        s.set("u1", "m1", &a, 0);
        s.set("u1", "m2", &b, 0);
        s.set("u2", "m1", &b, 0);
        assert_eq!(s.affinity_get("u1", "m2", 1).as_deref(), Some("b"));
        assert_eq!(s.affinity_clear("u1", Some("m1")).await.unwrap(), 1);
        assert!(s.affinity_get("u1", "m1", 1).is_none());
        assert_eq!(s.affinity_clear("u1", None).await.unwrap(), 1);
        assert_eq!(s.affinity_get("u2", "m1", 1).as_deref(), Some("b"));
    }

    fn audit(ts_ms: u64, action: &str) -> crate::audit::AuditRecord {
        crate::audit::AuditRecord {
            ts_ms,
            actor: "ops".into(),
            action: action.into(),
            target: None,
            outcome: crate::audit::Outcome::Success,
            status: 200,
            error: None,
            error_id: None,
            method: "POST".into(),
            path: "/admin/x".into(),
            address: None,
        }
    }

    #[tokio::test]
    async fn audit_records_are_kept_for_the_retention_and_bounded() {
        let now = crate::telemetry::now_ms();
        let s = MemoryStore::new(60_000, 10).with_audit_limits(UsageLimits {
            retention_ms: 3_600_000,
            max_records: 3,
        });
        // Older than the retention: trimmed on write.
        s.audit_append("b0", &[audit(now - 7_200_000, "old"), audit(now - 10, "a")])
            .await
            .unwrap();
        let all = s.audit_scan(0, u64::MAX, 100).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        s.audit_append(
            "b1",
            &[
                audit(now - 5, "b"),
                audit(now - 4, "c"),
                audit(now - 3, "d"),
            ],
        )
        .await
        .unwrap();
        let all = s.audit_scan(0, u64::MAX, 100).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            ["b", "c", "d"],
            "at most 3, the oldest dropped first"
        );
        // The range is [from, to); more than max is refused, not cut.
        let some = s.audit_scan(now - 4, now - 3, 100).await.unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].action, "c");
        assert!(matches!(
            s.audit_scan(0, u64::MAX, 2).await,
            Err(StoreError::TooManyAudit(2))
        ));
        // Usage records are kept apart.
        assert!(s.usage_scan(0, u64::MAX, 100).await.unwrap().is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let s = MemoryStore::new(60_000, 2);
        let a: Arc<str> = "a".into();
        s.set("u1", "m", &a, 0);
        s.set("u2", "m", &a, 0);
        s.set("u3", "m", &a, 0);
        assert_eq!(s.affinity_len(), 2);
        assert!(s.affinity_get("u3", "m", 1).is_none());
    }

    #[tokio::test]
    async fn counts_per_provider_and_deltas_are_not_lost() {
        let s = MemoryStore::new(1, 1);
        s.affinity_record(Provider::Vllm, AffinityOutcome::Hit);
        s.affinity_record(Provider::Vllm, AffinityOutcome::Fallback);
        s.affinity_record(Provider::Sglang, AffinityOutcome::Miss);
        assert_eq!(
            s.affinity_counts(Provider::Vllm).await.unwrap(),
            AffinityCounts {
                hits: 1,
                misses: 0,
                fallbacks: 1
            }
        );
        let d = s.take_counts();
        assert_eq!(s.local_counts(Provider::Vllm), AffinityCounts::default());
        s.affinity_record(Provider::Vllm, AffinityOutcome::Hit);
        s.restore_counts(d);
        assert_eq!(s.local_counts(Provider::Vllm).hits, 2);
        assert_eq!(s.local_counts(Provider::Sglang).misses, 1);
    }

    #[test]
    fn uses_are_reported_once_until_taken() {
        let seen = Arc::new(AtomicU64::new(0));
        let seen2 = seen.clone();
        let s = MemoryStore::new(60_000, 10).with_touch_sink(Box::new(move |_| {
            seen2.fetch_add(1, Relaxed);
        }));
        let a: Arc<str> = "a".into();
        s.set("u", "m", &a, 0);
        s.affinity_get("u", "m", 1);
        s.affinity_get("u", "m", 2);
        assert_eq!(seen.load(Relaxed), 1);
        for e in s.entries(3) {
            assert!(e.take_touched());
        }
        s.affinity_get("u", "m", 4);
        assert_eq!(seen.load(Relaxed), 2);
    }
}

/// A hasher for keys that are already uniformly distributed keyed hashes (`u64`).
#[derive(Default, Clone, Copy)]
struct PassThroughHasher(u64);

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for these keys; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PassThrough = std::hash::BuildHasherDefault<PassThroughHasher>;
