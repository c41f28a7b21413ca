//! The engines' figures on the gateway's own `/metrics` (`infergate_engine_*`, by server), so
//! one Prometheus scrape of the gateway sees the whole fleet. Set after each scrape round; a
//! server that leaves the routing table leaves the exposition.

use super::engine_figures::Percentiles;
use super::engines::ServerState;
use crate::telemetry::Metrics;
use prometheus::{GaugeVec, Opts};
use std::collections::HashSet;
use std::sync::Mutex;

/// The `quantile` label values of the percentile gauges.
const QUANTILES: [&str; 2] = ["0.5", "0.95"];

/// Gauges labelled by server (and quantile for percentiles).
pub struct EngineGauges {
    up: GaugeVec,
    scrape_seconds: GaugeVec,
    running: GaugeVec,
    waiting: GaugeVec,
    kv_cache: GaugeVec,
    hit_rate: GaugeVec,
    prompt_rate: GaugeVec,
    generation_rate: GaugeVec,
    ttft: GaugeVec,
    itl: GaugeVec,
    e2e: GaugeVec,
    /// Servers with series, to remove those that left.
    shown: Mutex<HashSet<String>>,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl EngineGauges {
    /// Create the gauges and add them to the gateway's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let s = &["server"];
        let q = &["server", "quantile"];
        let g = EngineGauges {
            up: gauge("infergate_engine_scrape_up", "1 when the server's last /metrics scrape succeeded, 0 when it failed", s),
            scrape_seconds: gauge("infergate_engine_scrape_duration_seconds", "How long the server's last /metrics scrape took", s),
            running: gauge("infergate_engine_requests_running", "Requests the engine is running (summed over its ranks)", s),
            waiting: gauge("infergate_engine_requests_waiting", "Requests queued in the engine", s),
            kv_cache: gauge("infergate_engine_kv_cache_usage", "Fraction (0-1) of the engine's KV cache in use", s),
            hit_rate: gauge("infergate_engine_prefix_cache_hit_rate", "Prefix-cache hits per query over the last 5 minutes (0-1)", s),
            prompt_rate: gauge("infergate_engine_prompt_tokens_per_second", "Prompt tokens the engine processed per second over the last 5 minutes", s),
            generation_rate: gauge("infergate_engine_generation_tokens_per_second", "Tokens the engine generated per second over the last 5 minutes", s),
            ttft: gauge("infergate_engine_ttft_seconds", "Engine time to first token over the last 5 minutes, by quantile (0.5, 0.95), from its histogram", q),
            itl: gauge("infergate_engine_inter_token_latency_seconds", "Engine inter-token latency over the last 5 minutes, by quantile", q),
            e2e: gauge("infergate_engine_request_latency_seconds", "Engine end-to-end request latency over the last 5 minutes, by quantile", q),
            shown: Mutex::new(HashSet::new()),
        };
        for c in g.all() {
            if let Err(e) = metrics.register(Box::new(c.clone())) {
                tracing::warn!(error = %e, "engine gauges not exported");
            }
        }
        g
    }

    /// Every gauge: the eight labelled by server, then the three by server and quantile.
    fn all(&self) -> [&GaugeVec; 11] {
        [
            &self.up,
            &self.scrape_seconds,
            &self.running,
            &self.waiting,
            &self.kv_cache,
            &self.hit_rate,
            &self.prompt_rate,
            &self.generation_rate,
            &self.ttft,
            &self.itl,
            &self.e2e,
        ]
    }

    /// Show `states` (every server scraped this round) and drop the others.
    pub fn show(&self, states: &[ServerState]) {
        let Ok(mut shown) = self.shown.lock() else {
            return;
        };
        let now: HashSet<String> = states.iter().map(|s| s.server.to_string()).collect();
        for gone in shown.difference(&now) {
            for g in &self.all()[..8] {
                let _ = g.remove_label_values(&[gone.as_str()]);
            }
            for g in &self.all()[8..] {
                for q in QUANTILES {
                    let _ = g.remove_label_values(&[gone.as_str(), q]);
                }
            }
        }
        for s in states {
            self.show_one(s);
        }
        *shown = now;
    }

    fn show_one(&self, s: &ServerState) {
        let server = &*s.server;
        let set = |g: &GaugeVec, v: Option<f64>| match v {
            Some(v) => g.with_label_values(&[server]).set(v),
            None => {
                let _ = g.remove_label_values(&[server]);
            }
        };
        set(&self.up, Some(if s.error.is_none() { 1.0 } else { 0.0 }));
        set(&self.scrape_seconds, Some(s.took.as_secs_f64()));
        // Figures are shown while they are current: a server that stopped answering has only
        // its up and duration series.
        let f = s.figures.as_ref().filter(|_| s.error.is_none());
        set(&self.running, f.and_then(|f| f.running));
        set(&self.waiting, f.and_then(|f| f.waiting));
        set(&self.kv_cache, f.and_then(|f| f.kv_cache));
        set(&self.hit_rate, f.and_then(|f| f.prefix_hit_rate));
        set(&self.prompt_rate, f.and_then(|f| f.prompt_tokens_per_sec));
        set(
            &self.generation_rate,
            f.and_then(|f| f.generation_tokens_per_sec),
        );
        let quantiles = |g: &GaugeVec, p: Percentiles| {
            for (q, v) in QUANTILES.into_iter().zip([p.p50_ms, p.p95_ms]) {
                match v {
                    Some(ms) => g.with_label_values(&[server, q]).set(ms / 1000.0),
                    None => {
                        let _ = g.remove_label_values(&[server, q]);
                    }
                }
            }
        };
        let h = f.map(|f| &f.histograms);
        quantiles(&self.ttft, Percentiles::of(h.and_then(|h| h.ttft.as_ref())));
        quantiles(&self.itl, Percentiles::of(h.and_then(|h| h.itl.as_ref())));
        quantiles(&self.e2e, Percentiles::of(h.and_then(|h| h.e2e.as_ref())));
    }
}
