//! `GET config` (the running configuration, secrets redacted, and its version) and
//! `POST config/reload` (read the file again: [`crate::reload`]).

use super::error::{ApiError, ErrorBody};
use super::AdminState;
use crate::reload::{Outcome, ReloadError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// The running configuration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunningConfig {
    /// 1 at start, one more per reload that changed something.
    pub version: u64,
    /// When it was read (ISO 8601).
    pub loaded_at: String,
    /// The file it was read from (null: `--demo`).
    pub path: Option<String>,
    /// SHA-256 of the file as read (hex).
    pub sha256: String,
    /// Settings whose values in the file wait for a restart.
    pub pending_restart: Vec<String>,
    /// Settings a reload applies (`table.*`: the whole table).
    pub live_settings: Vec<String>,
    /// Every setting's running value (admin credentials' digests and store passwords
    /// redacted).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

/// The running configuration, secrets redacted.
#[utoipa::path(get, path = "/admin/config", tag = "Config",
    responses((status = 200, body = RunningConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get(State(s): State<Arc<AdminState>>) -> Json<RunningConfig> {
    let r = s.gw.running.load_full();
    Json(RunningConfig {
        version: r.version,
        loaded_at: super::identity_views::iso(r.loaded_ms),
        path: r.path.as_ref().map(|p| p.display().to_string()),
        sha256: r.sha256.clone(),
        pending_restart: r.pending_restart.clone(),
        live_settings: crate::reload::LIVE.iter().map(|k| k.to_string()).collect(),
        config: crate::reload::redacted(&r.config),
    })
}

/// Read the configuration file again (as SIGHUP does): live settings apply at once, the others
/// are reported as waiting for a restart; an invalid file is refused (422) and nothing changes.
#[utoipa::path(post, path = "/admin/config/reload", tag = "Config",
    responses((status = 200, body = Outcome), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no configuration file (--demo)"),
        (status = 422, body = ErrorBody, description = "the file is invalid; the running configuration stays"),
        (status = 500, body = ErrorBody, description = "the file cannot be read; the running configuration stays")),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn reload(State(s): State<Arc<AdminState>>) -> Result<Json<Outcome>, ApiError> {
    crate::reload::reload(&s.gw)
        .await
        .map(Json)
        .map_err(|e| match e {
            ReloadError::NoFile => {
                ApiError::new(StatusCode::CONFLICT, "no configuration file").detail(e.to_string())
            }
            ReloadError::Invalid(crate::config::ConfigError::Read { path, source }) => {
                tracing::error!(%path, error = %source, "configuration file unreadable at reload");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "configuration file unreadable",
                )
                .detail(format!(
                    "cannot read {path}: {source}; the running configuration stays"
                ))
            }
            ReloadError::Invalid(e) => {
                let detail = crate::reload::scrubbed(&e.to_string());
                tracing::warn!(error = %detail, "configuration reload refused");
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid configuration")
                    .detail(detail)
            }
        })
}
