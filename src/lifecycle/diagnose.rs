//! Reading an engine's startup log: every known failure pattern that matches anywhere in it
//! (not only the first, not only the last 100 lines, as Cortex did), most severe first, with the
//! values it captured written into its message; and a summary of what a vLLM startup reports.
//! Patterns and fixes follow `shared/notes/cortex-models-system.md` §6.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// One known problem found in a log.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub title: String,
    pub message: String,
    pub fixes: Vec<String>,
    /// `error`, `warning` or `info`.
    pub severity: String,
    /// `memory`, `args`, `model`, `network`, `multi_gpu`, `system`, `warning` or `info`.
    pub error_type: String,
    /// The log line it was found in.
    pub line: String,
}

/// What a vLLM startup log reports, where it does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub engine_version: Option<String>,
    pub model_path: Option<String>,
    pub loading_time_sec: Option<f64>,
    pub memory_usage_gib: Option<f64>,
    pub kv_cache_size_tokens: Option<u64>,
    /// The last five warnings (deprecation notices left out).
    pub warnings: Vec<String>,
}

struct Pattern {
    re: Regex,
    title: &'static str,
    severity: &'static str,
    error_type: &'static str,
    /// The message, from the captures (`$1` ... filled in by `Regex::expand`).
    message: &'static str,
    fixes: &'static [&'static str],
}

fn pattern(
    re: &str,
    title: &'static str,
    (severity, error_type): (&'static str, &'static str),
    message: &'static str,
    fixes: &'static [&'static str],
) -> Pattern {
    Pattern {
        re: Regex::new(&format!("(?i){re}")).expect("a valid pattern"),
        title,
        severity,
        error_type,
        message,
        fixes,
    }
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    const ERR_MODEL: (&str, &str) = ("error", "model");
    const ERR_MEMORY: (&str, &str) = ("error", "memory");
    const ERR_SYSTEM: (&str, &str) = ("error", "system");
    const ERR_GPUS: (&str, &str) = ("error", "multi_gpu");
    vec![
        pattern(r"LocalEntryNotFoundError.*Cannot find.*cached snapshot.*outgoing traffic.*disabled",
            "Tokenizer Not Available in Offline Mode", ERR_MODEL,
            "The engine runs offline and the tokenizer or config it needs is not in the local cache.",
            &["Set hf_config_path (or tokenizer) to a folder in the models directory holding the tokenizer files", "Pre-download it: huggingface-cli download <repo> --include '*.json' '*.model'"]),
        pattern(r"assert.*HF_HUB_OFFLINE|huggingface.*offline.*mode.*cannot.*download",
            "HuggingFace Offline Mode Download Blocked", ERR_MODEL,
            "The engine tried to download from the Hugging Face Hub while offline.",
            &["Pre-download the model into the models directory and use local_path", "Or use repo_id with network access"]),
        pattern(r"model type [`']qwen3[`'].*Transformers does not recognize this architecture",
            "Qwen3 Requires Newer vLLM/Transformers", ERR_MODEL,
            "This engine's Transformers does not know the Qwen3 architecture.",
            &["Use a newer engine (Transformers 4.51 or later)"]),
        pattern(r"Free memory on device \(([0-9.]+)/([0-9.]+) GiB\).*less than desired GPU memory utilization \(([0-9.]+), ([0-9.]+) GiB\)",
            "GPU Memory Exceeded", ERR_MEMORY,
            "Only $1 GiB of the GPU's $2 GiB are free, less than the $4 GiB that gpu_memory_utilization $3 asks for.",
            &["Lower gpu_memory_utilization (0.80 or less)", "Free the GPU: see nvidia-smi for other processes", "Lower max_model_len, use kv_cache_dtype fp8, or a quantized model"]),
        pattern(r"unrecognized arguments?: (.+)",
            "Invalid Startup Argument", ("error", "args"),
            "The engine does not accept: $1",
            &["Remove or rename it in engine_args (request-time parameters such as temperature belong in requests)", "Check the flag against this engine version's --help"]),
        pattern(r"CUDA out of memory",
            "CUDA Out of Memory", ERR_MEMORY,
            "The GPU ran out of memory while the engine loaded or profiled the model.",
            &["Lower gpu_memory_utilization to 0.70-0.80", "Lower max_model_len or max_num_seqs", "Use kv_cache_dtype fp8 or a quantized model", "Spread the model over more GPUs (tp_size)"]),
        pattern(r"--model.*deprecated.*v0\.13",
            "Deprecated Parameter Warning", ("warning", "warning"),
            "The engine warns that a parameter is deprecated.",
            &[]),
        pattern(r"No module named '(\w+)'",
            "Missing Python Module", ERR_MODEL,
            "The engine lacks the Python module $1.",
            &["Use an engine build or image that includes it"]),
        pattern(r"Connection refused|ConnectTimeoutError|Cannot connect to",
            "Network Connection Failed", ("error", "network"),
            "The engine could not reach a network service (often the Hugging Face Hub).",
            &["Check the node's network access and proxy settings", "Check the Hugging Face token (hf_token_env)", "Or download the model and use local_path"]),
        pattern(r"NCCL.*timeout|Watchdog caught.*NCCL",
            "NCCL Communication Timeout", ERR_GPUS,
            "GPUs timed out talking to each other.",
            &["Check the topology: nvidia-smi topo -m", "Try NCCL_P2P_DISABLE=1 in engine_env", "Raise NCCL_TIMEOUT; set NCCL_DEBUG=INFO to see more"]),
        pattern(r"NCCL.*error.*communicator|ncclInternalError|ncclSystemError",
            "NCCL Communication Error", ERR_GPUS,
            "The GPUs' communication library failed.",
            &["Update the NVIDIA driver", "Set NCCL_DEBUG=INFO in engine_env to see more", "Try NCCL_P2P_DISABLE=1"]),
        pattern(r"Error in memory profiling.*other processes.*release GPU memory",
            "GPU Memory Changed During Profiling", ERR_MEMORY,
            "Another process used GPU memory while the engine measured it.",
            &["Run the model on a GPU of its own (selected_gpus)", "Or fix the cache size with --kv-cache-memory in engine_args"]),
        pattern(r"Model .* does not exist|Repository .* not found",
            "Model Not Found", ERR_MODEL,
            "The model path or repository does not exist.",
            &["Check local_path (relative to the models directory) or repo_id", "For a private repository, set hf_token_env"]),
        pattern(r"As of transformers v4\.44.*chat template",
            "Chat Template Missing", ("warning", "model"),
            "The model has no chat template: chat completions fail.",
            &["Use /v1/completions with a base model", "Or give a template with --chat-template in engine_args"]),
        pattern(r"Tensor parallel size \((\d+)\).*(?:exceeds|cannot be larger than).*(?:GPU count|number of available GPUs) \((\d+)\)",
            "Insufficient GPUs for Tensor Parallelism", ("error", "args"),
            "tp_size $1 needs more GPUs than the $2 the engine sees.",
            &["Lower tp_size, or select more GPUs (selected_gpus)"]),
        pattern(r"No available shared memory broadcast block found in (\d+) seconds",
            "Slow Initialization (Normal for Large Models)", ("info", "info"),
            "A worker waited $1 s for the others: large models take a while.",
            &["Wait; raise startup_timeout_sec if it is reached"]),
        pattern(r"nvidia-container-cli.*requirement error.*unsatisfied condition.*cuda[>=]*([\d.]+)",
            "NVIDIA Driver Version Incompatible", ERR_SYSTEM,
            "The engine needs CUDA $1, newer than the driver supports.",
            &["Update the NVIDIA driver (CUDA 12.9 needs 575.51.03 or later on Linux)", "Or use an engine image built for an older CUDA"]),
        pattern(r"unsatisfied condition.*cuda[>=]*([\d.]+).*please update your driver",
            "NVIDIA Driver Update Required", ERR_SYSTEM,
            "The engine needs CUDA $1: the driver is too old.",
            &["Update the NVIDIA driver"]),
        pattern(r"CUDA.*driver.*version.*insufficient|driver.*too.*old|cuda.*not.*supported.*driver",
            "CUDA Driver Compatibility Issue", ERR_SYSTEM,
            "The NVIDIA driver is too old for this engine's CUDA.",
            &["Update the NVIDIA driver", "Or use an engine image built for an older CUDA"]),
    ]
});

fn rank(severity: &str) -> u8 {
    match severity {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    }
}

/// Every known problem in `lines`, most severe first (in pattern order within a severity).
pub fn diagnose(lines: &[String]) -> Vec<Finding> {
    let mut found: Vec<Finding> = PATTERNS
        .iter()
        .filter_map(|p| {
            lines.iter().find_map(|line| {
                let caps = p.re.captures(line)?;
                let mut message = String::new();
                caps.expand(p.message, &mut message);
                Some(Finding {
                    title: p.title.into(),
                    message,
                    fixes: p.fixes.iter().map(|f| (*f).into()).collect(),
                    severity: p.severity.into(),
                    error_type: p.error_type.into(),
                    line: line.chars().take(500).collect(),
                })
            })
        })
        .collect();
    found.sort_by_key(|f| rank(&f.severity));
    found
}

static VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"vLLM API server version ([\w.+-]+)").expect("valid"));
static MODEL_PATH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"model='([^']+)'").expect("valid"));
static LOADING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Model loading took ([\d.]+) GiB(?: memory)? and ([\d.]+) seconds").expect("valid")
});
static KV_TOKENS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"GPU KV cache size: ([\d,]+) tokens").expect("valid"));

/// What a vLLM startup log reports.
pub fn summarize(lines: &[String]) -> Summary {
    let first = |re: &Regex, group: usize| {
        lines
            .iter()
            .find_map(|l| re.captures(l).map(|c| c[group].to_string()))
    };
    let mut warnings: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("WARNING") && !l.to_lowercase().contains("deprecated"))
        .cloned()
        .collect();
    let keep = warnings.len().saturating_sub(5);
    warnings.drain(..keep);
    Summary {
        engine_version: first(&VERSION, 1),
        model_path: first(&MODEL_PATH, 1),
        memory_usage_gib: first(&LOADING, 1).and_then(|v| v.parse().ok()),
        loading_time_sec: first(&LOADING, 2).and_then(|v| v.parse().ok()),
        kv_cache_size_tokens: first(&KV_TOKENS, 1).and_then(|v| v.replace(',', "").parse().ok()),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn every_match_is_reported_most_severe_first_with_its_values() {
        let log = lines(
            "INFO No available shared memory broadcast block found in 60 seconds\n\
             ERROR ValueError: Free memory on device (1.1/23.5 GiB) on startup is less than desired GPU memory utilization (0.9, 21.2 GiB).\n\
             ... a long traceback ...\n\
             torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        );
        let found = diagnose(&log);
        let titles: Vec<&str> = found.iter().map(|f| f.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "GPU Memory Exceeded",
                "CUDA Out of Memory",
                "Slow Initialization (Normal for Large Models)"
            ]
        );
        assert_eq!(
            found[0].message,
            "Only 1.1 GiB of the GPU's 23.5 GiB are free, less than the 21.2 GiB that gpu_memory_utilization 0.9 asks for."
        );
        assert!(!found.iter().any(|f| f.message.contains('$')));
        assert_eq!(
            found[2].message,
            "A worker waited 60 s for the others: large models take a while."
        );
        assert!(found[1].line.contains("CUDA out of memory"));
        let args = diagnose(&lines(
            "api_server.py: error: unrecognized arguments: --temperature 0.7",
        ));
        assert_eq!(
            args[0].message,
            "The engine does not accept: --temperature 0.7"
        );
        assert!(diagnose(&lines("INFO all good")).is_empty());
    }

    #[test]
    fn a_vllm_startup_is_summarized() {
        let s = summarize(&lines(
            "INFO vLLM API server version 0.8.5\n\
             INFO args: model='/models/qwen' served_model_name=['q']\n\
             WARNING something odd\n\
             WARNING --model is deprecated\n\
             INFO Model loading took 14.9 GiB memory and 41.2 seconds\n\
             INFO GPU KV cache size: 123,456 tokens",
        ));
        assert_eq!(s.engine_version.as_deref(), Some("0.8.5"));
        assert_eq!(s.model_path.as_deref(), Some("/models/qwen"));
        assert_eq!(s.memory_usage_gib, Some(14.9));
        assert_eq!(s.loading_time_sec, Some(41.2));
        assert_eq!(s.kv_cache_size_tokens, Some(123_456));
        assert_eq!(s.warnings, ["WARNING something odd"]);
    }
}
