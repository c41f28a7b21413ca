//! System monitoring (spec 000): host, GPUs, throughput, capabilities, and the engines' own
//! figures. Every answer comes from what the monitoring service already sampled: nothing here
//! waits on a host read, a GPU query or a scrape.

use super::error::{ApiError, ErrorBody};
use super::page::positive_param;
use super::AdminState;
use crate::gpu::GpuStats;
use crate::monitoring::capabilities::{self, Capabilities};
use crate::monitoring::host::{HostSample, HostTrends};
use crate::monitoring::model_metrics::{self, ModelMetrics};
use crate::monitoring::throughput::ThroughputSummary;
use crate::monitoring::HostProvider;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// `GET /admin/system/summary`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SystemSummary {
    pub cpu_count: usize,
    pub load_avg_1m: f64,
    pub mem_total_mb: f64,
    pub mem_used_mb: f64,
    pub disk_total_gb: Option<f64>,
    pub disk_used_gb: Option<f64>,
    /// GPUs the driver (or dcgm-exporter) reports.
    pub gpus: usize,
    /// The NVIDIA driver version (the name is Cortex's).
    pub cuda_driver: Option<String>,
    /// The CUDA version the driver supports.
    pub cuda_version: Option<String>,
    /// Unix ms of the host sample.
    pub sampled_at_ms: u64,
}

/// `GET /admin/system/host/summary`: the newest host sample and who took it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostSummary {
    pub provider: HostProvider,
    #[serde(flatten)]
    pub sample: HostSample,
}

/// `GET /admin/system/throughput` with a note when other instances could not be read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Throughput {
    #[serde(flatten)]
    pub summary: ThroughputSummary,
    /// Set when only this instance's figures could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn latest_host(s: &AdminState) -> Result<HostSample, ApiError> {
    s.monitor.host.latest().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "host not sampled yet").detail(format!(
            "the first sample is taken within {} s of the start",
            s.monitor.config.sample_interval_secs
        ))
    })
}

/// CPU, load, memory, disk and GPU count of this gateway's machine.
#[utoipa::path(get, path = "/admin/system/summary", tag = "System monitoring",
    responses((status = 200, body = SystemSummary), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn summary(State(s): State<Arc<AdminState>>) -> Result<Json<SystemSummary>, ApiError> {
    let h = latest_host(&s)?;
    let gpus = s.monitor.gpus();
    let set = gpus.set.as_ref().ok();
    Ok(Json(SystemSummary {
        cpu_count: h.cpu_count,
        load_avg_1m: h.load_avg_1m,
        mem_total_mb: h.mem_total_mb,
        mem_used_mb: h.mem_used_mb,
        disk_total_gb: h.disk_total_gb,
        disk_used_gb: h.disk_used_gb,
        gpus: set.map_or(0, |s| s.gpus.len()),
        cuda_driver: set.and_then(|s| s.driver_version.clone()),
        cuda_version: set.and_then(|s| s.cuda_version.clone()),
        sampled_at_ms: h.at_ms,
    }))
}

/// Requests, tokens, latency and TTFT percentiles and error rate over the last 1 and 5
/// minutes, measured by the gateway and summed over every instance sharing the store.
#[utoipa::path(get, path = "/admin/system/throughput", tag = "System monitoring",
    responses((status = 200, body = Throughput)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn throughput(State(s): State<Arc<AdminState>>) -> Json<Throughput> {
    let (summary, error) = s.monitor.throughput();
    Json(Throughput { summary, error })
}

/// Every GPU by index (`[]` without a driver: `capabilities` says why).
#[utoipa::path(get, path = "/admin/system/gpus", tag = "System monitoring",
    responses((status = 200, body = Vec<GpuStats>)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn gpus(State(s): State<Arc<AdminState>>) -> Json<Vec<GpuStats>> {
    Json(s.monitor.gpus().set.map(|s| s.gpus).unwrap_or_default())
}

/// The newest host sample: CPU (and per core), memory, disk (and per disk), network (and per
/// interface).
#[utoipa::path(get, path = "/admin/system/host/summary", tag = "System monitoring",
    responses((status = 200, body = HostSummary), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn host_summary(State(s): State<Arc<AdminState>>) -> Result<Json<HostSummary>, ApiError> {
    Ok(Json(HostSummary {
        provider: s.monitor.host_provider(),
        sample: latest_host(&s)?,
    }))
}

/// `minutes` and `step_s` query parameters of trends.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TrendParams {
    /// The window, a positive integer (default 15; at most `[monitoring] history_minutes`: a
    /// larger one is served as that, and said in the answer).
    minutes: Option<u64>,
    /// One point per step, a positive integer (default 15; served between the sample interval
    /// and 3600).
    step_s: Option<u64>,
}

/// Host series over the last `minutes`, one point per `step_s` that has samples (their mean).
/// Only samples that were taken: after a start or a gap the series are shorter.
#[utoipa::path(get, path = "/admin/system/host/trends", tag = "System monitoring", params(TrendParams),
    responses((status = 200, body = HostTrends), (status = 400, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn host_trends(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<HostTrends>, ApiError> {
    let q = q.as_deref();
    let cfg = &s.monitor.config;
    let minutes = positive_param(q, "minutes", 15)?.clamp(1, cfg.history_minutes);
    let step_s = positive_param(q, "step_s", 15)?.clamp(cfg.sample_interval_secs.min(3600), 3600);
    Ok(Json(s.monitor.host.trends(
        crate::telemetry::now_ms(),
        minutes,
        step_s,
    )))
}

/// Where the gateway runs and which sources of figures it can use.
#[utoipa::path(get, path = "/admin/system/capabilities", tag = "System monitoring",
    responses((status = 200, body = Capabilities)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn capabilities(State(s): State<Arc<AdminState>>) -> Json<Capabilities> {
    Json(capabilities::detect(&s.monitor))
}

/// Every routed model (config, registry and managed) with its servers' `/metrics` figures, per
/// server and summed; percentiles from the engines' histogram buckets over the last 5 minutes.
#[utoipa::path(get, path = "/admin/models/metrics", tag = "Models",
    responses((status = 200, body = Vec<ModelMetrics>)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn model_metrics(State(s): State<Arc<AdminState>>) -> Json<Vec<ModelMetrics>> {
    let managed = s.monitor.managed();
    let table = s.gw.table.load_full();
    Json(model_metrics::report(&table, &s.monitor.engines, |name| {
        managed
            .iter()
            .find(|(served, _, _)| served == name)
            .map(|(_, id, state)| (id.clone(), state.clone()))
    }))
}
