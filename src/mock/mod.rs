//! A mock vLLM server: the OpenAI endpoints the gateway routes, SSE streams with configurable
//! time to first token and inter-token delay, `/health`, `/v1/models` and a vLLM-format
//! `/metrics` that moves with the load (`metrics`), vLLM's render and tokenize endpoints, and
//! the fleet simulator ([`sim`]: `MockConfig::sim`, `infergate mock --sim`), which serves as a
//! simulated GPU running vLLM. Used by the tests, the benchmarks (`infergate mock`) and the
//! demo (`infergate serve --demo`).

mod handlers;
pub mod metrics;
mod respond;
pub mod sim;

pub use sim::SimConfig;

use axum::Router;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a mock server behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Sent back in the `x-mock-server` header, so tests see who answered.
    pub name: String,
    pub models: Vec<String>,
    /// Delay before the first streamed token (and before a non-streaming answer).
    pub ttft: Duration,
    /// Delay between streamed tokens.
    pub itl: Duration,
    /// Tokens generated when the request has no `max_tokens`.
    pub default_tokens: usize,
    /// When set, inference and probes need `Authorization: Bearer <key>` (like vLLM's `--api-key`).
    pub api_key: Option<String>,
    /// KV-cache capacity in tokens (`/metrics`: its use and the prefix cache's hits; with
    /// `sim`, the simulated GPU's KV cache).
    pub kv_cache_tokens: u64,
    /// Serve as a simulated GPU running vLLM (the fleet simulator, [`sim`]) instead of with
    /// the fixed `ttft` and `itl` delays.
    pub sim: Option<SimConfig>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            name: "mock".into(),
            models: vec!["mock-model".into()],
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            default_tokens: 16,
            api_key: None,
            kv_cache_tokens: 65_536,
            sim: None,
        }
    }
}

/// Live state and controls of a mock server, shared with tests.
#[derive(Default)]
pub struct MockState {
    pub config: MockConfig,
    /// `/health` answers 503 while false.
    pub healthy: AtomicBool,
    /// When non-zero, inference answers this status.
    pub fail_status: AtomicU16,
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    /// Streams whose client went away before the last event.
    pub aborted_streams: AtomicU64,
    pub completed_streams: AtomicU64,
    pub probes: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// The last inference request's body and Authorization header.
    pub last_body: Mutex<Bytes>,
    pub last_authorization: Mutex<Option<String>>,
    pub last_path: Mutex<String>,
    /// What `/metrics` shows.
    pub metrics: Arc<metrics::MockMetrics>,
    /// The simulated GPU, when `config.sim` is set.
    pub sim: Option<sim::SimHandle>,
}

impl MockState {
    /// With `config.sim` set, this starts the simulated engine's task: call it within a Tokio
    /// runtime.
    pub fn new(config: MockConfig) -> Arc<Self> {
        let metrics = Arc::new(metrics::MockMetrics::new(config.kv_cache_tokens));
        let sim = config
            .sim
            .clone()
            .map(|s| sim::SimHandle::start(s, config.kv_cache_tokens, &config.models, &metrics));
        Arc::new(Self {
            metrics,
            sim,
            config,
            healthy: AtomicBool::new(true),
            ..Default::default()
        })
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Relaxed);
    }
}

/// The mock's routes.
pub fn router(state: Arc<MockState>) -> Router {
    handlers::router(state)
}

/// A mock server running on a Tokio runtime.
pub struct MockServer {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Bind `addr` (port 0 for a free one) and serve on the current runtime.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Self::serve(listener, config))
    }

    /// Serve on an already bound listener.
    pub fn serve(listener: tokio::net::TcpListener, config: MockConfig) -> Self {
        let addr = listener.local_addr().expect("bound listener");
        let state = MockState::new(config);
        let app = router(state.clone());
        // TCP_NODELAY, as vLLM's uvicorn sets it: small SSE events must not wait for ACKs.
        let counted = state.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
            let _ = tcp.set_nodelay(true);
            counted.connections.fetch_add(1, Relaxed);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "mock server stopped");
            }
        });
        Self { addr, state, task }
    }

    /// Base URL as a gateway's `[[servers]] url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stop serving (open connections are dropped with the task).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
