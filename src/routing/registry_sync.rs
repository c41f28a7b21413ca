//! Keeps the routing table in step with the shared registry: seeds it with the config's routes
//! (so a Valkey that lost its data gets them back), and rebuilds the table when any instance
//! announces a change, or every 10 s as a safety net.

use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

const RESYNC_EVERY: Duration = Duration::from_secs(10);

pub struct RegistrySync {
    pub gw: Arc<Gateway>,
}

impl RegistrySync {
    /// Seed, read and apply the registry once.
    pub async fn sync(&self) {
        let store = &self.gw.store;
        // Routes a reload dropped while the store was down leave it now.
        let dropped: Vec<(String, String)> = self
            .gw
            .dropped_routes
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for (model, url) in dropped {
            if store.registry_remove(&model, &url).await.is_ok() {
                if let Ok(mut d) = self.gw.dropped_routes.lock() {
                    d.remove(&(model, url));
                }
            }
        }
        if store.registry_add(&self.gw.config_routes()).await.is_err() {
            return;
        }
        let Ok(routes) = store.registry().await else {
            return;
        };
        if let Err(e) = apply(&self.gw, routes).await {
            tracing::warn!(error = %e, "registry rebuild failed");
        }
    }
}

/// Apply `registry` routes (with the config's and the discovered ones) on a blocking thread.
pub async fn apply(
    gw: &Arc<Gateway>,
    registry: Vec<(String, String)>,
) -> Result<Vec<crate::upstream::backend::BackendError>, tokio::task::JoinError> {
    let gw = gw.clone();
    tokio::task::spawn_blocking(move || gw.apply_registry(&registry)).await
}

/// The admin refresh: ask every server for its models, read the persistent registry (without
/// writing it), and rebuild the routing table from config, registry and discovery.
pub async fn refresh(
    gw: &Arc<Gateway>,
    client: &reqwest::Client,
) -> Result<Vec<crate::upstream::backend::BackendError>, RefreshError> {
    let found = super::discovery::discover(gw, client).await;
    if let Ok(mut d) = gw.discovered.lock() {
        for (url, models) in found {
            d.insert(url, models);
        }
    }
    let routes = gw.store.registry().await?;
    apply(gw, routes)
        .await
        .map_err(|e| RefreshError::Rebuild(e.to_string()))
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("routing table rebuild failed: {0}")]
    Rebuild(String),
}

#[async_trait]
impl BackgroundService for RegistrySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut changes) = self.gw.store.registry_changes() else {
            return;
        };
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        loop {
            self.sync().await;
            tokio::select! {
                _ = tick.tick() => {}
                r = changes.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }
}
