//! `GET demand/{podUrl}`: demand on one server, summed over every instance.

use super::error::{ApiError, ErrorBody};
use super::pods::{demand_of, idle_seconds};
use super::AdminState;
use crate::telemetry::now_ms;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// Demand of one model on the server.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelDemandInfo {
    /// Model identifier.
    pub model_id: String,
    /// Active requests for this model.
    pub inflight: i64,
    /// Requests over the last 5 minutes.
    pub rate_5m: u64,
}

/// Demand on one server.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DemandInfo {
    /// The server URL queried.
    pub url: String,
    /// Current number of active requests.
    pub inflight: i64,
    /// Epoch milliseconds of the last request (0: none seen).
    pub last_use_ms: u64,
    /// Seconds since the last request (since this gateway started, when none was seen).
    pub idle_seconds: u64,
    /// Per-model breakdown.
    pub models: Vec<ModelDemandInfo>,
}

/// Get demand telemetry for a server URL (URL-encoded in the path). A URL no instance routes
/// to has zero demand.
#[utoipa::path(get, path = "/api/ai/v1/admin/demand/{podUrl}", tag = "Demand Telemetry",
    params(("podUrl" = String, Path, description = "Pod URL (URL-encoded)")),
    responses(
        (status = 200, description = "Demand on the server", body = DemandInfo),
        (status = 400, description = "Not an http(s) URL", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 503, description = "Valkey unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get(
    State(s): State<Arc<AdminState>>,
    pod_url: Result<Path<String>, PathRejection>,
) -> Result<Json<DemandInfo>, ApiError> {
    let pod_url = super::path_param(pod_url, || {
        ApiError::bad_request("invalid pod url", "the URL is not UTF-8")
    })?;
    let url = pod_url.trim_end_matches('/').to_string();
    let valid = url.len() <= 2048
        && url::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !valid {
        return Err(ApiError::bad_request(
            "invalid pod url",
            format!("{:?} is not an http(s) URL", truncate(&url)),
        ));
    }
    let d = demand_of(&s, &url).await?;
    Ok(Json(DemandInfo {
        idle_seconds: idle_seconds(now_ms(), d.last_use_ms, s.gw.started_ms),
        url,
        inflight: d.inflight,
        last_use_ms: d.last_use_ms,
        models: d
            .models
            .into_iter()
            .map(|m| ModelDemandInfo {
                model_id: m.model,
                inflight: m.inflight,
                rate_5m: m.requests_5m,
            })
            .collect(),
    }))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
