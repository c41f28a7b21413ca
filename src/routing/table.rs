//! The routing table: model -> pool of servers, rebuilt off the hot path and swapped in whole.

use super::prefix::pools::{PoolIndex, PrefixIndexes, NO_SLOT};
use super::rate::RequestRate;
use crate::config::{Policy, RoutingConfig};
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
    /// Its slot in the pool's prefix index ([`NO_SLOT`]: none).
    pub slot: u8,
    /// `requests` per second recently (kept under the `prefix` policy, for its share bound).
    pub rate: RequestRate,
}

/// The servers of one model.
pub struct Pool {
    pub model: Arc<str>,
    pub members: Vec<Member>,
    pub policy: Policy,
    /// The prefix index, when the policy is `prefix`.
    pub prefix: Option<Arc<PoolIndex>>,
    /// `[routing] balance_abs`, `balance_rel` and `balance_share`.
    pub balance: Balance,
    /// The prefix-match histogram, when the policy is `prefix`.
    pub match_blocks: Option<prometheus::Histogram>,
}

/// How much more loaded than the least loaded server the server holding the longest prefix
/// may be and still be chosen: by `abs` requests in flight, or by the factor `rel`; and while
/// it has more in flight than the least loaded, by how much more than its even share of the
/// pool's recent requests it may take (the factor `share`; 0: no bound).
#[derive(Debug, Clone, Copy)]
pub struct Balance {
    pub abs: i64,
    pub rel: f64,
    pub share: f32,
}

impl Balance {
    /// Whether a server with `load` requests in flight may take a request the least loaded
    /// (`least` in flight) could.
    #[inline]
    pub fn allows(self, load: i64, least: i64) -> bool {
        load <= least.saturating_add(self.abs) || load as f64 <= least as f64 * self.rel
    }

    /// Whether a server that took `rate` requests a second recently, with `load` in flight,
    /// may take one more when the pool's servers take `mean` a second each and the least
    /// loaded has `least` in flight.
    #[inline]
    pub fn within_share(self, rate: f32, mean: f32, load: i64, least: i64) -> bool {
        self.share <= 0.0 || load <= least || rate <= mean * self.share
    }
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
    /// The `[routing]` section it was built with.
    routing: RoutingConfig,
}

impl RoutingTable {
    /// A table of servers with the models each serves, each model's pool routed by its
    /// policy in `routing`; the prefix indexes of its `prefix` pools come from `indexes`
    /// (allocated there the first time: call off the request path).
    pub fn new(
        routes: Vec<(Arc<Backend>, Vec<String>)>,
        metrics: &Metrics,
        routing: &RoutingConfig,
        indexes: &PrefixIndexes,
    ) -> Self {
        let mut pools: HashMap<Box<str>, Pool> = HashMap::new();
        let mut backends = Vec::with_capacity(routes.len());
        let mut models_of = HashMap::with_capacity(routes.len());
        for (b, models) in routes {
            for model in &models {
                let pool = pools.entry(model.as_str().into()).or_insert_with(|| Pool {
                    model: model.as_str().into(),
                    members: Vec::new(),
                    policy: routing.policy_of(model),
                    prefix: None,
                    balance: Balance {
                        abs: i64::from(routing.balance_abs),
                        rel: routing.balance_rel,
                        share: routing.balance_share as f32,
                    },
                    match_blocks: None,
                });
                pool.members.push(Member {
                    model: pool.model.clone(),
                    inflight: AtomicI64::new(0),
                    requests: AtomicU64::new(0),
                    flushed: AtomicU64::new(0),
                    metrics: metrics.route(model, &b.id),
                    slot: NO_SLOT,
                    rate: RequestRate::default(),
                    backend: b.clone(),
                });
            }
            models_of.insert(b.id.clone(), models);
            backends.push(b);
        }
        for pool in pools.values_mut() {
            if pool.policy != Policy::Prefix {
                continue;
            }
            let servers: Vec<&Arc<Backend>> = pool.members.iter().map(|m| &m.backend).collect();
            let (index, slots) = indexes.attach(&pool.model, &servers, routing);
            for (m, slot) in pool.members.iter_mut().zip(slots) {
                m.slot = slot;
            }
            pool.prefix = Some(index);
            pool.match_blocks = Some(metrics.prefix_match(&pool.model));
        }
        indexes.retain(|m| pools.get(m).is_some_and(|p| p.prefix.is_some()));
        Self {
            pools,
            backends,
            models_of,
            routing: routing.clone(),
        }
    }

    /// The `[routing]` section the table was built with.
    pub fn routing(&self) -> &RoutingConfig {
        &self.routing
    }

    /// Every pool, in no order.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
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
