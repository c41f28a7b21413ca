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

/// A managed model's record, for `/admin/models/metrics`: (served name, id, state).
pub type ManagedModel = (String, String, String);

/// Everything monitoring keeps, shared by the sampler and the admin endpoints.
pub struct Monitor {
    gw: Arc<Gateway>,
    life: Arc<crate::lifecycle::Lifecycle>,
    pub config: MonitoringConfig,
    client: reqwest::Client,
    pub gpu_source: Arc<dyn GpuSource>,
    pub host: host::History,
    host_provider: Mutex<HostProvider>,
    pub engines: engines::Engines,
    gauges: exported::EngineGauges,
    snapshots: throughput::Snapshots,
    /// Every live instance's throughput, summed at the last sample (and why others' could not
    /// be read).
    throughput: Mutex<(throughput::ThroughputSummary, Option<String>)>,
    gpus: Mutex<GpuView>,
    /// The managed models' records, read at each scrape round.
    managed: Mutex<Vec<ManagedModel>>,
    pub node_exporter: Mutex<ExporterState>,
    pub dcgm: Mutex<ExporterState>,
}

fn nvml_view(nvml: Result<GpuSet, String>) -> GpuView {
    GpuView {
        provider: if nvml.is_ok() { "nvml" } else { "none" },
        nvml_error: nvml.as_ref().err().cloned(),
        set: nvml,
    }
}

impl Monitor {
    /// Built before serving: the GPUs are read once here (NVML answers in milliseconds), so no
    /// request ever waits on the driver.
    pub fn new(
        gw: Arc<Gateway>,
        life: Arc<crate::lifecycle::Lifecycle>,
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
        let first = throughput::summary(&[snapshots.windows()]);
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
            throughput: Mutex::new((first, None)),
            gpus: Mutex::new(nvml_view(gpu_source.devices())),
            managed: Mutex::new(Vec::new()),
            node_exporter: Default::default(),
            dcgm: Default::default(),
            gpu_source,
            client,
            config,
            life,
            gw,
        })
    }

    pub fn host_provider(&self) -> HostProvider {
        self.host_provider
            .lock()
            .map(|p| *p)
            .unwrap_or(HostProvider::InProcess)
    }

    fn set_host_provider(&self, p: HostProvider) {
        if let Ok(mut current) = self.host_provider.lock() {
            *current = p;
        }
    }

    /// The GPUs as last sampled.
    pub fn gpus(&self) -> GpuView {
        self.gpus
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|_| nvml_view(Err("GPU view unavailable".into())))
    }

    /// The managed models' records as read at the last scrape round.
    pub fn managed(&self) -> Vec<ManagedModel> {
        self.managed.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Every live instance's throughput as summed at the last sample.
    pub fn throughput(&self) -> (throughput::ThroughputSummary, Option<String>) {
        self.throughput
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
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
        let source = self.gpu_source.clone();
        // NVML calls block in the driver: off the runtime's thread.
        let nvml = tokio::task::spawn_blocking(move || source.devices())
            .await
            .unwrap_or_else(|e| Err(format!("NVML query failed: {e}")));
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
            _ => nvml_view(nvml),
        };
        if let Ok(mut g) = self.gpus.lock() {
            *g = view;
        }
    }

    /// Publish this instance's throughput windows (they count three intervals), then sum every
    /// live instance's for the endpoint.
    async fn sample_throughput(&self) {
        match promtext::Page::parse(&self.gw.metrics.render()) {
            Ok(page) => self.snapshots.push(throughput::Snapshot {
                at_ms: now_ms(),
                totals: throughput::Totals::of(&page),
            }),
            Err(e) => tracing::warn!(error = %e, "the gateway's own metrics did not parse"),
        }
        let own = self.snapshots.windows();
        let ttl = self.config.sample_interval_secs * 3000;
        if let Ok(body) = serde_json::to_vec(&own) {
            if let Err(e) = self.gw.store.report_put(THROUGHPUT, &body, ttl).await {
                tracing::debug!(error = %e, "throughput not shared");
            }
        }
        let summed = match self.gw.store.reports(THROUGHPUT).await {
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
            Ok(_) => (throughput::summary(&[own]), None),
            Err(e) => (
                throughput::summary(&[own]),
                Some(format!("other instances' figures unavailable: {e}")),
            ),
        };
        if let Ok(mut t) = self.throughput.lock() {
            *t = summed;
        }
    }

    /// One scrape round of every routed server, and the managed models' records.
    pub async fn scrape_engines(&self) {
        let table = self.gw.table.load_full();
        let backends = table.backends();
        self.engines.scrape(backends).await;
        let states: Vec<engines::ServerState> = backends
            .iter()
            .filter_map(|b| self.engines.state(&b.id))
            .collect();
        self.gauges.show(&states);
        match self.life.models.list(&Default::default()).await {
            Ok(records) => {
                let managed = records
                    .into_iter()
                    .map(|m| {
                        let state = m.state.as_str().to_string();
                        (m.spec.served_model_name, m.id, state)
                    })
                    .collect();
                if let Ok(mut m) = self.managed.lock() {
                    *m = managed;
                }
            }
            Err(e) => tracing::debug!(error = %e, "managed models not read"),
        }
    }
}

/// Host sampling, in-process or from node_exporter (falling back to in-process while it
/// cannot be reached).
struct HostSampler {
    local: Option<host_local::LocalHost>,
    node: Option<node_exporter::Counters>,
    /// Whether the last sample came from node_exporter (the in-process counters are then old).
    from_node: bool,
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
        Self {
            local,
            node: None,
            from_node: false,
        }
    }

    async fn sample(&mut self, m: &Monitor) {
        if let Some(url) = m.config.node_exporter_url.clone() {
            if let Some(page) = m.exporter_page(&url, &m.node_exporter).await {
                // The time of the answer, not of the ask: a slow answer must not stretch rates.
                let counters = node_exporter::Counters::of(&page, now_ms());
                let before = self.node.replace(counters.clone());
                let sample = before.and_then(|before| {
                    node_exporter::sample(&page, &counters, &before, &m.config.disk_path)
                });
                if let Some(sample) = sample {
                    m.host.push(sample);
                    m.set_host_provider(HostProvider::NodeExporter);
                }
                self.from_node = true;
                return;
            }
            self.node = None;
        }
        let Some(mut local) = self.local.take() else {
            return;
        };
        let rebase = std::mem::take(&mut self.from_node);
        // /proc and statvfs reads: off the runtime's thread.
        let done = tokio::task::spawn_blocking(move || {
            if rebase {
                // Counters last read before node_exporter took over: a fresh base, no sample.
                local.rebase();
                (local, None)
            } else {
                let s = local.sample(now_ms());
                (local, Some(s))
            }
        })
        .await;
        match done {
            Ok((local, sample)) => {
                self.local = Some(local);
                if let Some(s) = sample {
                    m.host.push(s);
                    m.set_host_provider(HostProvider::InProcess);
                }
            }
            Err(e) => tracing::warn!(error = %e, "in-process host sampling stopped"),
        }
    }
}

/// Run `step` every `every`, forever (a slow step delays the next, never overlaps it).
async fn every<F, Fut>(every: Duration, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        step().await;
    }
}

/// The sampler: host, GPUs and throughput every `sample_interval_secs`, engine scrapes every
/// `scrape_interval_secs`, each on its own timer (a slow exporter delays only its own figures).
pub struct MonitoringService {
    pub monitor: Arc<Monitor>,
}

#[async_trait]
impl BackgroundService for MonitoringService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let m = self.monitor.clone();
        let sample = Duration::from_secs(m.config.sample_interval_secs);
        let mut tasks = tokio::task::JoinSet::new();
        if m.config.scrape_interval_secs > 0 {
            let m = m.clone();
            let period = Duration::from_secs(m.config.scrape_interval_secs);
            tasks.spawn(async move { every(period, || m.scrape_engines()).await });
        }
        {
            let m = m.clone();
            tasks.spawn(async move { every(sample, || m.sample_gpus()).await });
        }
        {
            let m = m.clone();
            tasks.spawn(async move { every(sample, || m.sample_throughput()).await });
        }
        tasks.spawn(async move {
            let mut host = HostSampler::new(&m.config.disk_path);
            // The first sample's rates need a short base: sampled soon after start, then on
            // time.
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut tick = tokio::time::interval(sample);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                host.sample(&m).await;
            }
        });
        let _ = shutdown.changed().await;
        tasks.abort_all();
    }
}
