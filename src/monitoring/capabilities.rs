//! `GET /admin/system/capabilities`: where this gateway runs (OS, container, WSL), what it can
//! read (NVML and why not, the configured exporters and whether they answer), which provider
//! serves host and GPU figures, and what an operator could do to see more.

use super::{ExporterState, HostProvider, Monitor};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuCapability {
    /// Whether NVML (the NVIDIA driver's library) answered.
    pub nvml: bool,
    pub count: usize,
    /// The driver version (NVML's, else the one dcgm-exporter labels).
    pub driver: Option<String>,
    /// The CUDA version the driver supports.
    pub cuda: Option<String>,
    /// Why NVML is unusable (no driver, no permission).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExporterCapability {
    /// `up`, `down` (configured, not answering), `not_configured`, or `unknown` (not asked yet).
    pub status: &'static str,
    pub url: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Exporters {
    #[serde(rename = "nodeExporter")]
    pub node_exporter: ExporterCapability,
    #[serde(rename = "dcgmExporter")]
    pub dcgm_exporter: ExporterCapability,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Providers {
    pub host: HostProvider,
    /// `dcgm`, `nvml` or `none`.
    pub gpu: &'static str,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub os: String,
    pub arch: String,
    #[serde(rename = "isContainer")]
    pub is_container: bool,
    #[serde(rename = "isWSL")]
    pub is_wsl: bool,
    pub gpu: GpuCapability,
    /// Exporters are scraped directly: no Prometheus server is needed.
    pub exporters: Exporters,
    #[serde(rename = "selectedProviders")]
    pub selected_providers: Providers,
    pub suggestions: Vec<String>,
}

/// Signs of a container: Docker's and Podman's marker files, a container cgroup, Kubernetes.
fn in_container() -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::fs::read_to_string("/proc/1/cgroup").is_ok_and(|c| {
            ["docker", "kubepods", "containerd", "libpod", "lxc"]
                .iter()
                .any(|k| c.contains(k))
        })
}

fn in_wsl() -> bool {
    std::env::var_os("WSL_INTEROP").is_some()
        || std::env::var_os("WSL_DISTRO_NAME").is_some()
        || std::fs::read_to_string("/proc/version")
            .is_ok_and(|v| v.to_ascii_lowercase().contains("microsoft"))
}

fn exporter(url: &Option<String>, state: &std::sync::Mutex<ExporterState>) -> ExporterCapability {
    let s = state.lock().map(|s| s.clone()).unwrap_or_default();
    ExporterCapability {
        status: match (url, s.up) {
            (None, _) => "not_configured",
            (Some(_), None) => "unknown",
            (Some(_), Some(true)) => "up",
            (Some(_), Some(false)) => "down",
        },
        url: url.clone(),
        error: s.error,
    }
}

pub fn detect(m: &Monitor) -> Capabilities {
    let gpus = m.gpus();
    let set = gpus.set.as_ref().ok();
    let exporters = Exporters {
        node_exporter: exporter(&m.config.node_exporter_url, &m.node_exporter),
        dcgm_exporter: exporter(&m.config.dcgm_url, &m.dcgm),
    };
    let is_container = in_container();
    let host = m.host_provider();
    let mut suggestions = Vec::new();
    if std::env::consts::OS != "linux" {
        suggestions.push(
            "Run the gateway on Linux (or WSL2): host figures and NVML are read the Linux way."
                .to_string(),
        );
    }
    if let Some(why) = &gpus.nvml_error {
        if gpus.provider == "none" {
            suggestions.push(format!(
                "No GPU figures: {why}. Install the NVIDIA driver on this machine (in a container: run it with the NVIDIA container toolkit, e.g. --gpus all), or set [monitoring] dcgm_url to a dcgm-exporter."
            ));
        }
    }
    for (name, key, e) in [
        (
            "node_exporter",
            "node_exporter_url",
            &exporters.node_exporter,
        ),
        ("dcgm-exporter", "dcgm_url", &exporters.dcgm_exporter),
    ] {
        if e.status == "down" {
            suggestions.push(format!(
                "{name} at {} does not answer ({}): check [monitoring] {key}.",
                e.url.as_deref().unwrap_or_default(),
                e.error.as_deref().unwrap_or("no reason given")
            ));
        }
    }
    if is_container && host == HostProvider::InProcess {
        suggestions.push("Host figures are read from inside a container (its own network and disks): run node_exporter on the host and set [monitoring] node_exporter_url for the machine's.".to_string());
    }
    Capabilities {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        is_container,
        is_wsl: in_wsl(),
        gpu: GpuCapability {
            nvml: gpus.nvml_error.is_none(),
            count: set.map_or(0, |s| s.gpus.len()),
            driver: set.and_then(|s| s.driver_version.clone()),
            cuda: set.and_then(|s| s.cuda_version.clone()),
            reason: gpus.nvml_error.clone(),
        },
        exporters,
        selected_providers: Providers {
            host,
            gpu: gpus.provider,
        },
        suggestions,
    }
}
