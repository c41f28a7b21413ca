//! A node's heartbeat: what it says of itself every [`BEAT_EVERY`], and how long ago a node
//! last said it.

use crate::telemetry::now_ms;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often a node says it is alive and checks the records against its engines.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);

/// What a node says of itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Beat {
    /// Unix ms of this heartbeat.
    pub at_ms: u64,
    /// Unix ms the instance started.
    pub started_ms: u64,
    /// `none`, `process` or `docker`.
    pub runner: String,
    /// Engines it runs.
    pub engines: usize,
    pub version: String,
}

/// How long ago `node` sent its last heartbeat (`None`: never, or unreadable).
pub fn last_seen(beats: &[(String, Vec<u8>)], node: &str) -> Option<Duration> {
    let (_, info) = beats.iter().find(|(n, _)| n == node)?;
    let beat: Beat = serde_json::from_slice(info).ok()?;
    Some(Duration::from_millis(now_ms().saturating_sub(beat.at_ms)))
}
