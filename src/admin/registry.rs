//! `GET registry/{modelId}` (server URLs of a model) and `POST registry/refresh`.

use super::error::{ApiError, ErrorBody};
use super::page::Page;
use super::{AdminState, PageParams};
use crate::routing::registry_sync::{self, RefreshError};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A page of a model's server URLs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegistryPage {
    /// The model ID queried.
    pub model_id: String,
    /// Server URLs registered for the model, sorted.
    pub urls: Vec<String>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

/// The answer of a refresh.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefreshResult {
    /// Always "triggered" on success.
    pub status: String,
}

/// Get the server URLs registered for a model: the persistent registry's routes and the
/// routing table's (config and discovery). An unknown model has none.
#[utoipa::path(get, path = "/api/ai/v1/admin/registry/{modelId}", tag = "Model Registry",
    params(("modelId" = String, Path, description = "Model ID (may contain '/')"), PageParams),
    responses(
        (status = 200, description = "A page of the model's server URLs", body = RegistryPage),
        (status = 400, description = "Invalid query parameters or model id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 503, description = "Valkey error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get(
    State(s): State<Arc<AdminState>>,
    model_id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<RegistryPage>, ApiError> {
    let model_id = super::path_param(model_id, || {
        ApiError::bad_request("invalid model id", "the model id is not UTF-8")
    })?;
    model_urls(&s, model_id, q.as_deref()).await
}

/// `GET registry/refresh`: the registry of a model named "refresh".
pub async fn get_refresh_model(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<RegistryPage>, ApiError> {
    model_urls(&s, "refresh".into(), q.as_deref()).await
}

async fn model_urls(
    s: &AdminState,
    model_id: String,
    query: Option<&str>,
) -> Result<Json<RegistryPage>, ApiError> {
    let page = Page::from_query(query)?;
    if model_id.is_empty() || model_id.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid model id",
            "a model id is 1 to 256 bytes",
        ));
    }
    let registry = s
        .gw
        .store
        .registry_of(&model_id)
        .await
        .map_err(|e| match e {
            // The spec's registry error is "valkey error", with the cause as detail.
            crate::store::StoreError::Invalid(d) => ApiError::bad_request("invalid model id", d),
            e => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "valkey error").detail(e.to_string())
            }
        })?;
    let mut urls: BTreeSet<String> = registry.into_iter().collect();
    if let Some(pool) = s.gw.table.load().pool(&model_id) {
        urls.extend(pool.members.iter().map(|m| m.backend.id.to_string()));
    }
    let urls: Vec<String> = urls.into_iter().collect();
    Ok(Json(RegistryPage {
        urls: page.slice(&urls).to_vec(),
        model_id,
        page: page.page,
        limit: page.limit,
        total: urls.len() as u64,
    }))
}

/// Rebuild the routing table now from the config, each server's `GET /v1/models` and the
/// persistent registry (which is read, not written). Answers once the new table is in place.
#[utoipa::path(post, path = "/api/ai/v1/admin/registry/refresh", tag = "Model Registry",
    responses(
        (status = 200, description = "The routing table was rebuilt", body = RefreshResult),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "Valkey unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn refresh(State(s): State<Arc<AdminState>>) -> Result<Json<RefreshResult>, ApiError> {
    match registry_sync::refresh(&s.gw, &s.client).await {
        Ok(left_out) => {
            tracing::info!(left_out = left_out.len(), "registry refresh");
            Ok(Json(RefreshResult {
                status: "triggered".into(),
            }))
        }
        Err(RefreshError::Store(e)) => Err(e.into()),
        Err(e @ RefreshError::Rebuild(_)) => Err(ApiError::internal(e.to_string())),
    }
}
