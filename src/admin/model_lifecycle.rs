//! Running managed models (spec 000 "Models"): `POST /admin/models/{id}/start`, `stop`,
//! `apply`, `test`; `GET /admin/models/{id}/readiness` and `logs`. Any instance answers: a call
//! is carried out by the node that owns the model (503 when that node cannot be reached).

use super::error::{ApiError, ErrorBody};
use super::models::ModelView;
use super::page::param;
use super::{AdminState, PathId};
use crate::lifecycle::{LifecycleError, Logs, Readiness, TestResult};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NoRunner(d) => {
                ApiError::new(StatusCode::CONFLICT, "no model runner").detail(d)
            }
            LifecycleError::Conflict(d) => {
                ApiError::new(StatusCode::CONFLICT, "model state conflict").detail(d)
            }
            LifecycleError::Unstartable(d) => ApiError::bad_request("model cannot start", d),
            LifecycleError::Capacity(d) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no engine port free").detail(d)
            }
            LifecycleError::NodeUnavailable(d) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model node unavailable").detail(d)
            }
            LifecycleError::HandingOver(d) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engines being handed over")
                    .detail(d)
            }
            LifecycleError::Model(e) => e.into(),
        }
    }
}

/// Start a model's engine. Answers 202 once the engine process is spawned: `starting` (then
/// `loading`, `running`, or `failed` with the reason), or `failed` when it could not be run.
#[utoipa::path(post, path = "/admin/models/{id}/start", tag = "Models", params(("id" = String, Path)),
    responses((status = 202, body = ModelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn start(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<ModelView>), ApiError> {
    let model = s.life.start(&id).await?;
    tracing::info!(model = %id, state = model.state.as_str(), "model start requested");
    Ok((StatusCode::ACCEPTED, Json(model.into())))
}

/// Stop a model's engine: it leaves the routing table at once, then gets SIGTERM (SIGKILL after
/// `[runner] stop_grace_secs`). Answers 202 in `stopping` (or `stopped`).
#[utoipa::path(post, path = "/admin/models/{id}/stop", tag = "Models", params(("id" = String, Path)),
    responses((status = 202, body = ModelView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn stop(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<ModelView>), ApiError> {
    let model = s.life.stop(&id).await?;
    tracing::info!(model = %id, "model stop requested");
    Ok((StatusCode::ACCEPTED, Json(model.into())))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplyResult {
    /// `restarting` (the engine runs: it is restarted with the saved configuration) or
    /// `validated` (it does not: the configuration was checked, nothing was started).
    pub status: &'static str,
    pub model: ModelView,
}

/// Apply a model's saved configuration: a running model is restarted with it (202), a stopped
/// one is only checked (200). PATCH then apply is how a change reaches a running engine.
#[utoipa::path(post, path = "/admin/models/{id}/apply", tag = "Models", params(("id" = String, Path)),
    responses((status = 200, body = ApplyResult), (status = 202, body = ApplyResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn apply(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<ApplyResult>), ApiError> {
    let (restarting, model) = s.life.apply(&id).await?;
    let (status, word) = if restarting {
        (StatusCode::ACCEPTED, "restarting")
    } else {
        (StatusCode::OK, "validated")
    };
    Ok((
        status,
        Json(ApplyResult {
            status: word,
            model: model.into(),
        }),
    ))
}

/// Whether a model serves: decided from its engine's `GET /health` and `GET /v1/models` (never
/// from an inference, so embedding models are judged right). An unknown model is a 404.
#[utoipa::path(get, path = "/admin/models/{id}/readiness", tag = "Models", params(("id" = String, Path)),
    responses((status = 200, body = Readiness), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn readiness(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<Json<Readiness>, ApiError> {
    Ok(Json(s.life.readiness(&id).await?))
}

/// Send one small request to the model's own engine: a chat completion, or an embedding for
/// `embed` models. 409 when it is not running.
#[utoipa::path(post, path = "/admin/models/{id}/test", tag = "Models", params(("id" = String, Path)),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn test(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<Json<TestResult>, ApiError> {
    Ok(Json(s.life.test(&id).await?))
}

/// The last `tail` lines (default 200) a model's engine wrote, read on the node it runs (or last
/// ran) on; `diagnose=true` adds what the whole kept log says about its startup.
#[utoipa::path(get, path = "/admin/models/{id}/logs", tag = "Models",
    params(("id" = String, Path), ("tail" = Option<u64>, Query, description = "Lines (default 200)"),
        ("diagnose" = Option<bool>, Query, description = "Add diagnosis and summary")),
    responses((status = 200, body = Logs), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn logs(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Logs>, ApiError> {
    let tail = match param(q.as_deref(), "tail") {
        None => 200,
        Some(v) => v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid query parameter",
                format!("tail must be a positive integer, got {v:?}"),
            )
        })?,
    };
    let diagnose = super::page::flag(q.as_deref(), "diagnose")?;
    Ok(Json(s.life.logs(&id, tail, diagnose).await?))
}

/// What starting a saved model would do, without starting it: the exact command, every problem
/// (severity `error` makes `valid` false), and a VRAM estimate from the model's own files.
#[utoipa::path(post, path = "/admin/models/{id}/dry-run", tag = "Models", params(("id" = String, Path)),
    responses((status = 200, body = crate::lifecycle::dry_run::DryRun), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn dry_run(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<Json<crate::lifecycle::dry_run::DryRun>, ApiError> {
    let model = s.life.models.get(&id).await?;
    run_dry(&s, model.spec).await
}

/// A dry-run of a model that is not saved (a form validating before it creates).
#[utoipa::path(post, path = "/admin/models/dry-run", tag = "Models", request_body = crate::lifecycle::ModelSpec,
    responses((status = 200, body = crate::lifecycle::dry_run::DryRun), (status = 400, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn dry_run_unsaved(
    State(s): State<Arc<AdminState>>,
    b: axum::body::Body,
) -> Result<Json<crate::lifecycle::dry_run::DryRun>, ApiError> {
    let spec: crate::lifecycle::ModelSpec = super::body::json(b).await?;
    run_dry(&s, spec).await
}

async fn run_dry(
    s: &AdminState,
    spec: crate::lifecycle::ModelSpec,
) -> Result<Json<crate::lifecycle::dry_run::DryRun>, ApiError> {
    let (dir, runner) = (s.life.models.models_dir(), s.life.runner().clone());
    let hub = match (&spec.repo_id, &spec.local_path) {
        (Some(repo), None) => Some(
            s.hub
                .model(repo, None)
                .await
                .map(|m| (*m).clone())
                .map_err(|e| e.to_string()),
        ),
        _ => None,
    };
    // File headers are read: off the async threads.
    let gpus = s.gpus.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::lifecycle::dry_run::dry_run(&spec, &dir, &runner, hub, gpus.gpus())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(report))
}
