//! Active health probes: `GET <origin><path>` of every server each `interval_ms`, with the
//! server's own API key. Only a 2xx answer is a success.

use crate::gateway::Gateway;
use crate::health::Source;
use crate::telemetry::now_ms;
use crate::upstream::Backend;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// Expired affinity entries are swept this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Probes every server and sweeps expired affinity entries.
/// The interval, path, timeout and thresholds are read from the running configuration at
/// every round, so a reload changes them.
pub struct HealthChecker {
    gw: Arc<Gateway>,
    client: reqwest::Client,
}

/// Why the probe client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("cannot read proxy.ca_file {0}: {1}")]
    CaFile(String, String),
    #[error("cannot build the probe client: {0}")]
    Client(String),
}

/// The HTTP client for talking to servers outside the data plane (probes, model discovery):
/// `[health] timeout_ms`, the data plane's CA bundle, no redirects.
pub fn server_client(config: &crate::config::Config) -> Result<reqwest::Client, ProbeSetupError> {
    let h = &config.health;
    let mut builder = reqwest::Client::builder()
        // (Probes set their own timeout, the live `timeout_ms`, which bounds the connect too.)
        .timeout(Duration::from_millis(h.timeout_ms))
        .pool_idle_timeout(Duration::from_millis(config.proxy.pool_idle_timeout_ms))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.proxy.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| ProbeSetupError::CaFile(ca.clone(), e.to_string()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ProbeSetupError::CaFile(ca.clone(), e.to_string()))?
        {
            builder = builder.add_root_certificate(cert);
        }
        builder = builder.tls_built_in_root_certs(false);
    }
    builder
        .build()
        .map_err(|e| ProbeSetupError::Client(e.to_string()))
}

impl HealthChecker {
    pub fn new(gw: Arc<Gateway>) -> Result<Self, ProbeSetupError> {
        let client = server_client(&gw.config)?;
        Ok(Self { client, gw })
    }

    /// Probe every server once, concurrently; returns when all probes ended.
    pub async fn probe_all(&self) {
        let table = self.gw.table.load_full();
        let live = self.gw.live();
        let path: Arc<str> = live.health.path.as_str().into();
        let timeout = Duration::from_millis(live.health.timeout_ms);
        let mut set = tokio::task::JoinSet::new();
        for b in table.backends() {
            let (b, client, path, policy) = (
                b.clone(),
                self.client.clone(),
                path.clone(),
                self.gw.policy(),
            );
            set.spawn(async move {
                b.refresh_address().await;
                match probe(&client, &b, &path, timeout).await {
                    Ok(()) => b.record_success(policy, Source::Probe),
                    Err(why) => {
                        tracing::debug!(server = %b.id, reason = %why, "probe failed");
                        b.record_failure(policy, Source::Probe, &why);
                    }
                }
                b.health.mark_checked(now_ms());
            });
        }
        while set.join_next().await.is_some() {}
        let snapshots = table
            .backends()
            .iter()
            .map(|b| (b.id.clone(), b.health.snapshot()))
            .collect();
        self.gw.store.publish_health(snapshots).await;
    }
}

async fn probe(
    client: &reqwest::Client,
    b: &Backend,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut req = client
        .get(format!("{}{}", b.url.origin(), path))
        .timeout(timeout);
    if let Some(auth) = &b.auth_header {
        req = req.header(http::header::AUTHORIZATION, auth.clone());
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            "probe timed out".to_string()
        } else {
            format!("probe failed: {e}")
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("probe answered {status}"))
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_sweep = tokio::time::Instant::now();
        let mut reloads = self.gw.config_changes();
        loop {
            let round = tokio::time::Instant::now();
            self.probe_all().await;
            if last_sweep.elapsed() >= SWEEP_EVERY {
                self.gw.store.sweep(now_ms());
                last_sweep = tokio::time::Instant::now();
            }
            // A reload may shorten the interval: the wait follows it.
            loop {
                let interval = Duration::from_millis(self.gw.live().health.interval_ms);
                tokio::select! {
                    _ = tokio::time::sleep_until(round + interval) => break,
                    r = reloads.changed() => if r.is_err() {
                        tokio::time::sleep_until(round + interval).await;
                        break;
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}
