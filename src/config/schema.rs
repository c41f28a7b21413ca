//! The configuration schema. Unknown keys are rejected (`deny_unknown_fields`) so that a typo
//! never silently falls back to a default.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub affinity: AffinityConfig,
    pub routing: RoutingConfig,
    pub health: HealthConfig,
    pub pods: PodsConfig,
    pub auth: AuthConfig,
    pub usage: UsageConfig,
    pub audit: AuditConfig,
    pub runner: RunnerConfig,
    pub monitoring: MonitoringConfig,
    pub servers: Vec<ServerConfig>,
}

/// `[monitoring]`: host, GPU and engine figures for the admin API's system endpoints and the
/// gateway's `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Host, GPU and throughput samples are taken this often.
    pub sample_interval_secs: u64,
    /// Host samples kept for `/admin/system/host/trends`.
    pub history_minutes: u64,
    /// Every server in the routing table has its `/metrics` scraped this often (0: never).
    pub scrape_interval_secs: u64,
    /// A scrape that takes longer fails with its reason.
    pub scrape_timeout_ms: u64,
    /// Scrapes in flight at once.
    pub scrape_concurrency: usize,
    /// The filesystem whose size and use the summaries report.
    pub disk_path: std::path::PathBuf,
    /// node_exporter's metrics URL: host figures are read from it instead of in-process.
    pub node_exporter_url: Option<String>,
    /// dcgm-exporter's metrics URL: GPU figures are read from it, NVML fills what it lacks.
    pub dcgm_url: Option<String>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            sample_interval_secs: 5,
            history_minutes: 60,
            scrape_interval_secs: 5,
            scrape_timeout_ms: 2_000,
            scrape_concurrency: 16,
            disk_path: "/".into(),
            node_exporter_url: None,
            dcgm_url: None,
        }
    }
}

/// How managed models' engines are run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// No engines are run: model records can be kept, lifecycle calls answer 409.
    #[default]
    None,
    /// Engines run as child processes of the gateway.
    Process,
    /// Engines run as Docker containers (Docker Engine API on its unix socket).
    Docker,
}

impl RunnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::None => "none",
            RunnerKind::Process => "process",
            RunnerKind::Docker => "docker",
        }
    }
}

/// `[runner]`: managed models (the model lifecycle endpoints).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    pub kind: RunnerKind,
    /// Where model files live; a model's `local_path` is relative to it and may not leave it.
    pub models_dir: std::path::PathBuf,
    /// This instance's node name (models started here belong to it); empty: the host name.
    pub node: String,
    /// Loopback ports handed to engines (inclusive).
    pub port_min: u16,
    pub port_max: u16,
    /// After SIGTERM, an engine's process group gets this long before SIGKILL.
    pub stop_grace_secs: u64,
    /// A node that has sent no heartbeat for this long is lost: its active models are marked
    /// failed.
    pub node_lost_secs: u64,
    /// Lines of output kept per model (logs and diagnosis).
    pub log_lines: usize,
    /// Variables of the gateway's environment engines get besides the usual ones (process
    /// runner).
    pub pass_env: Vec<String>,
    /// The Docker Engine API socket (docker runner).
    pub docker_socket: std::path::PathBuf,
    /// The GPUs of this node and their memory, for dry-run estimates where no NVIDIA driver
    /// tells it.
    pub gpus: Vec<GpuConfig>,
    /// Longest wait for one answer of the Hugging Face Hub (`GET /admin/models/hf-config`).
    pub hub_timeout_secs: u64,
    /// Keys left out keep the engine's defaults.
    #[serde(deserialize_with = "EngineRunnerConfig::vllm_over_defaults")]
    pub vllm: EngineRunnerConfig,
    #[serde(deserialize_with = "EngineRunnerConfig::llamacpp_over_defaults")]
    pub llamacpp: EngineRunnerConfig,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            kind: RunnerKind::None,
            models_dir: "/var/lib/infergate/models".into(),
            node: String::new(),
            port_min: 20000,
            port_max: 20999,
            stop_grace_secs: 15,
            node_lost_secs: 10,
            log_lines: 5000,
            pass_env: Vec::new(),
            docker_socket: "/var/run/docker.sock".into(),
            gpus: Vec::new(),
            hub_timeout_secs: 10,
            vllm: EngineRunnerConfig::vllm(),
            llamacpp: EngineRunnerConfig::llamacpp(),
        }
    }
}

/// `[[runner.gpus]]`: one GPU of this node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    pub index: u32,
    /// Its memory in GiB (80 for an A100 80GB).
    pub memory_gib: f64,
    #[serde(default)]
    pub name: Option<String>,
}

/// `[runner.vllm]`, `[runner.llamacpp]`: how one engine is run.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRunnerConfig {
    /// The program and its first arguments (process runner); the model's flags follow.
    pub command: Vec<String>,
    /// The container's entrypoint (docker runner; empty: the image's own); the model's flags
    /// are its command. Unset: `["vllm", "serve"]` for vLLM, the image's own for llama.cpp.
    pub docker_entrypoint: Option<Vec<String>>,
    /// The default image (docker runner); a model's `engine_image` overrides it.
    pub image: String,
    /// Default wait from start to ready; a model's `startup_timeout_sec` overrides it.
    pub startup_timeout_secs: u64,
}

/// `[runner.<engine>]` as written: what it leaves out keeps the engine's default.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EngineRunnerKeys {
    command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    docker_entrypoint: Option<Option<Vec<String>>>,
    image: Option<String>,
    startup_timeout_secs: Option<u64>,
}

/// A key that is present (`Some`), as opposed to left out (`None`, by `default`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl EngineRunnerConfig {
    pub fn vllm() -> Self {
        Self {
            command: vec!["vllm".into(), "serve".into()],
            docker_entrypoint: None,
            image: "vllm/vllm-openai:latest".into(),
            startup_timeout_secs: 600,
        }
    }

    pub fn llamacpp() -> Self {
        Self {
            command: vec!["llama-server".into()],
            docker_entrypoint: None,
            image: "ghcr.io/ggml-org/llama.cpp:server-cuda".into(),
            startup_timeout_secs: 300,
        }
    }

    fn over(mut self, keys: EngineRunnerKeys) -> Self {
        if let Some(c) = keys.command {
            self.command = c;
        }
        if let Some(e) = keys.docker_entrypoint {
            self.docker_entrypoint = e;
        }
        if let Some(i) = keys.image {
            self.image = i;
        }
        if let Some(t) = keys.startup_timeout_secs {
            self.startup_timeout_secs = t;
        }
        self
    }

    fn vllm_over_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EngineRunnerKeys::deserialize(d).map(|k| Self::vllm().over(k))
    }

    fn llamacpp_over_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EngineRunnerKeys::deserialize(d).map(|k| Self::llamacpp().over(k))
    }
}

/// `[usage]`: per-request usage records.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    pub enabled: bool,
    pub retention_hours: u64,
    pub memory_max_records: usize,
    pub max_scan_records: usize,
    /// How long the last records get to reach the store at exit before they are spooled.
    pub exit_flush_secs: u64,
    /// Where records the store did not take at exit are spooled; empty: the upgrade socket's
    /// directory.
    pub spool_dir: String,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_hours: 168,
            memory_max_records: 1_000_000,
            max_scan_records: 1_000_000,
            exit_flush_secs: 10,
            spool_dir: String::new(),
        }
    }
}

/// `[audit]`: the record of every admin change (`GET /admin/audit`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Records are kept this long.
    pub retention_hours: u64,
    /// The embedded store keeps at most this many records (oldest dropped first).
    pub memory_max_records: usize,
    /// A query reading more records than this is refused (400).
    pub max_scan_records: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_hours: 2160,
            memory_max_records: 100_000,
            max_scan_records: 1_000_000,
        }
    }
}

/// Whether the data plane requires an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyAuth {
    /// Every request needs a live key with the endpoint's scope.
    #[default]
    Required,
    /// No key is checked (a gateway behind another authenticating layer, or a benchmark).
    Off,
}

/// `[auth]`: API keys on the data plane.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub proxy: ProxyAuth,
    /// How old the key cache may be (since it last read every key from the store) before keys
    /// it cannot confirm are refused with 503: the bound of a partition from Valkey.
    pub max_stale_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyAuth::default(),
            max_stale_secs: 300,
        }
    }
}

/// `[proxy]`: the OpenAI-compatible data-plane listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: String,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub client_read_buffer_bytes: usize,
    pub connect_timeout_ms: u64,
    pub read_timeout_secs: u64,
    pub write_timeout_secs: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_size: usize,
    pub max_retries: usize,
    pub retry_after_secs: u64,
    pub ca_file: Option<String>,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    /// A request head must arrive whole within this, from its first bytes.
    pub header_timeout_secs: u64,
    /// Longest pause between two reads of a request body.
    pub body_timeout_secs: u64,
    /// A body must arrive at least this fast on average once header_timeout_secs have passed
    /// since it started (0: no minimum).
    pub body_min_rate_bytes_per_sec: u64,
    /// An idle keep-alive client connection is closed after this long.
    pub keepalive_timeout_secs: u64,
    /// Client connections open at once; beyond, a new one is answered 503 and closed.
    pub max_connections: usize,
    /// PEM certificate chain and private key: the listener speaks TLS (both or neither).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// The Unix socket over which a new process takes the listening sockets from this one
    /// (binary upgrade); empty: `$XDG_RUNTIME_DIR/infergate/upgrade.sock`, else
    /// `/tmp/infergate-<uid>/upgrade.sock`. Its directory must be the gateway user's alone.
    pub upgrade_sock: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            threads: 2,
            max_body_bytes: 32 * 1024 * 1024,
            client_read_buffer_bytes: 8 * 1024,
            connect_timeout_ms: 2_000,
            read_timeout_secs: 600,
            write_timeout_secs: 60,
            pool_idle_timeout_ms: 4_000,
            pool_size: 1_024,
            max_retries: 2,
            retry_after_secs: 5,
            ca_file: None,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 60,
            header_timeout_secs: 10,
            body_timeout_secs: 60,
            body_min_rate_bytes_per_sec: 1024,
            keepalive_timeout_secs: 60,
            max_connections: 10_000,
            tls_cert: None,
            tls_key: None,
            upgrade_sock: String::new(),
        }
    }
}

/// `[admin]`: the admin/metrics listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    pub threads: usize,
    /// Service accounts besides the environment's admin pair.
    pub credentials: Vec<CredentialConfig>,
    /// Failed authentications from one address within `auth_failures_window_secs` that block
    /// it (0: never).
    pub auth_failures_max: u32,
    pub auth_failures_window_secs: u64,
    /// How long a blocked address is answered 429.
    pub auth_block_secs: u64,
    /// PEM certificate chain and private key: the admin port speaks TLS (both or neither).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// A TLS handshake, and each request head, must finish within this long of the
    /// connection's start or of the previous response (an idle connection closes then too).
    pub header_timeout_secs: u64,
    /// Open connections at most; more wait in the accept backlog.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            threads: 1,
            credentials: Vec::new(),
            auth_failures_max: 20,
            auth_failures_window_secs: 60,
            auth_block_secs: 60,
            tls_cert: None,
            tls_key: None,
            header_timeout_secs: 10,
            max_connections: 256,
        }
    }
}

/// One `[[admin.credentials]]` entry: an API key, the SHA-256 of its secret, and its roles.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub api_key: String,
    pub secret_sha256: String,
    pub roles: Vec<String>,
}

/// Where pods come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PodProviderKind {
    /// No pods: the pod endpoints answer empty lists.
    #[default]
    None,
    /// RunPod's REST API.
    Runpod,
    /// Pods declared under `[[pods.static]]`.
    Static,
}

/// `[pods]`: the pod provider behind the admin pod endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodsConfig {
    pub provider: PodProviderKind,
    pub api_url: String,
    pub api_key_env: String,
    pub name_prefix: String,
    pub url_template: String,
    pub port: u16,
    pub cache_ttl_ms: u64,
    pub timeout_ms: u64,
    #[serde(rename = "static")]
    pub static_pods: Vec<StaticPodConfig>,
}

impl Default for PodsConfig {
    fn default() -> Self {
        Self {
            provider: PodProviderKind::None,
            api_url: "https://rest.runpod.io/v1".into(),
            api_key_env: "RUNPOD_API_KEY".into(),
            name_prefix: String::new(),
            url_template: "https://{id}-{port}.proxy.runpod.net/v1".into(),
            port: 8000,
            cache_ttl_ms: 5_000,
            timeout_ms: 10_000,
            static_pods: Vec::new(),
        }
    }
}

/// One `[[pods.static]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPodConfig {
    pub id: String,
    pub name: String,
    pub url: String,
    #[serde(default = "running")]
    pub desired_status: String,
    #[serde(default)]
    pub cost_per_hr: Option<f64>,
    #[serde(default)]
    pub data_center_id: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub gpu_type_id: Option<String>,
}

fn running() -> String {
    "RUNNING".into()
}

/// `[store]`: where shared state lives.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    pub cluster: bool,
    pub prefix: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "memory://".into(),
            cluster: false,
            prefix: "infergate".into(),
        }
    }
}

impl StoreConfig {
    /// Whether state is shared through Valkey.
    pub fn is_valkey(&self) -> bool {
        self.url != "memory://"
    }
}

/// `[affinity]`: session affinity (user, model) -> server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffinityConfig {
    pub ttl_minutes: u64,
    pub max_entries: usize,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            ttl_minutes: 30,
            max_entries: 1_000_000,
        }
    }
}

/// How a model's pool picks the server of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The user's server (session affinity), else the least loaded.
    #[default]
    Affinity,
    /// The server that most likely holds the prompt's longest prefix in its KV cache, unless
    /// it is loaded more than the balance thresholds allow; the user's server breaks ties.
    Prefix,
    /// The server with the fewest requests in flight.
    LeastInflight,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Affinity => "affinity",
            Policy::Prefix => "prefix",
            Policy::LeastInflight => "least_inflight",
        }
    }
}

/// `[routing]`: how each model's pool picks a server, and cache-aware routing's index.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Every model's policy unless `models` names its own.
    pub policy: Policy,
    /// Per-model policies: model name -> policy.
    pub models: std::collections::BTreeMap<String, Policy>,
    /// Bytes of rendered prompt per indexed block (about 4 bytes a token).
    pub block_bytes: usize,
    /// Blocks of a prompt indexed at most (the rest of a longer prompt is not looked at).
    pub max_blocks: usize,
    /// KV cache of each server, in tokens: how much of the prompts routed to it a server is
    /// taken to still hold (the index evicts its least recently used blocks beyond it).
    pub server_cache_tokens: u64,
    /// Entries of one pool's index table at most (16 bytes each).
    pub index_max_entries: usize,
    /// The server with the longest prefix is skipped when its requests in flight exceed the
    /// least loaded server's by more than this ...
    pub balance_abs: u32,
    /// ... and by more than this factor.
    pub balance_rel: f64,
    /// A server that took more than this factor of its even share of the pool's recent
    /// requests is skipped while it has more in flight than the least loaded (0: no bound).
    pub balance_share: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Affinity,
            models: Default::default(),
            block_bytes: crate::routing::prefix::DEFAULT_BLOCK_BYTES,
            max_blocks: 512,
            server_cache_tokens: 262_144,
            index_max_entries: 4 << 20,
            balance_abs: 64,
            balance_rel: 1.5,
            balance_share: 1.2,
        }
    }
}

impl RoutingConfig {
    /// The policy of `model`.
    pub fn policy_of(&self, model: &str) -> Policy {
        self.models.get(model).copied().unwrap_or(self.policy)
    }

    /// Whether any model routes by prefix (then prompts are hashed as bodies are read).
    pub fn any_prefix(&self) -> bool {
        self.policy == Policy::Prefix || self.models.values().any(|p| *p == Policy::Prefix)
    }

    /// Blocks each server is taken to hold.
    pub fn server_cache_blocks(&self) -> usize {
        let bytes = self.server_cache_tokens.saturating_mul(4);
        (bytes / self.block_bytes.max(1) as u64).min(usize::MAX as u64) as usize
    }
}

/// `[health]`: active probes and passive failure counting.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub passive_ejection_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            passive_ejection_ms: 10_000,
        }
    }
}

/// The kind of inference server behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Vllm,
    Sglang,
    Speaches,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Vllm, Provider::Sglang, Provider::Speaches];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Vllm => "vllm",
            Provider::Sglang => "sglang",
            Provider::Speaches => "speaches",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[servers]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub url: String,
    pub provider: Provider,
    pub models: Vec<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// A listener's TLS files, when both are set (validation refuses one without the other).
pub fn tls_files(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> Option<crate::tls::CertFiles> {
    Some(crate::tls::CertFiles {
        cert: cert.clone()?,
        key: key.clone()?,
    })
}
