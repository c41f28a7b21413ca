//! `GET /admin/upstreams` (health snapshots of every server and the model registry) and
//! `POST /admin/upstreams/refresh-health` (probe every server now; answer the fresh results).

use super::error::{ApiError, ErrorBody};
use super::servers::{all_servers, ServerInfo};
use super::AdminState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every server's health, and which servers serve each model.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Upstreams {
    /// Sorted by URL.
    pub upstreams: Vec<ServerInfo>,
    /// Model -> server URLs (sorted), as routed now.
    pub registry: BTreeMap<String, Vec<String>>,
}

fn snapshot(s: &AdminState) -> Upstreams {
    let upstreams = all_servers(&s.gw);
    let mut registry: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in &upstreams {
        for m in &u.models {
            registry.entry(m.clone()).or_default().push(u.url.clone());
        }
    }
    Upstreams {
        upstreams,
        registry,
    }
}

/// Health snapshots of every server and the model registry.
#[utoipa::path(get, path = "/admin/upstreams", tag = "Upstreams",
    responses((status = 200, body = Upstreams), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn get(State(s): State<Arc<AdminState>>) -> Result<Json<Upstreams>, ApiError> {
    Ok(Json(snapshot(&s)))
}

/// Probe every server now (one round, each within `[health] timeout_ms`) and answer the
/// fresh results.
#[utoipa::path(post, path = "/admin/upstreams/refresh-health", tag = "Upstreams",
    responses((status = 200, body = Upstreams), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn refresh_health(State(s): State<Arc<AdminState>>) -> Result<Json<Upstreams>, ApiError> {
    s.prober.probe_all().await;
    Ok(Json(snapshot(&s)))
}
