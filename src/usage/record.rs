//! One request's usage.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What one proxied request used. Strings are shared with the routing table and the key
/// cache, so building a record allocates nothing but the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unix ms when the request arrived.
    pub ts_ms: u64,
    #[serde(default)]
    pub key_id: Option<Arc<str>>,
    #[serde(default)]
    pub user_id: Option<Arc<str>>,
    #[serde(default)]
    pub org_id: Option<Arc<str>>,
    pub model: Arc<str>,
    /// The server that answered (none when no server could).
    #[serde(default)]
    pub server: Option<Arc<str>>,
    /// The status sent to the client (499: the client left first).
    pub status: u16,
    /// Arrival to last byte, milliseconds.
    pub latency_ms: f64,
    /// Streams: arrival to the first token, milliseconds.
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub stream: bool,
}

impl UsageRecord {
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}
