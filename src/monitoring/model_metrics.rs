//! `GET /admin/models/metrics`: each model in the routing table with its servers' figures, per
//! server and summed per model (a model's percentiles come from its servers' buckets added
//! together, never from averaged percentiles).

use super::engine_figures::{EngineKind, Figures, Percentiles, WindowHistograms};
use super::engines::{Engines, ServerState};
use crate::telemetry::histogram::Buckets;
use serde::Serialize;

/// Figures shared by a server's and a model's entries. Counts are summed over an engine's
/// ranks (data-parallel engines print one series each); cache fractions are averaged.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct EngineMetrics {
    pub num_requests_running: Option<f64>,
    pub num_requests_waiting: Option<f64>,
    /// vLLM V0 only.
    pub num_requests_swapped: Option<f64>,
    /// Fraction (0–1) of the KV cache in use: vLLM `kv_cache_usage_perc` (V0
    /// `gpu_cache_usage_perc`), SGLang `token_usage`, llama.cpp `kv_cache_usage_ratio`.
    pub gpu_cache_usage_pct: Option<f64>,
    /// vLLM V0 only.
    pub cpu_cache_usage_pct: Option<f64>,
    /// Prefix-cache hits per query over the window (vLLM V1), or the engine's own gauge.
    pub prefix_cache_hit_rate: Option<f64>,
    pub prompt_tokens_total: Option<f64>,
    pub generation_tokens_total: Option<f64>,
    pub prompt_tokens_per_sec: Option<f64>,
    pub generation_tokens_per_sec: Option<f64>,
    /// Percentiles of the window's requests, from the engine's histogram buckets.
    pub time_to_first_token_p50_ms: Option<f64>,
    pub time_to_first_token_p95_ms: Option<f64>,
    pub inter_token_latency_p50_ms: Option<f64>,
    pub inter_token_latency_p95_ms: Option<f64>,
    pub request_latency_p50_ms: Option<f64>,
    pub request_latency_p95_ms: Option<f64>,
    /// Seconds the rates and percentiles cover (up to 300; 0 after a single scrape).
    pub window_s: f64,
}

impl EngineMetrics {
    fn of(f: &Figures) -> Self {
        let mut m = EngineMetrics {
            num_requests_running: f.running,
            num_requests_waiting: f.waiting,
            num_requests_swapped: f.swapped,
            gpu_cache_usage_pct: f.kv_cache,
            cpu_cache_usage_pct: f.cpu_cache,
            prefix_cache_hit_rate: f.prefix_hit_rate,
            prompt_tokens_total: f.prompt_tokens_total,
            generation_tokens_total: f.generation_tokens_total,
            prompt_tokens_per_sec: f.prompt_tokens_per_sec,
            generation_tokens_per_sec: f.generation_tokens_per_sec,
            window_s: f.window_s,
            ..Default::default()
        };
        m.set_percentiles(&f.histograms);
        m
    }

    fn set_percentiles(&mut self, h: &WindowHistograms) {
        let ttft = Percentiles::of(h.ttft.as_ref());
        let itl = Percentiles::of(h.itl.as_ref());
        let e2e = Percentiles::of(h.e2e.as_ref());
        self.time_to_first_token_p50_ms = ttft.p50_ms;
        self.time_to_first_token_p95_ms = ttft.p95_ms;
        self.inter_token_latency_p50_ms = itl.p50_ms;
        self.inter_token_latency_p95_ms = itl.p95_ms;
        self.request_latency_p50_ms = e2e.p50_ms;
        self.request_latency_p95_ms = e2e.p95_ms;
    }
}

/// One server's entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServerMetrics {
    /// The server's base URL, as in the routing table.
    pub server: String,
    pub engine: Option<EngineKind>,
    /// Whether the gateway routes to it now (health checks).
    pub healthy: bool,
    /// Unix ms of the last successful scrape.
    pub scraped_at_ms: Option<u64>,
    /// Why the last scrape failed (the figures are then those of the last 5 minutes' good
    /// scrapes, if any, and the model's totals leave this server out).
    pub error: Option<String>,
    #[serde(flatten)]
    pub metrics: EngineMetrics,
}

/// One model's entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelMetrics {
    /// The managed model's record id (null for a configured or registry route).
    pub model_id: Option<String>,
    pub model_name: String,
    pub served_name: String,
    /// The managed model's state, or `routed` for a configured or registry route.
    pub status: String,
    /// Set when some of its servers could not be scraped.
    pub error: Option<String>,
    #[serde(flatten)]
    pub metrics: EngineMetrics,
    pub servers: Vec<ServerMetrics>,
}

/// A server's entry from its scrapes.
pub fn server_entry(
    id: &str,
    healthy: bool,
    state: Option<ServerState>,
) -> (ServerMetrics, Option<Figures>) {
    let Some(s) = state else {
        return (
            ServerMetrics {
                server: id.to_string(),
                engine: None,
                healthy,
                scraped_at_ms: None,
                error: Some("not scraped yet".into()),
                metrics: EngineMetrics::default(),
            },
            None,
        );
    };
    let entry = ServerMetrics {
        server: id.to_string(),
        engine: s.newest.as_ref().map(|r| r.engine),
        healthy,
        scraped_at_ms: s.newest.as_ref().map(|r| r.at_ms),
        error: s.error.clone(),
        metrics: s
            .figures
            .as_ref()
            .map(EngineMetrics::of)
            .unwrap_or_default(),
    };
    // A server whose last scrape failed shows its older figures on its own entry, never in
    // the model's totals.
    let current = if s.error.is_none() { s.figures } else { None };
    (entry, current)
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

fn add_buckets(a: &Option<Buckets>, b: &Option<Buckets>) -> Option<Buckets> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.add(b)),
        (a, b) => a.clone().or_else(|| b.clone()),
    }
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (n, total) = values
        .flatten()
        .fold((0u32, 0.0), |(n, t), v| (n + 1, t + v));
    (n > 0).then(|| total / f64::from(n))
}

/// Hits over queries of every server that counts them (a server with many queries weighs
/// more than one with few), else the mean of the engines' own gauges.
fn hit_rate(servers: &[Figures]) -> Option<f64> {
    let (hits, queries) = servers
        .iter()
        .filter_map(|f| f.prefix_counts)
        .fold((0.0, 0.0), |(h, q), (fh, fq)| (h + fh, q + fq));
    if queries > 0.0 {
        return Some(hits / queries);
    }
    mean(
        servers
            .iter()
            .filter(|f| f.prefix_counts.is_none())
            .map(|f| f.prefix_hit_rate),
    )
}

/// A model's figures from its servers' (a server that serves several models counts in each:
/// an engine's figures are not split by model).
pub fn model_totals(servers: &[Figures]) -> EngineMetrics {
    let sum = |get: fn(&Figures) -> Option<f64>| servers.iter().map(get).fold(None, add);
    let mut m = EngineMetrics {
        num_requests_running: sum(|f| f.running),
        num_requests_waiting: sum(|f| f.waiting),
        num_requests_swapped: sum(|f| f.swapped),
        gpu_cache_usage_pct: mean(servers.iter().map(|f| f.kv_cache)),
        cpu_cache_usage_pct: mean(servers.iter().map(|f| f.cpu_cache)),
        prefix_cache_hit_rate: hit_rate(servers),
        prompt_tokens_total: sum(|f| f.prompt_tokens_total),
        generation_tokens_total: sum(|f| f.generation_tokens_total),
        prompt_tokens_per_sec: sum(|f| f.prompt_tokens_per_sec),
        generation_tokens_per_sec: sum(|f| f.generation_tokens_per_sec),
        window_s: servers.iter().map(|f| f.window_s).fold(0.0, f64::max),
        ..Default::default()
    };
    let h = servers
        .iter()
        .fold(WindowHistograms::default(), |acc, f| WindowHistograms {
            ttft: add_buckets(&acc.ttft, &f.histograms.ttft),
            itl: add_buckets(&acc.itl, &f.histograms.itl),
            e2e: add_buckets(&acc.e2e, &f.histograms.e2e),
        });
    m.set_percentiles(&h);
    m
}

/// A model's managed record, when it has one: (id, state).
pub type Managed = Option<(String, String)>;

/// Every model of the routing table, sorted by name, with `managed(name)` naming its record.
pub fn report(
    table: &crate::routing::RoutingTable,
    engines: &Engines,
    managed: impl Fn(&str) -> Managed,
) -> Vec<ModelMetrics> {
    let mut models: Vec<&str> = table.models().collect();
    models.sort_unstable();
    models
        .into_iter()
        .filter_map(|name| {
            let pool = table.pool(name)?;
            let mut servers = Vec::with_capacity(pool.members.len());
            let mut figures = Vec::with_capacity(pool.members.len());
            for m in &pool.members {
                let (entry, f) = server_entry(
                    &m.backend.id,
                    m.backend.is_healthy(),
                    engines.state(&m.backend.id),
                );
                servers.push(entry);
                figures.extend(f);
            }
            let failed = servers.iter().filter(|s| s.error.is_some()).count();
            let (model_id, status) = match managed(name) {
                Some((id, state)) => (Some(id), state),
                None => (None, "routed".to_string()),
            };
            Some(ModelMetrics {
                model_id,
                model_name: name.to_string(),
                served_name: name.to_string(),
                status,
                error: (failed > 0)
                    .then(|| format!("{failed} of {} servers could not be scraped", servers.len())),
                metrics: model_totals(&figures),
                servers,
            })
        })
        .collect()
}
