//! `GET/POST /admin/orgs`, `PATCH/DELETE /admin/orgs/{id}`, `GET /admin/orgs/lookup`.

use super::body;
use super::error::{ApiError, ErrorBody};
use super::identity_views::{LookupItem, OrgView};
use super::page::{flag, param, Page};
use super::{AdminState, PageParams, PathId};
use crate::identity::OrgPatch;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchOrg {
    #[serde(default)]
    pub name: Option<String>,
    /// null clears it.
    #[serde(default, deserialize_with = "body::nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgList {
    pub orgs: Vec<OrgView>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgDeleted {
    pub id: String,
    pub deleted: bool,
    pub users_deleted: u64,
    pub keys_revoked: u64,
}

fn matches(q: &Option<String>, text: &str) -> bool {
    q.as_ref()
        .is_none_or(|q| text.to_lowercase().contains(&q.to_lowercase()))
}

/// List organizations (filter `q`: name contains, case-insensitive), sorted by name.
#[utoipa::path(get, path = "/admin/orgs", tag = "Organizations",
    params(PageParams, ("q" = Option<String>, Query, description = "Name contains")),
    responses((status = 200, body = OrgList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<OrgList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let text = param(q.as_deref(), "q");
    let all: Vec<_> =
        s.gw.identity
            .orgs()
            .await?
            .into_iter()
            .filter(|o| matches(&text, &o.name))
            .collect();
    Ok(Json(OrgList {
        total: all.len() as u64,
        orgs: page.slice(&all).iter().cloned().map(Into::into).collect(),
        page: page.page,
        limit: page.limit,
    }))
}

/// Id and name of organizations whose name contains `q` (at most `limit`, default 10).
#[utoipa::path(get, path = "/admin/orgs/lookup", tag = "Organizations",
    params(("q" = Option<String>, Query, description = "Name contains"), ("limit" = Option<u64>, Query, description = "At most this many (default 10, max 100)")),
    responses((status = 200, body = [LookupItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn lookup(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<LookupItem>>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let text = param(q.as_deref(), "q");
    Ok(Json(
        s.gw.identity
            .orgs()
            .await?
            .into_iter()
            .filter(|o| matches(&text, &o.name))
            .take(page.limit as usize)
            .map(|o| LookupItem {
                id: o.id,
                name: o.name,
            })
            .collect(),
    ))
}

/// Create an organization (names are unique, case-insensitively).
#[utoipa::path(post, path = "/admin/orgs", tag = "Organizations", request_body = CreateOrg,
    responses((status = 201, body = OrgView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn create(
    State(s): State<Arc<AdminState>>,
    b: Body,
) -> Result<(StatusCode, super::audited::CreatedId, Json<OrgView>), ApiError> {
    let req: CreateOrg = body::json(b).await?;
    let org = s.gw.identity.create_org(&req.name, req.description).await?;
    tracing::info!(org = %org.id, "organization created");
    Ok((
        StatusCode::CREATED,
        super::audited::created(&org.id),
        Json(org.into()),
    ))
}

/// Change an organization's name or description.
#[utoipa::path(patch, path = "/admin/orgs/{id}", tag = "Organizations", request_body = PatchOrg,
    params(("id" = String, Path)),
    responses((status = 200, body = OrgView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn patch(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
    b: Body,
) -> Result<Json<OrgView>, ApiError> {
    let req: PatchOrg = body::json(b).await?;
    let org =
        s.gw.identity
            .patch_org(
                &id,
                OrgPatch {
                    name: req.name,
                    description: req.description,
                },
            )
            .await?;
    Ok(Json(org.into()))
}

/// Delete an organization. One with users or live keys is refused (409) unless
/// `cascade=true`, which deletes its users and revokes their keys and its own.
#[utoipa::path(delete, path = "/admin/orgs/{id}", tag = "Organizations",
    params(("id" = String, Path), ("cascade" = Option<bool>, Query)),
    responses((status = 200, body = OrgDeleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn delete(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<OrgDeleted>, ApiError> {
    let cascade = flag(q.as_deref(), "cascade")?;
    let (users, keys) = s.gw.identity.delete_org(&id, cascade).await?;
    super::keys::refresh_cache(&s).await;
    tracing::info!(org = %id, users, keys, "organization deleted");
    Ok(Json(OrgDeleted {
        id,
        deleted: true,
        users_deleted: users as u64,
        keys_revoked: keys as u64,
    }))
}
