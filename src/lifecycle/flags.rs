//! The flags vLLM (`vllm serve`) and llama-server take, as of their 2025 releases, so that a
//! dry-run can say which `engine_args` flag an engine would not know and which known flag is
//! nearest. The lists can lag a new release: an unknown flag is a warning, never an error.

use super::record::EngineType;

const VLLM: &[&str] = &[
    "--additional-config",
    "--allow-credentials",
    "--allowed-headers",
    "--allowed-local-media-path",
    "--allowed-methods",
    "--allowed-origins",
    "--api-key",
    "--api-server-count",
    "--async-scheduling",
    "--block-size",
    "--calculate-kv-scales",
    "--chat-template",
    "--chat-template-content-format",
    "--code-revision",
    "--collect-detailed-traces",
    "--compilation-config",
    "--config-format",
    "--convert",
    "--cpu-offload-gb",
    "--cuda-graph-sizes",
    "--data-parallel-address",
    "--data-parallel-rpc-port",
    "--data-parallel-size",
    "--data-parallel-size-local",
    "--device",
    "--disable-async-output-proc",
    "--disable-cascade-attn",
    "--disable-custom-all-reduce",
    "--disable-fastapi-docs",
    "--disable-frontend-multiprocessing",
    "--disable-log-requests",
    "--disable-log-stats",
    "--disable-mm-preprocessor-cache",
    "--disable-sliding-window",
    "--distributed-executor-backend",
    "--download-dir",
    "--dtype",
    "--enable-auto-tool-choice",
    "--enable-chunked-prefill",
    "--enable-expert-parallel",
    "--enable-force-include-usage",
    "--enable-log-outputs",
    "--enable-log-requests",
    "--enable-lora",
    "--enable-lora-bias",
    "--enable-prefix-caching",
    "--enable-prompt-tokens-details",
    "--enable-reasoning",
    "--enable-request-id-headers",
    "--enable-server-load-tracking",
    "--enable-sleep-mode",
    "--enable-ssl-refresh",
    "--enforce-eager",
    "--fully-sharded-loras",
    "--generation-config",
    "--gpu-memory-utilization",
    "--guided-decoding-backend",
    "--headless",
    "--hf-config-path",
    "--hf-overrides",
    "--hf-token",
    "--host",
    "--ignore-patterns",
    "--kv-cache-dtype",
    "--kv-transfer-config",
    "--limit-mm-per-prompt",
    "--load-format",
    "--logits-processors",
    "--long-prefill-token-threshold",
    "--lora-dtype",
    "--lora-extra-vocab-size",
    "--lora-modules",
    "--max-cpu-loras",
    "--max-cudagraph-capture-size",
    "--max-log-len",
    "--max-logprobs",
    "--max-long-partial-prefills",
    "--max-lora-rank",
    "--max-loras",
    "--max-model-len",
    "--max-num-batched-tokens",
    "--max-num-partial-prefills",
    "--max-num-seqs",
    "--max-parallel-loading-workers",
    "--max-seq-len-to-capture",
    "--middleware",
    "--mm-encoder-tp-mode",
    "--mm-processor-kwargs",
    "--model",
    "--model-impl",
    "--model-loader-extra-config",
    "--num-gpu-blocks-override",
    "--num-scheduler-steps",
    "--otlp-traces-endpoint",
    "--override-generation-config",
    "--override-pooler-config",
    "--pipeline-parallel-size",
    "--port",
    "--preemption-mode",
    "--prefix-caching-hash-algo",
    "--pt-load-map-location",
    "--qlora-adapter-name-or-path",
    "--quantization",
    "--reasoning-parser",
    "--response-role",
    "--return-tokens-as-token-ids",
    "--revision",
    "--root-path",
    "--rope-scaling",
    "--rope-theta",
    "--runner",
    "--scheduler-cls",
    "--scheduling-policy",
    "--seed",
    "--served-model-name",
    "--speculative-config",
    "--ssl-ca-certs",
    "--ssl-cert-reqs",
    "--ssl-certfile",
    "--ssl-keyfile",
    "--structured-outputs-config",
    "--swap-space",
    "--task",
    "--tensor-parallel-size",
    "--tokenizer",
    "--tokenizer-mode",
    "--tokenizer-pool-size",
    "--tokenizer-revision",
    "--tool-call-parser",
    "--tool-parser-plugin",
    "--trust-remote-code",
    "--uds",
    "--uvicorn-log-level",
    "--worker-cls",
    "-tp",
    "-pp",
    "-dp",
    "-q",
];

const LLAMA: &[&str] = &[
    "-a",
    "--alias",
    "--api-key",
    "--api-key-file",
    "--api-prefix",
    "-b",
    "--batch-size",
    "-c",
    "--ctx-size",
    "--cache-ram",
    "-cram",
    "--cache-reuse",
    "--cache-type-k",
    "-ctk",
    "--cache-type-v",
    "-ctv",
    "--chat-template",
    "--chat-template-file",
    "--chat-template-kwargs",
    "--check-tensors",
    "--cont-batching",
    "-cb",
    "--context-shift",
    "--cpu-moe",
    "--ctx-size-draft",
    "-cd",
    "--defrag-thold",
    "-dt",
    "--device",
    "-dev",
    "--device-draft",
    "-devd",
    "--draft-max",
    "--draft-min",
    "--draft-p-min",
    "--embedding",
    "--embeddings",
    "--escape",
    "-e",
    "--flash-attn",
    "-fa",
    "--frequency-penalty",
    "--gpu-layers",
    "--gpu-layers-draft",
    "-ngl",
    "-ngld",
    "--grammar",
    "--grammar-file",
    "--hf-file",
    "-hff",
    "--hf-repo",
    "-hf",
    "--hf-token",
    "-hft",
    "--host",
    "--jinja",
    "--json-schema",
    "-j",
    "--keep",
    "--kv-unified",
    "-kvu",
    "--log-colors",
    "--log-disable",
    "--log-file",
    "--log-prefix",
    "--log-timestamps",
    "--lora",
    "--lora-init-without-apply",
    "--lora-scaled",
    "--main-gpu",
    "-mg",
    "--metrics",
    "--min-p",
    "--mlock",
    "--mmproj",
    "--mmproj-url",
    "--model",
    "-m",
    "--model-draft",
    "-md",
    "--n-cpu-moe",
    "--n-gpu-layers",
    "--n-predict",
    "-n",
    "--no-cont-batching",
    "-nocb",
    "--no-context-shift",
    "--no-escape",
    "--no-kv-offload",
    "-nkvo",
    "--no-mmap",
    "--no-mmproj",
    "--no-mmproj-offload",
    "--no-slots",
    "--no-warmup",
    "--no-webui",
    "--numa",
    "--offline",
    "--override-kv",
    "--override-tensor",
    "-ot",
    "--parallel",
    "-np",
    "--path",
    "--poll",
    "--pooling",
    "--port",
    "--presence-penalty",
    "--props",
    "--reasoning-budget",
    "--reasoning-format",
    "--repeat-penalty",
    "--rerank",
    "--reranking",
    "--rope-freq-base",
    "--rope-freq-scale",
    "--rope-scale",
    "--rope-scaling",
    "--seed",
    "-s",
    "--slot-prompt-similarity",
    "--slot-save-path",
    "--slots",
    "--special",
    "--spec-replace",
    "--split-mode",
    "-sm",
    "--spm-infill",
    "--ssl-cert-file",
    "--ssl-key-file",
    "--swa-full",
    "--temp",
    "--tensor-split",
    "-ts",
    "--threads",
    "-t",
    "--threads-batch",
    "-tb",
    "--threads-http",
    "--timeout",
    "-to",
    "--top-k",
    "--top-p",
    "--ubatch-size",
    "-ub",
    "--verbose",
    "-v",
    "--verbosity",
    "-lv",
    "--webui",
    "--yarn-orig-ctx",
];

fn known(engine: EngineType) -> &'static [&'static str] {
    match engine {
        EngineType::Vllm => VLLM,
        EngineType::Llamacpp => LLAMA,
    }
}

/// Whether `engine` takes `flag` (`_` for `-`; vLLM also takes `--no-<flag>` of its switches
/// and unique prefixes).
pub fn is_known(engine: EngineType, flag: &str) -> bool {
    let flag = flag.replace('_', "-");
    let list = known(engine);
    if list.contains(&flag.as_str()) {
        return true;
    }
    if engine == EngineType::Vllm {
        if let Some(rest) = flag.strip_prefix("--no-") {
            return list.contains(&format!("--{rest}").as_str());
        }
        let prefixed = list.iter().filter(|k| k.starts_with(flag.as_str())).count();
        return flag.len() > 3 && prefixed == 1;
    }
    false
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The known flag nearest to an unknown one, if one is near enough to be meant.
pub fn nearest(engine: EngineType, flag: &str) -> Option<&'static str> {
    let flag = flag.replace('_', "-");
    let limit = (flag.len() / 4).max(2);
    known(engine)
        .iter()
        .map(|k| (distance(&flag, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_known_and_typos_find_their_flag() {
        use EngineType::*;
        for f in [
            "--max-model-len",
            "--max_model_len",
            "--no-enable-prefix-caching",
            "--max-model-l",
        ] {
            assert!(is_known(Vllm, f), "{f}");
        }
        assert!(is_known(Llamacpp, "-ngl") && !is_known(Llamacpp, "--max-model-len"));
        assert!(!is_known(Vllm, "--max-modle-len"));
        assert_eq!(nearest(Vllm, "--max-modle-len"), Some("--max-model-len"));
        assert_eq!(
            nearest(Vllm, "--gpu-memory-utilisation"),
            Some("--gpu-memory-utilization")
        );
        assert_eq!(nearest(Llamacpp, "--ctx_sise"), Some("--ctx-size"));
        assert_eq!(nearest(Vllm, "--frobnicate-everything"), None);
    }
}
