//! Telemetry: Prometheus metrics and the stream/body scanners that measure TTFT and token usage
//! as bytes pass through.

pub mod demand;
pub mod demand_flush;
pub mod histogram;
mod metrics;
pub mod sse;
pub mod usage;

pub use metrics::{AffinityOutcome, Metrics, RouteMetrics, TokenKind};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
