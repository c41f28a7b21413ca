//! System and engine monitoring: the host (in-process or from node_exporter), the GPUs (NVML or
//! dcgm-exporter), the gateway's own throughput, and every routed server's `/metrics`. A
//! background service takes every sample on its own thread; the admin endpoints only read what
//! it keeps, and the request path does nothing for it.

pub mod capabilities;
pub mod dcgm;
pub mod engine_figures;
pub mod engines;
mod exported;
mod fetch;
pub mod host;
pub mod host_local;
pub mod model_metrics;
pub mod node_exporter;
pub mod promtext;
pub mod throughput;

#[cfg(test)]
mod fixture_tests;

use crate::config::MonitoringConfig;
use crate::gateway::Gateway;
use crate::gpu::{GpuSet, GpuSource};
use crate::telemetry::now_ms;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The report kind instances share their throughput windows under.
const THROUGHPUT: &str = "throughput";

/// Where host figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostProvider {
    NodeExporter,
    InProcess,
}

/// The last time an exporter was asked.
#[derive(Debug, Clone, Default)]
pub struct ExporterState {
    /// Whether it answered with a page (None: not asked yet).
    pub up: Option<bool>,
    pub error: Option<String>,
}

/// What the sampler last learned of the GPUs.
#[derive(Debug, Clone)]
pub struct GpuView {
    /// The devices, or why there are none.
    pub set: Result<GpuSet, String>,
    /// `dcgm` when dcgm-exporter answered, `nvml` when NVML did, else `none`.
    pub provider: &'static str,
    /// Why NVML is unusable here (None: it answered).
    pub nvml_error: Option<String>,
}

/// Everything monitoring keeps, shared by the sampler and the admin endpoints.
pub struct Monitor {
    gw: Arc<Gateway>,
    pub config: MonitoringConfig,
    client: reqwest::Client,
    pub gpu_source: Arc<dyn GpuSource>,
    pub host: host::History,
    host_provider: Mutex<HostProvider>,
    pub engines: engines::Engines,
    gauges: exported::EngineGauges,
    snapshots: throughput::Snapshots,
    gpus: Mutex<Option<GpuView>>,
    pub node_exporter: Mutex<ExporterState>,
    pub dcgm: Mutex<ExporterState>,
}

impl Monitor {
    pub fn new(
        gw: Arc<Gateway>,
        gpu_source: Arc<dyn GpuSource>,
        client: reqwest::Client,
    ) -> Arc<Self> {
        let config = gw.config.monitoring.clone();
        let samples =
            (config.history_minutes * 60 / config.sample_interval_secs.max(1)) as usize + 1;
        // Every counter was zero when the process started: the first window starts there.
        let snapshots = throughput::Snapshots::default();
        snapshots.push(throughput::Snapshot {
            at_ms: gw.started_ms,
            ..Default::default()
        });
        Arc::new(Self {
            engines: engines::Engines::new(
                client.clone(),
                Duration::from_millis(config.scrape_timeout_ms),
                config.scrape_concurrency,
            ),
            gauges: exported::EngineGauges::register(&gw.metrics),
            host: host::History::new(samples),
            host_provider: Mutex::new(HostProvider::InProcess),
            snapshots,
            gpus: Mutex::new(None),
            node_exporter: Default::default(),
            dcgm: Default::default(),
            gpu_source,
            client,
            config,
            gw,
        })
    }

    pub fn gw(&self) -> &Arc<Gateway> {
        &self.gw
    }

    pub fn host_provider(&self) -> HostProvider {
        self.host_provider
            .lock()
            .map(|p| *p)
            .unwrap_or(HostProvider::InProcess)
    }

    /// The GPUs as last sampled (sampled now if the sampler has not run yet).
    pub fn gpus(&self) -> GpuView {
        if let Some(v) = self.gpus.lock().ok().and_then(|g| g.clone()) {
            return v;
        }
        let nvml = self.gpu_source.devices();
        GpuView {
            provider: if nvml.is_ok() { "nvml" } else { "none" },
            nvml_error: nvml.as_ref().err().cloned(),
            set: nvml,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.scrape_timeout_ms)
    }

    async fn exporter_page(
        &self,
        url: &str,
        state: &Mutex<ExporterState>,
    ) -> Option<promtext::Page> {
        let page = fetch::page(&self.client, url, None, self.timeout()).await;
        if let Ok(mut s) = state.lock() {
            s.up = Some(page.is_ok());
            s.error = page.as_ref().err().cloned();
        }
        if let Err(e) = &page {
            tracing::debug!(%url, error = %e, "exporter scrape failed");
        }
        page.ok()
    }

    async fn sample_gpus(&self) {
        let nvml = self.gpu_source.devices();
        let nvml_error = nvml.as_ref().err().cloned();
        let dcgm = match self.config.dcgm_url.clone() {
            Some(url) => self
                .exporter_page(&url, &self.dcgm)
                .await
                .map(|p| dcgm::from_page(&p)),
            None => None,
        };
        let view = match dcgm {
            Some(set) if !set.gpus.is_empty() => GpuView {
                set: Ok(dcgm::merge(set, nvml.ok())),
                provider: "dcgm",
                nvml_error,
            },
            _ => GpuView {
                provider: if nvml.is_ok() { "nvml" } else { "none" },
                set: nvml,
                nvml_error,
            },
        };
        if let Ok(mut g) = self.gpus.lock() {
            *g = Some(view);
        }
    }

    /// Publish this instance's throughput windows (kept three intervals).
    async fn sample_throughput(&self) {
        let page = match promtext::Page::parse(&self.gw.metrics.render()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "the gateway's own metrics did not parse");
                return;
            }
        };
        self.snapshots
            .push(throughput::Snapshot::of(&page, now_ms()));
        let windows = self.snapshots.windows();
        let Ok(body) = serde_json::to_vec(&windows) else {
            return;
        };
        let ttl = self.config.sample_interval_secs * 3000;
        if let Err(e) = self.gw.store.report_put(THROUGHPUT, &body, ttl).await {
            tracing::debug!(error = %e, "throughput not shared");
        }
    }

    /// Every live instance's throughput, summed. A store that cannot be read leaves this
    /// instance's own figures and the reason.
    pub async fn throughput(&self) -> (throughput::ThroughputSummary, Option<String>) {
        match self.gw.store.reports(THROUGHPUT).await {
            Ok(bodies) if !bodies.is_empty() => {
                let all: Vec<throughput::InstanceWindows> = bodies
                    .iter()
                    .filter_map(|b| serde_json::from_slice(b).ok())
                    .collect();
                if all.len() < bodies.len() {
                    tracing::warn!(
                        unreadable = bodies.len() - all.len(),
                        "instances' throughput reports left out (another version?)"
                    );
                }
                (throughput::summary(&all), None)
            }
            Ok(_) => (throughput::summary(&[self.snapshots.windows()]), None),
            Err(e) => (
                throughput::summary(&[self.snapshots.windows()]),
                Some(format!("other instances' figures unavailable: {e}")),
            ),
        }
    }

    /// One scrape round of every routed server.
    pub async fn scrape_engines(&self) {
        let table = self.gw.table.load_full();
        let backends = table.backends();
        self.engines.scrape(backends).await;
        let states: Vec<engines::ServerState> = backends
            .iter()
            .filter_map(|b| self.engines.state(&b.id))
            .collect();
        self.gauges.show(&states);
    }
}

/// Host sampling, in-process or from node_exporter (falling back to in-process while it
/// cannot be reached).
struct HostSampler {
    local: Option<host_local::LocalHost>,
    node: Option<node_exporter::Counters>,
}

impl HostSampler {
    fn new(disk_path: &std::path::Path) -> Self {
        let local = match host_local::LocalHost::new(disk_path) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "no in-process host figures");
                None
            }
        };
        Self { local, node: None }
    }

    async fn sample(&mut self, m: &Monitor) {
        let now = now_ms();
        if let Some(url) = m.config.node_exporter_url.clone() {
            if let Some(page) = m.exporter_page(&url, &m.node_exporter).await {
                let counters = node_exporter::Counters::of(&page, now);
                let before = self.node.replace(counters.clone());
                if let Some(before) = before {
                    let disk = m.config.disk_path.to_string_lossy();
                    m.host
                        .push(node_exporter::sample(&page, &counters, &before, &disk));
                    if let Ok(mut p) = m.host_provider.lock() {
                        *p = HostProvider::NodeExporter;
                    }
                }
                return;
            }
            self.node = None;
        }
        if let Some(local) = self.local.as_mut() {
            m.host.push(local.sample(now));
            if let Ok(mut p) = m.host_provider.lock() {
                *p = HostProvider::InProcess;
            }
        }
    }
}

/// The sampler: host, GPUs and throughput every `sample_interval_secs`, engine scrapes every
/// `scrape_interval_secs` (rounds never overlap: a slow round delays the next).
pub struct MonitoringService {
    pub monitor: Arc<Monitor>,
}

#[async_trait]
impl BackgroundService for MonitoringService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let m = self.monitor.clone();
        let scrapes = (m.config.scrape_interval_secs > 0).then(|| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs(m.config.scrape_interval_secs));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    m.scrape_engines().await;
                }
            })
        });
        let mut host = HostSampler::new(&m.config.disk_path);
        // The first sample's rates need a short base: sampled soon after start, then on time.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(m.config.sample_interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    host.sample(&m).await;
                    m.sample_gpus().await;
                    m.sample_throughput().await;
                }
                _ = shutdown.changed() => break,
            }
        }
        if let Some(s) = scrapes {
            s.abort();
        }
    }
}
