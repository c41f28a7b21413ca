//! `GET/POST /admin/users`, `PATCH/DELETE /admin/users/{id}`, `GET /admin/users/lookup`.

use super::body;
use super::error::{ApiError, ErrorBody};
use super::identity_views::{LookupItem, UserView};
use super::page::{flag, param, Page};
use super::{AdminState, PageParams, PathId};
use crate::identity::{User, UserPatch};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    #[serde(default)]
    pub name: Option<String>,
    /// null clears it.
    #[serde(default, deserialize_with = "body::nullable")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    /// null moves the user out of its organization.
    #[serde(default, deserialize_with = "body::nullable")]
    #[schema(value_type = Option<String>)]
    pub org_id: Option<Option<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserDeleted {
    pub id: String,
    pub deleted: bool,
    pub keys_revoked: u64,
}

/// Users matching `org_id` and `q` (name or email contains, case-insensitive).
async fn matching(s: &AdminState, query: Option<&str>) -> Result<Vec<User>, ApiError> {
    let org = param(query, "org_id");
    let q = param(query, "q").map(|q| q.to_lowercase());
    Ok(s.gw
        .identity
        .users()
        .await?
        .into_iter()
        .filter(|u| org.as_ref().is_none_or(|o| u.org_id.as_ref() == Some(o)))
        .filter(|u| {
            q.as_ref().is_none_or(|q| {
                u.name.to_lowercase().contains(q)
                    || u.email
                        .as_ref()
                        .is_some_and(|e| e.to_lowercase().contains(q))
            })
        })
        .collect())
}

/// List users (filters `org_id`, `q`), sorted by name.
#[utoipa::path(get, path = "/admin/users", tag = "Users",
    params(PageParams, ("org_id" = Option<String>, Query), ("q" = Option<String>, Query, description = "Name or email contains")),
    responses((status = 200, body = UserList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<UserList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let all = matching(&s, q.as_deref()).await?;
    Ok(Json(UserList {
        total: all.len() as u64,
        users: page.slice(&all).iter().cloned().map(Into::into).collect(),
        page: page.page,
        limit: page.limit,
    }))
}

/// Id and name of matching users (filters `org_id`, `q`; at most `limit`, default 10).
#[utoipa::path(get, path = "/admin/users/lookup", tag = "Users",
    params(("org_id" = Option<String>, Query), ("q" = Option<String>, Query), ("limit" = Option<u64>, Query)),
    responses((status = 200, body = [LookupItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn lookup(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<LookupItem>>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    Ok(Json(
        matching(&s, q.as_deref())
            .await?
            .into_iter()
            .take(page.limit as usize)
            .map(|u| LookupItem {
                id: u.id,
                name: u.name,
            })
            .collect(),
    ))
}

/// Create a user (names are unique within an organization, case-insensitively).
#[utoipa::path(post, path = "/admin/users", tag = "Users", request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn create(
    State(s): State<Arc<AdminState>>,
    b: Body,
) -> Result<(StatusCode, super::audited::CreatedId, Json<UserView>), ApiError> {
    let req: CreateUser = body::json(b).await?;
    let user =
        s.gw.identity
            .create_user(&req.name, req.email, req.org_id)
            .await?;
    tracing::info!(user = %user.id, "user created");
    Ok((
        StatusCode::CREATED,
        super::audited::created(&user.id),
        Json(user.into()),
    ))
}

/// Change a user's name, email or organization.
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "Users", request_body = PatchUser,
    params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn patch(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
    b: Body,
) -> Result<Json<UserView>, ApiError> {
    let req: PatchUser = body::json(b).await?;
    let user =
        s.gw.identity
            .patch_user(
                &id,
                UserPatch {
                    name: req.name,
                    email: req.email,
                    org_id: req.org_id,
                },
            )
            .await?;
    super::keys::refresh_cache(&s).await;
    Ok(Json(user.into()))
}

/// Delete a user. One with live keys is refused (409) unless `cascade=true`, which revokes
/// them.
#[utoipa::path(delete, path = "/admin/users/{id}", tag = "Users",
    params(("id" = String, Path), ("cascade" = Option<bool>, Query)),
    responses((status = 200, body = UserDeleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn delete(
    State(s): State<Arc<AdminState>>,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<UserDeleted>, ApiError> {
    let cascade = flag(q.as_deref(), "cascade")?;
    let keys = s.gw.identity.delete_user(&id, cascade).await?;
    super::keys::refresh_cache(&s).await;
    tracing::info!(user = %id, keys, "user deleted");
    Ok(Json(UserDeleted {
        id,
        deleted: true,
        keys_revoked: keys as u64,
    }))
}
