//! How much GPU memory a model needs, computed the way the engines size their memory, from the
//! model's own shape and weight bytes (read from its files), never guessed from its name.
//!
//! - KV cache per token = 2 × layers × KV heads × head dim × bytes of the KV dtype (MLA models:
//!   layers × (kv_lora_rank + qk_rope_head_dim) × bytes, one latent vector, replicated on every
//!   tensor-parallel rank). llama.cpp's quantized caches take their real block sizes (q8_0: 34
//!   bytes per 32 values, q4_0: 18 per 32).
//! - vLLM: per GPU, total × `gpu_memory_utilization` − weights / (tp × pp) − activation peak −
//!   runtime overhead = KV space; KV tokens = KV space / KV bytes per token on one GPU. One
//!   sequence of `max_model_len` must fit, or vLLM refuses to start.
//! - llama.cpp: the last `ngl` layers (and the output layer when every layer is offloaded) and
//!   their KV cache for `context_size` tokens (shared by every slot) on the GPUs.
//!
//! The activation peak and runtime overhead are approximations (see [`Margins`]); the weights
//! and the KV cache are exact.

use crate::modelfiles::gib;
use serde::Serialize;

const GIB: f64 = (1u64 << 30) as f64;

/// What an estimate is computed from.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Shape {
    pub layers: u64,
    pub hidden_size: u64,
    pub attention_heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    /// The width of a value head, when it differs from `head_dim` (GGUF `value_length`).
    pub v_head_dim: Option<u64>,
    /// MLA: the compressed KV width and the rotary part of a head.
    pub kv_lora_rank: Option<u64>,
    pub qk_rope_head_dim: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub vocab_size: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    /// Bytes of every weight tensor.
    pub weight_bytes: u64,
    /// Bytes of each layer's weights (GGUF), for llama.cpp's offload by layer.
    #[serde(skip)]
    pub layer_bytes: Vec<u64>,
    /// Bytes of the output layer (GGUF `output.*`).
    #[serde(skip)]
    pub output_bytes: u64,
    /// Bytes of one element of the weights (2 for bf16), for the activations.
    pub dtype_bytes: f64,
}

impl Shape {
    /// Bytes of KV cache per token on one GPU (all layers; `kv_bytes` per value, `tp` ranks).
    pub fn kv_per_token(&self, kv_bytes: f64, tp: u64) -> f64 {
        match (self.kv_lora_rank, self.qk_rope_head_dim) {
            (Some(rank), Some(rope)) => self.layers as f64 * (rank as f64 + rope as f64) * kv_bytes,
            _ => {
                // KV heads are split over the ranks; fewer heads than ranks are replicated.
                let heads = self.kv_heads.div_ceil(tp.max(1)).max(1);
                2.0 * self.layers as f64 * heads as f64 * self.head_dim as f64 * kv_bytes
            }
        }
    }
}

/// The approximations, stated.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Margins {
    /// CUDA context, NCCL and allocator slack per GPU (GiB).
    pub runtime_overhead_gib: f64,
    /// CUDA graphs, unless `enforce_eager` (GiB).
    pub cuda_graphs_gib: f64,
}

impl Default for Margins {
    fn default() -> Self {
        Self {
            runtime_overhead_gib: 0.75,
            cuda_graphs_gib: 0.5,
        }
    }
}

/// vLLM's options that size its memory.
#[derive(Debug, Clone)]
pub struct VllmOptions {
    pub gpu_memory_gib: f64,
    pub gpu_memory_utilization: f64,
    pub tp: u64,
    pub pp: u64,
    pub max_model_len: u64,
    pub max_num_seqs: u64,
    pub max_num_batched_tokens: u64,
    /// Bytes per KV value (`auto`: the weights' dtype; `fp8`: 1).
    pub kv_bytes: f64,
    pub enforce_eager: bool,
    pub cpu_offload_gib: f64,
}

/// A verdict on one GPU.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VllmEstimate {
    pub gpu_memory_gib: f64,
    pub budget_gib: f64,
    pub weights_gib: f64,
    pub activation_peak_gib: f64,
    pub overhead_gib: f64,
    pub kv_space_gib: f64,
    pub kv_per_token_bytes: f64,
    pub kv_cache_tokens: u64,
    pub max_model_len: u64,
    /// Sequences of `max_model_len` the KV cache holds at once.
    pub max_concurrency: f64,
    /// The longest context one sequence could have (capped at the model's own).
    pub max_model_len_that_fits: u64,
    pub fits: bool,
}

/// vLLM's memory on each GPU.
pub fn vllm(shape: &Shape, o: &VllmOptions, m: &Margins) -> VllmEstimate {
    let ranks = (o.tp.max(1) * o.pp.max(1)) as f64;
    let weights = (shape.weight_bytes as f64 - o.cpu_offload_gib * GIB).max(0.0) / ranks;
    // The profiling run's peak: one batch of max_num_batched_tokens through the widest layer
    // (gate and up projections, split over tp) and the residual stream, plus fp32 logits of
    // every running sequence.
    let tokens = o.max_num_batched_tokens as f64;
    let inter = shape
        .intermediate_size
        .map_or(4.0 * shape.hidden_size as f64, |i| i as f64);
    let activation = tokens
        * (2.0 * inter / o.tp.max(1) as f64 + 4.0 * shape.hidden_size as f64)
        * shape.dtype_bytes
        + o.max_num_seqs as f64 * shape.vocab_size.unwrap_or(0) as f64 * 4.0;
    let overhead = (m.runtime_overhead_gib
        + if o.enforce_eager {
            0.0
        } else {
            m.cuda_graphs_gib
        })
        * GIB;
    let budget = o.gpu_memory_gib * GIB * o.gpu_memory_utilization;
    let kv_space = budget - weights - activation - overhead;
    let layers_here = Shape {
        layers: shape.layers.div_ceil(o.pp.max(1)),
        ..shape.clone()
    };
    let per_token = layers_here.kv_per_token(o.kv_bytes, o.tp);
    let kv_tokens = if kv_space > 0.0 && per_token > 0.0 {
        (kv_space / per_token) as u64
    } else {
        0
    };
    let model_max = shape.max_position_embeddings.unwrap_or(u64::MAX);
    VllmEstimate {
        gpu_memory_gib: o.gpu_memory_gib,
        budget_gib: gib(budget),
        weights_gib: gib(weights),
        activation_peak_gib: gib(activation),
        overhead_gib: gib(overhead),
        kv_space_gib: gib(kv_space),
        kv_per_token_bytes: per_token,
        kv_cache_tokens: kv_tokens,
        max_model_len: o.max_model_len,
        max_concurrency: if o.max_model_len > 0 {
            ((kv_tokens as f64 / o.max_model_len as f64) * 100.0).floor() / 100.0
        } else {
            0.0
        },
        max_model_len_that_fits: kv_tokens.min(model_max),
        fits: kv_tokens >= o.max_model_len && kv_space > 0.0,
    }
}

/// Bytes per value of a llama.cpp cache type (`f16`, `q8_0`, ...).
pub fn llama_cache_bytes(t: &str) -> Option<f64> {
    Some(match t.to_ascii_lowercase().as_str() {
        "f32" => 4.0,
        "f16" | "bf16" => 2.0,
        "q8_0" => 34.0 / 32.0,
        "q4_0" | "iq4_nl" => 18.0 / 32.0,
        "q4_1" => 20.0 / 32.0,
        "q5_0" => 22.0 / 32.0,
        "q5_1" => 24.0 / 32.0,
        _ => return None,
    })
}

/// llama.cpp's options that size its memory.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    /// Layers offloaded (`-ngl`), counting the output layer, which goes first (llama.cpp:
    /// layers from `n_layer + 1 - ngl` up are on the GPU).
    pub ngl: u64,
    pub context_size: u64,
    pub cache_k_bytes: f64,
    pub cache_v_bytes: f64,
    /// GPUs the layers are spread over, and each one's memory (GiB).
    pub gpu_memory_gib: Vec<f64>,
    /// Proportions per GPU (`--tensor-split`); empty: even.
    pub tensor_split: Vec<f64>,
    pub ubatch_size: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LlamaEstimate {
    pub layers_on_gpu: u64,
    pub weights_on_gpu_gib: f64,
    pub kv_cache_gib: f64,
    pub kv_per_token_bytes: f64,
    pub compute_buffer_gib: f64,
    pub overhead_gib: f64,
    /// Per GPU, in order.
    pub per_gpu_gib: Vec<f64>,
    pub fits: Option<bool>,
}

/// llama.cpp's memory on the GPUs.
pub fn llamacpp(shape: &Shape, o: &LlamaOptions, m: &Margins) -> LlamaEstimate {
    let layers = shape.layers.max(shape.layer_bytes.len() as u64);
    // llama.cpp offloads the output layer first, then the last layers.
    let on_gpu = o.ngl.saturating_sub(1).min(layers);
    let first = (layers - on_gpu) as usize;
    let mut weights: f64 = shape
        .layer_bytes
        .iter()
        .skip(first)
        .map(|b| *b as f64)
        .sum();
    if shape.layer_bytes.is_empty() && layers > 0 {
        weights = shape.weight_bytes as f64 * on_gpu as f64 / layers as f64;
    }
    if o.ngl >= 1 {
        weights += shape.output_bytes as f64;
    }
    let v_dim = shape.v_head_dim.unwrap_or(shape.head_dim) as f64;
    let per_token = on_gpu as f64
        * shape.kv_heads as f64
        * (shape.head_dim as f64 * o.cache_k_bytes + v_dim * o.cache_v_bytes);
    let kv = per_token * o.context_size as f64;
    let compute = if on_gpu > 0 {
        o.ubatch_size as f64
            * (shape.vocab_size.unwrap_or(0) as f64 + 4.0 * shape.hidden_size as f64)
            * 4.0
    } else {
        0.0
    };
    let overhead = if on_gpu > 0 {
        m.runtime_overhead_gib * GIB
    } else {
        0.0
    };
    let gpus = o.gpu_memory_gib.len().max(1);
    let split: Vec<f64> =
        if o.tensor_split.len() == gpus && o.tensor_split.iter().sum::<f64>() > 0.0 {
            let total: f64 = o.tensor_split.iter().sum();
            o.tensor_split.iter().map(|s| s / total).collect()
        } else {
            vec![1.0 / gpus as f64; gpus]
        };
    // Weights and cache by the split; every GPU has its context and compute buffer.
    let per_gpu: Vec<f64> = split
        .iter()
        .map(|share| gib((weights + kv) * share + compute + overhead))
        .collect();
    let fits = (!o.gpu_memory_gib.is_empty()).then(|| {
        per_gpu
            .iter()
            .zip(&o.gpu_memory_gib)
            .all(|(need, have)| need <= have)
    });
    LlamaEstimate {
        layers_on_gpu: on_gpu,
        weights_on_gpu_gib: gib(weights),
        kv_cache_gib: gib(kv),
        kv_per_token_bytes: per_token,
        compute_buffer_gib: gib(compute),
        overhead_gib: gib(overhead),
        per_gpu_gib: per_gpu,
        fits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3.1-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads of 128, FFN 14336, vocab
    /// 128256, untied embeddings.
    fn llama_8b() -> Shape {
        let (h, kv, ffn, vocab) = (4096u64, 1024u64, 14_336u64, 128_256u64);
        let layer = h * h + kv * h * 2 + h * h + 3 * ffn * h + 2 * h;
        let params = vocab * h * 2 + 32 * layer + h;
        Shape {
            layers: 32,
            hidden_size: h,
            attention_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate_size: Some(ffn),
            vocab_size: Some(vocab),
            max_position_embeddings: Some(131_072),
            weight_bytes: params * 2,
            dtype_bytes: 2.0,
            ..Default::default()
        }
    }

    fn vllm_opts(gpu: f64, len: u64) -> VllmOptions {
        VllmOptions {
            gpu_memory_gib: gpu,
            gpu_memory_utilization: 0.9,
            tp: 1,
            pp: 1,
            max_model_len: len,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            kv_bytes: 2.0,
            enforce_eager: false,
            cpu_offload_gib: 0.0,
        }
    }

    #[test]
    fn llama_8b_in_bf16_has_16_06_gb_of_weights_and_128_kib_of_kv_per_token() {
        let s = llama_8b();
        assert_eq!(s.weight_bytes, 16_060_522_496);
        assert!((s.weight_bytes as f64 / 1e9 - 16.06).abs() < 0.005);
        assert_eq!(gib(s.weight_bytes as f64), 14.96);
        assert_eq!(s.kv_per_token(2.0, 1), 131_072.0);
        // fp8 KV halves it; tp 2 splits the 8 KV heads; tp 16 replicates them.
        assert_eq!(s.kv_per_token(1.0, 1), 65_536.0);
        assert_eq!(s.kv_per_token(2.0, 2), 65_536.0);
        assert_eq!(s.kv_per_token(2.0, 16), 16_384.0);
    }

    #[test]
    fn vllm_budget_gives_tokens_concurrency_and_the_longest_context_that_fits() {
        let s = llama_8b();
        let e = vllm(&s, &vllm_opts(80.0, 32_768), &Margins::default());
        assert_eq!(e.budget_gib, 72.0);
        assert_eq!(e.weights_gib, 14.96);
        // 72 − 14.96 − activations − 1.25 GiB of overhead, at 128 KiB a token.
        let kv = 72.0 * GIB - 16_060_522_496.0 - e.activation_peak_gib * GIB - 1.25 * GIB;
        assert!(
            (e.kv_cache_tokens as f64 - kv / 131_072.0).abs() < 200.0,
            "{e:?}"
        );
        assert!(e.kv_cache_tokens > 400_000 && e.fits);
        assert_eq!(
            e.max_model_len_that_fits, 131_072,
            "capped at the model's context"
        );
        assert!((e.max_concurrency - e.kv_cache_tokens as f64 / 32_768.0).abs() < 0.01);
        // On a 24 GiB GPU a full 128k context does not fit: vLLM would refuse to start.
        let small = vllm(&s, &vllm_opts(24.0, 131_072), &Margins::default());
        assert!(!small.fits && small.kv_cache_tokens < 131_072, "{small:?}");
        assert_eq!(small.max_model_len_that_fits, small.kv_cache_tokens);
        // On a 16 GiB GPU the weights alone do not fit.
        let tiny = vllm(&s, &vllm_opts(16.0, 4096), &Margins::default());
        assert_eq!((tiny.kv_cache_tokens, tiny.fits), (0, false));
    }

    #[test]
    fn mla_caches_one_latent_per_layer() {
        let s = Shape {
            layers: 61,
            kv_heads: 128,
            head_dim: 128,
            kv_lora_rank: Some(512),
            qk_rope_head_dim: Some(64),
            ..Default::default()
        };
        assert_eq!(s.kv_per_token(2.0, 8), 61.0 * 576.0 * 2.0);
    }

    #[test]
    fn llama_cpp_offloads_the_last_layers_and_quantized_caches_shrink() {
        let mut s = llama_8b();
        s.layer_bytes = vec![100 << 20; 32];
        s.output_bytes = 400 << 20;
        let opts = |ngl, k: &str| LlamaOptions {
            ngl,
            context_size: 8192,
            cache_k_bytes: llama_cache_bytes(k).unwrap(),
            cache_v_bytes: llama_cache_bytes(k).unwrap(),
            gpu_memory_gib: vec![8.0],
            tensor_split: vec![],
            ubatch_size: 512,
        };
        let cpu = llamacpp(&s, &opts(0, "f16"), &Margins::default());
        assert_eq!((cpu.layers_on_gpu, cpu.per_gpu_gib[0]), (0, 0.0));
        // -ngl 16: the output layer and the last 15 layers.
        let half = llamacpp(&s, &opts(16, "f16"), &Margins::default());
        assert_eq!(half.layers_on_gpu, 15);
        assert_eq!(
            half.weights_on_gpu_gib,
            gib(((15 * 100 + 400u64) << 20) as f64)
        );
        // f16 cache of 15 layers × 8 heads × 128 × (2 + 2) bytes a token.
        assert_eq!(half.kv_per_token_bytes, 15.0 * 8.0 * 128.0 * 4.0);
        let all = llamacpp(&s, &opts(99, "f16"), &Margins::default());
        assert_eq!(
            all.weights_on_gpu_gib,
            gib(((32 * 100 + 400u64) << 20) as f64)
        );
        let q8 = llamacpp(&s, &opts(99, "q8_0"), &Margins::default());
        assert!((q8.kv_per_token_bytes / all.kv_per_token_bytes - 34.0 / 64.0).abs() < 1e-9);
        assert_eq!(llama_cache_bytes("q4_0"), Some(18.0 / 32.0));
    }
}
