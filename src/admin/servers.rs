//! `GET servers`: every server of every provider with its health.

use super::error::{ApiError, ErrorBody};
use super::page::Page;
use super::{AdminState, PageParams};
use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// One inference server.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServerInfo {
    /// Provider name ("vllm", "sglang", or "speaches").
    pub provider: String,
    /// Server endpoint URL.
    pub url: String,
    /// Current health status.
    pub healthy: bool,
    /// Consecutive failed health checks.
    pub consecutive_failures: u32,
    /// Consecutive successful health checks.
    pub consecutive_successes: u32,
    /// Epoch milliseconds of the last health check (0: none yet).
    pub last_check_ms: u64,
    /// Epoch milliseconds of the last failure (0 if none).
    pub last_failure_ms: u64,
    /// Model IDs routed to this server, sorted.
    pub models: Vec<String>,
}

/// A page of servers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerInfo>,
    pub page: u64,
    pub limit: u64,
    pub total: u64,
}

/// List servers, sorted by URL.
#[utoipa::path(get, path = "/api/ai/v1/admin/servers", tag = "Server Pool Health",
    params(PageParams),
    responses(
        (status = 200, description = "A page of servers", body = ServerList),
        (status = 400, description = "Invalid query parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn list(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<ServerList>, ApiError> {
    let page = Page::from_query(q.as_deref())?;
    let all = all_servers(&s.gw);
    Ok(Json(ServerList {
        total: all.len() as u64,
        servers: page.slice(&all).to_vec(),
        page: page.page,
        limit: page.limit,
    }))
}

/// Every server of the routing table, sorted by URL, with its health and models.
pub fn all_servers(gw: &crate::gateway::Gateway) -> Vec<ServerInfo> {
    let table = gw.table.load_full();
    let mut backends: Vec<_> = table.backends().iter().collect();
    backends.sort_by(|a, b| a.id.cmp(&b.id));
    backends
        .iter()
        .map(|b| {
            let h = b.health.snapshot();
            let mut models = table.models_of(&b.id).to_vec();
            models.sort();
            ServerInfo {
                provider: b.provider.as_str().into(),
                url: b.id.to_string(),
                healthy: h.healthy,
                consecutive_failures: h.consecutive_failures,
                consecutive_successes: h.consecutive_successes,
                last_check_ms: h.last_check_ms,
                last_failure_ms: h.last_failure_ms,
                models,
            }
        })
        .collect()
}
