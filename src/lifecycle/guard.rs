//! What a model's `engine_args` and `engine_env` may not touch: the flags and variables through
//! which the gateway controls its engines (address, port, API key, which model is served, TLS),
//! and the variables that would load foreign code into the engine process. Refused at create
//! and PATCH with a 400 naming them (Cortex only warned, in dry-run, and never enforced its
//! protected variables).

/// Flags the gateway sets itself, or that would serve something else than the model's files.
const OWNED_FLAGS: [&str; 22] = [
    "--host",
    "--port",
    "--api-key",
    "--api-key-file",
    "--model",
    "-m",
    "--served-model-name",
    "--alias",
    "-a",
    "--root-path",
    "--uds",
    "--model-url",
    "-mu",
    "--hf-repo",
    "-hf",
    "-hfr",
    "--hf-file",
    "-hff",
    "--path",
    "-h",
    "--help",
    "--version",
];

/// Environment variables the gateway sets itself or that carry secrets it manages.
const OWNED_ENV: [&str; 8] = [
    "INFERGATE_ENGINE",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "VLLM_API_KEY",
    "LLAMA_API_KEY",
    "HF_HUB_OFFLINE",
];

/// llama-server reads `LLAMA_ARG_<FLAG>` for its flags: these shadow owned flags.
const OWNED_LLAMA_ARGS: [&str; 8] = [
    "HOST",
    "PORT",
    "API_KEY",
    "API_KEY_FILE",
    "MODEL",
    "ALIAS",
    "MODEL_URL",
    "HF_REPO",
];

/// Variables that make a process load code from elsewhere.
const CODE_LOADING_ENV: [&str; 7] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
];

/// Flags whose value names a file or folder: it must lie inside the models directory (a
/// relative path is resolved there before the engine starts).
const PATH_FLAGS: [&str; 12] = [
    "--download-dir",
    "--chat-template",
    "--chat-template-file",
    "--log-file",
    "--slot-save-path",
    "--model-draft",
    "-md",
    "--mmproj",
    "--grammar-file",
    "--lora",
    "--tokenizer",
    "--hf-config-path",
];

/// Why `flag` may not be given as an extra argument, if it may not. Flags are compared as the
/// engines read them: vLLM takes `_` for `-`, and unambiguous abbreviations of long flags.
pub fn forbidden_flag(flag: &str) -> Option<&'static str> {
    let flag = flag.replace('_', "-");
    if OWNED_FLAGS.contains(&flag.as_str()) {
        Some("set by the gateway")
    } else if flag.starts_with("--ssl") {
        Some("TLS between the gateway and its engines is the gateway's")
    } else if flag == "--config" || flag == "--lora-modules" {
        Some("it names files whose options the gateway cannot check")
    } else if flag.starts_with("--")
        && OWNED_FLAGS
            .iter()
            .any(|owned| owned.starts_with("--") && owned.starts_with(flag.as_str()))
    {
        Some("an abbreviation of a flag set by the gateway")
    } else {
        None
    }
}

/// Whether `flag`'s value is a path (held to the models directory): one of the path flags, or
/// an abbreviation of one (vLLM's parser accepts unique prefixes).
pub fn path_flag(flag: &str) -> bool {
    let flag = flag.replace('_', "-");
    PATH_FLAGS.contains(&flag.as_str())
        || (flag.starts_with("--")
            && flag.len() > 2
            && PATH_FLAGS
                .iter()
                .any(|p| p.starts_with("--") && p.starts_with(flag.as_str())))
}

/// Why `key` may not be set in the engine's environment, if it may not.
pub fn protected_env(key: &str) -> Option<&'static str> {
    let llama_arg = key.strip_prefix("LLAMA_ARG_");
    let owned_llama_arg =
        llama_arg.is_some_and(|arg| OWNED_LLAMA_ARGS.contains(&arg) || arg.starts_with("SSL"));
    if OWNED_ENV.contains(&key) || owned_llama_arg {
        Some("set by the gateway")
    } else if llama_arg.is_some() {
        Some("llama-server reads it as a flag: give the flag in engine_args, where it is checked")
    } else if key == "HF_ENDPOINT" {
        Some("would send the model's Hugging Face token to another host")
    } else if CODE_LOADING_ENV.contains(&key) {
        Some("would load code from outside the engine")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_flags_and_variables_are_refused() {
        for flag in [
            "--port",
            "--host",
            "--api-key",
            "--api_key",
            "--served_model_name",
            "--hos",
            "--api-k",
            "-m",
            "--ssl-keyfile",
            "--alias",
            "--config",
        ] {
            assert!(forbidden_flag(flag).is_some(), "{flag}");
        }
        for flag in ["--max-model-len", "--ctx-size", "--portal", "-ngl"] {
            assert!(forbidden_flag(flag).is_none(), "{flag}");
        }
        assert!(path_flag("--download_dir") && path_flag("-md") && !path_flag("--max-model-len"));
        // vLLM's parser takes a unique prefix for the whole flag.
        assert!(path_flag("--download-d") && path_flag("--chat-template-f") && !path_flag("--"));
        for key in [
            "VLLM_API_KEY",
            "CUDA_VISIBLE_DEVICES",
            "LLAMA_ARG_PORT",
            "LLAMA_ARG_SSL_KEY_FILE",
            "LD_PRELOAD",
            "PYTHONPATH",
            "LLAMA_ARG_CTX_SIZE",
            "LLAMA_ARG_MMPROJ",
            "HF_ENDPOINT",
        ] {
            assert!(protected_env(key).is_some(), "{key}");
        }
        for key in [
            "NCCL_P2P_DISABLE",
            "VLLM_LOGGING_LEVEL",
            "HF_HUB_ENABLE_HF_TRANSFER",
        ] {
            assert!(protected_env(key).is_none(), "{key}");
        }
    }
}
