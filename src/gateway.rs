//! The state one gateway process shares between its data plane, health checker and admin service.

use crate::config::Config;
use crate::health::HealthPolicy;
use crate::routing::RoutingTable;
use crate::store::valkey::{ValkeyConfig, ValkeyStore};
use crate::store::{MemoryStore, Store, StoreError};
use crate::telemetry::Metrics;
use crate::upstream::backend::{BackendError, PeerSettings};
use crate::upstream::Backend;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// Why the gateway's state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Shared gateway state.
pub struct Gateway {
    pub config: Config,
    pub table: ArcSwap<RoutingTable>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub policy: HealthPolicy,
    /// This instance's per-minute request counts (demand telemetry).
    pub demand: crate::telemetry::demand::DemandWindows,
}

impl Gateway {
    /// Build from a validated config: resolves every server (blocking; call before serving).
    pub fn new(config: Config) -> Result<Arc<Self>, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let settings = PeerSettings {
            connect_timeout: Duration::from_millis(config.proxy.connect_timeout_ms),
            pool_idle_timeout: Duration::from_millis(config.proxy.pool_idle_timeout_ms),
        };
        let backends = config
            .servers
            .iter()
            .map(|s| Backend::from_config(s, settings, &metrics).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let table = RoutingTable::new(backends, &metrics);
        let ttl_ms = config.affinity.ttl_minutes * 60_000;
        let store: Arc<dyn Store> = if config.store.is_valkey() {
            ValkeyStore::start(ValkeyConfig {
                url: config.store.url.clone(),
                cluster: config.store.cluster,
                prefix: config.store.prefix.clone(),
                ttl_ms,
                max_entries: config.affinity.max_entries,
            })?
        } else {
            Arc::new(MemoryStore::new(ttl_ms, config.affinity.max_entries))
        };
        let policy = HealthPolicy {
            unhealthy_threshold: config.health.unhealthy_threshold,
            healthy_threshold: config.health.healthy_threshold,
        };
        Ok(Arc::new(Self {
            config,
            table: ArcSwap::from_pointee(table),
            store,
            metrics,
            policy,
            demand: Default::default(),
        }))
    }
}
