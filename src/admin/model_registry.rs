//! `GET/POST/DELETE /admin/models/registry`: the model -> server URL routes persisted in the
//! store and applied by every instance within a second.

use super::body;
use super::error::{ApiError, ErrorBody};
use super::page::{param, Page};
use super::{AdminState, PageParams};
use crate::routing::registry_sync;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One route.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Route {
    pub model: String,
    pub url: String,
    /// Where it comes from: "config" (the file; not removable here), "registry" (this API),
    /// "discovery" (the server's own /v1/models, on a registry refresh), or "lifecycle" (an
    /// engine this instance runs for a managed model; it goes when the model stops).
    pub source: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteList {
    pub routes: Vec<Route>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    pub model: String,
    /// The server's base URL including /v1 (http or https).
    pub url: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteChange {
    pub model: String,
    pub url: String,
    /// "added", "exists" or "removed".
    pub status: String,
}

/// Apply the registry on this instance now (the others follow its change event).
async fn apply_now(s: &AdminState) -> Result<(), ApiError> {
    let routes = s.gw.store.registry().await?;
    registry_sync::apply(&s.gw, routes)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(())
}

/// Every route (filter `model`), sorted by model then URL.
#[utoipa::path(get, path = "/admin/models/registry", tag = "Model Registry",
    params(PageParams, ("model" = Option<String>, Query)),
    responses((status = 200, body = RouteList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<RouteList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let model = param(q.as_deref(), "model");
    let mut routes: BTreeMap<(String, String), &'static str> = BTreeMap::new();
    if let Ok(d) = s.gw.discovered.lock() {
        for (url, models) in d.iter() {
            for m in models {
                routes.insert((m.clone(), url.clone()), "discovery");
            }
        }
    }
    for r in s.gw.store.registry().await? {
        routes.insert(r, "registry");
    }
    for r in s.gw.config_routes() {
        routes.insert(r, "config");
    }
    if let Ok(managed) = s.gw.managed.lock() {
        for r in managed.iter() {
            routes.insert((r.model.clone(), r.url.clone()), "lifecycle");
        }
    }
    let all: Vec<Route> = routes
        .into_iter()
        .filter(|((m, _), _)| model.as_ref().is_none_or(|want| want == m))
        .map(|((model, url), source)| Route {
            model,
            url,
            source: source.into(),
        })
        .collect();
    Ok(Json(RouteList {
        total: all.len() as u64,
        routes: page.slice(&all).to_vec(),
        page: page.page,
        limit: page.limit,
    }))
}

/// Add a route: persisted, applied here at once and by every instance within a second.
#[utoipa::path(post, path = "/admin/models/registry", tag = "Model Registry", request_body = RouteBody,
    responses((status = 201, body = RouteChange), (status = 200, description = "Already registered", body = RouteChange),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn add(
    State(s): State<Arc<AdminState>>,
    b: Body,
) -> Result<(StatusCode, Json<RouteChange>), ApiError> {
    let req: RouteBody = body::json(b).await?;
    let (model, url) = crate::store::checked_route(&req.model, &req.url)?;
    let existed =
        s.gw.store
            .registry()
            .await?
            .contains(&(model.clone(), url.clone()));
    s.gw.store
        .registry_add(&[(model.clone(), url.clone())])
        .await?;
    // Added on purpose: no longer a route a reload dropped.
    if let Ok(mut dropped) = s.gw.dropped_routes.lock() {
        dropped.remove(&(model.clone(), url.clone()));
    }
    apply_now(&s).await?;
    tracing::info!(%model, %url, "registry route added");
    let status = if existed { "exists" } else { "added" };
    Ok((
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(RouteChange {
            model,
            url,
            status: status.into(),
        }),
    ))
}

/// Remove a route (JSON body `{"model","url"}`, or the query parameters `model` and `url`).
#[utoipa::path(delete, path = "/admin/models/registry", tag = "Model Registry", request_body = RouteBody,
    responses((status = 200, body = RouteChange), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The route comes from the config file", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn remove(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
    b: Body,
) -> Result<Json<RouteChange>, ApiError> {
    let req = match (param(q.as_deref(), "model"), param(q.as_deref(), "url")) {
        (Some(model), Some(url)) => RouteBody { model, url },
        _ => body::json(b).await?,
    };
    let (model, url) = crate::store::checked_route(&req.model, &req.url)?;
    if s.gw.config_routes().contains(&(model.clone(), url.clone())) {
        return Err(
            ApiError::new(StatusCode::CONFLICT, "route comes from the config")
                .detail("remove it from the [[servers]] entry of the config file"),
        );
    }
    if !s.gw.store.registry_remove(&model, &url).await? {
        return Err(ApiError::not_found("route not found"));
    }
    apply_now(&s).await?;
    tracing::info!(%model, %url, "registry route removed");
    Ok(Json(RouteChange {
        model,
        url,
        status: "removed".into(),
    }))
}
