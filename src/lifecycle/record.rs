//! A managed model as stored: what the operator configured (`ModelSpec`, the body of create and
//! the result of a PATCH) and what the gateway tracks (`ModelRecord`: id, state, times). Field
//! names follow Cortex's model record (`shared/notes/cortex-models-system.md` §1), so its
//! clients read and write them unchanged; secrets are never among them (`hf_token_env` names an
//! environment variable of the gateway instead).

use serde::{Deserialize, Serialize};

/// Which engine serves the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineType {
    #[default]
    Vllm,
    Llamacpp,
}

impl EngineType {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineType::Vllm => "vllm",
            EngineType::Llamacpp => "llamacpp",
        }
    }
}

/// What the model does: text generation, or embeddings (vLLM's pooling runner, llama.cpp's
/// `--embeddings`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    #[default]
    Generate,
    Embed,
}

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    #[default]
    Stopped,
    Starting,
    Loading,
    Running,
    Stopping,
    Failed,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Stopped => "stopped",
            ModelState::Starting => "starting",
            ModelState::Loading => "loading",
            ModelState::Running => "running",
            ModelState::Stopping => "stopping",
            ModelState::Failed => "failed",
        }
    }

    /// An engine runs (or is being started or stopped) for the model, on its node.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ModelState::Starting | ModelState::Loading | ModelState::Running | ModelState::Stopping
        )
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ModelState::Stopped,
            ModelState::Starting,
            ModelState::Loading,
            ModelState::Running,
            ModelState::Stopping,
            ModelState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// How an extra engine flag is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArgType {
    /// The flag alone, when the value is true.
    Bool,
    /// Same as `bool`.
    Flag,
    /// The flag and the text.
    String,
    /// The flag and an integer.
    Int,
    /// The flag and a number.
    Float,
    /// The flag followed by each item.
    List,
    /// Same as `list`.
    StringList,
}

/// One extra engine flag (`engine_args`), appended to the command the gateway builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineArg {
    /// `--name` or `-n`, without `=value`.
    pub flag: String,
    #[serde(rename = "type")]
    pub kind: ArgType,
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
}

/// One extra environment variable of the engine (`engine_env`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

/// What the operator configures about a model: the body of `POST /admin/models`, and what a
/// PATCH (a JSON merge patch over it) produces. Engine options are those that map to a flag
/// (`shared/notes/cortex-models-system.md` §1.1, §1.2); an option of the other engine is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Display name.
    pub name: String,
    /// The name clients send as `model` (vLLM `--served-model-name`, llama.cpp `--alias`);
    /// unique among managed models.
    pub served_model_name: String,
    #[serde(default)]
    pub task: Task,
    #[serde(default)]
    pub engine_type: EngineType,
    /// A Hugging Face repository (`org/name`), downloaded by the engine. vLLM only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_id: Option<String>,
    /// A file or folder relative to `[runner] models_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// The Docker image (docker runner); the runner's default for the engine otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_image: Option<String>,
    /// GPU indices the engine may use; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_gpus: Option<Vec<u32>>,
    /// The gateway's environment variable holding a Hugging Face token for this model (the token
    /// itself is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_token_env: Option<String>,
    /// Longest wait from start to ready before the start counts as failed (default: the
    /// runner's, 600 s for vLLM and 300 s for llama.cpp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout_sec: Option<u64>,
    /// The gateway node that runs this model (the `[runner] node` of one instance): starts and
    /// applies sent to any instance are carried out there. Absent: the instance that receives
    /// the start runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Extra flags, after the ones the gateway builds.
    #[serde(default)]
    pub engine_args: Vec<EngineArg>,
    /// Extra environment variables.
    #[serde(default)]
    pub engine_env: Vec<EnvVar>,

    // vLLM options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_parallel_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_seqs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_batched_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// true: `--enable-prefix-caching`; false: `--no-enable-prefix-caching`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prefix_caching: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_chunked_prefill: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce_eager: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_remote_code: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_offload_gb: Option<f64>,
    /// A Hub repository or a path inside the models directory (GGUF weights on vLLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_config_path: Option<String>,

    // llama.cpp options.
    /// Layers offloaded to the GPU; 0 runs on the CPU (and stays 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ngl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubatch_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_slots: Option<u32>,
    /// Proportions per GPU, e.g. `3,1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_split: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_attention: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type_k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type_v: Option<String>,
}

/// A managed model as stored (the API shows `spec`'s fields at the top level).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: String,
    pub spec: ModelSpec,
    pub state: ModelState,
    /// Why the model failed, or what it is doing (`loading` …), when there is something to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_detail: Option<String>,
    /// The gateway node that runs (or last ran) its engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}
