//! The fleet simulator (`infergate mock --sim`, issue 16): the mock answers as one GPU running
//! vLLM V1 would, in real time, so that routing policies can be compared on a laptop.
//!
//! - [`tokens`]: the tokenizer (4 bytes a token) and chat template, and the prompt's chained
//!   block hashes;
//! - [`kv_cache`]: a KV cache of a fixed number of blocks with prefix caching and LRU eviction
//!   of freed blocks, as vLLM's block pool;
//! - [`engine`]: the step loop, continuous batching with chunked prefill and preemption;
//! - `serve`: the HTTP side (generation, and vLLM's `/render` endpoints).
//!
//! The model, its parameters and their defaults are in `docs/fleet-simulator.md`.

pub mod engine;
pub mod kv_cache;
pub(super) mod serve;
pub mod tokens;

use std::time::Duration;
use tokio::sync::mpsc;

/// The simulated GPU's parameters (`infergate mock --sim --sim-...`). The KV cache's size is
/// the mock's `kv_cache_tokens`, and a request's default output its `default_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Tokens per KV-cache block (vLLM's `--block-size`): the prefix cache's granularity.
    pub block_tokens: usize,
    /// Time to prefill one uncached prompt token.
    pub prefill_per_token: Duration,
    /// Time of a step that decodes (one token for every decoding request).
    pub decode_per_step: Duration,
    /// Requests running at once at most (vLLM's `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Tokens computed in one step at most (vLLM's `--max-num-batched-tokens`): the chunked
    /// prefill's budget.
    pub max_batched_tokens: usize,
    /// Honour a request's `sim_assume_cached_tokens` (prompt tokens to take as found in the
    /// prefix cache): the fleet benchmark's ideal-placement run.
    pub assume_cached_field: bool,
}

impl Default for SimConfig {
    /// A small model on one modest GPU, slowed so that 8 servers saturate at some tens of
    /// requests a second with 1–3k-token prompts (why: `docs/fleet-simulator.md`).
    fn default() -> Self {
        Self {
            block_tokens: 16,
            prefill_per_token: Duration::from_micros(200),
            decode_per_step: Duration::from_millis(15),
            max_num_seqs: 32,
            max_batched_tokens: 2048,
            assume_cached_field: false,
        }
    }
}

/// The way into a server's engine task; the task ends when the last handle is dropped (and
/// what it runs has ended).
#[derive(Debug, Clone)]
pub struct SimHandle {
    tx: mpsc::UnboundedSender<engine::Submit>,
    pub config: SimConfig,
    /// The KV cache's size in blocks.
    pub num_blocks: usize,
}

/// The engine is gone (its task ended).
#[derive(Debug, thiserror::Error)]
#[error("the simulated engine has stopped")]
pub struct EngineStopped;

impl SimHandle {
    /// Start a server's engine task on the current Tokio runtime: a KV cache of
    /// `kv_cache_tokens` (in whole blocks), the metrics of `models` in `metrics`.
    pub fn start(
        config: SimConfig,
        kv_cache_tokens: u64,
        models: &[String],
        metrics: &super::metrics::MockMetrics,
    ) -> Self {
        let block = config.block_tokens.max(1);
        let num_blocks = usize::try_from(kv_cache_tokens)
            .unwrap_or(usize::MAX)
            .checked_div(block)
            .unwrap_or(0)
            .max(1);
        let series = models.iter().map(|m| metrics.series(m)).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = engine::Engine::new(config.clone(), num_blocks, series);
        tokio::spawn(engine.run(rx));
        tracing::debug!(?config, num_blocks, "simulated engine started");
        Self {
            tx,
            config,
            num_blocks,
        }
    }

    /// Hand a request to the engine.
    pub fn submit(&self, s: engine::Submit) -> Result<(), EngineStopped> {
        self.tx.send(s).map_err(|_| EngineStopped)
    }

    /// Whether a request of `prompt_tokens` and `max_tokens` can ever fit in the KV cache.
    pub fn fits(&self, prompt_tokens: usize, max_tokens: usize) -> bool {
        (prompt_tokens + max_tokens).div_ceil(self.config.block_tokens.max(1)) <= self.num_blocks
    }
}

#[cfg(test)]
mod tests;
