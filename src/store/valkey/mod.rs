//! The Valkey store: every gateway instance shares affinity, its counters and health through one
//! Valkey (or Valkey Cluster), while the hot path keeps answering from local memory.
//!
//! - Affinity hits are served from the local cache (a [`MemoryStore`]); uses are batched into
//!   TTL refreshes once a second.
//! - A local miss or fallback runs one script that returns the shared entry or sets ours.
//! - Clears are written to Valkey and announced on a stream that every instance polls every
//!   200 ms, so they take effect everywhere within a second.
//! - Counters are kept locally and flushed as deltas once a second; a failed flush keeps them.
//! - Valkey down: nothing on the data plane waits for it; reassignments count as fallbacks.
//!   When it returns, sharing resumes; if it lost its data, the instance writes back what it
//!   knows.

mod audit;
mod conn;
mod demand;
mod docs;
mod keys;
mod nodes;
mod prefixes;
mod registry;
mod reports;
mod sync;
mod usage;

pub use conn::Valkey;

use super::memory::{Entry, MemoryStore};
use super::{AffinityCounts, Claim, Collection, Put, Store, StoreError};
use crate::config::Provider;
use crate::health::HealthSnapshot;
use crate::telemetry::demand::{Demand, DemandReport};
use crate::telemetry::AffinityOutcome;
use async_trait::async_trait;
use keys::Keys;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Returns `{server, existed}`: the shared entry (TTL refreshed) unless it is missing or names
/// the stale server, in which case the candidate is stored.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {cur, 1}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {ARGV[1], 0}
";

const CLEAR: &str = r"
local models
if ARGV[2] ~= '' then models = {ARGV[2]} else models = redis.call('SMEMBERS', KEYS[1]) end
local n = 0
for _, m in ipairs(models) do
  n = n + redis.call('DEL', ARGV[1] .. m)
  redis.call('SREM', KEYS[1], m)
end
return n
";

/// Store settings from `[store]` and `[affinity]`.
#[derive(Debug, Clone)]
pub struct ValkeyConfig {
    pub url: String,
    pub cluster: bool,
    pub prefix: String,
    pub ttl_ms: u64,
    pub max_entries: usize,
    /// Usage records older than this are trimmed.
    pub usage_retention_ms: u64,
    /// Audit records older than this are trimmed.
    pub audit_retention_ms: u64,
}

/// Affinity, counters and health shared through Valkey.
pub struct ValkeyStore {
    pub(crate) local: MemoryStore,
    pub(crate) valkey: Valkey,
    pub(crate) keys: Keys,
    pub(crate) usage_retention_ms: u64,
    pub(crate) audit_retention_ms: u64,
    /// A cluster: a pipeline must stay within one slot.
    pub(crate) cluster: bool,
    touched: Mutex<Option<mpsc::UnboundedReceiver<Arc<Entry>>>>,
    claim: redis::Script,
    clear: redis::Script,
    /// Bumped when an event says the registry changed.
    pub(crate) registry_tx: tokio::sync::watch::Sender<u64>,
    /// Bumped when identity documents changed (here or, by an event, on another instance).
    pub(crate) docs_tx: tokio::sync::watch::Sender<u64>,
    /// Messages for lifecycle nodes, as they arrive on the event stream.
    pub(crate) nodes: super::nodes::MemoryNodes,
    pub(crate) docs_put: redis::Script,
    pub(crate) docs_delete: redis::Script,
    /// This process's id in per-instance keys.
    pub(crate) instance: String,
    /// Runs the connection and the sync loop, apart from the data plane's threads.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl ValkeyStore {
    /// Connect (lazily) and start syncing. A Valkey that is down now is not an error.
    pub fn start(cfg: ValkeyConfig) -> Result<Arc<Self>, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("valkey")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Valkey(e.to_string()))?;
        let valkey = {
            let _guard = runtime.enter();
            Valkey::open(&cfg.url, cfg.cluster)?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let local = MemoryStore::new(cfg.ttl_ms, cfg.max_entries).with_touch_sink(Box::new(
            move |e: &Arc<Entry>| {
                let _ = tx.send(e.clone());
            },
        ));
        let store = Arc::new(Self {
            local,
            valkey,
            keys: Keys::new(&cfg.prefix),
            usage_retention_ms: cfg.usage_retention_ms,
            audit_retention_ms: cfg.audit_retention_ms,
            cluster: cfg.cluster,
            touched: Mutex::new(Some(rx)),
            instance: format!("{:016x}", rand::random::<u64>()),
            registry_tx: tokio::sync::watch::channel(0).0,
            docs_tx: tokio::sync::watch::channel(0).0,
            nodes: Default::default(),
            docs_put: redis::Script::new(docs::PUT),
            docs_delete: redis::Script::new(docs::DELETE),
            claim: redis::Script::new(CLAIM),
            clear: redis::Script::new(CLEAR),
            runtime: Mutex::new(None),
        });
        // First contact before serving, so that the first requests already share state. On a
        // thread of its own: `start` may be called from within another runtime.
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(sync::first_contact(&store)));
        });
        runtime.spawn(sync::run(store.clone()));
        *store.runtime.lock().expect("lock") = Some(runtime);
        Ok(store)
    }

    /// Append an event to the stream every instance polls.
    pub(crate) async fn announce(&self, fields: &[(&str, &str)]) -> Result<(), StoreError> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(sync::EVENTS_MAXLEN)
            .arg("*");
        for (k, v) in fields {
            xadd.arg(*k).arg(*v);
        }
        self.valkey
            .run(|mut c| async move { xadd.query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }

    pub(crate) fn take_touched(&self) -> Option<mpsc::UnboundedReceiver<Arc<Entry>>> {
        self.touched.lock().ok()?.take()
    }

    /// Write an entry to Valkey unless one is there (used to repopulate a Valkey that lost data).
    pub(crate) async fn claim_shared(
        &self,
        user: &str,
        model: &str,
        candidate: &str,
        stale: Option<&str>,
    ) -> Result<(String, bool), StoreError> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.keys.affinity(user, model))
            .key(self.keys.affinity_index(user))
            .arg(candidate)
            .arg(stale.unwrap_or(""))
            .arg(self.local.ttl_ms())
            .arg(model);
        self.valkey
            .run(|mut c| async move { inv.invoke_async::<(String, u8)>(&mut c).await })
            .await
            .map(|(server, existed)| (server, existed == 1))
    }
}

impl Drop for ValkeyStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.get_mut().ok().and_then(Option::take) {
            rt.shutdown_background();
        }
    }
}

#[async_trait]
impl Store for ValkeyStore {
    fn affinity_get(&self, user: &str, model: &str, now_ms: u64) -> Option<Arc<str>> {
        self.local.affinity_get(user, model, now_ms)
    }

    fn shares_routing(&self) -> bool {
        true
    }

    async fn prefix_publish(&self, batch: Vec<u8>) -> Result<(), StoreError> {
        prefixes::publish(self, batch).await
    }

    async fn prefix_seed(&self, proposed: u64) -> Result<u64, StoreError> {
        prefixes::seed(self, proposed).await
    }

    async fn load_publish(&self, snapshot: Vec<u8>) -> Result<(), StoreError> {
        prefixes::publish_load(self, snapshot).await
    }

    async fn routing_read(
        &self,
        after: Option<&str>,
    ) -> Result<crate::store::SharedRouting, StoreError> {
        prefixes::read(self, after).await
    }

    async fn affinity_claim(
        &self,
        user: &str,
        model: &str,
        candidate: &Arc<str>,
        stale: Option<&str>,
        now_ms: u64,
    ) -> Claim {
        if !self.valkey.is_available() {
            self.local.set(user, model, candidate, now_ms);
            return Claim::LocalOnly;
        }
        match self.claim_shared(user, model, candidate, stale).await {
            Ok((server, existed)) => {
                let server: Arc<str> = if *server == **candidate {
                    candidate.clone()
                } else {
                    server.into()
                };
                self.local.set(user, model, &server, now_ms);
                Claim::Agreed { server, existed }
            }
            Err(e) => {
                tracing::debug!(error = %e, "affinity claim fell back to local state");
                self.local.set(user, model, candidate, now_ms);
                Claim::LocalOnly
            }
        }
    }

    async fn affinity_clear(&self, user: &str, model: Option<&str>) -> Result<usize, StoreError> {
        let prefix = self.keys.affinity(user, "");
        let mut inv = self.clear.prepare_invoke();
        inv.key(self.keys.affinity_index(user))
            .arg(&prefix)
            .arg(model.unwrap_or(""));
        let cleared = self
            .valkey
            .run(|mut c| async move { inv.invoke_async::<usize>(&mut c).await })
            .await?;
        let local = self.local.remove(user, model);
        self.announce(&[
            ("kind", "clear"),
            ("user", user),
            ("model", model.unwrap_or("")),
        ])
        .await?;
        Ok(cleared.max(local))
    }

    fn affinity_record(&self, provider: Provider, outcome: AffinityOutcome) {
        self.local.affinity_record(provider, outcome);
    }

    async fn affinity_counts(&self, provider: Provider) -> Result<AffinityCounts, StoreError> {
        let key = self.keys.affinity_stats();
        let shared: std::collections::HashMap<String, u64> = self
            .valkey
            .run(|mut c| async move {
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<std::collections::HashMap<String, u64>>(&mut c)
                    .await
            })
            .await?;
        let local = self.local.local_counts(provider);
        let get = |o: AffinityOutcome| {
            shared
                .get(&sync::stats_field(provider, o))
                .copied()
                .unwrap_or(0)
        };
        Ok(AffinityCounts {
            hits: get(AffinityOutcome::Hit) + local.hits,
            misses: get(AffinityOutcome::Miss) + local.misses,
            fallbacks: get(AffinityOutcome::Fallback) + local.fallbacks,
        })
    }

    fn affinity_len(&self) -> usize {
        self.local.affinity_len()
    }

    fn sweep(&self, now_ms: u64) {
        self.local.sweep(now_ms);
    }

    async fn publish_health(&self, snapshots: Vec<(Arc<str>, HealthSnapshot)>) {
        sync::publish_health(self, snapshots).await;
    }

    async fn health(&self, server: &str) -> Result<Option<HealthSnapshot>, StoreError> {
        sync::read_health(self, server).await
    }

    async fn registry(&self) -> Result<Vec<(String, String)>, StoreError> {
        registry::read(self).await
    }

    async fn doc_list(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        docs::list(self, c).await
    }

    async fn doc_get(&self, c: Collection, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        docs::get(self, c, id).await
    }

    async fn doc_put(
        &self,
        c: Collection,
        id: &str,
        doc: &[u8],
        unique: Option<&str>,
        old_unique: Option<&str>,
    ) -> Result<Put, StoreError> {
        docs::put(self, c, id, doc, unique, old_unique).await
    }

    async fn doc_delete(
        &self,
        c: Collection,
        id: &str,
        unique: Option<&str>,
    ) -> Result<bool, StoreError> {
        docs::delete(self, c, id, unique).await
    }

    fn doc_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.docs_tx.subscribe()
    }

    async fn node_beat(&self, node: &str, info: &[u8]) -> Result<(), StoreError> {
        nodes::beat(self, node, info).await
    }

    async fn node_beats(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        nodes::beats(self).await
    }

    async fn node_send(&self, node: &str, body: &[u8]) -> Result<(), StoreError> {
        nodes::send(self, node, body).await
    }

    fn node_inbox(&self) -> tokio::sync::broadcast::Receiver<super::NodeMessage> {
        self.nodes.inbox()
    }

    async fn report_put(&self, kind: &str, body: &[u8], ttl_ms: u64) -> Result<(), StoreError> {
        reports::put(self, kind, body, ttl_ms).await
    }

    async fn reports(&self, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        reports::all(self, kind).await
    }

    async fn reply_put(&self, id: &str, body: &[u8]) -> Result<(), StoreError> {
        nodes::reply_put(self, id, body).await
    }

    async fn reply_take(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        nodes::reply_take(self, id).await
    }

    async fn usage_append(
        &self,
        batch: &str,
        records: &[crate::usage::UsageRecord],
    ) -> Result<(), StoreError> {
        usage::append(self, batch, records).await
    }

    async fn usage_scan(
        &self,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<crate::usage::UsageRecord>, StoreError> {
        usage::scan(self, from_ms, to_ms, max).await
    }

    async fn audit_append(
        &self,
        batch: &str,
        records: &[crate::audit::AuditRecord],
    ) -> Result<(), StoreError> {
        audit::append(self, batch, records).await
    }

    async fn audit_scan(
        &self,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError> {
        audit::scan(self, from_ms, to_ms, max).await
    }

    async fn rate_add(
        &self,
        counts: &[(Arc<str>, u64, u64, u64)],
    ) -> Result<Option<Vec<(u64, u64)>>, StoreError> {
        // One pipeline for every key; in a cluster one per key (each key is its own slot).
        let groups: Vec<&[(Arc<str>, u64, u64, u64)]> = if self.cluster {
            counts.chunks(1).collect()
        } else {
            vec![counts]
        };
        let mut totals = Vec::with_capacity(counts.len());
        for group in groups.into_iter().filter(|g| !g.is_empty()) {
            let mut pipe = redis::pipe();
            for (key, minute, requests, tokens) in group {
                let k = self.keys.rate(key, *minute);
                pipe.cmd("HINCRBY").arg(&k).arg("r").arg(requests);
                pipe.cmd("HINCRBY").arg(&k).arg("t").arg(tokens);
                pipe.cmd("PEXPIRE").arg(&k).arg(120_000).ignore();
            }
            let flat: Vec<u64> = self
                .valkey
                .run(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            totals.extend(
                flat.chunks(2)
                    .map(|p| (p[0], p.get(1).copied().unwrap_or(0))),
            );
        }
        Ok(Some(totals))
    }

    async fn registry_of(&self, model: &str) -> Result<Vec<String>, StoreError> {
        registry::read_model(self, model).await
    }

    async fn registry_add(&self, routes: &[(String, String)]) -> Result<(), StoreError> {
        registry::add(self, routes).await
    }

    async fn registry_remove(&self, model: &str, url: &str) -> Result<bool, StoreError> {
        registry::remove(self, model, url).await
    }

    fn set_affinity_limits(&self, ttl_ms: u64, max_entries: usize) {
        // Local entries and the TTL the claim script and the touch sync give shared ones.
        self.local.set_affinity_limits(ttl_ms, max_entries);
    }

    fn registry_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.registry_tx.subscribe())
    }

    async fn publish_demand(&self, reports: Vec<DemandReport>) {
        demand::publish(self, reports).await;
    }

    async fn demand(&self, server: &str, local: Demand) -> Result<Demand, StoreError> {
        demand::read(self, server, local).await
    }
}
