//! The mock's `/metrics`, in vLLM V1's names, labels and bucket bounds, moved by the load it
//! serves: requests running, KV-cache use (the tokens of running requests against a capacity),
//! prefix-cache queries and hits (prompts cut into blocks, remembered until the capacity is
//! used), token counters, and TTFT, inter-token and end-to-end histograms of what it did.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// vLLM V1's bucket bounds (`vllm/v1/metrics/loggers.py`).
const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// Tokens of one prefix-cache block (vLLM's default block size).
const BLOCK_TOKENS: u64 = 16;
/// Bytes of prompt per token (the mock's tokenizer: 4 bytes a token).
const BYTES_PER_TOKEN: usize = 4;

/// The mock's metrics.
pub struct MockMetrics {
    registry: Registry,
    running: GaugeVec,
    waiting: GaugeVec,
    kv_cache: GaugeVec,
    prefix_queries: IntCounterVec,
    prefix_hits: IntCounterVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
    success: IntCounterVec,
    ttft: HistogramVec,
    itl: HistogramVec,
    e2e: HistogramVec,
    /// The simulator's only (`sim`): requests preempted, and time spent waiting.
    preemptions: IntCounterVec,
    queue_time: HistogramVec,
    /// Tokens held by running requests (prompt + generated so far, at most the request's max).
    held_tokens: AtomicU64,
    /// The KV cache's capacity in tokens.
    capacity_tokens: u64,
    /// Hashes of the prompt blocks seen (chained: a block's hash covers everything before it).
    blocks: Mutex<HashSet<u64>>,
}

const LABELS: &[&str] = &["model_name", "engine"];

impl Default for MockMetrics {
    fn default() -> Self {
        Self::new(65_536)
    }
}

impl MockMetrics {
    pub fn new(capacity_tokens: u64) -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), LABELS).expect("valid metric")
        };
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), LABELS).expect("valid metric")
        };
        let histogram = |name: &str, help: &str, b: &[f64]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), LABELS)
                .expect("valid metric")
        };
        let m = MockMetrics {
            running: gauge(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            ),
            waiting: gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            ),
            kv_cache: gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            ),
            prefix_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
            ),
            prefix_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
            ),
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
            ),
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            ),
            success: IntCounterVec::new(
                Opts::new(
                    "vllm:request_success_total",
                    "Count of successfully processed requests.",
                ),
                &["model_name", "engine", "finished_reason"],
            )
            .expect("valid metric"),
            ttft: histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT,
            ),
            itl: histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                ITL,
            ),
            e2e: histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                E2E,
            ),
            preemptions: counter(
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
            ),
            queue_time: histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                E2E,
            ),
            held_tokens: AtomicU64::new(0),
            capacity_tokens: capacity_tokens.max(BLOCK_TOKENS),
            blocks: Mutex::new(HashSet::new()),
            registry,
        };
        let all: [Box<dyn prometheus::core::Collector>; 13] = [
            Box::new(m.running.clone()),
            Box::new(m.waiting.clone()),
            Box::new(m.kv_cache.clone()),
            Box::new(m.prefix_queries.clone()),
            Box::new(m.prefix_hits.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generation_tokens.clone()),
            Box::new(m.success.clone()),
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.queue_time.clone()),
        ];
        for c in all {
            m.registry.register(c).expect("unique metric");
        }
        m
    }

    /// A request starts: it is running, holds its prompt's tokens, and asks the prefix cache.
    pub fn start(self: &Arc<Self>, model: &str, prompt: &[u8], prompt_tokens: u64) -> Running {
        let l = &[model, "0"];
        self.running.with_label_values(l).inc();
        self.waiting.with_label_values(l).set(0.0);
        self.prefix_queries
            .with_label_values(l)
            .inc_by(prompt_tokens);
        self.prefix_hits
            .with_label_values(l)
            .inc_by(self.cached_tokens(prompt).min(prompt_tokens));
        self.hold(model, prompt_tokens as i64);
        Running {
            m: self.clone(),
            model: model.to_string(),
            prompt_tokens,
            generated: 0,
            started: std::time::Instant::now(),
            last_token: None,
        }
    }

    fn hold(&self, model: &str, tokens: i64) {
        let held = if tokens >= 0 {
            self.held_tokens.fetch_add(tokens as u64, Relaxed) + tokens as u64
        } else {
            let t = tokens.unsigned_abs();
            self.held_tokens.fetch_sub(t, Relaxed).saturating_sub(t)
        };
        self.kv_cache
            .with_label_values(&[model, "0"])
            .set((held as f64 / self.capacity_tokens as f64).min(1.0));
    }

    /// Tokens of `prompt`'s leading blocks already seen; remembers its blocks (forgetting
    /// every block once the cache's capacity is used, as a full cache evicts).
    fn cached_tokens(&self, prompt: &[u8]) -> u64 {
        let Ok(mut blocks) = self.blocks.lock() else {
            return 0;
        };
        let block_bytes = BLOCK_TOKENS as usize * BYTES_PER_TOKEN;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let (mut hits, mut missed) = (0, false);
        for block in prompt.chunks_exact(block_bytes) {
            block.hash(&mut h);
            let key = h.finish();
            if !missed && blocks.contains(&key) {
                hits += BLOCK_TOKENS;
            } else {
                missed = true;
                if blocks.len() as u64 * BLOCK_TOKENS >= self.capacity_tokens {
                    blocks.clear();
                }
                blocks.insert(key);
            }
        }
        hits
    }

    /// `model`'s series, resolved once: the simulator moves them every step and sets the
    /// gauges itself (the request-scoped accounting of [`MockMetrics::start`] is not used).
    pub(crate) fn series(&self, model: &str) -> ModelSeries {
        let l = &[model, "0"];
        ModelSeries {
            running: self.running.with_label_values(l),
            waiting: self.waiting.with_label_values(l),
            kv_cache: self.kv_cache.with_label_values(l),
            prefix_queries: self.prefix_queries.with_label_values(l),
            prefix_hits: self.prefix_hits.with_label_values(l),
            prompt_tokens: self.prompt_tokens.with_label_values(l),
            generation_tokens: self.generation_tokens.with_label_values(l),
            success: self.success.with_label_values(&[model, "0", "length"]),
            preemptions: self.preemptions.with_label_values(l),
            ttft: self.ttft.with_label_values(l),
            itl: self.itl.with_label_values(l),
            e2e: self.e2e.with_label_values(l),
            queue_time: self.queue_time.with_label_values(l),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One model's series (labels `model_name`, `engine="0"`), as the simulator moves them.
#[derive(Clone)]
pub(crate) struct ModelSeries {
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_cache: Gauge,
    /// In tokens, as vLLM V1 counts them: a request's prompt tokens, and those found cached.
    pub prefix_queries: IntCounter,
    pub prefix_hits: IntCounter,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    /// `finished_reason="length"`: the simulator always generates `max_tokens`.
    pub success: IntCounter,
    pub preemptions: IntCounter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
}

/// One running request's measurements; dropping it ends the request (a dropped stream is not
/// a success).
pub struct Running {
    m: Arc<MockMetrics>,
    model: String,
    prompt_tokens: u64,
    generated: u64,
    started: std::time::Instant,
    last_token: Option<std::time::Instant>,
}

impl Running {
    /// A token was produced now.
    pub fn token(&mut self) {
        let now = std::time::Instant::now();
        let l = &[self.model.as_str(), "0"];
        match self.last_token {
            None => self
                .m
                .ttft
                .with_label_values(l)
                .observe(now.duration_since(self.started).as_secs_f64()),
            Some(t) => self
                .m
                .itl
                .with_label_values(l)
                .observe(now.duration_since(t).as_secs_f64()),
        }
        self.last_token = Some(now);
        self.generated += 1;
        self.m.hold(&self.model, 1);
    }

    /// `n` tokens were produced over `took` (a non-streamed answer: TTFT is its first token's).
    pub fn tokens(&mut self, n: u64, ttft: Duration, itl: Duration) {
        let l = &[self.model.as_str(), "0"];
        if n > 0 {
            self.m.ttft.with_label_values(l).observe(ttft.as_secs_f64());
            for _ in 1..n {
                self.m.itl.with_label_values(l).observe(itl.as_secs_f64());
            }
        }
        self.generated += n;
        self.m.hold(&self.model, n as i64);
    }

    /// The request finished with all its tokens.
    pub fn finish(self) {
        let l = &[self.model.as_str(), "0"];
        self.m
            .success
            .with_label_values(&[self.model.as_str(), "0", "length"])
            .inc();
        self.m
            .e2e
            .with_label_values(l)
            .observe(self.started.elapsed().as_secs_f64());
        self.m
            .generation_tokens
            .with_label_values(l)
            .inc_by(self.generated);
        self.m
            .prompt_tokens
            .with_label_values(l)
            .inc_by(self.prompt_tokens);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.m
            .running
            .with_label_values(&[self.model.as_str(), "0"])
            .dec();
        self.m
            .hold(&self.model, -((self.prompt_tokens + self.generated) as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitoring::engine_figures::{EngineKind, Reading};
    use crate::monitoring::promtext::Page;

    #[test]
    fn the_page_moves_with_the_load_and_reads_as_vllm() {
        let m = Arc::new(MockMetrics::new(1024));
        let prompt = vec![b'a'; 640]; // 10 blocks of 16 tokens
        let mut r = m.start("m", &prompt, 160);
        r.tokens(4, Duration::from_millis(30), Duration::from_millis(5));
        let during = Reading::from_page(&Page::parse(&m.render()).unwrap(), 0);
        assert_eq!(
            (during.engine, during.running),
            (EngineKind::Vllm, Some(1.0))
        );
        assert_eq!(during.kv_cache, Some(164.0 / 1024.0));
        r.finish();
        // The same prompt again: every block is a hit.
        m.start("m", &prompt, 160).finish();
        let after = Reading::from_page(&Page::parse(&m.render()).unwrap(), 0);
        assert_eq!((after.running, after.kv_cache), (Some(0.0), Some(0.0)));
        assert_eq!(
            (after.prefix_queries, after.prefix_hits),
            (Some(320.0), Some(160.0))
        );
        assert_eq!(
            (after.prompt_tokens, after.generation_tokens),
            (Some(320.0), Some(4.0))
        );
        let ttft = after.ttft.unwrap();
        assert_eq!(ttft.count, 1.0);
        assert_eq!(after.itl.unwrap().count, 3.0);
        assert_eq!(after.e2e.unwrap().count, 2.0);
    }
}
