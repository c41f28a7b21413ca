//! What the lifecycle reports about one model, the same through every instance: its readiness
//! and its engine's logs (read on the node that runs it).

use super::diagnose::{Finding, Summary};
use super::record::ModelState;
use serde::{Deserialize, Serialize};

/// Whether a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessStatus {
    Ready,
    Loading,
    Stopped,
    Failed,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`, `loading`, `stopped` or `failed`.
    pub status: ReadinessStatus,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Logs {
    pub state: ModelState,
    /// The node whose engine wrote them (the node it runs or last ran on).
    #[serde(default)]
    pub node: Option<String>,
    /// The engine's last output lines, oldest first (with the gateway's own notes, prefixed
    /// `infergate:`).
    pub lines: Vec<String>,
    /// With `diagnose=true`: every known problem found in the whole kept log, most severe first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Vec<Finding>>,
    /// With `diagnose=true`: what the engine reported of its startup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}
