//! Pods: the machines that run inference servers, as a pod provider sees them (RunPod's API, or
//! a static list from the config), mapped to the server URL each one serves.

mod cache;
pub use cache::{Phase, PodsSetupError, RestartError};
mod runpod;
mod static_pods;
mod time;

pub use cache::Pods;
pub use runpod::RunPod;
pub use static_pods::StaticPods;
pub use time::iso8601;

use async_trait::async_trait;

/// A pod as the provider describes it (times already ISO 8601).
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub desired_status: String,
    /// The inference server's base URL on this pod (matches a `[[servers]]` url).
    pub url: String,
    pub cost_per_hr: Option<f64>,
    pub data_center_id: Option<String>,
    pub location: Option<String>,
    pub gpu_type_id: Option<String>,
    pub last_started_at: Option<String>,
    pub last_status_change: Option<String>,
}

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PodError {
    /// The provider's API failed or answered something unexpected (a 502 for the client).
    #[error("{0}")]
    Api(String),
    /// The provider has no such pod.
    #[error("pod not found")]
    NotFound,
    /// The provider cannot do this (static pods have no lifecycle API).
    #[error("{0}")]
    Unsupported(String),
}

/// A source of pods.
#[async_trait]
pub trait PodProvider: Send + Sync + 'static {
    /// Every pod the provider knows of (unfiltered).
    async fn list(&self) -> Result<Vec<Pod>, PodError>;
    /// One pod, fresh.
    async fn get(&self, id: &str) -> Result<Pod, PodError>;
    async fn stop(&self, id: &str) -> Result<(), PodError>;
    async fn start(&self, id: &str) -> Result<(), PodError>;
}

/// Pod ids are 1 to 64 of `A-Za-z0-9_-` (they go into provider URLs).
pub fn valid_pod_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A pod's kind: its name without `prefix` and without a trailing `-N` replica number.
pub fn kind_of(name: &str, prefix: &str) -> String {
    let rest = name.strip_prefix(prefix).unwrap_or(name);
    match rest.rsplit_once('-') {
        Some((kind, n))
            if !kind.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            kind.to_string()
        }
        _ => rest.to_string(),
    }
}

/// The server URL of a pod, from a template with `{id}` and `{port}`.
pub fn pod_url(template: &str, id: &str, port: u16) -> String {
    template
        .replace("{id}", id)
        .replace("{port}", &port.to_string())
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_drops_the_prefix_and_the_replica_number() {
        assert_eq!(
            kind_of("aiapi-dev-vllm-qwen3-6-27b-fp8-1", "aiapi-dev-"),
            "vllm-qwen3-6-27b-fp8"
        );
        assert_eq!(kind_of("aiapi-dev-vllm-x-12", "aiapi-dev-"), "vllm-x");
        assert_eq!(kind_of("aiapi-dev-vllm-x", "aiapi-dev-"), "vllm-x");
        assert_eq!(kind_of("other-7b", ""), "other-7b");
        assert_eq!(kind_of("7", ""), "7");
        assert_eq!(kind_of("a-", ""), "a-");
    }

    #[test]
    fn pod_ids_are_bounded_and_url_safe() {
        assert!(valid_pod_id("abc123"));
        assert!(valid_pod_id("A_b-9"));
        assert!(valid_pod_id(&"x".repeat(64)));
        assert!(!valid_pod_id(&"x".repeat(65)));
        assert!(!valid_pod_id(""));
        assert!(!valid_pod_id("a/b"));
        assert!(!valid_pod_id("a.b"));
        assert!(!valid_pod_id("a%2Fb"));
    }

    #[test]
    fn the_url_template_takes_id_and_port() {
        assert_eq!(
            pod_url("https://{id}-{port}.proxy.runpod.net/v1", "abc", 8000),
            "https://abc-8000.proxy.runpod.net/v1"
        );
        assert_eq!(pod_url("http://{id}:{port}/v1/", "h", 80), "http://h:80/v1");
    }
}
