//! `GET/POST /admin/keys`, `DELETE /admin/keys/{id}`. A key's token is shown once, when it
//! is created; only the SHA-256 of its secret is stored.

use super::body;
use super::error::{ApiError, ErrorBody};
use super::identity_views::KeyView;
use super::page::{param, Page};
use super::{AdminState, PageParams, PathId};
use crate::identity::{CreateKey, KeyFilter, Scopes};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Scopes as a comma-separated string or a list.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ScopesInput {
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    #[serde(default)]
    pub name: Option<String>,
    /// "chat,completions,embeddings" or ["chat", ...]; of chat, completions, embeddings,
    /// audio, models. Omitted: all of them.
    #[serde(default)]
    pub scopes: Option<ScopesInput>,
    /// Admin roles, e.g. ["ai_admin"].
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Requests per minute (omitted: unlimited).
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute (omitted: unlimited).
    #[serde(default)]
    pub tpm: Option<u64>,
}

/// A created key, with its token (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyCreated {
    #[serde(flatten)]
    #[schema(inline)]
    pub key: KeyView,
    /// `<id>:<secret>`: send it as `Authorization: Bearer <token>`, or its two halves as the
    /// `api-key` and `api-secret` headers.
    pub token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

/// Reload this instance's key cache now (the others follow through the store within a
/// second), so that a change is in force when the admin call returns.
pub async fn refresh_cache(s: &AdminState) {
    if let Err(e) = crate::identity::sync::reload(&s.gw).await {
        tracing::warn!(error = %e, "key cache not reloaded after a change");
    }
}

/// List keys (filters `org_id`, `user_id`, `q`: id or name contains; `sort`: created_at,
/// -created_at (default), name, -name).
#[utoipa::path(get, path = "/admin/keys", tag = "Keys",
    params(PageParams, ("org_id" = Option<String>, Query), ("user_id" = Option<String>, Query),
        ("q" = Option<String>, Query), ("sort" = Option<String>, Query)),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<KeyList>, ApiError> {
    let query = q.as_deref();
    let page = Page::from_query(query)?;
    let filter = KeyFilter {
        org_id: param(query, "org_id"),
        user_id: param(query, "user_id"),
        q: param(query, "q"),
    };
    let mut keys = s.gw.identity.keys(&filter).await?;
    match param(query, "sort").as_deref() {
        None | Some("-created_at") => {}
        Some("created_at") => keys.reverse(),
        Some("name") => keys.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
        Some("-name") => keys.sort_by(|a, b| b.name.cmp(&a.name).then(a.id.cmp(&b.id))),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid query parameter",
                format!("sort must be created_at, -created_at, name or -name, got {other:?}"),
            ))
        }
    }
    Ok(Json(KeyList {
        total: keys.len() as u64,
        keys: page.slice(&keys).iter().cloned().map(Into::into).collect(),
        page: page.page,
        limit: page.limit,
    }))
}

/// Create a key; the answer carries its token, which is never shown again.
#[utoipa::path(post, path = "/admin/keys", tag = "Keys", request_body = CreateKeyBody,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn create(
    State(s): State<Arc<AdminState>>,
    b: Body,
) -> Result<(StatusCode, super::audited::CreatedId, Json<KeyCreated>), ApiError> {
    let req: CreateKeyBody = body::json(b).await?;
    let scopes = match req.scopes {
        None => None,
        Some(ScopesInput::Text(t)) => Some(Scopes::parse(t.split(','))),
        Some(ScopesInput::List(l)) => Some(Scopes::parse(l.iter().map(String::as_str))),
    }
    .transpose()
    .map_err(|bad| {
        ApiError::bad_request(
            "invalid request",
            format!("unknown scope {bad:?}: use chat, completions, embeddings, audio, models"),
        )
    })?;
    let expires_ms = match req.expires_at {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(&t)
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid request",
                        format!("expires_at {t:?} is not an RFC 3339 time: {e}"),
                    )
                })?
                .timestamp_millis()
                .max(0) as u64,
        ),
    };
    let created =
        s.gw.identity
            .create_key(CreateKey {
                name: req.name,
                scopes,
                roles: req.roles.unwrap_or_default(),
                user_id: req.user_id,
                org_id: req.org_id,
                expires_ms,
                rpm: req.rpm,
                tpm: req.tpm,
            })
            .await?;
    refresh_cache(&s).await;
    tracing::info!(key = %created.key.id, "API key created");
    Ok((
        StatusCode::CREATED,
        super::audited::created(&created.key.id),
        Json(KeyCreated {
            key: created.key.into(),
            token: created.token,
        }),
    ))
}

/// Revoke a key: it is refused on every instance within a second (at once on this one).
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "Keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn revoke(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
) -> Result<Json<KeyView>, ApiError> {
    let key = s.gw.identity.revoke_key(&id).await?;
    refresh_cache(&s).await;
    tracing::info!(key = %id, "API key revoked");
    Ok(Json(key.into()))
}
