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
        if store.registry_add(&self.gw.config_routes()).await.is_err() {
            return;
        }
        let Ok(routes) = store.registry().await else {
            return;
        };
        let gw = self.gw.clone();
        match tokio::task::spawn_blocking(move || gw.apply_registry(&routes)).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "registry route not applied"),
            Err(e) => tracing::warn!(error = %e, "registry rebuild failed"),
            Ok(Ok(())) => {}
        }
    }
}

#[async_trait]
impl BackgroundService for RegistrySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut changes) = self.gw.store.registry_changes() else {
            return; // the embedded store has no registry: the config is the table
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
