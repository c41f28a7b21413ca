//! RunPod's REST API v1: `GET /pods`, `GET /pods/{id}`, `POST /pods/{id}/stop|start`, with a
//! bearer API key.

use super::{pod_url, Pod, PodError, PodProvider};
use async_trait::async_trait;
use serde::Deserialize;
use std::time::Duration;

/// Largest provider answer read (a list of thousands of pods is a few MiB).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How much of a provider's error body goes into the error detail.
const DETAIL_BYTES: usize = 300;

/// A RunPod client.
pub struct RunPod {
    client: reqwest::Client,
    api_url: String,
    auth: reqwest::header::HeaderValue,
    url_template: String,
    port: u16,
}

impl RunPod {
    pub fn new(
        api_url: &str,
        api_key: &str,
        url_template: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, PodError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PodError::Api(format!("http client: {e}")))?;
        Ok(Self {
            client,
            api_url: api_url.trim_end_matches('/').to_string(),
            auth: {
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}"))
                    .map_err(|_| PodError::Api("the API key is not a valid header value".into()))?;
                v.set_sensitive(true);
                v
            },
            url_template: url_template.to_string(),
            port,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Vec<u8>, PodError> {
        let url = format!("{}{path}", self.api_url);
        let mut resp = self
            .client
            .request(method.clone(), &url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| PodError::Api(format!("{method} {path}: {}", without_url(e))))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| PodError::Api(format!("{method} {path}: {}", without_url(e))))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(PodError::Api(format!(
                    "{method} {path}: answer larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(PodError::NotFound);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(DETAIL_BYTES)]).into_owned();
            return Err(PodError::Api(format!(
                "{method} {path}: RunPod answered {status}: {}",
                text.trim()
            )));
        }
        Ok(body)
    }

    fn pod(&self, p: RpPod) -> Pod {
        let machine = p.machine.unwrap_or_default();
        Pod {
            url: pod_url(&self.url_template, &p.id, self.port),
            id: p.id,
            name: p.name,
            desired_status: p.desired_status,
            cost_per_hr: p.cost_per_hr.and_then(NumOrText::value),
            data_center_id: machine.data_center_id,
            location: machine.location,
            gpu_type_id: machine.gpu_type_id.or(p.gpu.and_then(|g| g.id)),
            last_started_at: p.last_started_at.as_deref().and_then(super::iso8601),
            last_status_change: p.last_status_change.as_deref().and_then(super::iso8601),
        }
    }
}

/// reqwest errors name the URL; keep only the cause.
fn without_url(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.without_url().to_string()
    }
}

#[async_trait]
impl PodProvider for RunPod {
    async fn list(&self) -> Result<Vec<Pod>, PodError> {
        let body = match self
            .call(reqwest::Method::GET, "/pods?includeMachine=true")
            .await
        {
            // A 404 on the list means a wrong api_url, not a missing pod.
            Err(PodError::NotFound) => {
                return Err(PodError::Api(
                    "GET /pods: RunPod answered 404 Not Found (check [pods] api_url)".into(),
                ))
            }
            r => r?,
        };
        let pods: Vec<RpPod> = serde_json::from_slice(&body)
            .map_err(|e| PodError::Api(format!("GET /pods: unexpected answer: {e}")))?;
        Ok(pods.into_iter().map(|p| self.pod(p)).collect())
    }

    async fn get(&self, id: &str) -> Result<Pod, PodError> {
        let path = format!("/pods/{id}?includeMachine=true");
        let body = self.call(reqwest::Method::GET, &path).await?;
        let pod: RpPod = serde_json::from_slice(&body)
            .map_err(|e| PodError::Api(format!("GET /pods/{id}: unexpected answer: {e}")))?;
        Ok(self.pod(pod))
    }

    async fn stop(&self, id: &str) -> Result<(), PodError> {
        self.call(reqwest::Method::POST, &format!("/pods/{id}/stop"))
            .await
            .map(drop)
    }

    async fn start(&self, id: &str) -> Result<(), PodError> {
        self.call(reqwest::Method::POST, &format!("/pods/{id}/start"))
            .await
            .map(drop)
    }
}

/// The fields of RunPod's Pod object that the admin API shows (others are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpPod {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    desired_status: String,
    #[serde(default)]
    cost_per_hr: Option<NumOrText>,
    #[serde(default)]
    machine: Option<RpMachine>,
    #[serde(default)]
    gpu: Option<RpGpu>,
    #[serde(default)]
    last_started_at: Option<String>,
    #[serde(default)]
    last_status_change: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RpMachine {
    #[serde(default)]
    data_center_id: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    gpu_type_id: Option<String>,
}

#[derive(Deserialize)]
struct RpGpu {
    #[serde(default)]
    id: Option<String>,
}

/// RunPod writes prices as numbers or as strings ("0.74").
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(f64),
    Text(String),
}

impl NumOrText {
    fn value(self) -> Option<f64> {
        match self {
            NumOrText::Num(n) => Some(n),
            NumOrText::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_runpods_pod_object() {
        let rp = RunPod::new(
            "https://rest.runpod.io/v1/",
            "k",
            "https://{id}-{port}.proxy.runpod.net/v1",
            8000,
            Duration::from_secs(1),
        )
        .unwrap();
        let p: RpPod = serde_json::from_value(serde_json::json!({
            "id": "abc123", "name": "aiapi-dev-vllm-x-1", "desiredStatus": "RUNNING",
            "costPerHr": "0.74", "image": "ignored",
            "machine": {"dataCenterId": "US-GA-1", "location": "Georgia"},
            "gpu": {"id": "NVIDIA A100 80GB PCIe", "count": 1},
            "lastStartedAt": "2026-06-25 08:00:00.000 +0000 UTC",
            "lastStatusChange": "Rented by User: Thu Jun 25 2026 10:00:00 GMT+0000 (Coordinated Universal Time)"
        }))
        .unwrap();
        let pod = rp.pod(p);
        assert_eq!(pod.url, "https://abc123-8000.proxy.runpod.net/v1");
        assert_eq!(pod.cost_per_hr, Some(0.74));
        assert_eq!(pod.data_center_id.as_deref(), Some("US-GA-1"));
        assert_eq!(pod.gpu_type_id.as_deref(), Some("NVIDIA A100 80GB PCIe"));
        assert_eq!(pod.last_started_at.as_deref(), Some("2026-06-25T08:00:00Z"));
        assert_eq!(
            pod.last_status_change.as_deref(),
            Some("2026-06-25T10:00:00Z")
        );
        let bare: RpPod = serde_json::from_value(serde_json::json!({"id": "x"})).unwrap();
        let pod = rp.pod(bare);
        assert_eq!((pod.cost_per_hr, pod.location), (None, None));
    }
}
