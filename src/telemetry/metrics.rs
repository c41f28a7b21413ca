//! The gateway's Prometheus metrics. Handles for every (model, server) route are resolved once
//! when the routing table is built, so the hot path only touches atomics.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];

/// Result of an affinity lookup for a request that carries a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The user's entry named a healthy server that still serves the model.
    Hit,
    /// No entry.
    Miss,
    /// An entry whose server is unhealthy or gone: reassigned.
    Fallback,
}

impl AffinityOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityOutcome::Hit => "hit",
            AffinityOutcome::Miss => "miss",
            AffinityOutcome::Fallback => "fallback",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum TokenKind {
    Prompt,
    Completion,
}

/// All metrics of one gateway process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    itl: HistogramVec,
    inflight: IntGaugeVec,
    tokens: IntCounterVec,
    healthy: IntGaugeVec,
    affinity: IntCounterVec,
    retries: IntCounterVec,
    /// Client connections open now.
    pub client_connections: IntGauge,
    /// Other gateway instances whose load counts in routing now (with Valkey).
    pub load_sharing_instances: IntGauge,
    /// Client connections answered 503 at once (over `max_connections`).
    pub client_refused: IntCounter,
    /// Clients too slow, by phase (`head`, `body`).
    client_timeouts: IntCounterVec,
    /// Usage and audit records lost (queue or backlog full, or unwritten at exit), by kind.
    records_lost: IntCounterVec,
    /// Cache-aware routing: blocks of each prompt the chosen server held, by model.
    prefix_match: HistogramVec,
    /// Cache-aware routing's indexes, by model: blocks held (summed over servers), bytes,
    /// blocks dropped.
    prefix_blocks: IntGaugeVec,
    prefix_bytes: IntGaugeVec,
    prefix_evicted: IntCounterVec,
}

/// Buckets of the prefix match, in blocks (0: no match).
const MATCH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// Pre-resolved handles for one (model, server) route.
#[derive(Clone)]
pub struct RouteMetrics {
    pub ok: IntCounter,
    pub duration: prometheus::Histogram,
    pub ttft: prometheus::Histogram,
    pub itl: prometheus::Histogram,
    pub prompt_tokens: IntCounter,
    pub completion_tokens: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "infergate_requests_total",
                "Requests answered, by model, server and HTTP status (server is empty when the gateway answered itself)",
            ),
            &["model", "server", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "infergate_request_duration_seconds",
                "Time from request received to the last response byte sent",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "server"],
        )
        .expect("valid metric");
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "infergate_ttft_seconds",
                "Streaming time to first token: request received to first token-bearing event passed to the client",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
            &["model", "server"],
        )
        .expect("valid metric");
        let itl = HistogramVec::new(
            HistogramOpts::new(
                "infergate_inter_token_latency_seconds",
                "Streaming time per output token after the first, one observation per request",
            )
            .buckets(ITL_BUCKETS.to_vec()),
            &["model", "server"],
        )
        .expect("valid metric");
        let inflight = IntGaugeVec::new(
            Opts::new("infergate_server_inflight", "Requests in flight per server"),
            &["server"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "infergate_tokens_total",
                "Tokens reported by servers' usage, by model and kind (prompt, completion)",
            ),
            &["model", "kind"],
        )
        .expect("valid metric");
        let healthy = IntGaugeVec::new(
            Opts::new(
                "infergate_server_healthy",
                "1 when the server receives traffic, 0 when ejected",
            ),
            &["server", "provider"],
        )
        .expect("valid metric");
        let affinity = IntCounterVec::new(
            Opts::new(
                "infergate_affinity_total",
                "Session affinity lookups by provider and outcome (hit, miss, fallback)",
            ),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "infergate_upstream_retries_total",
                "Requests re-sent to another server after a connect failure, by the server that failed",
            ),
            &["server"],
        )
        .expect("valid metric");
        let client_connections = IntGauge::new(
            "infergate_client_connections",
            "Client connections open on the data plane",
        )
        .expect("valid metric");
        let load_sharing_instances = IntGauge::new(
            "infergate_routing_load_sharing_instances",
            "Other gateway instances whose load on the servers (requests in flight, queued prefill) counts in this one's routing now: their last snapshot through Valkey is under 500 ms old (0 without a shared store, or when no other instance is heard)",
        )
        .expect("valid metric");
        let client_refused = IntCounter::new(
            "infergate_client_connections_refused_total",
            "Client connections answered 503 at once because max_connections were open",
        )
        .expect("valid metric");
        let client_timeouts = IntCounterVec::new(
            Opts::new(
                "infergate_client_timeouts_total",
                "Clients too slow, by phase (head: header_timeout_secs; body: a pause over body_timeout_secs or under the minimum rate; both answered 408; tls: a handshake not finished within header_timeout_secs, closed)",
            ),
            &["phase"],
        )
        .expect("valid metric");
        let records_lost = IntCounterVec::new(
            Opts::new(
                "infergate_records_lost_total",
                "Usage and audit records lost, by kind: a full queue or backlog (the store refused them too long), or unwritten and unspooled at exit; each loss is also logged at error level",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let prefix_match = HistogramVec::new(
            HistogramOpts::new(
                "infergate_prefix_match_blocks",
                "Cache-aware routing: blocks of the prompt (block_bytes each) the chosen server was taken to hold, per request of a model routed by prefix (0: none)",
            )
            .buckets(MATCH_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let prefix_blocks = IntGaugeVec::new(
            Opts::new(
                "infergate_prefix_index_blocks",
                "Cache-aware routing: blocks the model's index takes its servers to hold, summed over the servers",
            ),
            &["model"],
        )
        .expect("valid metric");
        let prefix_bytes = IntGaugeVec::new(
            Opts::new(
                "infergate_prefix_index_bytes",
                "Cache-aware routing: memory of the model's index table",
            ),
            &["model"],
        )
        .expect("valid metric");
        let prefix_evicted = IntCounterVec::new(
            Opts::new(
                "infergate_prefix_index_evicted_total",
                "Cache-aware routing: blocks dropped from the model's index (a server over its cache capacity, unused for two hours, unhealthy or gone)",
            ),
            &["model"],
        )
        .expect("valid metric");
        for c in [
            Box::new(client_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(load_sharing_instances.clone()),
            Box::new(prefix_match.clone()),
            Box::new(prefix_blocks.clone()),
            Box::new(prefix_bytes.clone()),
            Box::new(prefix_evicted.clone()),
            Box::new(records_lost.clone()),
            Box::new(client_refused.clone()),
            Box::new(client_timeouts.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(ttft.clone()),
            Box::new(itl.clone()),
            Box::new(inflight.clone()),
            Box::new(tokens.clone()),
            Box::new(healthy.clone()),
            Box::new(affinity.clone()),
            Box::new(retries.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            registry,
            requests,
            duration,
            ttft,
            itl,
            inflight,
            tokens,
            healthy,
            affinity,
            retries,
            client_connections,
            load_sharing_instances,
            client_refused,
            client_timeouts,
            records_lost,
            prefix_match,
            prefix_blocks,
            prefix_bytes,
            prefix_evicted,
        }
    }

    /// The prefix-match histogram of `model` (resolved once per routing table).
    pub fn prefix_match(&self, model: &str) -> prometheus::Histogram {
        self.prefix_match.with_label_values(&[model])
    }

    /// The figures of `model`'s prefix index: blocks held and table bytes now, and `dropped`
    /// blocks since the last call.
    pub fn prefix_index(&self, model: &str, blocks: usize, bytes: usize, dropped: usize) {
        self.prefix_blocks
            .with_label_values(&[model])
            .set(blocks.min(i64::MAX as usize) as i64);
        self.prefix_bytes
            .with_label_values(&[model])
            .set(bytes.min(i64::MAX as usize) as i64);
        if dropped > 0 {
            self.prefix_evicted
                .with_label_values(&[model])
                .inc_by(dropped as u64);
        }
    }

    /// Bring the lost-records counter of `kind` up to `total` (the recorder's own count
    /// since the start), at scrape time.
    pub fn records_lost_to(&self, kind: &str, total: u64) {
        let c = self.records_lost.with_label_values(&[kind]);
        c.inc_by(total.saturating_sub(c.get()));
    }

    /// A client too slow in `phase` (`head` or `body`).
    pub fn client_timeout(&self, phase: &str) {
        self.client_timeouts.with_label_values(&[phase]).inc();
    }

    pub fn route(&self, model: &str, server: &str) -> RouteMetrics {
        RouteMetrics {
            ok: self.requests.with_label_values(&[model, server, "200"]),
            duration: self.duration.with_label_values(&[model, server]),
            ttft: self.ttft.with_label_values(&[model, server]),
            itl: self.itl.with_label_values(&[model, server]),
            prompt_tokens: self.tokens.with_label_values(&[model, "prompt"]),
            completion_tokens: self.tokens.with_label_values(&[model, "completion"]),
        }
    }

    pub fn inflight_gauge(&self, server: &str) -> IntGauge {
        self.inflight.with_label_values(&[server])
    }

    pub fn health_gauge(&self, server: &str, provider: &str) -> IntGauge {
        self.healthy.with_label_values(&[server, provider])
    }

    /// Count a request by status (for statuses other than the pre-resolved 200).
    pub fn count_request(&self, model: &str, server: &str, status: u16) {
        let mut buf = itoa::Buffer::new();
        self.requests
            .with_label_values(&[model, server, buf.format(status)])
            .inc();
    }

    pub fn affinity(&self, provider: &str, outcome: AffinityOutcome) {
        self.affinity
            .with_label_values(&[provider, outcome.as_str()])
            .inc();
    }

    pub fn affinity_count(&self, provider: &str, outcome: AffinityOutcome) -> u64 {
        self.affinity
            .with_label_values(&[provider, outcome.as_str()])
            .get()
    }

    pub fn retry(&self, server: &str) {
        self.retries.with_label_values(&[server]).inc();
    }

    /// Add metrics kept elsewhere (the engine figures of `monitoring`) to this registry, so one
    /// scrape of the gateway's `/metrics` shows them.
    pub fn register(
        &self,
        c: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
