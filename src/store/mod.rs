//! Shared state behind one abstraction: session affinity entries and their counters. The embedded
//! in-memory store is the default; a Valkey-backed store plugs in behind the same trait.

mod memory;

pub use memory::MemoryStore;

use crate::config::Provider;
use crate::telemetry::AffinityOutcome;
use std::sync::Arc;

/// Hit, miss and fallback counts of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AffinityCounts {
    pub hits: u64,
    pub misses: u64,
    pub fallbacks: u64,
}

/// State every gateway instance must agree on. Methods are synchronous and must not block: they
/// are called on the hot path, so an implementation answers from local memory.
pub trait Store: Send + Sync + 'static {
    /// The server pinned for (user, model), refreshing the entry's sliding TTL.
    fn affinity_get(&self, user: &str, model: &str, now_ms: u64) -> Option<Arc<str>>;
    /// Pin (user, model) to `server` for the TTL from `now_ms`.
    fn affinity_set(&self, user: &str, model: &str, server: &Arc<str>, now_ms: u64);
    /// Remove the user's entries (only `model`'s when given); returns how many were removed.
    fn affinity_clear(&self, user: &str, model: Option<&str>) -> usize;
    /// Count one lookup outcome for `provider`.
    fn affinity_record(&self, provider: Provider, outcome: AffinityOutcome);
    /// Counts per provider.
    fn affinity_counts(&self, provider: Provider) -> AffinityCounts;
    /// Live entries.
    fn affinity_len(&self) -> usize;
    /// Drop expired entries; called periodically off the hot path.
    fn sweep(&self, now_ms: u64);
}
