//! Model discovery (spec 000 "Model Discovery & Inspection"): the models directory
//! (`GET`/`PUT /admin/models/base-dir`), its folders (`GET /admin/models/local-folders`) and
//! what one holds (`GET /admin/models/inspect-folder?folder=`), read from file headers only and
//! never outside the models directory. File reading runs off the async threads.

use super::body;
use super::error::{ApiError, ErrorBody};
use super::page::param;
use super::AdminState;
use crate::lifecycle::base_dir::{BaseDirError, BaseDirSource};
use crate::modelfiles::folder::{self, FolderReport};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Folders listed at most.
const MAX_FOLDERS: usize = 1000;
/// Files counted per folder (its size is the sum of what was counted).
const MAX_FILES_COUNTED: usize = 20_000;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BaseDirView {
    pub base_dir: String,
    /// `config` (`[runner] models_dir`) or `admin` (set through this API).
    pub source: BaseDirSource,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseDirBody {
    /// An absolute path to an existing directory.
    pub base_dir: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BaseDirSet {
    /// Always `ok`.
    pub status: &'static str,
    /// The directory, symbolic links resolved.
    pub base_dir: String,
    pub source: BaseDirSource,
}

impl From<BaseDirError> for ApiError {
    fn from(e: BaseDirError) -> Self {
        match e {
            BaseDirError::Invalid(d) => ApiError::bad_request("invalid base_dir", d),
            BaseDirError::Store(e) => e.into(),
        }
    }
}

/// The models directory: every `local_path` is relative to it, and the runner reads (or mounts)
/// it.
#[utoipa::path(get, path = "/admin/models/base-dir", tag = "Model discovery",
    responses((status = 200, body = BaseDirView)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get_base_dir(State(s): State<Arc<AdminState>>) -> Json<BaseDirView> {
    let (dir, source) = s.life.models.base_dir.get();
    Json(BaseDirView {
        base_dir: dir.to_string_lossy().into_owned(),
        source,
    })
}

/// Set the models directory (an absolute path to an existing directory). Kept in the store: it
/// outlives restarts and every instance uses it within 2 s. Running engines keep the paths they
/// were started with.
#[utoipa::path(put, path = "/admin/models/base-dir", tag = "Model discovery", request_body = BaseDirBody,
    responses((status = 200, body = BaseDirSet), (status = 400, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn put_base_dir(
    State(s): State<Arc<AdminState>>,
    b: Body,
) -> Result<Json<BaseDirSet>, ApiError> {
    let body: BaseDirBody = body::json(b).await?;
    let models = &s.life.models;
    let dir = models.base_dir.set(models.store(), &body.base_dir).await?;
    tracing::info!(models_dir = %dir.display(), "models directory set");
    Ok(Json(BaseDirSet {
        status: "ok",
        base_dir: dir.to_string_lossy().into_owned(),
        source: BaseDirSource::Admin,
    }))
}

/// One folder of the models directory.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocalFolder {
    pub name: String,
    /// Bytes of the files in it (and below, at most 3 levels down).
    pub size_bytes: u64,
    pub size_gb: f64,
    pub safetensors_files: u64,
    pub gguf_files: u64,
    pub has_config: bool,
}

fn describe(dir: &Path, name: String) -> LocalFolder {
    let mut f = LocalFolder {
        name,
        size_bytes: 0,
        size_gb: 0.0,
        safetensors_files: 0,
        gguf_files: 0,
        has_config: dir.join("config.json").is_file(),
    };
    let mut counted = 0;
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            counted += 1;
            if counted > MAX_FILES_COUNTED {
                break;
            }
            // Not followed: a link is not part of what the folder holds.
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() && depth < 3 {
                stack.push((e.path(), depth + 1));
            } else if m.is_file() {
                f.size_bytes += m.len();
                let n = e.file_name().to_string_lossy().to_ascii_lowercase();
                f.safetensors_files += u64::from(n.ends_with(".safetensors"));
                f.gguf_files += u64::from(n.ends_with(".gguf"));
            }
        }
    }
    f.size_gb = crate::modelfiles::gib(f.size_bytes as f64);
    f
}

/// The folders of the models directory (hidden ones left out), sorted, with their size and the
/// weights they hold.
#[utoipa::path(get, path = "/admin/models/local-folders", tag = "Model discovery",
    responses((status = 200, body = Vec<LocalFolder>)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn local_folders(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<LocalFolder>>, ApiError> {
    let root = s.life.models.models_dir();
    refuse_other_base(q.as_deref(), &root)?;
    let folders = tokio::task::spawn_blocking(move || {
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().symlink_metadata().is_ok_and(|m| m.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.truncate(MAX_FOLDERS);
        names
            .into_iter()
            .map(|n| describe(&root.join(&n), n))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(folders))
}

/// Cortex took the directory per call (`base=`), which let a caller read any directory of the
/// gateway: here it is the models directory, always.
fn refuse_other_base(q: Option<&str>, root: &Path) -> Result<(), ApiError> {
    match param(q, "base") {
        Some(b) if Path::new(&b) != root => Err(ApiError::bad_request(
            "invalid query parameter",
            format!(
                "base: folders are read in the models directory ({}) only; set it with PUT /admin/models/base-dir",
                root.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// What a folder of the models directory holds, from file headers only: safetensors shards
/// (bytes, parameters, dtypes), `config.json` (layers, heads, KV heads, context, dtype,
/// quantization), tokenizer files, GGUF files grouped by model and quantization (multi-part sets
/// checked complete, metadata of each), and the engine to use with its reasons. A file that
/// cannot be read is a warning; a folder outside the models directory is a 400.
#[utoipa::path(get, path = "/admin/models/inspect-folder", tag = "Model discovery",
    params(("folder" = String, Query, description = "Relative to the models directory")),
    responses((status = 200, body = FolderReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn inspect_folder(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<FolderReport>, ApiError> {
    let root = s.life.models.models_dir();
    refuse_other_base(q.as_deref(), &root)?;
    let folder = param(q.as_deref(), "folder").ok_or_else(|| {
        ApiError::bad_request(
            "missing query parameter",
            "folder: a folder of the models directory",
        )
    })?;
    let report = tokio::task::spawn_blocking(move || -> Result<FolderReport, ApiError> {
        let path: PathBuf = crate::lifecycle::paths::confined(&root, &folder)
            .map_err(|e| ApiError::bad_request("invalid folder", format!("folder {e}")))?;
        if !path.is_dir() {
            return Err(ApiError::not_found("folder not found")
                .detail(format!("{folder} is not a folder of the models directory")));
        }
        Ok(folder::inspect(&root, &folder, &path))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(report))
}

impl From<crate::modelfiles::hub::HubError> for ApiError {
    fn from(e: crate::modelfiles::hub::HubError) -> Self {
        use crate::modelfiles::hub::HubError;
        use axum::http::StatusCode;
        match e {
            HubError::BadRequest(d) => ApiError::bad_request("invalid query parameter", d),
            HubError::NotFound(d) => ApiError::not_found("model not found on the Hub").detail(d),
            HubError::Gated(d) => ApiError::new(StatusCode::FORBIDDEN, "gated model").detail(d),
            HubError::Unreachable(d) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "hub unreachable").detail(d)
            }
            HubError::Timeout(d) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "hub timeout").detail(d)
            }
        }
    }
}

/// A model's configuration and parameter count from the Hugging Face Hub (admin only, unlike
/// Cortex): the same fields as a local `config.json`, plus parameters by dtype. Cached per
/// repository and revision for 10 minutes. 400 for a bad repo id, 404 unknown, 403 gated,
/// 502 unreachable, 504 too slow.
#[utoipa::path(get, path = "/admin/models/hf-config", tag = "Model discovery",
    params(("repo_id" = String, Query, description = "org/name"), ("revision" = Option<String>, Query, description = "Branch, tag or commit (default main)")),
    responses((status = 200, body = crate::modelfiles::hub::HubModel), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn hf_config(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::modelfiles::hub::HubModel>, ApiError> {
    let repo = param(q.as_deref(), "repo_id").ok_or_else(|| {
        ApiError::bad_request(
            "missing query parameter",
            "repo_id: a Hugging Face repository id (org/name)",
        )
    })?;
    let revision = param(q.as_deref(), "revision");
    let model = s.hub.model(&repo, revision.as_deref()).await?;
    Ok(Json((*model).clone()))
}
