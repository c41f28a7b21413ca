//! Asking an engine how it is: the readiness probe (`GET /health`, then `GET /v1/models`
//! listing the served name: no inference, so embedding models are judged right), and the
//! model test (one small chat completion, or an embedding for `embed` models).

use super::record::{ModelRecord, Task};
use std::time::{Duration, Instant};

/// The outcome of a model test.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TestResult {
    pub success: bool,
    /// `chat` or `embeddings`.
    pub test_type: String,
    /// The request sent.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// The engine's answer, when it succeeded.
    #[schema(value_type = Option<Object>)]
    pub response: Option<serde_json::Value>,
    /// What went wrong (status and the start of the answer, or the connection error).
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// What a readiness probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing answers on the port yet.
    Down,
    /// The server answers but is not ready; why.
    Loading(String),
    Ready,
}

/// `GET /health` answers 200 and `GET /v1/models` lists the served name (so embedding models
/// are judged as well as chat models; no inference is run).
pub async fn probe(client: &reqwest::Client, port: u16, key: &str, served: &str) -> Probe {
    let base = format!("http://127.0.0.1:{port}");
    let health = client
        .get(format!("{base}/health"))
        .bearer_auth(key)
        .send()
        .await;
    match health {
        Err(e) if e.is_connect() => return Probe::Down,
        Err(e) => return Probe::Loading(format!("GET /health: {e}")),
        Ok(r) if !r.status().is_success() => {
            return Probe::Loading(format!("GET /health answers {}", r.status().as_u16()))
        }
        Ok(_) => {}
    }
    let listed = match client
        .get(format!("{base}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
        Ok(r) => return Probe::Loading(format!("GET /v1/models answers {}", r.status().as_u16())),
        Err(e) => return Probe::Loading(format!("GET /v1/models: {e}")),
    };
    let serves = listed
        .as_ref()
        .and_then(|v| v["data"].as_array())
        .is_some_and(|d| d.iter().any(|m| m["id"] == served));
    if serves {
        Probe::Ready
    } else {
        Probe::Loading(format!("GET /v1/models does not list {served:?} yet"))
    }
}

/// Send one small request to a model's own engine at `base` (not through the routing table).
pub async fn test(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    model: &ModelRecord,
) -> TestResult {
    let served = &model.spec.served_model_name;
    let (test_type, path, request) = match model.spec.task {
        Task::Embed => (
            "embeddings",
            "/v1/embeddings",
            serde_json::json!({"model": served, "input": "test"}),
        ),
        Task::Generate => (
            "chat",
            "/v1/chat/completions",
            serde_json::json!({"model": served, "max_tokens": 16,
                "messages": [{"role": "user", "content": "Hello"}]}),
        ),
    };
    let started = Instant::now();
    let sent = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(120))
        .json(&request)
        .send()
        .await;
    let outcome = match sent {
        Err(e) => Err(format!("{path}: {e}")),
        Ok(r) => {
            let status = r.status();
            let body = r.bytes().await.unwrap_or_default();
            let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
            let answered = json.as_ref().is_some_and(|v| match test_type {
                "embeddings" => v["data"][0]["embedding"].is_array(),
                _ => v["choices"].as_array().is_some_and(|c| !c.is_empty()),
            });
            match (status.is_success() && answered, json) {
                (true, Some(v)) => Ok(v),
                (_, json) => {
                    let text = json.map_or_else(
                        || String::from_utf8_lossy(&body).into_owned(),
                        |v| v.to_string(),
                    );
                    Err(format!(
                        "{path} answered {}: {}",
                        status.as_u16(),
                        text.chars().take(500).collect::<String>()
                    ))
                }
            }
        }
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(response) => TestResult {
            success: true,
            test_type: test_type.into(),
            request,
            response: Some(response),
            error: None,
            latency_ms,
        },
        Err(error) => TestResult {
            success: false,
            test_type: test_type.into(),
            request,
            response: None,
            error: Some(error),
            latency_ms,
        },
    }
}
