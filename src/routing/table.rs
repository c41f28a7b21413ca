//! The routing table: model -> pool of servers, rebuilt off the hot path and swapped in whole.

use crate::telemetry::{Metrics, RouteMetrics};
use crate::upstream::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

/// One server in one model's pool, with that route's metric handles.
pub struct Member {
    pub model: Arc<str>,
    pub backend: Arc<Backend>,
    pub metrics: RouteMetrics,
    /// Requests of this model in flight on this server.
    pub inflight: AtomicI64,
    /// Requests of this model sent to this server since start.
    pub requests: AtomicU64,
    /// `requests` as of the last demand flush.
    pub flushed: AtomicU64,
}

/// The servers of one model.
pub struct Pool {
    pub model: Arc<str>,
    pub members: Vec<Member>,
}

impl Pool {
    /// The member for a server id (as stored in affinity entries).
    pub fn member(&self, id: &str) -> Option<(usize, &Member)> {
        self.members
            .iter()
            .enumerate()
            .find(|(_, m)| &*m.backend.id == id)
    }
}

/// Immutable routing state; replaced, never mutated.
#[derive(Default)]
pub struct RoutingTable {
    pools: HashMap<Box<str>, Pool>,
    backends: Vec<Arc<Backend>>,
    models_of: HashMap<Arc<str>, Vec<String>>,
}

impl RoutingTable {
    /// A table of servers with the models each serves.
    pub fn new(routes: Vec<(Arc<Backend>, Vec<String>)>, metrics: &Metrics) -> Self {
        let mut pools: HashMap<Box<str>, Pool> = HashMap::new();
        let mut backends = Vec::with_capacity(routes.len());
        let mut models_of = HashMap::with_capacity(routes.len());
        for (b, models) in routes {
            for model in &models {
                let pool = pools.entry(model.as_str().into()).or_insert_with(|| Pool {
                    model: model.as_str().into(),
                    members: Vec::new(),
                });
                pool.members.push(Member {
                    model: pool.model.clone(),
                    inflight: AtomicI64::new(0),
                    requests: AtomicU64::new(0),
                    flushed: AtomicU64::new(0),
                    metrics: metrics.route(model, &b.id),
                    backend: b.clone(),
                });
            }
            models_of.insert(b.id.clone(), models);
            backends.push(b);
        }
        Self {
            pools,
            backends,
            models_of,
        }
    }

    /// The models a server serves in this table.
    pub fn models_of(&self, id: &str) -> &[String] {
        self.models_of.get(id).map_or(&[], Vec::as_slice)
    }

    #[inline]
    pub fn pool(&self, model: &str) -> Option<&Pool> {
        self.pools.get(model)
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Every model with a pool, in no order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(|m| &**m)
    }

    /// Models with at least one healthy server, sorted.
    pub fn healthy_models(&self) -> BTreeSet<&str> {
        self.pools
            .values()
            .filter(|p| {
                p.members
                    .iter()
                    .any(|m| m.backend.is_healthy() || m.backend.health.is_held_passing())
            })
            .map(|p| &*p.model)
            .collect()
    }
}
