//! The Hugging Face Hub, for a model that is not local yet: its `config.json` and its parameter
//! count by dtype (the model info API), through the Hub's HTTP API at `HF_ENDPOINT` (default
//! `https://huggingface.co`) with the token in `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`) when set.
//! Answers are cached per repository and revision; failures say precisely what went wrong.

use super::hfconfig::HfConfig;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer is kept.
const CACHE_TTL: Duration = Duration::from_secs(600);
/// Most answers kept.
const CACHE_MAX: usize = 256;
/// Largest Hub answer read.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gated(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Timeout(String),
}

/// What the Hub says of one model at one revision.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HubModel {
    pub repo_id: String,
    pub revision: String,
    /// The commit the revision resolved to.
    pub sha: Option<String>,
    #[serde(flatten)]
    pub config: HfConfig,
    /// Parameters by dtype (`BF16`, `F8_E4M3`, ...), from the safetensors metadata.
    pub parameters: BTreeMap<String, u64>,
    pub total_parameters: Option<u64>,
    /// In billions (Cortex's field).
    pub params_b: Option<f64>,
    /// `false`, `auto` or `manual`.
    #[schema(value_type = Object)]
    pub gated: serde_json::Value,
}

/// (repository, revision).
type RepoRevision = (String, String);

pub struct Hub {
    client: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    cache: Mutex<HashMap<RepoRevision, (Instant, Arc<HubModel>)>>,
}

/// A Hub repository id: `name` or `org/name`, each part 1 to 96 of `A-Za-z0-9._-`, not starting
/// or ending with `.` or `-`, without `..` or `--`.
pub fn repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            (1..=96).contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !part.starts_with(['.', '-'])
                && !part.ends_with(['.', '-'])
                && !part.contains("..")
                && !part.contains("--")
        })
}

/// A revision: a branch, tag or commit.
fn revision_ok(r: &str) -> bool {
    (1..=255).contains(&r.len())
        && !r.contains("..")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

impl Hub {
    /// From the environment (`HF_ENDPOINT`, `HF_TOKEN`), with this time limit per request.
    pub fn from_env(timeout: Duration) -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        let token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|t| !t.is_empty()));
        Hub {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .build()
                .unwrap_or_default(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            cache: Mutex::default(),
        }
    }

    /// The config and parameter count of `repo_id` at `revision` (default `main`).
    pub async fn model(
        &self,
        repo_id: &str,
        revision: Option<&str>,
    ) -> Result<Arc<HubModel>, HubError> {
        if !self::repo_id(repo_id) {
            return Err(HubError::BadRequest(format!(
                "repo_id {repo_id:?} is not a Hugging Face repository id (org/name)"
            )));
        }
        let revision = revision.unwrap_or("main");
        if !revision_ok(revision) {
            return Err(HubError::BadRequest(format!(
                "revision {revision:?} is not a branch, tag or commit"
            )));
        }
        let key = (repo_id.to_string(), revision.to_string());
        if let Some((at, m)) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            if at.elapsed() < CACHE_TTL {
                return Ok(m);
            }
        }
        // A revision such as `refs/pr/1` is one path segment to the Hub.
        let rev = revision.replace('/', "%2F");
        let info = self
            .get(
                &format!("{}/api/models/{repo_id}/revision/{rev}", self.endpoint),
                repo_id,
            )
            .await?;
        let config = self
            .get(
                &format!("{}/{repo_id}/resolve/{rev}/config.json", self.endpoint),
                repo_id,
            )
            .await?;
        let parameters: BTreeMap<String, u64> = info["safetensors"]["parameters"]
            .as_object()
            .map(|p| {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let total = info["safetensors"]["total"]
            .as_u64()
            .or_else(|| (!parameters.is_empty()).then(|| parameters.values().sum()));
        let model = Arc::new(HubModel {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            sha: info["sha"].as_str().map(str::to_string),
            config: HfConfig::from_json(&config),
            parameters,
            params_b: total.map(|t| (t as f64 / 1e7).round() / 100.0),
            total_parameters: total,
            gated: info
                .get("gated")
                .cloned()
                .unwrap_or(serde_json::Value::Bool(false)),
        });
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
                if c.len() >= CACHE_MAX {
                    c.clear();
                }
            }
            c.insert(key, (Instant::now(), model.clone()));
        }
        Ok(model)
    }

    async fn get(&self, url: &str, repo: &str) -> Result<serde_json::Value, HubError> {
        let mut req = self.client.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.map_err(|e| {
            if e.is_timeout() {
                HubError::Timeout(format!("the Hub did not answer in time ({url})"))
            } else {
                HubError::Unreachable(format!(
                    "the Hub at {} cannot be reached: {e}",
                    self.endpoint
                ))
            }
        })?;
        let status = r.status().as_u16();
        let code = r
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // Read at most MAX_ANSWER bytes, whatever the answer's length.
        let mut r = r;
        let mut body = Vec::new();
        let mut too_large = false;
        loop {
            match r.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER => {
                    too_large = true;
                    break;
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(HubError::Timeout(format!(
                        "the Hub did not answer in time ({url})"
                    )))
                }
                Err(e) => return Err(HubError::Unreachable(e.to_string())),
            }
        }
        match status {
            200 => {}
            _ if code == "GatedRepo" || (status == 403 && code.is_empty()) => {
                return Err(HubError::Gated(format!(
                    "{repo} is gated: accept its license on the Hub with the account whose token the gateway has (HF_TOKEN)"
                )))
            }
            _ if code == "RepoNotFound" || code == "RevisionNotFound" || status == 404 || status == 401 => {
                let what = if code == "EntryNotFound" { "has no config.json" } else { "was not found (or is private and HF_TOKEN cannot read it)" };
                return Err(HubError::NotFound(format!("{repo} {what}")));
            }
            _ => {
                return Err(HubError::Unreachable(format!(
                    "the Hub answered {status} for {url}"
                )))
            }
        }
        if too_large {
            return Err(HubError::Unreachable(format!(
                "the Hub's answer for {url} is larger than 4 MiB"
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            HubError::Unreachable(format!("the Hub's answer for {url} is not JSON: {e}"))
        })?;
        if !json.is_object() {
            return Err(HubError::Unreachable(format!(
                "the Hub's answer for {url} is not a JSON object"
            )));
        }
        Ok(json)
    }
}

/// Bytes per parameter of a safetensors dtype name as the Hub counts them.
pub fn dtype_bytes(dtype: &str) -> f64 {
    super::safetensors::dtype_bits(dtype).map_or(2.0, |b| b as f64 / 8.0)
}
