//! The configuration the gateway runs with, and where it came from: what a reload replaces.

use super::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// One applied configuration.
#[derive(Debug, Clone)]
pub struct Running {
    pub config: Arc<Config>,
    /// 1 at start, one more per reload that applied.
    pub version: u64,
    /// SHA-256 (hex) of the file's bytes as read; empty without a file (`--demo`).
    pub sha256: String,
    /// Unix ms when it was read.
    pub loaded_ms: u64,
    /// The file (None: `--demo`, which has none to read again).
    pub path: Option<PathBuf>,
    /// Settings whose new values in the file wait for a restart (`table.key`).
    pub pending_restart: Vec<String>,
}

impl Running {
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            version: 1,
            sha256: String::new(),
            loaded_ms: crate::telemetry::now_ms(),
            path: None,
            pending_restart: Vec::new(),
        }
    }
}
