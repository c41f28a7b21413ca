//! A dry-run: what starting a model would do, without starting it. The exact command the
//! runner would execute (the same builder), every problem as a warning with its severity and
//! fix, and a VRAM estimate computed from the model's own files (see `estimate`). Blocking
//! (it reads file headers): run it off the async threads.

use super::command::{self, Listen};
use super::estimate::{self, LlamaOptions, Margins, Shape, VllmOptions};
use super::record::{EngineType, ModelSpec};
use super::{validate, weights};
use crate::config::RunnerConfig;
use crate::modelfiles::folder::split_part;
use crate::modelfiles::gguf::{self, GgufInfo};
use crate::modelfiles::hfconfig::HfConfig;
use crate::modelfiles::hub::{self, HubModel};
use crate::modelfiles::safetensors;
use serde::Serialize;
use std::path::Path;

/// The port shown in a dry-run's command (the real one is chosen at start).
pub const PORT_PLACEHOLDER: &str = "<port>";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Warning {
    /// `error` (the model cannot start as it is), `warning` or `info`.
    pub severity: &'static str,
    /// `config`, `path`, `files`, `engine`, `gpu`, `context` or `vram`.
    pub category: &'static str,
    pub title: String,
    pub message: String,
    pub fix: Option<String>,
}

fn warn(
    severity: &'static str,
    category: &'static str,
    title: &str,
    message: impl Into<String>,
    fix: Option<&str>,
) -> Warning {
    Warning {
        severity,
        category,
        title: title.into(),
        message: message.into(),
        fix: fix.map(str::to_string),
    }
}

/// What the estimate used.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Basis {
    /// `safetensors`, `gguf` or `hub` (parameters × dtype bytes).
    pub weights_from: &'static str,
    pub shape: Shape,
    /// `nvml` (the NVIDIA driver), `config` (`[[runner.gpus]]`) or `none`.
    pub gpu_memory_from: &'static str,
    pub margins: Margins,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VramEstimate {
    /// Weights in GiB, before they are divided over GPUs.
    pub weights_gib: f64,
    pub kv_per_token_bytes: f64,
    /// vLLM, per GPU (every tensor-parallel rank alike).
    pub vllm: Option<estimate::VllmEstimate>,
    pub llamacpp: Option<estimate::LlamaEstimate>,
    /// Memory needed on the busiest GPU, in GiB (vLLM: what it reserves).
    pub per_gpu_gib: f64,
    pub basis: Basis,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    pub command: Vec<String>,
    /// The command as a shell line.
    pub command_str: String,
    /// false when any warning is an `error`.
    pub valid: bool,
    pub warnings: Vec<Warning>,
    pub vram_estimate: Option<VramEstimate>,
    /// Spec 000's field: `vram_estimate.per_gpu_gib`.
    pub vram_estimate_gb: Option<f64>,
}

/// The bytes per value of a dtype name (`bfloat16`, `float16`, `float32`, `fp8`, ...).
fn dtype_bytes(d: &str) -> Option<f64> {
    Some(match d.to_ascii_lowercase().as_str() {
        "bfloat16" | "bf16" | "float16" | "fp16" | "half" => 2.0,
        "float32" | "fp32" | "float" => 4.0,
        d if d.starts_with("fp8") || d.starts_with("float8") => 1.0,
        _ => return None,
    })
}

/// The bytes a tensor of `stored` dtype takes once vLLM loads it with `--dtype` `asked`:
/// floating weights take the asked width; `auto` (or none) keeps 16-bit weights as they are and
/// loads 32-bit ones in 16 bits; quantized and integer tensors stay as stored.
fn loaded_bytes(
    stored: &str,
    t: &crate::modelfiles::safetensors::DtypeTotal,
    asked: Option<&str>,
) -> u64 {
    if !matches!(stored, "F32" | "F16" | "BF16") {
        return t.bytes;
    }
    let width = match asked.and_then(dtype_bytes) {
        Some(w) => w,
        None if stored == "F32" => 2.0,
        None => return t.bytes,
    };
    (t.elements as f64 * width) as u64
}

/// The width of activations and of an `auto` KV cache: `--dtype`, else the checkpoint's dtype
/// (32-bit checkpoints run in 16 bits).
fn compute_bytes(asked: Option<&str>, stored: Option<&str>) -> f64 {
    asked
        .and_then(dtype_bytes)
        .or_else(|| stored.and_then(dtype_bytes).map(|w| w.min(2.0)))
        .unwrap_or(2.0)
}

/// The model's shape from its files: a safetensors folder with `config.json`, or GGUF files.
fn shape_of(
    root: &Path,
    weights: &Path,
    dtype: Option<&str>,
    warnings: &mut Vec<Warning>,
) -> Option<(Shape, &'static str, Option<HfConfig>)> {
    if weights.is_dir() {
        let config = match HfConfig::read(root, &weights.join("config.json")) {
            Ok(c) => c,
            Err(e) => {
                warnings.push(warn(
                    "warning",
                    "files",
                    "No readable config.json",
                    format!("{}: {e}", weights.join("config.json").display()),
                    Some("the folder needs the model's config.json (vLLM reads it too)"),
                ));
                return None;
            }
        };
        let mut bytes = 0u64;
        let entries = std::fs::read_dir(weights).ok()?;
        for e in entries.flatten().take(10_000) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                match safetensors::read_file(root, &p) {
                    Ok(info) => {
                        for (d, t) in &info.by_dtype {
                            bytes = bytes.saturating_add(loaded_bytes(d, t, dtype));
                        }
                    }
                    Err(e) => warnings.push(warn(
                        "error",
                        "files",
                        "Unreadable weights",
                        format!("{}: {e}", p.display()),
                        Some("download the file again"),
                    )),
                }
            }
        }
        if bytes == 0 {
            warnings.push(warn(
                "error",
                "files",
                "No weights",
                format!("{} holds no .safetensors file", weights.display()),
                None,
            ));
            return None;
        }
        let shape = shape_of_config(&config, bytes, dtype);
        return Some((shape, "safetensors", Some(config)));
    }
    // A GGUF file: every part of a split set counts.
    let parts: Vec<std::path::PathBuf> = match weights
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(split_part)
    {
        Some((base, _, total)) => (1..=total)
            .map(|n| weights.with_file_name(format!("{base}-{n:05}-of-{total:05}.gguf")))
            .collect(),
        None => vec![weights.to_path_buf()],
    };
    let mut first: Option<GgufInfo> = None;
    let (mut bytes, mut layer_bytes, mut output_bytes) = (0u64, Vec::<u64>::new(), 0u64);
    for p in &parts {
        match gguf::read_file(root, p) {
            Ok(info) => {
                bytes = bytes.saturating_add(info.tensor_bytes);
                output_bytes = output_bytes.saturating_add(info.output_bytes);
                if layer_bytes.len() < info.layer_bytes.len() {
                    layer_bytes.resize(info.layer_bytes.len(), 0);
                }
                for (i, b) in info.layer_bytes.iter().enumerate() {
                    layer_bytes[i] = layer_bytes[i].saturating_add(*b);
                }
                first.get_or_insert(info);
            }
            Err(e) => {
                warnings.push(warn(
                    "error",
                    "files",
                    "Unreadable GGUF file",
                    format!("{}: {e}", p.display()),
                    Some("download the file again"),
                ));
                return None;
            }
        }
    }
    let m = first?;
    let heads = m.head_count.unwrap_or(0);
    let hidden = m.embedding_length.unwrap_or(0);
    let shape = Shape {
        layers: m.block_count.unwrap_or(layer_bytes.len() as u64),
        hidden_size: hidden,
        attention_heads: heads,
        kv_heads: m.head_count_kv.unwrap_or(heads),
        head_dim: m
            .key_length
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        v_head_dim: m.value_length,
        kv_lora_rank: m.kv_lora_rank,
        qk_rope_head_dim: m.rope_dimension_count.filter(|_| m.kv_lora_rank.is_some()),
        intermediate_size: None,
        vocab_size: m.vocab_size,
        max_position_embeddings: m.context_length,
        weight_bytes: bytes,
        layer_bytes,
        output_bytes,
        dtype_bytes: 2.0,
    };
    Some((shape, "gguf", None))
}

/// The shape of a model known from the Hub: its config, and weights of parameters × the bytes
/// of their dtype.
fn shape_from_hub(m: &HubModel, asked: Option<&str>) -> (Shape, &'static str, Option<HfConfig>) {
    let c = &m.config;
    let weight_bytes: f64 = m
        .parameters
        .iter()
        .map(|(dtype, n)| {
            let t = crate::modelfiles::safetensors::DtypeTotal {
                tensors: 0,
                elements: *n,
                bytes: (*n as f64 * hub::dtype_bytes(dtype)) as u64,
            };
            loaded_bytes(dtype, &t, asked) as f64
        })
        .sum();
    (
        shape_of_config(c, weight_bytes as u64, asked),
        "hub",
        Some(c.clone()),
    )
}

/// The shape a `config.json` gives, with these weight bytes.
fn shape_of_config(c: &HfConfig, weight_bytes: u64, asked: Option<&str>) -> Shape {
    let heads = c.num_attention_heads.unwrap_or(0);
    Shape {
        layers: c.num_hidden_layers.unwrap_or(0),
        hidden_size: c.hidden_size.unwrap_or(0),
        attention_heads: heads,
        kv_heads: c.num_key_value_heads.unwrap_or(heads),
        head_dim: c.head_dim.unwrap_or(0),
        v_head_dim: None,
        kv_lora_rank: c.kv_lora_rank,
        qk_rope_head_dim: c.qk_rope_head_dim,
        intermediate_size: c.intermediate_size,
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
        weight_bytes,
        layer_bytes: Vec::new(),
        output_bytes: 0,
        dtype_bytes: compute_bytes(asked, c.torch_dtype.as_deref()),
    }
}

/// Dry-run `spec` in `models_dir` with this runner configuration.
/// `hub`: for a `repo_id` model, what the Hugging Face Hub said of it (or why it could not);
/// `detected`: the GPUs the driver reports (or why it cannot).
pub fn dry_run(
    spec: &ModelSpec,
    models_dir: &Path,
    runner: &RunnerConfig,
    hub: Option<Result<HubModel, String>>,
    detected: Result<Vec<crate::gpu::Gpu>, String>,
) -> DryRun {
    let mut warnings: Vec<Warning> = validate::problems(spec, models_dir)
        .into_iter()
        .map(|p| {
            // Paths that leave the models directory have a category of their own.
            let category = if p.contains("models directory") || p.contains("must be relative") {
                "path"
            } else {
                "config"
            };
            warn("error", category, "Invalid configuration", p, None)
        })
        .collect();
    let resolved = weights::resolve_all(spec, models_dir);
    let (weights_arg, resolved_spec) = match &resolved {
        Ok(r) => (r.weights.clone(), r.spec.clone()),
        Err(e) => {
            warnings.push(warn(
                "error",
                "files",
                "Weights not found",
                e.clone(),
                Some("check local_path against GET /admin/models/inspect-folder"),
            ));
            (
                spec.repo_id
                    .clone()
                    .or(spec.local_path.clone())
                    .unwrap_or_default(),
                spec.clone(),
            )
        }
    };
    let program = match spec.engine_type {
        EngineType::Vllm => &runner.vllm.command,
        EngineType::Llamacpp => &runner.llamacpp.command,
    };
    let listen = Listen {
        host: "127.0.0.1",
        port: 0,
        api_key: "",
    };
    let mut cmd = command::build(&resolved_spec, program, &weights_arg, &listen, None).argv;
    if let Some(i) = cmd.iter().position(|a| a == "--port") {
        if let Some(p) = cmd.get_mut(i + 1) {
            *p = PORT_PLACEHOLDER.into();
        }
    }

    // Flags the engine would not know (the lists can lag a release: a warning).
    for arg in &spec.engine_args {
        if super::guard::forbidden_flag(&arg.flag).is_none()
            && !super::flags::is_known(spec.engine_type, &arg.flag)
        {
            let engine = match spec.engine_type {
                EngineType::Vllm => "vLLM",
                EngineType::Llamacpp => "llama-server",
            };
            let fix = super::flags::nearest(spec.engine_type, &arg.flag)
                .map(|k| format!("did you mean {k}?"));
            warnings.push(warn(
                "warning",
                "config",
                "Unknown flag",
                format!("{} is not a flag {engine} is known to take", arg.flag),
                fix.as_deref(),
            ));
        }
    }

    // What only the files can tell.
    let weights_path = Path::new(&weights_arg);
    // Only a path that came out of the models directory's confinement is ever read.
    let local = resolved.is_ok() && spec.local_path.is_some() && spec.repo_id.is_none();
    let is_gguf = weights_arg.to_ascii_lowercase().ends_with(".gguf");
    if spec.engine_type == EngineType::Vllm && is_gguf {
        if weights_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(split_part)
            .is_some()
        {
            warnings.push(warn(
                "error",
                "engine",
                "Multi-part GGUF on vLLM",
                "vLLM loads single-file GGUF models only",
                Some("use engine_type llamacpp, or merge the parts with llama-gguf-split --merge"),
            ));
        }
        if spec.tokenizer.is_none() {
            warnings.push(warn("warning", "engine", "No tokenizer for a GGUF model",
                "vLLM converts the GGUF tokenizer, which is slow and fails for some models",
                Some("set tokenizer to the base model's repository (e.g. the one the GGUF was made from)")));
        }
    }
    let tp = u64::from(spec.tp_size.unwrap_or(1));
    if let Some(gpus) = &spec.selected_gpus {
        let ranks = tp * u64::from(spec.pipeline_parallel_size.unwrap_or(1));
        if ranks > gpus.len() as u64 {
            warnings.push(warn(
                "error",
                "gpu",
                "More ranks than GPUs",
                format!(
                    "tp_size × pipeline_parallel_size = {ranks} but selected_gpus has {}",
                    gpus.len()
                ),
                Some("select as many GPUs as tp_size × pipeline_parallel_size"),
            ));
        }
    }
    let shape = match hub {
        _ if local => shape_of(
            models_dir,
            weights_path,
            spec.dtype.as_deref(),
            &mut warnings,
        ),
        Some(Ok(m)) => Some(shape_from_hub(&m, spec.dtype.as_deref())),
        Some(Err(e)) => {
            warnings.push(warn(
                "warning",
                "vram",
                "The Hub did not answer",
                format!("no estimate without the model's config: {e}"),
                Some("check HF_ENDPOINT and HF_TOKEN, or download the model and give local_path"),
            ));
            None
        }
        None => None,
    };
    let mut vram = None;
    if let Some((shape, from, config)) = shape {
        if let (Some(asked), Some(cfg)) = (
            &spec.quantization,
            config.as_ref().and_then(|c| c.quantization.clone()),
        ) {
            let same = asked.eq_ignore_ascii_case(&cfg)
                || (asked.contains("marlin") && asked.contains(cfg.as_str()));
            if !same {
                warnings.push(warn(
                    "error",
                    "config",
                    "Quantization does not match the weights",
                    format!("quantization is {asked} but the weights are {cfg}"),
                    Some("leave quantization unset: vLLM reads it from config.json"),
                ));
            }
        }
        let model_max = shape.max_position_embeddings;
        let wanted_len = match spec.engine_type {
            EngineType::Vllm => spec.max_model_len,
            EngineType::Llamacpp => spec.context_size,
        };
        if let (Some(len), Some(max)) = (wanted_len, model_max) {
            if len > max {
                warnings.push(warn("error", "context", "Context longer than the model's",
                    format!("{len} tokens asked, the model was trained for {max} (max_position_embeddings)"),
                    Some("lower it, or give rope scaling in engine_args")));
            }
        }
        // The GPUs: as the driver reports them (NVML), else as [[runner.gpus]] lists them.
        let (mut known, gpu_from): (Vec<(u32, f64)>, &'static str) = match &detected {
            Ok(found) if !found.is_empty() => (
                found
                    .iter()
                    .map(|g| (g.index, g.memory_total_bytes as f64 / (1u64 << 30) as f64))
                    .collect(),
                "nvml",
            ),
            _ if !runner.gpus.is_empty() => (
                runner
                    .gpus
                    .iter()
                    .map(|g| (g.index, g.memory_gib))
                    .collect(),
                "config",
            ),
            _ => (Vec::new(), "none"),
        };
        known.sort_by_key(|g| g.0);
        // The selected GPUs; none selected: the engine takes the first ones (as many as its
        // ranks for vLLM, every one for llama.cpp).
        let ranks = (tp * u64::from(spec.pipeline_parallel_size.unwrap_or(1))) as usize;
        let gpus: Vec<f64> = match &spec.selected_gpus {
            Some(sel) => sel
                .iter()
                .filter_map(|i| known.iter().find(|g| g.0 == *i).map(|g| g.1))
                .collect(),
            None if spec.engine_type == EngineType::Vllm => {
                known.iter().take(ranks).map(|g| g.1).collect()
            }
            None => known.iter().map(|g| g.1).collect(),
        };
        if spec.selected_gpus.is_none()
            && spec.engine_type == EngineType::Vllm
            && !known.is_empty()
            && known.len() < ranks
        {
            warnings.push(warn(
                "error",
                "gpu",
                "More ranks than GPUs",
                format!(
                    "tp_size × pipeline_parallel_size = {ranks} but this node has {} GPUs",
                    known.len()
                ),
                Some("lower tp_size, or run the model on a node with more GPUs"),
            ));
        }
        if gpus.is_empty() {
            let why = detected
                .as_ref()
                .err()
                .cloned()
                .unwrap_or_else(|| "the driver reported none".into());
            warnings.push(warn(
                "warning",
                "vram",
                "GPU memory unknown",
                format!("{why}; [runner] gpus names none either: whether it fits is unknown"),
                Some("list the node's GPUs in [[runner.gpus]] (index, memory_gib)"),
            ));
        }
        // Without layers or head sizes there is no KV cache to size: say so, judge nothing.
        let shape_known = shape.layers > 0
            && (shape.head_dim > 0 || shape.kv_lora_rank.is_some())
            && shape.weight_bytes > 0;
        if !shape_known {
            warnings.push(warn(
                "warning",
                "vram",
                "Model shape unknown",
                "the model's files do not give its layers and head sizes: no memory verdict",
                Some("check config.json (num_hidden_layers, hidden_size, num_attention_heads)"),
            ));
        }
        let margins = Margins::default();
        let smallest = gpus.iter().cloned().fold(f64::INFINITY, f64::min);
        let (v, l, per_gpu, kv_token) = match spec.engine_type {
            EngineType::Vllm => {
                let kv_bytes = match spec.kv_cache_dtype.as_deref() {
                    Some(d) if d.starts_with("fp8") => 1.0,
                    _ => shape.dtype_bytes,
                };
                let max_len = spec.max_model_len.or(model_max).unwrap_or(4096);
                let o = VllmOptions {
                    gpu_memory_gib: if smallest.is_finite() { smallest } else { 0.0 },
                    gpu_memory_utilization: spec.gpu_memory_utilization.unwrap_or(0.9),
                    tp,
                    pp: u64::from(spec.pipeline_parallel_size.unwrap_or(1)),
                    max_model_len: max_len,
                    max_num_seqs: spec.max_num_seqs.unwrap_or(256),
                    max_num_batched_tokens: spec.max_num_batched_tokens.unwrap_or(8192),
                    kv_bytes,
                    enforce_eager: spec.enforce_eager.unwrap_or(false),
                    cpu_offload_gib: spec.cpu_offload_gb.unwrap_or(0.0),
                };
                let e = estimate::vllm(&shape, &o, &margins);
                // Without the GPU's size there is no budget: the need is still known (one
                // sequence of max_model_len: weights, activations, overhead and its KV cache).
                let need = e.weights_gib
                    + e.activation_peak_gib
                    + e.overhead_gib
                    + e.kv_per_token_bytes * e.max_model_len as f64 / (1u64 << 30) as f64;
                if shape_known && !gpus.is_empty() {
                    if e.kv_space_gib <= 0.0 {
                        warnings.push(warn("error", "vram", "The weights do not fit",
                            format!("{:.2} GiB of weights, {:.2} GiB of activations and {:.2} GiB of overhead on a GPU with a budget of {:.2} GiB",
                                e.weights_gib, e.activation_peak_gib, e.overhead_gib, e.budget_gib),
                            Some("raise tp_size, quantize the weights, or use a larger GPU")));
                    } else if !e.fits {
                        warnings.push(warn("error", "vram", "One sequence of max_model_len does not fit",
                            format!("max_model_len {} needs {} tokens of KV cache; {} fit ({:.2} GiB): vLLM refuses to start",
                                e.max_model_len, e.max_model_len, e.kv_cache_tokens, e.kv_space_gib),
                            Some(&format!("set max_model_len to at most {}, raise gpu_memory_utilization, or use kv_cache_dtype fp8", e.max_model_len_that_fits))));
                    } else if e.max_concurrency < 2.0 {
                        warnings.push(warn(
                            "warning",
                            "vram",
                            "One sequence at a time",
                            format!(
                                "the KV cache holds {} tokens: {:.2} sequences of {}",
                                e.kv_cache_tokens, e.max_concurrency, e.max_model_len
                            ),
                            Some("lower max_model_len to serve more requests at once"),
                        ));
                    }
                }
                let per = (need * 100.0).round() / 100.0;
                let kv = e.kv_per_token_bytes;
                (Some(e).filter(|_| !gpus.is_empty()), None, per, kv)
            }
            EngineType::Llamacpp => {
                let layers = shape.layers.max(shape.layer_bytes.len() as u64);
                let cache = |t: &Option<String>| {
                    t.as_deref()
                        .and_then(estimate::llama_cache_bytes)
                        .unwrap_or(2.0)
                };
                let o = LlamaOptions {
                    ngl: spec.ngl.map(u64::from).unwrap_or(layers + 1),
                    context_size: spec.context_size.unwrap_or(4096),
                    cache_k_bytes: cache(&spec.cache_type_k),
                    cache_v_bytes: cache(&spec.cache_type_v),
                    gpu_memory_gib: gpus.clone(),
                    tensor_split: spec
                        .tensor_split
                        .as_deref()
                        .map(|t| t.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                        .unwrap_or_default(),
                    ubatch_size: spec.ubatch_size.unwrap_or(512),
                };
                let e = estimate::llamacpp(&shape, &o, &margins);
                if shape_known && e.fits == Some(false) {
                    warnings.push(warn("error", "vram", "It does not fit on the GPUs",
                        format!("{:?} GiB needed per GPU, {:?} GiB there", e.per_gpu_gib, gpus),
                        Some("offload fewer layers (ngl), shorten context_size, or quantize the cache (cache_type_k/v q8_0)")));
                }
                let per = e.per_gpu_gib.iter().cloned().fold(0.0, f64::max);
                let kv = e.kv_per_token_bytes;
                (None, Some(e), per, kv)
            }
        };
        vram = Some(VramEstimate {
            weights_gib: crate::modelfiles::gib(shape.weight_bytes as f64),
            kv_per_token_bytes: kv_token,
            vllm: v,
            llamacpp: l,
            per_gpu_gib: per_gpu,
            basis: Basis {
                weights_from: from,
                shape,
                gpu_memory_from: gpu_from,
                margins,
            },
        });
    }
    let valid = !warnings.iter().any(|w| w.severity == "error");
    DryRun {
        command_str: command::shell_line(&cmd),
        command: cmd,
        valid,
        vram_estimate_gb: vram.as_ref().map(|v| v.per_gpu_gib),
        vram_estimate: vram,
        warnings,
    }
}
