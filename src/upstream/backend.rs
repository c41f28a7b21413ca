//! A server as the data plane sees it: where to connect, what to send, and its live health and load.

use super::ServerUrl;
use crate::config::{Provider, ServerConfig};
use crate::health::{HealthPolicy, HealthState, Source, Transition};
use crate::telemetry::{now_ms, Metrics};
use arc_swap::ArcSwap;
use http::HeaderValue;
use pingora::upstreams::peer::{HttpPeer, ALPN};
use prometheus::IntGauge;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Connection settings shared by every peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

/// One upstream server.
pub struct Backend {
    /// The server's URL as configured (without a trailing slash): its identity everywhere.
    pub id: Arc<str>,
    pub provider: Provider,
    pub url: ServerUrl,
    /// `Host` header value for proxied requests.
    pub host_header: HeaderValue,
    /// `Authorization: Bearer <key>` for the server's own API key, if it has one.
    pub auth_header: Option<HeaderValue>,
    /// The resolved peer; swapped when DNS answers differently.
    pub peer: ArcSwap<HttpPeer>,
    pub health: HealthState,
    /// In-flight requests; also the `infergate_server_inflight` gauge.
    pub inflight: IntGauge,
    /// Unix ms of the last request sent to this server (0: none yet).
    pub last_use_ms: std::sync::atomic::AtomicU64,
    /// Prompt blocks this server has yet to prefill, as the `prefix` policy estimates them:
    /// each request routed by prefix adds the blocks of its prompt the server was not known to
    /// hold, and takes them back at its first token (or when the attempt ends).
    pub queued_prefill: std::sync::atomic::AtomicI64,
    /// How fast it works through that queue, learnt from its streamed answers.
    pub prefill_pace: super::prefill_pace::PrefillPace,
    /// The same load as the other gateway instances last shared it.
    pub others: super::others_load::OthersLoad,
    health_gauge: IntGauge,
    settings: PeerSettings,
}

/// Why a server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Url(#[from] super::UrlError),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("environment variable {0} (api_key_env of {1}) is not set")]
    MissingKey(String, String),
    #[error("the API key in {0} is not a valid header value")]
    BadKey(String),
}

impl Backend {
    /// Build from config. Resolves the host (blocking): call at start-up or from a blocking task.
    pub fn from_config(
        cfg: &ServerConfig,
        settings: PeerSettings,
        metrics: &Metrics,
    ) -> Result<Self, BackendError> {
        let key = Self::config_key(cfg)?.map(|k| (k, cfg.api_key_env.as_deref().unwrap_or("")));
        Self::with_key(cfg, key, settings, metrics)
    }

    /// A vLLM server of model `m` at `http://127.0.0.1:{port}/v1`, for unit tests.
    #[cfg(test)]
    pub fn for_test(port: u16) -> Arc<Self> {
        let cfg = ServerConfig {
            url: format!("http://127.0.0.1:{port}/v1"),
            provider: Provider::Vllm,
            models: vec!["m".into()],
            api_key_env: None,
        };
        let settings = PeerSettings {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
        };
        Arc::new(Self::from_config(&cfg, settings, &Metrics::new()).expect("a loopback server"))
    }

    /// The API key a config server names with `api_key_env`, read from the environment.
    pub fn config_key(cfg: &ServerConfig) -> Result<Option<String>, BackendError> {
        let Some(var) = &cfg.api_key_env else {
            return Ok(None);
        };
        let key = std::env::var(var)
            .map_err(|_| BackendError::MissingKey(var.clone(), cfg.url.clone()))?;
        HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| BackendError::BadKey(var.clone()))?;
        Ok(Some(key))
    }

    /// Whether this backend sends `key` (or no key, for `None`) as its bearer token.
    pub fn sends_key(&self, key: Option<&str>) -> bool {
        match (&self.auth_header, key) {
            (None, None) => true,
            (Some(h), Some(k)) => {
                let h = h.as_bytes();
                h.len() == 7 + k.len() && h.starts_with(b"Bearer ") && &h[7..] == k.as_bytes()
            }
            _ => false,
        }
    }

    /// Build with the server's API key given (and where it came from, for errors) rather than
    /// read from `api_key_env`: the key of an engine the gateway runs itself.
    pub fn with_key(
        cfg: &ServerConfig,
        key: Option<(String, &str)>,
        settings: PeerSettings,
        metrics: &Metrics,
    ) -> Result<Self, BackendError> {
        let url = ServerUrl::parse(&cfg.url)?;
        let addr = resolve_blocking(&url)?;
        let auth_header = match key {
            None => None,
            Some((key, source)) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| BackendError::BadKey(source.to_string()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let id: Arc<str> = cfg.url.trim_end_matches('/').into();
        let host_header = HeaderValue::from_str(&url.authority())
            .map_err(|_| super::UrlError::NoHost(cfg.url.clone()))?;
        let peer = make_peer(addr, &url, settings);
        let health_gauge = metrics.health_gauge(&id, cfg.provider.as_str());
        health_gauge.set(1);
        Ok(Self {
            inflight: metrics.inflight_gauge(&id),
            last_use_ms: Default::default(),
            queued_prefill: std::sync::atomic::AtomicI64::new(0),
            prefill_pace: Default::default(),
            others: Default::default(),
            id,
            provider: cfg.provider,
            host_header,
            auth_header,
            peer: ArcSwap::from_pointee(peer),
            health: HealthState::default(),
            health_gauge,
            settings,
            url,
        })
    }

    /// Requests in flight on this server: this instance's and, with a shared store, the other
    /// instances' as they last shared them.
    #[inline]
    pub fn load(&self) -> i64 {
        self.inflight.get() + self.others.inflight()
    }

    /// Prompt blocks this instance sent this server and it has not prefilled yet
    /// ([`Backend::queued_prefill`], never below 0).
    #[inline]
    pub fn own_prefill_queue(&self) -> i64 {
        self.queued_prefill
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0)
    }

    /// Prompt blocks sent to this server and not prefilled yet, by this instance and the
    /// others.
    #[inline]
    pub fn prefill_queue(&self) -> i64 {
        self.own_prefill_queue() + self.others.queued_prefill()
    }

    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// Count a success (probe or proxied answer).
    pub fn record_success(&self, policy: HealthPolicy, source: Source) {
        // (No clock read for a served request: only probes readmit.)
        let now = if source == Source::Probe { now_ms() } else { 0 };
        if self.health.record_success(policy, source, now) == Transition::BecameHealthy {
            self.health_gauge.set(1);
            tracing::info!(server = %self.id, "server is healthy again: readmitted");
        }
    }

    /// Count a failure (failed probe, connect error, timeout or 5xx).
    pub fn record_failure(&self, policy: HealthPolicy, source: Source, why: &str) {
        if self.health.record_failure(policy, source, now_ms()) == Transition::BecameUnhealthy {
            self.health_gauge.set(0);
            tracing::warn!(server = %self.id, reason = why, "server is unhealthy: ejected");
        }
    }

    /// Re-resolve the host (async) and swap the peer when the address changed.
    pub async fn refresh_address(&self) {
        if self.url.host.parse::<std::net::IpAddr>().is_ok() {
            return;
        }
        match tokio::net::lookup_host((self.url.host.as_str(), self.url.port)).await {
            Ok(addrs) => {
                if let Some(addr) = pick_address(addrs) {
                    if self.peer.load()._address.as_inet() != Some(&addr) {
                        tracing::info!(server = %self.id, %addr, "server address changed");
                        self.peer
                            .store(Arc::new(make_peer(addr, &self.url, self.settings)));
                    }
                }
            }
            Err(e) => tracing::warn!(server = %self.id, error = %e, "cannot resolve server"),
        }
    }
}

/// Resolve a host, preferring IPv4: servers commonly listen on 0.0.0.0 only (vLLM's default),
/// while `localhost` may resolve to ::1 first.
fn resolve_blocking(url: &ServerUrl) -> Result<SocketAddr, BackendError> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| BackendError::Resolve {
            host: url.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    pick_address(addrs).ok_or_else(|| BackendError::Resolve {
        host: url.host.clone(),
        reason: "no address".into(),
    })
}

fn pick_address(addrs: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() {
            return Some(a);
        }
        first.get_or_insert(a);
    }
    first
}

fn make_peer(addr: SocketAddr, url: &ServerUrl, s: PeerSettings) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(s.connect_timeout);
    o.total_connection_timeout = Some(s.connect_timeout * 2);
    o.idle_timeout = Some(s.pool_idle_timeout);
    o.alpn = ALPN::H1;
    o.verify_cert = true;
    o.verify_hostname = true;
    o.tcp_keepalive = None;
    peer
}
