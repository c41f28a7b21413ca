//! `GET pods`, `GET pods/{id}`, `POST pods/{id}/restart`.

use super::error::{ApiError, ErrorBody};
use super::page::Page;
use super::{AdminState, PageParams};
use crate::pods::{valid_pod_id, Pod, PodError, RestartError};
use crate::telemetry::demand::Demand;
use crate::telemetry::demand_flush::local_demand;
use crate::telemetry::now_ms;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// A pod in the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PodSummary {
    /// Unique pod identifier.
    pub id: String,
    /// Human-readable pod name.
    pub name: String,
    /// Desired lifecycle state (RUNNING, STOPPED, etc.).
    pub desired_status: String,
    /// Pod kind / model configuration: the name without `[pods] name_prefix` and replica number.
    pub kind: String,
    /// Model IDs routed to this pod, sorted.
    pub models: Vec<String>,
    /// Current health status; null if the pod's URL is in no server pool.
    pub healthy: Option<bool>,
    /// Active requests currently being processed (all gateway instances).
    pub inflight: i64,
    /// Epoch milliseconds of last activity (0: none seen).
    pub last_use_ms: u64,
    /// Seconds since last activity (since this gateway started, when none was seen).
    pub idle_seconds: u64,
    /// ISO 8601 timestamp of last status change.
    pub last_status_change: Option<String>,
    /// Hourly cost in USD.
    pub cost_per_hr: Option<f64>,
    /// Data center identifier.
    pub data_center_id: Option<String>,
    /// Geographic location.
    pub location: Option<String>,
    /// GPU type identifier.
    pub gpu_type_id: Option<String>,
}

/// One pod in detail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PodDetail {
    #[serde(flatten)]
    #[schema(inline)]
    pub summary: PodSummary,
    /// ISO 8601 timestamp of last container start.
    pub last_started_at: Option<String>,
}

/// A page of pods.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PodList {
    pub pods: Vec<PodSummary>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

/// A restart that was accepted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RestartAccepted {
    /// "initiated"
    pub status: String,
    /// The pod that is restarting.
    pub pod_id: String,
}

/// A restart that failed at a phase (the body of its 502).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RestartFailed {
    /// "failed"
    pub status: String,
    pub pod_id: String,
    /// The phase that failed: "stop" or "resume".
    pub failed_at: String,
    pub detail: String,
}

/// Seconds since `last_use_ms`, or since `started_ms` when nothing was used yet.
pub fn idle_seconds(now_ms: u64, last_use_ms: u64, started_ms: u64) -> u64 {
    now_ms.saturating_sub(last_use_ms.max(started_ms)) / 1000
}

/// Demand on `url` over every instance; this instance's alone when the store cannot answer.
pub async fn demand_of(s: &AdminState, url: &str) -> Result<Demand, crate::store::StoreError> {
    let local = local_demand(&s.gw, url).unwrap_or_default();
    s.gw.store.demand(url, local).await
}

async fn summary(s: &AdminState, pod: &Pod) -> PodSummary {
    let (healthy, models) = {
        let table = s.gw.table.load();
        let healthy = table
            .backends()
            .iter()
            .find(|b| *b.id == *pod.url)
            .map(|b| b.is_healthy());
        let mut models = table.models_of(&pod.url).to_vec();
        models.sort();
        (healthy, models)
    };
    let demand = match demand_of(s, &pod.url).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(pod = %pod.id, error = %e, "pod demand from this instance only");
            local_demand(&s.gw, &pod.url).unwrap_or_default()
        }
    };
    PodSummary {
        id: pod.id.clone(),
        name: pod.name.clone(),
        desired_status: pod.desired_status.clone(),
        kind: s.pods().kind(&pod.name),
        models,
        healthy,
        inflight: demand.inflight,
        last_use_ms: demand.last_use_ms,
        idle_seconds: idle_seconds(now_ms(), demand.last_use_ms, s.gw.started_ms),
        last_status_change: pod.last_status_change.clone(),
        cost_per_hr: pod.cost_per_hr,
        data_center_id: pod.data_center_id.clone(),
        location: pod.location.clone(),
        gpu_type_id: pod.gpu_type_id.clone(),
    }
}

fn provider_error(e: PodError) -> ApiError {
    match e {
        PodError::NotFound => ApiError::not_found("pod not found"),
        PodError::Api(detail) | PodError::Unsupported(detail) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "runpod API error").detail(detail)
        }
    }
}

/// List pods.
#[utoipa::path(get, path = "/api/ai/v1/admin/pods", tag = "Pod Management",
    params(PageParams),
    responses(
        (status = 200, description = "A page of pods", body = PodList),
        (status = 400, description = "Invalid query parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 502, description = "Pod provider API error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<PodList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let all = s.pods().list().await.map_err(provider_error)?;
    // One demand read per pod of the page, concurrently.
    let mut reads = tokio::task::JoinSet::new();
    for (i, pod) in page.slice(&all).iter().enumerate() {
        let (s, pod) = (s.clone(), pod.clone());
        reads.spawn(async move { (i, summary(&s, &pod).await) });
    }
    let mut pods: Vec<(usize, PodSummary)> = Vec::with_capacity(reads.len());
    while let Some(r) = reads.join_next().await {
        pods.push(r.map_err(|e| ApiError::internal(e.to_string()))?);
    }
    pods.sort_by_key(|(i, _)| *i);
    let pods = pods.into_iter().map(|(_, p)| p).collect();
    Ok(Json(PodList {
        pods,
        page: page.page,
        limit: page.limit,
        total: all.len() as u64,
    }))
}

/// Get pod detail.
#[utoipa::path(get, path = "/api/ai/v1/admin/pods/{id}", tag = "Pod Management",
    params(("id" = String, Path, description = "Pod ID")),
    responses(
        (status = 200, description = "The pod", body = PodDetail),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 404, description = "Pod not found", body = ErrorBody),
        (status = 502, description = "Pod provider API error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get(
    State(s): State<Arc<AdminState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PodDetail>, ApiError> {
    let id = super::path_param(id, || ApiError::not_found("pod not found"))?;
    if !valid_pod_id(&id) {
        // Such an id names no pod (and is never sent to the provider).
        return Err(ApiError::not_found("pod not found"));
    }
    let pod = s.pods().get(&id).await.map_err(provider_error)?;
    Ok(Json(PodDetail {
        summary: summary(&s, &pod).await,
        last_started_at: pod.last_started_at.clone(),
    }))
}

/// Restart a pod: stop, then resume. Returns once the provider accepted both; the pod's status
/// changes asynchronously.
#[utoipa::path(post, path = "/api/ai/v1/admin/pods/{id}/restart", tag = "Pod Management",
    params(("id" = String, Path, description = "Pod ID")),
    responses(
        (status = 200, description = "Restart initiated", body = RestartAccepted),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 404, description = "Pod not found", body = ErrorBody),
        (status = 409, description = "The pod provider cannot restart pods (static pods)", body = ErrorBody),
        (status = 422, description = "Invalid pod ID", body = ErrorBody),
        (status = 502, description = "Stop or resume failed", body = RestartFailed),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn restart(
    State(s): State<Arc<AdminState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RestartAccepted>, ApiError> {
    let invalid = || {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid pod id")
            .detail("a pod id is 1 to 64 characters of A-Z a-z 0-9 _ -")
    };
    let id = super::path_param(id, invalid)?;
    if !valid_pod_id(&id) {
        return Err(invalid());
    }
    match s.pods().restart(&id).await {
        Ok(()) => {
            tracing::info!(pod = %id, "pod restart initiated");
            Ok(Json(RestartAccepted {
                status: "initiated".into(),
                pod_id: id,
            }))
        }
        Err(RestartError::NotFound) => Err(ApiError::not_found("pod not found")),
        Err(RestartError::Provider(detail)) => Err(provider_error(PodError::Api(detail))),
        Err(RestartError::Unsupported(detail)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "pod cannot be restarted").detail(detail))
        }
        Err(RestartError::Failed { phase, detail }) => {
            let body = RestartFailed {
                status: "failed".into(),
                pod_id: id,
                failed_at: phase.as_str().into(),
                detail: detail.clone(),
            };
            Err(ApiError::with_body(
                StatusCode::BAD_GATEWAY,
                format!("pod restart failed at {}", phase.as_str()),
                &body,
            )
            .detail(detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::idle_seconds;

    #[test]
    fn idle_counts_from_last_use_or_start() {
        assert_eq!(idle_seconds(100_000, 40_000, 10_000), 60);
        assert_eq!(
            idle_seconds(100_000, 0, 10_000),
            90,
            "never used: since start"
        );
        assert_eq!(
            idle_seconds(100_000, 120_000, 0),
            0,
            "clock skew between instances"
        );
    }
}
