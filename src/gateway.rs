//! The state one gateway process shares between its data plane, health checker and admin service.

use crate::config::{Config, Provider};
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
    /// The configuration the process started with: what cannot change without a restart is
    /// read from here (listeners, threads, the store). What a reload changes is read from
    /// [`Self::live`].
    pub config: Config,
    /// The configuration applied last (at start, then by each reload).
    pub running: ArcSwap<crate::config::Running>,
    /// Its version, for one-load checks on the request path.
    applied: std::sync::atomic::AtomicU64,
    /// The same version, for background loops that wait for a reload.
    reloaded: tokio::sync::watch::Sender<u64>,
    pub table: ArcSwap<RoutingTable>,
    /// The prefix indexes of the models routed by prefix (kept across table rebuilds).
    pub prefix: crate::routing::prefix::PrefixIndexes,
    /// With a shared store: what this instance routed by prefix, on its way to the other
    /// instances, and each server's load as they shared it.
    pub routing_share: Option<crate::routing::RoutingShare>,
    /// The seed of prompts' block hashes: random, the same on every instance sharing a store
    /// (`routing::prefix::seed`).
    pub prefix_seed: std::sync::atomic::AtomicU64,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// This instance's per-minute request counts (demand telemetry).
    pub demand: crate::telemetry::demand::DemandWindows,
    /// Models each server listed at its `GET /v1/models` on the last registry refresh (kept in
    /// memory only, never written to the persistent registry).
    pub discovered: std::sync::Mutex<std::collections::BTreeMap<String, Vec<String>>>,
    /// Unix ms when this instance started.
    pub started_ms: u64,
    /// Every API key, for checks without a store round trip (kept fresh by `IdentitySync`).
    pub keys: crate::identity::KeyCache,
    pub identity: crate::identity::IdentityService,
    /// Usage records on their way to the store.
    pub usage: crate::usage::UsageRecorder,
    /// Audit records (admin changes) on their way to the store.
    pub audit: crate::audit::AuditRecorder,
    /// Per-key rpm/tpm counts.
    pub limiter: crate::identity::RateLimiter,
    /// Open client connections and the stop's phase.
    pub drain: crate::shutdown::drain::Drain,
    /// Routes to the engines this instance runs for managed models (`lifecycle`).
    pub managed: std::sync::Mutex<Vec<ManagedRoute>>,
    /// The registry routes of the last rebuild (a managed engine's route changes the table
    /// without reading the store again).
    registry_applied: std::sync::Mutex<Vec<(String, String)>>,
    /// Routes a reload dropped from the config whose removal from the shared registry failed
    /// (the store was down): kept out of the table, and removed when the store answers.
    pub dropped_routes: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Held through a whole rebuild: two at once (the registry sync, an engine routed or
    /// unrouted) could each read the inputs before the other stored its table, and lose a
    /// route.
    rebuilding: std::sync::Mutex<()>,
}

/// A route to an engine the gateway runs: its served name, base URL and own API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRoute {
    pub model: String,
    pub url: String,
    pub key: String,
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
        let prefix = crate::routing::prefix::PrefixIndexes::default();
        let table = RoutingTable::new(routes, &metrics, &config.routing, &prefix);
        let ttl_ms = config.affinity.ttl_minutes * 60_000;
        let store: Arc<dyn Store> = if config.store.is_valkey() {
            ValkeyStore::start(ValkeyConfig {
                url: config.store.url.clone(),
                cluster: config.store.cluster,
                prefix: config.store.prefix.clone(),
                ttl_ms,
                max_entries: config.affinity.max_entries,
                usage_retention_ms: config.usage.retention_hours * 3_600_000,
                audit_retention_ms: config.audit.retention_hours.saturating_mul(3_600_000),
            })?
        } else {
            Arc::new(
                MemoryStore::new(ttl_ms, config.affinity.max_entries)
                    .with_usage_limits(crate::store::UsageLimits {
                        retention_ms: config.usage.retention_hours * 3_600_000,
                        max_records: config.usage.memory_max_records,
                    })
                    .with_audit_limits(crate::store::UsageLimits {
                        retention_ms: config.audit.retention_hours.saturating_mul(3_600_000),
                        max_records: config.audit.memory_max_records,
                    }),
            )
        };
        let keys = crate::identity::KeyCache::default();
        keys.set_max_stale(config.auth.max_stale_secs.saturating_mul(1000));
        Ok(Arc::new(Self {
            running: ArcSwap::from_pointee(crate::config::Running::new(config.clone())),
            applied: std::sync::atomic::AtomicU64::new(1),
            reloaded: tokio::sync::watch::channel(1).0,
            config,
            table: ArcSwap::from_pointee(table),
            prefix,
            routing_share: store.shares_routing().then(Default::default),
            prefix_seed: std::sync::atomic::AtomicU64::new(rand::random()),
            metrics,
            demand: Default::default(),
            discovered: Default::default(),
            started_ms: crate::telemetry::now_ms(),
            keys,
            identity: crate::identity::IdentityService::new(store.clone()),
            usage: Default::default(),
            audit: Default::default(),
            limiter: Default::default(),
            drain: Default::default(),
            managed: Default::default(),
            registry_applied: Default::default(),
            dropped_routes: Default::default(),
            rebuilding: Default::default(),
            store,
        }))
    }

    /// The registry routes the table was last built with.
    pub fn last_registry(&self) -> Vec<(String, String)> {
        self.registry_applied
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The configuration applied last.
    pub fn live(&self) -> Arc<Config> {
        self.running.load().config.clone()
    }

    /// The version of the configuration applied last (one load, for hot-path checks).
    #[inline]
    pub fn config_version(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Apply `running` (a reload): readers see it from now on.
    pub fn apply_config(&self, running: crate::config::Running) {
        let version = running.version;
        self.running.store(Arc::new(running));
        self.applied
            .store(version, std::sync::atomic::Ordering::Release);
        self.reloaded.send_replace(version);
    }

    /// Changes each time a reload applies a configuration.
    pub fn config_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// How a server's failures and successes move its health, as configured now.
    pub fn policy(&self) -> HealthPolicy {
        HealthPolicy::from(&self.running.load().config.health)
    }

    /// The config's (model, server URL) routes.
    pub fn config_routes(&self) -> Vec<(String, String)> {
        self.live()
            .servers
            .iter()
            .flat_map(|s| {
                let url = s.url.trim_end_matches('/').to_string();
                s.models.iter().map(move |m| (m.clone(), url.clone()))
            })
            .collect()
    }

    /// Rebuild the routing table from the config, `registry` routes, managed engines and the
    /// discovered models,
    /// keeping the live state (health, in-flight counts) of servers that stay. Servers only in
    /// the registry are vLLM servers without an API key. Resolves new hosts (blocking: call from
    /// a blocking task); a server that cannot be resolved is left out (and named in the
    /// result) rather than failing the whole table.
    pub fn apply_registry(&self, registry: &[(String, String)]) -> Vec<BackendError> {
        let _one_at_a_time = self.rebuilding.lock();
        if let Ok(mut applied) = self.registry_applied.lock() {
            *applied = registry.to_vec();
        }
        let current = self.table.load_full();
        let settings = PeerSettings {
            connect_timeout: Duration::from_millis(self.config.proxy.connect_timeout_ms),
            pool_idle_timeout: Duration::from_millis(self.config.proxy.pool_idle_timeout_ms),
        };
        let discovered: Vec<(String, String)> = self
            .discovered
            .lock()
            .map(|d| {
                d.iter()
                    .flat_map(|(url, models)| models.iter().map(|m| (m.clone(), url.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let managed: Vec<ManagedRoute> = self.managed.lock().map(|m| m.clone()).unwrap_or_default();
        let managed_routes: Vec<(String, String)> = managed
            .iter()
            .map(|r| (r.model.clone(), r.url.clone()))
            .collect();
        let mut models: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let dropped = self
            .dropped_routes
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let registry = registry.iter().filter(|r| !dropped.contains(*r));
        for (model, url) in self
            .config_routes()
            .iter()
            .chain(registry)
            .chain(&managed_routes)
        {
            let list = models.entry(url.clone()).or_default();
            if !list.contains(model) {
                list.push(model.clone());
            }
        }
        // Discovery adds models to known servers; it never brings back a removed one.
        for (model, url) in &discovered {
            if let Some(list) = models.get_mut(url) {
                if !list.contains(model) {
                    list.push(model.clone());
                }
            }
        }
        // Each server's provider and key: a config server's from its live entry, a managed
        // engine's own key, none for a registry-only vLLM server. A backend is kept only while
        // both match (a reload may change them; a later engine may get the same port, never the
        // same key).
        let live = self.live();
        let mut failed = Vec::new();
        let mut wanted: std::collections::BTreeMap<&str, (Provider, Option<String>, String)> =
            Default::default();
        for url in models.keys() {
            let want = match live
                .servers
                .iter()
                .find(|s| s.url.trim_end_matches('/') == url)
            {
                Some(cfg) => match Backend::config_key(cfg) {
                    Ok(key) => (
                        cfg.provider,
                        key,
                        cfg.api_key_env.clone().unwrap_or_default(),
                    ),
                    Err(e) => {
                        tracing::warn!(server = %url, error = %e, "server left out of the routing table");
                        failed.push(e);
                        continue;
                    }
                },
                None => match managed.iter().find(|r| r.url == *url) {
                    Some(r) => (
                        Provider::Vllm,
                        Some(r.key.clone()),
                        "a managed engine's key".into(),
                    ),
                    None => (Provider::Vllm, None, String::new()),
                },
            };
            wanted.insert(url, want);
        }
        let fits = |b: &Backend| {
            wanted.get(&*b.id).is_some_and(|(provider, key, _)| {
                b.provider == *provider && b.sends_key(key.as_deref())
            })
        };
        let unchanged = failed.is_empty()
            && *current.routing() == live.routing
            && current.backends().len() == models.len()
            && current.backends().iter().all(|b| {
                fits(b)
                    && models
                        .get(&*b.id)
                        .is_some_and(|m| current.models_of(&b.id) == m.as_slice())
            });
        if unchanged {
            return Vec::new();
        }
        let mut routes = Vec::with_capacity(models.len());
        for (url, list) in &models {
            let Some((provider, key, source)) = wanted.get(url.as_str()) else {
                continue;
            };
            let backend = match current
                .backends()
                .iter()
                .find(|b| *b.id == **url && fits(b))
            {
                Some(b) => b.clone(),
                None => {
                    let cfg = crate::config::ServerConfig {
                        url: url.clone(),
                        provider: *provider,
                        models: list.clone(),
                        api_key_env: None,
                    };
                    let key = key.clone().map(|k| (k, source.as_str()));
                    match Backend::with_key(&cfg, key, settings, &self.metrics) {
                        Ok(b) => Arc::new(b),
                        Err(e) => {
                            tracing::warn!(server = %url, error = %e, "server left out of the routing table");
                            failed.push(e);
                            continue;
                        }
                    }
                }
            };
            routes.push((backend, list.clone()));
        }
        tracing::info!(
            servers = routes.len(),
            "routing table rebuilt from config and registry"
        );
        self.table.store(Arc::new(RoutingTable::new(
            routes,
            &self.metrics,
            &live.routing,
            &self.prefix,
        )));
        failed
    }
}
