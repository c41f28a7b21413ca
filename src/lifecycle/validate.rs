//! Checking a model's configuration before it is saved: every problem is found and named in one
//! 400 (`field: what is wrong`), so an operator fixes a form in one round.

use super::guard::{forbidden_flag, path_flag, protected_env};
use super::paths::confined;
use super::record::{ArgType, EngineArg, EngineType, ModelSpec};
use std::path::Path;

const MAX_NAME: usize = 255;
const MAX_TEXT: usize = 4096;
const MAX_ARGS: usize = 64;
const MAX_ENV: usize = 64;
const MAX_GPUS: usize = 64;
const MAX_STARTUP_SECS: u64 = 24 * 3600;

/// vLLM's `--dtype` values.
const DTYPES: [&str; 6] = ["auto", "half", "float16", "bfloat16", "float", "float32"];
/// llama.cpp's KV cache types (`--cache-type-k`, `--cache-type-v`).
const LLAMA_CACHE_TYPES: [&str; 9] = [
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
];

/// The problems found so far.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, field: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{field}: {what}"));
    }

    fn check(&mut self, ok: bool, field: &str, what: &str) {
        if !ok {
            self.add(field, what);
        }
    }
}

/// Every problem with `spec`, joined into one message; `models_dir` is where its paths must
/// stay.
pub fn check(spec: &ModelSpec, models_dir: &Path) -> Result<(), String> {
    let p = problems(spec, models_dir);
    if p.is_empty() {
        Ok(())
    } else {
        Err(p.join("; "))
    }
}

/// Every problem with `spec`, one `field: what is wrong` each.
pub fn problems(spec: &ModelSpec, models_dir: &Path) -> Vec<String> {
    let mut p = Problems::default();
    names(spec, &mut p);
    source(spec, models_dir, &mut p);
    engine_options(spec, &mut p);
    for (i, arg) in spec.engine_args.iter().enumerate() {
        engine_arg(&format!("engine_args[{i}]"), arg, models_dir, &mut p);
    }
    p.check(
        spec.engine_args.len() <= MAX_ARGS,
        "engine_args",
        "at most 64 entries",
    );
    env(spec, &mut p);
    p.0
}

fn names(spec: &ModelSpec, p: &mut Problems) {
    for (field, value) in [
        ("name", &spec.name),
        ("served_model_name", &spec.served_model_name),
    ] {
        let ok = !value.trim().is_empty()
            && value.trim() == value
            && value.chars().count() <= MAX_NAME
            && !value.chars().any(char::is_control);
        p.check(
            ok,
            field,
            "1 to 255 characters, no control characters or surrounding spaces",
        );
    }
    if let Some(image) = &spec.engine_image {
        let ok = !image.is_empty()
            && image.len() <= MAX_NAME
            && image
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
        p.check(ok, "engine_image", "an image reference (registry/name:tag)");
    }
    if let Some(gpus) = &spec.selected_gpus {
        let mut seen = gpus.clone();
        seen.sort_unstable();
        seen.dedup();
        p.check(
            !gpus.is_empty() && gpus.len() <= MAX_GPUS && seen.len() == gpus.len(),
            "selected_gpus",
            "1 to 64 distinct GPU indices (leave it out for all GPUs)",
        );
    }
    if let Some(var) = &spec.hf_token_env {
        // Only a variable meant for Hugging Face: the gateway's other variables (its store's
        // password, its admin secret) are not an engine's to read.
        p.check(
            env_name(var) && (var.starts_with("HF_") || var.starts_with("HUGGING_FACE_")),
            "hf_token_env",
            "the name of a variable beginning HF_ or HUGGING_FACE_",
        );
    }
    if let Some(node) = &spec.node {
        p.check(
            node_name(node),
            "node",
            "a node name: 1 to 255 letters, digits and . _ : -",
        );
    }
    if let Some(secs) = spec.startup_timeout_sec {
        p.check(
            (1..=MAX_STARTUP_SECS).contains(&secs),
            "startup_timeout_sec",
            "1 to 86400 seconds",
        );
    }
}

/// A `[runner] node` name (by default `host:port`).
pub fn node_name(s: &str) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Where the weights come from: a Hub repository or a path in the models directory.
fn source(spec: &ModelSpec, models_dir: &Path, p: &mut Problems) {
    match (&spec.repo_id, &spec.local_path) {
        (Some(_), Some(_)) => p.add("repo_id", "give repo_id or local_path, not both"),
        (None, None) => p.add("local_path", "give local_path (or repo_id for vLLM)"),
        (Some(repo), None) => {
            p.check(
                repo_id(repo),
                "repo_id",
                "a Hugging Face repository id (`org/name`)",
            );
            p.check(
                spec.engine_type == EngineType::Vllm,
                "repo_id",
                "llama.cpp serves local GGUF files only: use local_path",
            );
        }
        (None, Some(path)) => {
            if let Err(e) = confined(models_dir, path) {
                p.add("local_path", e);
            }
        }
    }
    // A tokenizer or config is a Hub repository or a path in the models directory; as a path
    // it is held to the same rules.
    for (field, value) in [
        ("tokenizer", &spec.tokenizer),
        ("hf_config_path", &spec.hf_config_path),
    ] {
        if let Some(v) = value {
            if !repo_id(v) {
                if let Err(e) = confined(models_dir, v) {
                    p.add(field, format!("not a repository id, and as a path it {e}"));
                }
            }
        }
    }
}

/// A Hub repository id (see [`crate::modelfiles::hub::repo_id`]).
pub(super) fn repo_id(id: &str) -> bool {
    crate::modelfiles::hub::repo_id(id)
}

/// Options of one engine set on a model of the other are refused, and values are checked.
fn engine_options(spec: &ModelSpec, p: &mut Problems) {
    let vllm_set: Vec<&str> = [
        ("dtype", spec.dtype.is_some()),
        ("tp_size", spec.tp_size.is_some()),
        (
            "pipeline_parallel_size",
            spec.pipeline_parallel_size.is_some(),
        ),
        (
            "gpu_memory_utilization",
            spec.gpu_memory_utilization.is_some(),
        ),
        ("max_model_len", spec.max_model_len.is_some()),
        ("max_num_seqs", spec.max_num_seqs.is_some()),
        (
            "max_num_batched_tokens",
            spec.max_num_batched_tokens.is_some(),
        ),
        ("kv_cache_dtype", spec.kv_cache_dtype.is_some()),
        ("quantization", spec.quantization.is_some()),
        ("block_size", spec.block_size.is_some()),
        (
            "enable_prefix_caching",
            spec.enable_prefix_caching.is_some(),
        ),
        (
            "enable_chunked_prefill",
            spec.enable_chunked_prefill.is_some(),
        ),
        ("enforce_eager", spec.enforce_eager.is_some()),
        ("trust_remote_code", spec.trust_remote_code.is_some()),
        ("cpu_offload_gb", spec.cpu_offload_gb.is_some()),
        ("tokenizer", spec.tokenizer.is_some()),
        ("hf_config_path", spec.hf_config_path.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let llama_set: Vec<&str> = [
        ("ngl", spec.ngl.is_some()),
        ("context_size", spec.context_size.is_some()),
        ("batch_size", spec.batch_size.is_some()),
        ("ubatch_size", spec.ubatch_size.is_some()),
        ("threads", spec.threads.is_some()),
        ("parallel_slots", spec.parallel_slots.is_some()),
        ("tensor_split", spec.tensor_split.is_some()),
        ("flash_attention", spec.flash_attention.is_some()),
        ("cache_type_k", spec.cache_type_k.is_some()),
        ("cache_type_v", spec.cache_type_v.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let (foreign, other) = match spec.engine_type {
        EngineType::Vllm => (llama_set, "llamacpp"),
        EngineType::Llamacpp => (vllm_set, "vllm"),
    };
    for field in foreign {
        p.add(field, format!("an option of {other} models only"));
    }

    if let Some(d) = &spec.dtype {
        p.check(
            DTYPES.contains(&d.as_str()),
            "dtype",
            "one of auto, half, float16, bfloat16, float, float32",
        );
    }
    let positive = [
        ("tp_size", spec.tp_size.map(u64::from)),
        (
            "pipeline_parallel_size",
            spec.pipeline_parallel_size.map(u64::from),
        ),
        ("max_model_len", spec.max_model_len),
        ("max_num_seqs", spec.max_num_seqs),
        ("max_num_batched_tokens", spec.max_num_batched_tokens),
        ("block_size", spec.block_size.map(u64::from)),
        ("context_size", spec.context_size),
        ("batch_size", spec.batch_size),
        ("ubatch_size", spec.ubatch_size),
        ("threads", spec.threads.map(u64::from)),
        ("parallel_slots", spec.parallel_slots.map(u64::from)),
    ];
    for (field, value) in positive {
        if value == Some(0) {
            p.add(field, "must be at least 1");
        }
    }
    if let Some(u) = spec.gpu_memory_utilization {
        p.check(
            u > 0.0 && u <= 1.0,
            "gpu_memory_utilization",
            "a fraction above 0 and at most 1",
        );
    }
    if let Some(gb) = spec.cpu_offload_gb {
        p.check(gb.is_finite() && gb >= 0.0, "cpu_offload_gb", "0 or more");
    }
    for (field, value) in [
        ("kv_cache_dtype", &spec.kv_cache_dtype),
        ("quantization", &spec.quantization),
    ] {
        if let Some(v) = value {
            p.check(
                token(v),
                field,
                "a name of letters, digits, `_`, `-` or `.`",
            );
        }
    }
    for (field, value) in [
        ("cache_type_k", &spec.cache_type_k),
        ("cache_type_v", &spec.cache_type_v),
    ] {
        if let Some(v) = value {
            p.check(
                LLAMA_CACHE_TYPES.contains(&v.as_str()),
                field,
                "one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1",
            );
        }
    }
    if let Some(split) = &spec.tensor_split {
        let ok = split.split(',').all(|part| {
            part.trim()
                .parse::<f64>()
                .is_ok_and(|v| v.is_finite() && v >= 0.0)
        }) && split.len() <= MAX_NAME;
        p.check(ok, "tensor_split", "proportions per GPU, e.g. `3,1`");
    }
}

fn token(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// One extra flag: a well-formed flag the gateway does not own, with a value of its type.
fn engine_arg(field: &str, arg: &EngineArg, models_dir: &Path, p: &mut Problems) {
    let flag = arg.flag.as_str();
    let well_formed = (2..=64).contains(&flag.len())
        && flag.starts_with('-')
        && flag.trim_start_matches('-').len() + 2 >= flag.len()
        && flag
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && flag
            .trim_start_matches('-')
            .starts_with(|c: char| c.is_ascii_alphanumeric());
    if !well_formed {
        p.add(
            field,
            format!("{flag:?} is not a flag (`--name` or `-n`; the value goes in `value`)"),
        );
        return;
    }
    if let Some(why) = forbidden_flag(flag) {
        p.add(field, format!("{flag} is forbidden ({why})"));
    }
    if path_flag(flag) {
        // A template given inline (vLLM's --chat-template) is no path.
        let inline =
            flag.contains("chat-template") && arg.value.as_str().is_some_and(|v| v.contains('{'));
        match arg.value.as_str() {
            _ if inline => {}
            Some(v) => {
                if let Err(e) = confined(models_dir, v) {
                    p.add(field, format!("the path of {flag} {e}"));
                }
            }
            None => p.add(field, format!("the value of {flag} must be a path")),
        }
    }
    use serde_json::Value;
    let text_ok = |v: &Value| match v {
        Value::String(s) => s.len() <= MAX_TEXT && !s.contains('\0'),
        Value::Number(_) => true,
        _ => false,
    };
    // A value the engine's parser would read as a flag of its own (`["5", "--host", ...]`)
    // could set what the gateway owns: only negative numbers may start with `-`.
    let texts: Vec<&str> = match &arg.value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    for t in texts {
        if t.starts_with('-') && t.parse::<f64>().is_err() {
            p.add(
                field,
                format!("the value {t:?} of {flag} would be read as a flag"),
            );
        }
    }
    let ok = match arg.kind {
        ArgType::Bool | ArgType::Flag => arg.value.is_boolean(),
        ArgType::Int => arg.value.is_i64() || arg.value.is_u64(),
        ArgType::Float => arg.value.as_f64().is_some_and(f64::is_finite),
        ArgType::String => text_ok(&arg.value),
        ArgType::List | ArgType::StringList => arg
            .value
            .as_array()
            .is_some_and(|items| items.len() <= MAX_ARGS && items.iter().all(text_ok)),
    };
    let expected = match arg.kind {
        ArgType::Bool | ArgType::Flag => "true or false",
        ArgType::Int => "an integer",
        ArgType::Float => "a number",
        ArgType::String => "a string of at most 4096 bytes",
        ArgType::List | ArgType::StringList => "a list of at most 64 strings or numbers",
    };
    p.check(
        ok,
        field,
        &format!("the value of {flag} must be {expected}"),
    );
}

fn env(spec: &ModelSpec, p: &mut Problems) {
    p.check(
        spec.engine_env.len() <= MAX_ENV,
        "engine_env",
        "at most 64 entries",
    );
    let mut seen = std::collections::HashSet::new();
    for (i, var) in spec.engine_env.iter().enumerate() {
        let field = format!("engine_env[{i}]");
        if !env_name(&var.key) {
            p.add(&field, format!("{:?} is not a variable name", var.key));
            continue;
        }
        if let Some(why) = protected_env(&var.key) {
            p.add(&field, format!("{} is protected ({why})", var.key));
        }
        if !seen.insert(var.key.as_str()) {
            p.add(&field, format!("{} is set twice", var.key));
        }
        p.check(
            var.value.len() <= MAX_TEXT && !var.value.contains('\0'),
            &field,
            "a value of at most 4096 bytes without NUL",
        );
    }
}

/// An environment variable name: a letter or `_`, then letters, digits and `_` (at most 128).
fn env_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::record::EnvVar;

    fn spec(json: serde_json::Value) -> ModelSpec {
        serde_json::from_value(json).unwrap()
    }

    fn problems(json: serde_json::Value) -> String {
        let dir = tempfile::tempdir().unwrap();
        check(&spec(json), dir.path()).unwrap_err()
    }

    #[test]
    fn a_sound_model_passes() {
        let dir = tempfile::tempdir().unwrap();
        for json in [
            serde_json::json!({"name":"Qwen 7B","served_model_name":"qwen-7b","local_path":"qwen",
                "dtype":"bfloat16","tp_size":2,"gpu_memory_utilization":0.85,"max_model_len":32768,
                "enable_prefix_caching":false,"engine_args":[{"flag":"--max-logprobs","type":"int","value":5}],
                "engine_env":[{"key":"NCCL_P2P_DISABLE","value":"1"}],"selected_gpus":[0,1],
                "node":"gpu-1.example:8080"}),
            serde_json::json!({"name":"m","served_model_name":"org/m","repo_id":"Qwen/Qwen2.5-7B-Instruct",
                "tokenizer":"Qwen/Qwen2.5-7B-Instruct","hf_token_env":"HF_READ_TOKEN"}),
            serde_json::json!({"name":"g","served_model_name":"g","engine_type":"llamacpp",
                "local_path":"g/model-Q4_K_M.gguf","ngl":0,"context_size":8192,"tensor_split":"3,1",
                "cache_type_k":"q8_0","flash_attention":true}),
        ] {
            assert_eq!(check(&spec(json.clone()), dir.path()), Ok(()), "{json}");
        }
    }

    #[test]
    fn every_problem_is_named() {
        let all = problems(serde_json::json!({"name":" ","served_model_name":"a\u{7}",
            "local_path":"../x","engine_args":[{"flag":"--port","type":"int","value":1},
            {"flag":"--x=1","type":"bool","value":true},{"flag":"--y","type":"int","value":"z"},
            {"flag":"--api_key","type":"string","value":"k"},
            {"flag":"--download-dir","type":"string","value":"/root/.cache"},
            {"flag":"--max-logprobs","type":"list","value":["5","-1","--host"]},
            {"flag":"--download-d","type":"string","value":"/etc"}],
            "engine_env":[{"key":"VLLM_API_KEY","value":"k"},{"key":"LD_PRELOAD","value":"/x.so"},
            {"key":"1X","value":""},{"key":"A","value":""},{"key":"A","value":""},
            {"key":"LLAMA_ARG_MMPROJ","value":"/x"},{"key":"HF_ENDPOINT","value":"http://evil"}],
            "hf_token_env":"INFERGATE_ADMIN_API_SECRET",
            "ngl":3,"gpu_memory_utilization":1.5,"tp_size":0,"node":"gpu 1"}));
        for part in [
            "name: 1 to 255",
            "served_model_name: 1 to 255",
            "local_path: may not contain `..`",
            "engine_args[0]: --port is forbidden (set by the gateway)",
            "engine_args[1]: \"--x=1\" is not a flag",
            "engine_args[2]: the value of --y must be an integer",
            "engine_args[3]: --api_key is forbidden",
            "engine_args[4]: the path of --download-dir must be relative",
            "engine_env[0]: VLLM_API_KEY is protected (set by the gateway)",
            "engine_env[1]: LD_PRELOAD is protected (would load code",
            "engine_env[2]: \"1X\" is not a variable name",
            "engine_env[4]: A is set twice",
            "ngl: an option of llamacpp models only",
            "gpu_memory_utilization: a fraction",
            "tp_size: must be at least 1",
            "node: a node name",
            "engine_args[5]: the value \"--host\" of --max-logprobs would be read as a flag",
            "engine_args[6]: the path of --download-d must be relative",
            "engine_env[5]: LLAMA_ARG_MMPROJ is protected (llama-server reads it as a flag",
            "engine_env[6]: HF_ENDPOINT is protected (would send",
            "hf_token_env: the name of a variable beginning HF_",
        ] {
            assert!(all.contains(part), "{part} missing from: {all}");
        }
    }

    #[test]
    fn sources_and_engines_must_agree() {
        let base = serde_json::json!({"name":"m","served_model_name":"m"});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            problems(v)
        };
        assert!(with(serde_json::json!({})).contains("local_path: give local_path"));
        assert!(with(serde_json::json!({"repo_id":"a/b","local_path":"b"})).contains("not both"));
        assert!(
            with(serde_json::json!({"repo_id":"a/b","engine_type":"llamacpp"}))
                .contains("llama.cpp serves local GGUF files only")
        );
        for bad in ["../a", "a/b/c", "-a/b", "a--b/c", "a/b c"] {
            assert!(
                with(serde_json::json!({ "repo_id": bad })).contains("repo_id: a Hugging Face"),
                "{bad}"
            );
        }
        assert!(with(serde_json::json!({"local_path":"/etc"})).contains("not absolute"));
        assert!(
            with(serde_json::json!({"local_path":"m","tokenizer":"/etc/tok"}))
                .contains("tokenizer: not a repository id, and as a path it must be relative")
        );
        assert!(with(
            serde_json::json!({"local_path":"m","engine_type":"llamacpp","dtype":"half"})
        )
        .contains("dtype: an option of vllm models only"));
        assert!(with(
            serde_json::json!({"local_path":"m","engine_type":"llamacpp","cache_type_k":"q3"})
        )
        .contains("cache_type_k: one of"));
        let mut many =
            spec(serde_json::json!({"name":"m","served_model_name":"m","local_path":"m"}));
        many.engine_env = (0..65)
            .map(|i| EnvVar {
                key: format!("V{i}"),
                value: String::new(),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        assert!(check(&many, dir.path())
            .unwrap_err()
            .contains("engine_env: at most 64 entries"));
    }
}
