//! Keeps the key cache in step with the store: reloads it when any instance changed a key
//! (the store's change signal arrives within a second) and every 10 s as a safety net.

use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// Load every key into the cache; returns how many.
pub async fn reload(gw: &Gateway) -> Result<usize, super::IdentityError> {
    let keys = gw.identity.all_keys().await?;
    gw.keys.replace_confirmed(&keys, crate::telemetry::now_ms());
    Ok(keys.len())
}

pub struct IdentitySync {
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for IdentitySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changes = self.gw.store.doc_changes();
        let mut last = tokio::time::Instant::now();
        loop {
            // Often enough that a reachable store always keeps the cache confirmed (read at
            // every round: a reload may lower max_stale_secs).
            let every = match self.gw.live().auth.max_stale_secs {
                0 => RESYNC_EVERY,
                s => RESYNC_EVERY.min(Duration::from_secs(s) / 3),
            };
            let due = last + every;
            tokio::select! {
                // Looked at again every second, so that a reload takes effect within one.
                _ = tokio::time::sleep_until(due.min(tokio::time::Instant::now() + Duration::from_secs(1))) => {
                    if tokio::time::Instant::now() < due {
                        continue;
                    }
                }
                r = changes.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            last = tokio::time::Instant::now();
            if let Err(e) = reload(&self.gw).await {
                tracing::warn!(error = %e, "API keys not reloaded; the cache keeps the last ones");
            }
        }
    }
}
