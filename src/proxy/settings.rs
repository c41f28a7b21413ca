//! The data plane's settings, copied out of the running configuration (again after a reload).

use crate::gateway::Gateway;
use std::time::Duration;

/// Longest wait for a write to a client to progress.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of the data plane, copied out of the running configuration (again after a
/// reload: [`super::ProxyApp::settings`]).
pub(super) struct Settings {
    /// The configuration version they come from.
    pub version: u64,
    pub max_body: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_retries: usize,
    pub retry_after_secs: u64,
    pub pool_idle_timeout: Duration,
    pub pool_size: usize,
    pub client_read_buffer: usize,
    pub client_limits: super::h1::client::ClientLimits,
    pub keepalive: Duration,
    pub max_connections: usize,
    /// `[auth] proxy = "required"`.
    pub auth_required: bool,
    /// How passive failures move a server's health (`[health]` thresholds).
    pub policy: crate::health::HealthPolicy,
    /// When a model routes by prefix: the prompt's block size and most blocks hashed as the
    /// body is read (`[routing] block_bytes`, `max_blocks`).
    pub prefix_chain: Option<(usize, usize)>,
}

impl Settings {
    /// From the running configuration; what only a restart changes (the pool, the read
    /// buffer) from the one the process started with.
    pub(super) fn new(gw: &Gateway) -> Self {
        let version = gw.config_version();
        let live = gw.live();
        let (p, started) = (&live.proxy, &gw.config.proxy);
        Self {
            version,
            max_body: p.max_body_bytes,
            read_timeout: Duration::from_secs(p.read_timeout_secs),
            write_timeout: Duration::from_secs(p.write_timeout_secs),
            max_retries: p.max_retries,
            retry_after_secs: p.retry_after_secs,
            pool_idle_timeout: Duration::from_millis(started.pool_idle_timeout_ms),
            pool_size: started.pool_size,
            client_read_buffer: started.client_read_buffer_bytes,
            client_limits: super::h1::client::ClientLimits {
                header: Duration::from_secs(p.header_timeout_secs),
                body_pause: Duration::from_secs(p.body_timeout_secs),
                body_min_rate: p.body_min_rate_bytes_per_sec,
                write: CLIENT_WRITE_TIMEOUT,
            },
            keepalive: Duration::from_secs(p.keepalive_timeout_secs),
            max_connections: p.max_connections,
            auth_required: live.auth.proxy == crate::config::ProxyAuth::Required,
            policy: crate::health::HealthPolicy::from(&live.health),
            prefix_chain: live
                .routing
                .any_prefix()
                .then_some((live.routing.block_bytes, live.routing.max_blocks)),
        }
    }
}
