//! Why a lifecycle call was refused, and the status each reason answers with.

use super::service::ModelError;

/// Why a lifecycle call was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No runner is configured (409).
    #[error("{0}")]
    NoRunner(String),
    /// The model's state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// The model cannot be started as configured (400).
    #[error("{0}")]
    Unstartable(String),
    /// No engine port is free on this node (503).
    #[error("{0}")]
    Capacity(String),
    /// The node that owns the model cannot be reached (503).
    #[error("{0}")]
    NodeUnavailable(String),
    /// This process does not run the node's engines now: it waits for the process it upgrades
    /// to exit, or it is stopping (503).
    #[error("{0}")]
    HandingOver(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

pub type Result<T> = std::result::Result<T, LifecycleError>;
