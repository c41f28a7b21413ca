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
        let routes = config
            .servers
            .iter()
            .map(|s| {
                Ok((
                    Arc::new(Backend::from_config(s, settings, &metrics)?),
                    s.models.clone(),
                ))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let table = RoutingTable::new(routes, &metrics);
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

    /// The config's (model, server URL) routes.
    pub fn config_routes(&self) -> Vec<(String, String)> {
        self.config
            .servers
            .iter()
            .flat_map(|s| {
                let url = s.url.trim_end_matches('/').to_string();
                s.models.iter().map(move |m| (m.clone(), url.clone()))
            })
            .collect()
    }

    /// Rebuild the routing table from the config plus `registry` routes, keeping the live state
    /// (health, in-flight counts) of servers that stay. Servers only in the registry are vLLM
    /// servers without an API key. Resolves new hosts (blocking: call from a blocking task).
    pub fn apply_registry(&self, registry: &[(String, String)]) -> Result<(), BackendError> {
        let current = self.table.load_full();
        let settings = PeerSettings {
            connect_timeout: Duration::from_millis(self.config.proxy.connect_timeout_ms),
            pool_idle_timeout: Duration::from_millis(self.config.proxy.pool_idle_timeout_ms),
        };
        let mut models: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (model, url) in self.config_routes().iter().chain(registry) {
            let list = models.entry(url.clone()).or_default();
            if !list.contains(model) {
                list.push(model.clone());
            }
        }
        let unchanged = current.backends().len() == models.len()
            && current.backends().iter().all(|b| {
                models
                    .get(&*b.id)
                    .is_some_and(|m| current.models_of(&b.id) == m.as_slice())
            });
        if unchanged {
            return Ok(());
        }
        let mut routes = Vec::with_capacity(models.len());
        for (url, list) in models {
            let backend = match current.backends().iter().find(|b| *b.id == *url) {
                Some(b) => b.clone(),
                None => {
                    let cfg = crate::config::ServerConfig {
                        url: url.clone(),
                        provider: crate::config::Provider::Vllm,
                        models: list.clone(),
                        api_key_env: None,
                    };
                    Arc::new(Backend::from_config(&cfg, settings, &self.metrics)?)
                }
            };
            routes.push((backend, list));
        }
        tracing::info!(
            servers = routes.len(),
            "routing table rebuilt from config and registry"
        );
        self.table
            .store(Arc::new(RoutingTable::new(routes, &self.metrics)));
        Ok(())
    }
}
