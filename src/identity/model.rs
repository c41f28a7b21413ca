//! The stored identity documents (JSON in the store). Times are Unix milliseconds.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Org {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl User {
    /// Names are unique within an organization (or among users without one), case-insensitively.
    pub fn unique_name(org_id: Option<&str>, name: &str) -> String {
        format!("{}\u{1f}{}", org_id.unwrap_or(""), name.to_lowercase())
    }
}

impl Org {
    pub fn unique_name(name: &str) -> String {
        name.to_lowercase()
    }
}

/// An API key. Only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// Requests per minute (None: unlimited).
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute (None: unlimited).
    #[serde(default)]
    pub tpm: Option<u64>,
    pub created_ms: u64,
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}
