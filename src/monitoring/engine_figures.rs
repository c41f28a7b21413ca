//! What an inference server's `/metrics` says, in one vocabulary whatever the engine: vLLM (V1
//! and the older V0 names), SGLang (`sglang:*`) and llama.cpp's llama-server (`llamacpp:*`).
//! A [`Reading`] is one scrape's cumulative figures; [`Figures`] are what a window of readings
//! shows: gauges from the newest, rates and percentiles from the difference between the newest
//! and the oldest (so a percentile describes the requests of the window, from the buckets).

use super::promtext::Page;
use crate::telemetry::histogram::Buckets;
use serde::Serialize;

/// The engine a page comes from, told by its metric names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Vllm,
    Sglang,
    Llamacpp,
    /// A page without any of the engines' names.
    Unknown,
}

/// Where each figure is read, per engine: the first name present wins.
struct Names {
    running: &'static [&'static str],
    waiting: &'static [&'static str],
    swapped: &'static [&'static str],
    kv_cache: &'static [&'static str],
    cpu_cache: &'static [&'static str],
    hit_rate: &'static [&'static str],
    prefix_queries: &'static [&'static str],
    prefix_hits: &'static [&'static str],
    prompt_tokens: &'static [&'static str],
    generation_tokens: &'static [&'static str],
    ttft: &'static [&'static str],
    itl: &'static [&'static str],
    e2e: &'static [&'static str],
}

const VLLM: Names = Names {
    running: &["vllm:num_requests_running"],
    waiting: &["vllm:num_requests_waiting"],
    swapped: &["vllm:num_requests_swapped"],
    // V1 renamed the V0 gauge.
    kv_cache: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
    cpu_cache: &["vllm:cpu_cache_usage_perc"],
    hit_rate: &["vllm:gpu_prefix_cache_hit_rate"],
    // V1 before 0.10 named them gpu_prefix_cache_*.
    prefix_queries: &[
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
    ],
    prefix_hits: &[
        "vllm:prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits_total",
    ],
    prompt_tokens: &["vllm:prompt_tokens_total"],
    generation_tokens: &["vllm:generation_tokens_total"],
    ttft: &["vllm:time_to_first_token_seconds"],
    itl: &[
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
    ],
    e2e: &["vllm:e2e_request_latency_seconds"],
};

const SGLANG: Names = Names {
    running: &["sglang:num_running_reqs"],
    waiting: &["sglang:num_queue_reqs"],
    swapped: &[],
    kv_cache: &["sglang:token_usage"],
    cpu_cache: &[],
    hit_rate: &["sglang:cache_hit_rate"],
    // Every prompt token, and those found in the radix cache.
    prefix_queries: &["sglang:prompt_tokens_total"],
    prefix_hits: &["sglang:cached_tokens_total"],
    prompt_tokens: &["sglang:prompt_tokens_total"],
    generation_tokens: &["sglang:generation_tokens_total"],
    ttft: &["sglang:time_to_first_token_seconds"],
    itl: &[
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
    ],
    e2e: &["sglang:e2e_request_latency_seconds"],
};

/// llama-server has no histograms (and, since late 2025, no KV-cache gauge: the older name is
/// read when present); its `prompt_tokens_total` counts only the tokens it had to process.
const LLAMACPP: Names = Names {
    running: &["llamacpp:requests_processing"],
    waiting: &["llamacpp:requests_deferred"],
    swapped: &[],
    kv_cache: &["llamacpp:kv_cache_usage_ratio"],
    cpu_cache: &[],
    hit_rate: &[],
    prefix_queries: &[],
    prefix_hits: &[],
    prompt_tokens: &["llamacpp:prompt_tokens_total"],
    generation_tokens: &["llamacpp:tokens_predicted_total"],
    ttft: &[],
    itl: &[],
    e2e: &[],
};

/// One scrape of one server, cumulative as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Unix ms of the scrape.
    pub at_ms: u64,
    pub engine: EngineKind,
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub swapped: Option<f64>,
    /// Fraction (0–1) of the KV cache in use, averaged over the engine's ranks.
    pub kv_cache: Option<f64>,
    pub cpu_cache: Option<f64>,
    /// A hit-rate gauge the engine computes itself (vLLM V0, SGLang).
    pub hit_rate: Option<f64>,
    pub prefix_queries: Option<f64>,
    pub prefix_hits: Option<f64>,
    pub prompt_tokens: Option<f64>,
    pub generation_tokens: Option<f64>,
    pub ttft: Option<Buckets>,
    pub itl: Option<Buckets>,
    pub e2e: Option<Buckets>,
}

impl Reading {
    pub fn from_page(page: &Page, at_ms: u64) -> Reading {
        let (engine, names) = if page.has_prefix("vllm:") {
            (EngineKind::Vllm, &VLLM)
        } else if page.has_prefix("sglang:") {
            (EngineKind::Sglang, &SGLANG)
        } else if page.has_prefix("llamacpp:") {
            (EngineKind::Llamacpp, &LLAMACPP)
        } else {
            (EngineKind::Unknown, &VLLM)
        };
        Reading {
            at_ms,
            engine,
            running: page.sum_of(names.running),
            waiting: page.sum_of(names.waiting),
            swapped: page.sum_of(names.swapped),
            kv_cache: page.mean_of(names.kv_cache),
            cpu_cache: page.mean_of(names.cpu_cache),
            hit_rate: page.mean_of(names.hit_rate),
            prefix_queries: page.sum_of(names.prefix_queries),
            prefix_hits: page.sum_of(names.prefix_hits),
            prompt_tokens: page.sum_of(names.prompt_tokens),
            generation_tokens: page.sum_of(names.generation_tokens),
            ttft: page.histogram_of(names.ttft),
            itl: page.histogram_of(names.itl),
            e2e: page.histogram_of(names.e2e),
        }
    }
}

/// Histograms of the requests a window saw (kept to merge servers into a model's figures).
#[derive(Debug, Clone, Default)]
pub struct WindowHistograms {
    pub ttft: Option<Buckets>,
    pub itl: Option<Buckets>,
    pub e2e: Option<Buckets>,
}

/// The 50th and 95th percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

impl Percentiles {
    pub fn of(b: Option<&Buckets>) -> Percentiles {
        let ms = |q| b.and_then(|b| b.quantile(q)).map(|s| s * 1000.0);
        Percentiles {
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
        }
    }
}

/// What a window of readings shows.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub swapped: Option<f64>,
    pub kv_cache: Option<f64>,
    pub cpu_cache: Option<f64>,
    /// Prefix-cache hits per query over the window (from the counters), else the engine's own
    /// gauge.
    pub prefix_hit_rate: Option<f64>,
    /// The window's prefix-cache (hits, queries), to weigh servers' rates by their queries.
    pub prefix_counts: Option<(f64, f64)>,
    pub prompt_tokens_total: Option<f64>,
    pub generation_tokens_total: Option<f64>,
    pub prompt_tokens_per_sec: Option<f64>,
    pub generation_tokens_per_sec: Option<f64>,
    /// Seconds between the window's oldest and newest readings (0: one reading).
    pub window_s: f64,
    pub histograms: WindowHistograms,
}

/// The increase of a counter over a window, step by step between consecutive readings: a drop
/// is a reset (a restarted engine counts from zero), as Prometheus' `increase` treats it, even
/// when the counter later climbs past its old value. A family a reading lacks is at zero there
/// (engines print a labelled counter once it first counts). None: no step has the counter.
fn increase(readings: &[Reading], get: fn(&Reading) -> Option<f64>) -> Option<f64> {
    readings
        .windows(2)
        .filter_map(|pair| {
            let new = get(&pair[1])?;
            let old = get(&pair[0]).unwrap_or(0.0);
            Some(if new >= old { new - old } else { new })
        })
        .reduce(|a, b| a + b)
}

/// The observations of a histogram over a window, step by step like [`increase`].
fn observed(readings: &[Reading], get: fn(&Reading) -> Option<&Buckets>) -> Option<Buckets> {
    readings
        .windows(2)
        .filter_map(|pair| {
            let new = get(&pair[1])?;
            Some(match get(&pair[0]) {
                Some(old) => new.since(old),
                None => new.clone(),
            })
        })
        .reduce(|a, b| a.add(&b))
}

impl Figures {
    /// Over `readings`, oldest first: gauges from the newest, counters and histograms from the
    /// steps between consecutive readings (one reading: no window, no rates).
    pub fn over(readings: &[Reading]) -> Option<Figures> {
        let (first, newest) = (readings.first()?, readings.last()?);
        let window_s = newest.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
        let rate = |get| {
            increase(readings, get)
                .filter(|_| window_s > 0.0)
                .map(|d| d / window_s)
        };
        let prefix_counts =
            increase(readings, |r| r.prefix_hits).zip(increase(readings, |r| r.prefix_queries));
        let counted_rate = prefix_counts.filter(|(_, q)| *q > 0.0).map(|(h, q)| h / q);
        Some(Figures {
            running: newest.running,
            waiting: newest.waiting,
            swapped: newest.swapped,
            kv_cache: newest.kv_cache,
            cpu_cache: newest.cpu_cache,
            prefix_hit_rate: counted_rate.or(newest.hit_rate),
            prefix_counts,
            prompt_tokens_total: newest.prompt_tokens,
            generation_tokens_total: newest.generation_tokens,
            prompt_tokens_per_sec: rate(|r| r.prompt_tokens),
            generation_tokens_per_sec: rate(|r| r.generation_tokens),
            window_s,
            histograms: WindowHistograms {
                ttft: observed(readings, |r| r.ttft.as_ref()),
                itl: observed(readings, |r| r.itl.as_ref()),
                e2e: observed(readings, |r| r.e2e.as_ref()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn reading(text: &str, at_ms: u64) -> Reading {
        Reading::from_page(&Page::parse(text).unwrap(), at_ms)
    }

    #[test]
    fn engines_are_told_apart_and_mapped_to_one_vocabulary() {
        let v1 = reading(
            "vllm:kv_cache_usage_perc{engine=\"0\"} 0.5\nvllm:num_requests_waiting 2\n",
            0,
        );
        assert_eq!(
            (v1.engine, v1.kv_cache, v1.waiting),
            (EngineKind::Vllm, Some(0.5), Some(2.0))
        );
        let v0 = reading(
            "vllm:gpu_cache_usage_perc 0.25\nvllm:num_requests_swapped 1\n",
            0,
        );
        assert_eq!((v0.kv_cache, v0.swapped), (Some(0.25), Some(1.0)));
        let sg = reading(
            "sglang:token_usage{tp_rank=\"0\"} 0.125\nsglang:num_queue_reqs 3\n",
            0,
        );
        assert_eq!(
            (sg.engine, sg.kv_cache, sg.waiting),
            (EngineKind::Sglang, Some(0.125), Some(3.0))
        );
        let ll = reading(
            "llamacpp:tokens_predicted_total 42\nllamacpp:requests_processing 1\n",
            0,
        );
        assert_eq!(
            (
                ll.engine,
                ll.generation_tokens,
                ll.running,
                ll.ttft.is_none()
            ),
            (EngineKind::Llamacpp, Some(42.0), Some(1.0), true)
        );
        assert_eq!(reading("up 1\n", 0).engine, EngineKind::Unknown);
    }

    #[test]
    fn rates_hit_rates_and_percentiles_come_from_the_window() {
        let a = reading(
            "vllm:prompt_tokens_total 1000\nvllm:prefix_cache_queries_total 1000\nvllm:prefix_cache_hits_total 100\n\
             vllm:e2e_request_latency_seconds_bucket{le=\"1\"} 10\nvllm:e2e_request_latency_seconds_bucket{le=\"+Inf\"} 10\n",
            10_000,
        );
        let b = reading(
            "vllm:prompt_tokens_total 3000\nvllm:prefix_cache_queries_total 2000\nvllm:prefix_cache_hits_total 900\n\
             vllm:e2e_request_latency_seconds_bucket{le=\"1\"} 10\nvllm:e2e_request_latency_seconds_bucket{le=\"+Inf\"} 20\n",
            20_000,
        );
        let f = Figures::over(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(f.window_s, 10.0);
        assert_eq!(f.prompt_tokens_per_sec, Some(200.0));
        assert_eq!(f.prefix_hit_rate, Some(0.8));
        // The 10 requests of the window were all slower than 1 s: their p50 is the highest
        // finite bound, not the lifetime's 1 s median.
        assert_eq!(
            Percentiles::of(f.histograms.e2e.as_ref()).p50_ms,
            Some(1000.0)
        );
        // Families printed only once they count start from zero.
        let empty = reading("vllm:num_requests_running 0\n", 0);
        let first = Figures::over(&[empty, b.clone()]).unwrap();
        assert_eq!(first.prompt_tokens_per_sec, Some(150.0));
        assert_eq!(first.prefix_hit_rate, Some(0.45));
        assert_eq!(first.histograms.e2e.unwrap().count, 0.0);
        let lone = Figures::over(std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            (lone.prompt_tokens_per_sec, lone.histograms.e2e.is_none()),
            (None, true)
        );
        assert_eq!(lone.prompt_tokens_total, Some(3000.0));
        assert!(Figures::over(&[]).is_none());
    }

    #[test]
    fn a_restart_inside_the_window_is_a_reset_even_when_the_counter_climbs_back() {
        let at = |q: u32, h: u32, t: u64| {
            reading(
                &format!("vllm:prefix_cache_queries_total {q}\nvllm:prefix_cache_hits_total {h}\n"),
                t,
            )
        };
        // 1000/900, a restart (100/50), then 1200/300: 1200 queries and 300 hits in the window
        // (the first and last readings alone would say 200 queries and 300 hits: 150%).
        let f =
            Figures::over(&[at(1000, 900, 0), at(100, 50, 5_000), at(1200, 300, 10_000)]).unwrap();
        assert_eq!(f.prefix_counts, Some((300.0, 1200.0)));
        assert_eq!(f.prefix_hit_rate, Some(0.25));
    }
}
