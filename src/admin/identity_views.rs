//! How organizations, users and keys look in the admin API (times ISO 8601; never a secret).

use crate::identity::{ApiKey, IdentityError, Org, User};
use crate::telemetry::now_ms;
use serde::Serialize;

use super::error::ApiError;
use axum::http::StatusCode;

/// Unix ms as ISO 8601 UTC.
pub fn iso(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Org> for OrgView {
    fn from(o: Org) -> Self {
        Self {
            id: o.id,
            name: o.name,
            description: o.description,
            created_at: iso(o.created_ms),
            updated_at: iso(o.updated_ms),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub org_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            name: u.name,
            email: u.email,
            org_id: u.org_id,
            created_at: iso(u.created_ms),
            updated_at: iso(u.updated_ms),
        }
    }
}

/// An API key without its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: Option<String>,
    /// Data-plane scopes: chat, completions, embeddings, audio, models.
    pub scopes: Vec<String>,
    /// Admin roles (e.g. ai_admin).
    pub roles: Vec<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub expires_at: Option<String>,
    /// Requests per minute (null: unlimited).
    pub rpm: Option<u64>,
    /// Tokens per minute (null: unlimited).
    pub tpm: Option<u64>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// "active", "revoked" or "expired".
    pub status: String,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        let status = if k.revoked_ms.is_some() {
            "revoked"
        } else if k.expires_ms.is_some_and(|t| t <= now_ms()) {
            "expired"
        } else {
            "active"
        };
        Self {
            status: status.into(),
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            roles: k.roles,
            user_id: k.user_id,
            org_id: k.org_id,
            expires_at: k.expires_ms.map(iso),
            rpm: k.rpm,
            tpm: k.tpm,
            created_at: iso(k.created_ms),
            revoked_at: k.revoked_ms.map(iso),
        }
    }
}

/// An (id, name) pair for select inputs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LookupItem {
    pub id: String,
    pub name: String,
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Invalid(d) => ApiError::bad_request("invalid request", d),
            IdentityError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            IdentityError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict").detail(d),
            IdentityError::Corrupt(d) => ApiError::internal(d),
            IdentityError::Store(e) => e.into(),
        }
    }
}
