//! `GET affinity` (hit/miss/fallback counts per provider) and `POST affinity/clear`.

use super::error::{ApiError, ErrorBody};
use super::AdminState;
use crate::config::Provider;
use axum::body::Body;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// Longest user or model id.
const MAX_ID_LEN: usize = 256;

/// Affinity counts of one provider, summed over every instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderAffinity {
    /// Provider name.
    pub name: String,
    /// Requests routed to the server a previous request of the same user went to.
    pub session_hit_count: u64,
    /// Requests that needed a new server assignment.
    pub session_miss_count: u64,
    /// Requests whose pinned server was unusable and went elsewhere.
    pub fallback_count: u64,
    /// Session affinity time-to-live in minutes.
    pub ttl_minutes: u64,
}

/// Affinity counts of every provider that has servers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AffinityReport {
    pub providers: Vec<ProviderAffinity>,
}

/// Which affinity entries to clear.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct ClearRequest {
    /// User identifier.
    pub user_id: String,
    /// Model to scope the clear to; null or omitted clears every model of the user.
    #[serde(default)]
    pub model_id: Option<String>,
}

/// How many entries were cleared.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClearResult {
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Number of affinity entries removed.
    pub cleared: u64,
}

/// Get affinity metrics.
#[utoipa::path(get, path = "/api/ai/v1/admin/affinity", tag = "Session Affinity",
    responses(
        (status = 200, description = "Counts per provider", body = AffinityReport),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 503, description = "Valkey unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn report(State(s): State<Arc<AdminState>>) -> Result<Json<AffinityReport>, ApiError> {
    let present: Vec<Provider> = {
        let table = s.gw.table.load();
        Provider::ALL
            .into_iter()
            .filter(|p| table.backends().iter().any(|b| b.provider == *p))
            .collect()
    };
    let mut providers = Vec::with_capacity(present.len());
    for p in present {
        let c = s.gw.store.affinity_counts(p).await?;
        providers.push(ProviderAffinity {
            name: p.as_str().into(),
            session_hit_count: c.hits,
            session_miss_count: c.misses,
            fallback_count: c.fallbacks,
            ttl_minutes: s.gw.live().affinity.ttl_minutes,
        });
    }
    Ok(Json(AffinityReport { providers }))
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid request body", detail)
}

/// Parse and check a clear request.
fn parse_clear(body: &[u8]) -> Result<ClearRequest, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object"))?;
    let user_id = match obj.get("user_id") {
        Some(serde_json::Value::String(u)) => u.clone(),
        None | Some(serde_json::Value::Null) => return Err(invalid("user_id is required")),
        Some(_) => return Err(invalid("user_id must be a string")),
    };
    if user_id.is_empty() || user_id.len() > MAX_ID_LEN {
        return Err(invalid(format!("user_id must be 1 to {MAX_ID_LEN} bytes")));
    }
    let model_id = match obj.get("model_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(m)) if !m.is_empty() && m.len() <= MAX_ID_LEN => {
            Some(m.clone())
        }
        Some(serde_json::Value::String(_)) => {
            return Err(invalid(format!("model_id must be 1 to {MAX_ID_LEN} bytes")))
        }
        Some(_) => return Err(invalid("model_id must be a string or null")),
    };
    Ok(ClearRequest { user_id, model_id })
}

/// Clear affinity entries of a user (optionally one model's), on every instance.
#[utoipa::path(post, path = "/api/ai/v1/admin/affinity/clear", tag = "Session Affinity",
    request_body = ClearRequest,
    responses(
        (status = 200, description = "Entries removed", body = ClearResult),
        (status = 400, description = "Invalid request body", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 503, description = "Valkey unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn clear(
    State(s): State<Arc<AdminState>>,
    body: Body,
) -> Result<Json<ClearResult>, ApiError> {
    let bytes = super::body::bytes(body).await?;
    let req = parse_clear(&bytes)?;
    let cleared =
        s.gw.store
            .affinity_clear(&req.user_id, req.model_id.as_deref())
            .await?;
    tracing::info!(user = %req.user_id, model = ?req.model_id, cleared, "affinity cleared");
    Ok(Json(ClearResult {
        user_id: req.user_id,
        model_id: req.model_id,
        cleared: cleared as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_clear;

    #[test]
    fn clear_bodies_are_validated() {
        let ok = parse_clear(br#"{"user_id":"u","model_id":null}"#).unwrap();
        assert_eq!((ok.user_id.as_str(), ok.model_id), ("u", None));
        let ok = parse_clear(br#"{"user_id":"u","model_id":"m"}"#).unwrap();
        assert_eq!(ok.model_id.as_deref(), Some("m"));
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"user_id":""}"#,
            br#"{"user_id":5}"#,
            br#"{"user_id":"u","model_id":7}"#,
        ] {
            let e = parse_clear(bad).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{}", String::from_utf8_lossy(bad));
        }
    }
}
