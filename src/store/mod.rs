//! Shared state behind one abstraction: session affinity entries and their counters (and, with
//! Valkey, health snapshots, demand telemetry and the registry, see `valkey/`). The embedded
//! in-memory store is the default; the Valkey store shares everything between instances.
//!
//! The hot path only calls the synchronous, local methods; the asynchronous ones run on an
//! affinity miss or fallback, or off the hot path.

pub mod docs;
mod memory;
pub mod nodes;
pub mod valkey;

pub use docs::{Collection, Put};
pub use memory::{Entry, MemoryStore, UsageLimits};
pub use nodes::NodeMessage;

use crate::config::Provider;
use crate::health::HealthSnapshot;
use crate::telemetry::demand::{Demand, DemandReport};
use crate::telemetry::AffinityOutcome;
use async_trait::async_trait;
use std::sync::Arc;

/// Hit, miss and fallback counts of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AffinityCounts {
    pub hits: u64,
    pub misses: u64,
    pub fallbacks: u64,
}

/// The result of agreeing on a server for (user, model) with the other instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The shared entry names `server`: the server another instance pinned (`existed`), or the
    /// candidate when there was no entry or it named the stale server.
    Agreed { server: Arc<str>, existed: bool },
    /// The shared store could not be asked: the candidate is pinned locally only.
    LocalOnly,
}

/// Why a shared-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("valkey unavailable")]
    Unavailable,
    #[error("valkey error: {0}")]
    Valkey(String),
    #[error("the range holds more than {0} usage records: narrow it (from, to)")]
    TooMany(usize),
    #[error("the range holds more than {0} audit records: narrow it (from, to)")]
    TooManyAudit(usize),
}

/// State every gateway instance must agree on.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The server pinned locally for (user, model), refreshing the entry's sliding TTL. Never
    /// leaves the process.
    fn affinity_get(&self, user: &str, model: &str, now_ms: u64) -> Option<Arc<str>>;

    /// Called when the local entry is missing or names an unusable (`stale`) server: agree with
    /// the other instances on the server for (user, model), proposing `candidate`.
    async fn affinity_claim(
        &self,
        user: &str,
        model: &str,
        candidate: &Arc<str>,
        stale: Option<&str>,
        now_ms: u64,
    ) -> Claim;

    /// Remove the user's entries (only `model`'s when given) on every instance; returns how
    /// many entries were removed.
    async fn affinity_clear(&self, user: &str, model: Option<&str>) -> Result<usize, StoreError>;

    /// Count one lookup outcome for `provider` (local; shared stores flush it in batches).
    fn affinity_record(&self, provider: Provider, outcome: AffinityOutcome);

    /// Counts per provider, summed over every instance.
    async fn affinity_counts(&self, provider: Provider) -> Result<AffinityCounts, StoreError>;

    /// Entries held locally.
    fn affinity_len(&self) -> usize;

    /// Drop expired local entries; called periodically off the hot path.
    fn sweep(&self, now_ms: u64);

    /// Share this instance's view of server health (after each probe round).
    async fn publish_health(&self, _snapshots: Vec<(Arc<str>, HealthSnapshot)>) {}

    /// The persistent registry: (model, server URL) routes beyond the config's, sorted.
    async fn registry(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Every document of a collection, as (id, JSON).
    async fn doc_list(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    async fn doc_get(&self, c: Collection, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Write a document. With `unique`, the name must not belong to another document of the
    /// collection (else [`Put::Conflict`] and nothing is written); `old_unique` is the name the
    /// document had, released when it changes.
    async fn doc_put(
        &self,
        c: Collection,
        id: &str,
        doc: &[u8],
        unique: Option<&str>,
        old_unique: Option<&str>,
    ) -> Result<Put, StoreError>;

    /// Delete a document (and release its unique name); `true` when it existed.
    async fn doc_delete(
        &self,
        c: Collection,
        id: &str,
        unique: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Changes whenever identity documents (see [`Collection::announced`]) may have changed, on
    /// any instance (within a second).
    fn doc_changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Publish this instance's report of `kind` (monitoring figures); it counts for `ttl_ms`
    /// unless published again, so a stopped instance's report fades.
    async fn report_put(&self, kind: &str, body: &[u8], ttl_ms: u64) -> Result<(), StoreError>;

    /// The live reports of `kind` of every instance, this one included.
    async fn reports(&self, kind: &str) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Record that `node` is alive, with what it says of itself (a lifecycle heartbeat).
    async fn node_beat(&self, node: &str, info: &[u8]) -> Result<(), StoreError>;

    /// The last heartbeat of every node, as (node, info).
    async fn node_beats(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Send a message to `node` (whichever instance it is); it arrives within a second.
    async fn node_send(&self, node: &str, body: &[u8]) -> Result<(), StoreError>;

    /// The messages sent to any node, as they arrive (each receiver keeps its node's).
    fn node_inbox(&self) -> tokio::sync::broadcast::Receiver<NodeMessage>;

    /// Leave the reply to message `id` for its sender (kept for [`nodes::REPLY_TTL`]).
    async fn reply_put(&self, id: &str, body: &[u8]) -> Result<(), StoreError>;

    /// Take the reply to message `id`, if it came.
    async fn reply_take(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Append usage records (a flush of the recorder); they are kept for the retention.
    /// `batch` names this set of records for good: appending the same batch again (a retry
    /// after a reply that was lost) adds nothing that was already added.
    async fn usage_append(
        &self,
        batch: &str,
        records: &[crate::usage::UsageRecord],
    ) -> Result<(), StoreError>;

    /// Usage records with `from_ms <= ts_ms < to_ms`, from every instance. More than `max`
    /// is an error (the caller should narrow the range).
    async fn usage_scan(
        &self,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<crate::usage::UsageRecord>, StoreError>;

    /// Append audit records (a write of the recorder); they are kept for `[audit]
    /// retention_hours`. Like [`Self::usage_append`], `batch` names the records for good: the
    /// same batch appended again adds nothing that was already added.
    async fn audit_append(
        &self,
        batch: &str,
        records: &[crate::audit::AuditRecord],
    ) -> Result<(), StoreError>;

    /// Audit records with `from_ms <= ts_ms < to_ms`, from every instance, in no particular
    /// order. More than `max` is an error (the caller should narrow the range).
    async fn audit_scan(
        &self,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError>;

    /// Add this instance's counts, (key id, minute, requests, tokens), to the shared
    /// counters in one round trip; the totals of every instance in the same order, or `None`
    /// when the store shares nothing (local counts are the totals).
    async fn rate_add(
        &self,
        _counts: &[(Arc<str>, u64, u64, u64)],
    ) -> Result<Option<Vec<(u64, u64)>>, StoreError> {
        Ok(None)
    }

    /// The server URLs the persistent registry holds for `model`.
    async fn registry_of(&self, model: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .registry()
            .await?
            .into_iter()
            .filter(|(m, _)| m == model)
            .map(|(_, url)| url)
            .collect())
    }

    /// Add routes (persisted; every instance applies them within a second).
    async fn registry_add(&self, routes: &[(String, String)]) -> Result<(), StoreError>;

    /// Remove a route; `true` when it existed.
    async fn registry_remove(&self, model: &str, url: &str) -> Result<bool, StoreError>;

    /// A reloaded `[affinity]`: the TTL entries take the next time they are used, and the
    /// bound on this instance's entries.
    fn set_affinity_limits(&self, ttl_ms: u64, max_entries: usize);

    /// Changes whenever the registry may have changed (on any instance).
    fn registry_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>>;

    /// Share this instance's demand (once a second).
    async fn publish_demand(&self, _reports: Vec<DemandReport>) {}

    /// Demand on `server` summed over every instance; `local` is this instance's own, which is
    /// the answer when the store shares nothing.
    async fn demand(&self, _server: &str, local: Demand) -> Result<Demand, StoreError> {
        Ok(local)
    }

    /// The last health snapshot any instance shared for `server` (`None` when none did or the
    /// store shares nothing).
    async fn health(&self, _server: &str) -> Result<Option<HealthSnapshot>, StoreError> {
        Ok(None)
    }

    /// Whether other instances can be there to share routing state with: cache-aware
    /// routing's prefixes and each server's load.
    fn shares_routing(&self) -> bool {
        false
    }

    /// Share a batch of the prompts this instance routed (opaque bytes, `routing::prefix`).
    async fn prefix_publish(&self, _batch: Vec<u8>) -> Result<(), StoreError> {
        Ok(())
    }

    /// The seed of prompts' block hashes every instance uses: the one the store holds, or
    /// `proposed` when it held none (then it holds that). Without a shared store, `proposed`.
    async fn prefix_seed(&self, proposed: u64) -> Result<u64, StoreError> {
        Ok(proposed)
    }

    /// Share this instance's load on each server (opaque bytes, `routing::load_share`).
    async fn load_publish(&self, _snapshot: Vec<u8>) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the other instances shared for routing after the cursor `after` (`None`: start
    /// from now), with the cursor to read from next.
    async fn routing_read(&self, _after: Option<&str>) -> Result<SharedRouting, StoreError> {
        Ok(SharedRouting::default())
    }
}

/// What the other instances shared for routing, read from the store.
#[derive(Debug, Default)]
pub struct SharedRouting {
    /// Where to read from next.
    pub cursor: Option<String>,
    /// Batches of the prompts they routed (`routing::prefix::share`).
    pub prefixes: Vec<Vec<u8>>,
    /// Their load snapshots (`routing::load_share`), each with the instance that sent it.
    pub loads: Vec<(String, Vec<u8>)>,
}

/// Check a registry route; returns it normalized (URL without a trailing '/').
pub fn checked_route(model: &str, url: &str) -> Result<(String, String), StoreError> {
    if model.trim().is_empty() || model.len() > 256 {
        return Err(StoreError::Invalid(format!(
            "model names must be 1 to 256 characters, got {model:?}"
        )));
    }
    crate::upstream::ServerUrl::parse(url).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok((model.to_string(), url.trim_end_matches('/').to_string()))
}
