//! Managed model records (spec 000 "Models"): `GET/POST /admin/models`, `GET/PATCH/DELETE
//! /admin/models/{id}`.

use super::body;
use super::error::{ApiError, ErrorBody};
use super::identity_views::iso;
use super::page::{param, Page};
use super::{AdminState, PageParams, PathId};
use crate::lifecycle::{EngineType, ModelError, ModelFilter, ModelRecord, ModelSpec, ModelState};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// A managed model: its configuration (the fields of the create body) and its state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    pub id: String,
    #[serde(flatten)]
    pub spec: ModelSpec,
    pub state: ModelState,
    /// Why the model failed, or what it is doing, when there is something to say.
    pub state_detail: Option<String>,
    /// The node its engine runs (or last ran) on; `node` is the one it is pinned to.
    pub runs_on: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<ModelRecord> for ModelView {
    fn from(m: ModelRecord) -> Self {
        Self {
            id: m.id,
            spec: m.spec,
            state: m.state,
            state_detail: m.state_detail,
            runs_on: m.node,
            created_at: iso(m.created_ms),
            updated_at: iso(m.updated_ms),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelDeleted {
    pub id: String,
    /// Always `deleted`.
    pub status: &'static str,
    /// Always true: model files are never touched.
    pub files_preserved: bool,
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Invalid(d) => ApiError::bad_request("invalid model", d),
            ModelError::NotFound => ApiError::not_found("model not found"),
            ModelError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict").detail(d),
            ModelError::Corrupt(d) => ApiError::internal(d),
            ModelError::Store(e) => e.into(),
        }
    }
}

/// A query parameter that must name one of `values` (parsed by `parse`).
fn choice<T>(
    query: Option<&str>,
    name: &str,
    values: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match param(query, name) {
        None => Ok(None),
        Some(v) => parse(&v).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid query parameter",
                format!("{name} must be one of {values}, got {v:?}"),
            )
        }),
    }
}

/// List managed models, oldest first. Filters: `q` (id, name, served name, repository or path
/// contains, case-insensitive), `state`, `engine_type`.
#[utoipa::path(get, path = "/admin/models", tag = "Models",
    params(PageParams,
        ("q" = Option<String>, Query, description = "Id, name, served name, repository or path contains"),
        ("state" = Option<ModelState>, Query), ("engine_type" = Option<EngineType>, Query)),
    responses((status = 200, body = ModelList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<ModelList>, ApiError> {
    let q = q.as_deref();
    let page = Page::from_query(q)?;
    let filter = ModelFilter {
        q: param(q, "q"),
        state: choice(
            q,
            "state",
            "stopped, starting, loading, running, stopping, failed",
            ModelState::parse,
        )?,
        engine_type: choice(q, "engine_type", "vllm, llamacpp", |v| match v {
            "vllm" => Some(EngineType::Vllm),
            "llamacpp" => Some(EngineType::Llamacpp),
            _ => None,
        })?,
    };
    let all = s.life.models.list(&filter).await?;
    Ok(Json(ModelList {
        total: all.len() as u64,
        models: page.slice(&all).iter().cloned().map(Into::into).collect(),
        page: page.page,
        limit: page.limit,
    }))
}

/// One managed model.
#[utoipa::path(get, path = "/admin/models/{id}", tag = "Models", params(("id" = String, Path)),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<Json<ModelView>, ApiError> {
    Ok(Json(s.life.models.get(&id).await?.into()))
}

/// Define a managed model (state `stopped`). Every problem with the body is named in one 400:
/// flags the gateway owns and protected environment variables are refused, and paths must stay
/// inside `[runner] models_dir`. `served_model_name` is unique among managed models (409).
#[utoipa::path(post, path = "/admin/models", tag = "Models", request_body = ModelSpec,
    responses((status = 201, body = ModelView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn create(
    State(s): State<Arc<AdminState>>,
    b: Body,
) -> Result<(StatusCode, super::audited::CreatedId, Json<ModelView>), ApiError> {
    let spec: ModelSpec = body::json(b).await?;
    let model = s.life.models.create(spec).await?;
    tracing::info!(model = %model.id, served = %model.spec.served_model_name, "model created");
    Ok((
        StatusCode::CREATED,
        super::audited::created(&model.id),
        Json(model.into()),
    ))
}

/// Change a model's configuration: a JSON merge patch (a field set to null is cleared), checked
/// as a whole like a create. A running engine keeps its configuration until the model is
/// applied.
#[utoipa::path(patch, path = "/admin/models/{id}", tag = "Models", request_body = Object,
    params(("id" = String, Path)),
    responses((status = 200, body = ModelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn patch(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
    b: Body,
) -> Result<Json<ModelView>, ApiError> {
    let changes: serde_json::Value = body::json(b).await?;
    let model = s.life.models.patch(&id, changes).await?;
    tracing::info!(model = %model.id, "model changed");
    Ok(Json(model.into()))
}

/// Delete a model's record. Its files are never touched.
#[utoipa::path(delete, path = "/admin/models/{id}", tag = "Models", params(("id" = String, Path)),
    responses((status = 200, body = ModelDeleted), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn delete(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<Json<ModelDeleted>, ApiError> {
    let model = s.life.delete(&id).await?;
    tracing::info!(model = %model.id, "model deleted");
    Ok(Json(ModelDeleted {
        id: model.id,
        status: "deleted",
        files_preserved: true,
    }))
}
