//! One admin change.

use serde::{Deserialize, Serialize};

/// How a change ended: `success` (a status below 400) or `failure` (refused or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn of(status: u16) -> Self {
        if status < 400 {
            Self::Success
        } else {
            Self::Failure
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            _ => None,
        }
    }
}

/// What one admin change was. Never holds a secret: the actor is the credential's api_key
/// (or the API key's id), the path is the route's template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix ms when the answer was sent.
    pub ts_ms: u64,
    /// Who: the `api_key` of the admin credential, or the id of the API key, that called.
    pub actor: String,
    /// What, e.g. `key.create`, `registry.remove`, `config.reload` (see [`super::actions`]).
    pub action: String,
    /// The id or name acted on (none for changes of the whole gateway).
    #[serde(default)]
    pub target: Option<String>,
    pub outcome: Outcome,
    /// The HTTP status of the answer.
    pub status: u16,
    /// For a failure: the error message (the answer's `x-error`).
    #[serde(default)]
    pub error: Option<String>,
    /// For a failure: the answer's `x-error-id` (the same id is in the gateway's log).
    #[serde(default)]
    pub error_id: Option<String>,
    /// The HTTP method and the route's template, e.g. `DELETE /admin/keys/{id}`.
    pub method: String,
    pub path: String,
    /// The caller's address (the TCP peer).
    #[serde(default)]
    pub address: Option<String>,
}
