//! The command line and environment of a model's engine, built from its record. One builder
//! serves every runner (and the dry-run): what it returns is exactly what is executed. The
//! engine's API key travels in its environment (`VLLM_API_KEY`, `LLAMA_API_KEY`), never on the
//! command line, which other local users can read.

use super::record::{ArgType, EngineArg, EngineType, ModelSpec, Task};

/// Where and how the engine listens.
#[derive(Debug, Clone)]
pub struct Listen<'a> {
    pub host: &'a str,
    pub port: u16,
    /// The engine's own key: the gateway sends it as its bearer.
    pub api_key: &'a str,
}

/// An engine's command line and the environment it adds to the runner's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Build the command. `program` is the runner's command for the engine (`["vllm", "serve"]`,
/// `["llama-server"]`); `weights` is the repository id or the resolved file or folder path;
/// `hf_token` the token read from the variable the model names, if any.
pub fn build(
    spec: &ModelSpec,
    program: &[String],
    weights: &str,
    listen: &Listen<'_>,
    hf_token: Option<&str>,
) -> EngineCommand {
    let mut a = Args(program.to_vec());
    let mut env = Vec::new();
    match spec.engine_type {
        EngineType::Vllm => {
            vllm(spec, weights, listen, &mut a);
            env.push(("VLLM_API_KEY".to_string(), listen.api_key.to_string()));
            if spec.local_path.is_some() {
                env.push(("HF_HUB_OFFLINE".to_string(), "1".to_string()));
            }
        }
        EngineType::Llamacpp => {
            llamacpp(spec, weights, listen, &mut a);
            env.push(("LLAMA_API_KEY".to_string(), listen.api_key.to_string()));
        }
    }
    for arg in &spec.engine_args {
        a.extra(arg);
    }
    if let Some(gpus) = &spec.selected_gpus {
        let list = gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), list));
    }
    if let Some(token) = hf_token {
        env.push(("HF_TOKEN".to_string(), token.to_string()));
    }
    env.extend(
        spec.engine_env
            .iter()
            .map(|v| (v.key.clone(), v.value.clone())),
    );
    EngineCommand { argv: a.0, env }
}

/// `vllm serve <weights> ...`: flags in the order of Cortex's builder, each only when set.
fn vllm(spec: &ModelSpec, weights: &str, listen: &Listen<'_>, a: &mut Args) {
    a.push(weights);
    a.pair("--host", listen.host);
    a.pair("--port", listen.port);
    a.pair("--served-model-name", &spec.served_model_name);
    if spec.task == Task::Embed {
        a.pair("--runner", "pooling");
    }
    a.opt("--tokenizer", &spec.tokenizer);
    a.opt("--hf-config-path", &spec.hf_config_path);
    a.opt("--dtype", &spec.dtype);
    a.opt("--tensor-parallel-size", &spec.tp_size.filter(|&n| n > 1));
    a.opt(
        "--pipeline-parallel-size",
        &spec.pipeline_parallel_size.filter(|&n| n > 1),
    );
    a.opt("--gpu-memory-utilization", &spec.gpu_memory_utilization);
    a.opt("--max-model-len", &spec.max_model_len);
    a.opt("--max-num-seqs", &spec.max_num_seqs);
    a.opt("--max-num-batched-tokens", &spec.max_num_batched_tokens);
    a.opt("--kv-cache-dtype", &spec.kv_cache_dtype);
    a.opt("--quantization", &spec.quantization);
    a.opt("--block-size", &spec.block_size);
    a.switch(
        spec.enable_prefix_caching,
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
    );
    a.switch(
        spec.enable_chunked_prefill,
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
    );
    if spec.enforce_eager == Some(true) {
        a.push("--enforce-eager");
    }
    if spec.trust_remote_code == Some(true) {
        a.push("--trust-remote-code");
    }
    a.opt(
        "--cpu-offload-gb",
        &spec.cpu_offload_gb.filter(|&gb| gb > 0.0),
    );
}

/// `llama-server -m <weights> ...`. Unset options are left to llama-server's own defaults;
/// `ngl` 0 is passed as 0 (CPU only).
fn llamacpp(spec: &ModelSpec, weights: &str, listen: &Listen<'_>, a: &mut Args) {
    a.pair("-m", weights);
    a.pair("--host", listen.host);
    a.pair("--port", listen.port);
    a.pair("--alias", &spec.served_model_name);
    a.opt("-ngl", &spec.ngl);
    a.opt("-c", &spec.context_size);
    a.opt("-b", &spec.batch_size);
    a.opt("-ub", &spec.ubatch_size);
    a.opt("-t", &spec.threads);
    a.opt("--parallel", &spec.parallel_slots);
    a.opt("--tensor-split", &spec.tensor_split);
    if let Some(on) = spec.flash_attention {
        a.pair("--flash-attn", if on { "on" } else { "off" });
    }
    a.opt("--cache-type-k", &spec.cache_type_k);
    a.opt("--cache-type-v", &spec.cache_type_v);
    if spec.task == Task::Embed {
        a.push("--embeddings");
    }
    // Engine metrics for monitoring.
    a.push("--metrics");
}

/// An argv under construction.
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, s: impl ToString) {
        self.0.push(s.to_string());
    }

    fn pair(&mut self, flag: &str, value: impl ToString) {
        self.push(flag);
        self.0.push(value.to_string());
    }

    fn opt<T: ToString>(&mut self, flag: &str, value: &Option<T>) {
        if let Some(v) = value {
            self.pair(flag, v.to_string());
        }
    }

    /// `on` when true, `off` when false, nothing when unset.
    fn switch(&mut self, value: Option<bool>, on: &str, off: &str) {
        match value {
            Some(true) => self.push(on),
            Some(false) => self.push(off),
            None => {}
        }
    }

    /// An `engine_args` entry (already validated).
    fn extra(&mut self, arg: &EngineArg) {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match arg.kind {
            ArgType::Bool | ArgType::Flag => {
                if arg.value.as_bool() == Some(true) {
                    self.push(&arg.flag);
                }
            }
            ArgType::List | ArgType::StringList => {
                self.push(&arg.flag);
                for item in arg.value.as_array().into_iter().flatten() {
                    self.push(text(item));
                }
            }
            ArgType::String | ArgType::Int | ArgType::Float => {
                if !arg.value.is_null() {
                    self.pair(&arg.flag, text(&arg.value));
                }
            }
        }
    }
}

/// A command line as one shell-readable string (arguments with spaces or quotes are quoted).
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> ModelSpec {
        serde_json::from_value(json).unwrap()
    }

    const LISTEN: Listen<'static> = Listen {
        host: "127.0.0.1",
        port: 20001,
        api_key: "k3y",
    };

    #[test]
    fn a_vllm_command_has_every_set_option_and_no_secret() {
        let s = spec(
            serde_json::json!({"name":"q","served_model_name":"qwen","local_path":"qwen",
            "task":"embed","dtype":"bfloat16","tp_size":2,"pipeline_parallel_size":1,
            "gpu_memory_utilization":0.85,"max_model_len":8192,"enable_prefix_caching":false,
            "enforce_eager":true,"trust_remote_code":false,"cpu_offload_gb":0.0,"selected_gpus":[2,3],
            "engine_args":[{"flag":"--max-logprobs","type":"int","value":5},
                {"flag":"--disable-log-stats","type":"bool","value":true},
                {"flag":"--cuda-graph-sizes","type":"list","value":[1,2,4]},
                {"flag":"--off","type":"flag","value":false}],
            "engine_env":[{"key":"NCCL_P2P_DISABLE","value":"1"}]}),
        );
        let program = vec!["vllm".to_string(), "serve".to_string()];
        let c = build(&s, &program, "/models/qwen", &LISTEN, Some("hf_tok"));
        assert_eq!(
            shell_line(&c.argv),
            "vllm serve /models/qwen --host 127.0.0.1 --port 20001 --served-model-name qwen \
             --runner pooling --dtype bfloat16 --tensor-parallel-size 2 \
             --gpu-memory-utilization 0.85 --max-model-len 8192 --no-enable-prefix-caching \
             --enforce-eager --max-logprobs 5 --disable-log-stats --cuda-graph-sizes 1 2 4"
        );
        assert!(!c
            .argv
            .iter()
            .any(|a| a.contains("k3y") || a.contains("hf_tok")));
        assert_eq!(
            c.env,
            [
                ("VLLM_API_KEY", "k3y"),
                ("HF_HUB_OFFLINE", "1"),
                ("CUDA_VISIBLE_DEVICES", "2,3"),
                ("HF_TOKEN", "hf_tok"),
                ("NCCL_P2P_DISABLE", "1"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn a_llamacpp_command_keeps_ngl_zero() {
        let s = spec(
            serde_json::json!({"name":"g","served_model_name":"g","engine_type":"llamacpp",
            "local_path":"g/m.gguf","ngl":0,"context_size":4096,"flash_attention":false,
            "cache_type_k":"q8_0","engine_args":[{"flag":"--chat-template","type":"string","value":"chatml"}]}),
        );
        let c = build(
            &s,
            &["llama-server".to_string()],
            "/models/g/m.gguf",
            &LISTEN,
            None,
        );
        assert_eq!(
            shell_line(&c.argv),
            "llama-server -m /models/g/m.gguf --host 127.0.0.1 --port 20001 --alias g -ngl 0 \
             -c 4096 --flash-attn off --cache-type-k q8_0 --metrics --chat-template chatml"
        );
        assert_eq!(c.env, [("LLAMA_API_KEY".to_string(), "k3y".to_string())]);
    }

    #[test]
    fn shell_lines_quote_what_needs_it() {
        let argv = ["a", "b c", "it's", ""].map(String::from);
        assert_eq!(shell_line(&argv), r"a 'b c' 'it'\''s' ''");
    }
}
