//! Model discovery: each server's own `GET <base>/models` (OpenAI shape: `{"data": [{"id"}]}`),
//! asked on a registry refresh. A server that does not answer keeps what it listed before.

use crate::gateway::Gateway;
use std::sync::Arc;

/// Most models taken from one server's list.
const MAX_MODELS: usize = 1_000;
/// Largest `/models` answer read.
const MAX_BYTES: usize = 1024 * 1024;

/// (server URL, models it lists) for every server in the routing table that answered.
pub async fn discover(gw: &Arc<Gateway>, client: &reqwest::Client) -> Vec<(String, Vec<String>)> {
    let table = gw.table.load_full();
    let mut set = tokio::task::JoinSet::new();
    for b in table.backends() {
        let (b, client) = (b.clone(), client.clone());
        set.spawn(async move {
            let url = format!("{}/models", b.id);
            let mut req = client.get(&url);
            if let Some(auth) = &b.auth_header {
                req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
            }
            match list_models(req).await {
                Ok(models) => Some((b.id.to_string(), models)),
                Err(e) => {
                    tracing::warn!(server = %b.id, error = %e, "model discovery failed");
                    None
                }
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(found)) = r {
            out.push(found);
        }
    }
    out
}

async fn list_models(req: reqwest::RequestBuilder) -> Result<Vec<String>, String> {
    let mut resp = req.send().await.map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_BYTES {
            return Err(format!("answer larger than {MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    parse_models(&body)
}

/// The model ids of an OpenAI `/v1/models` answer.
pub fn parse_models(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        id: String,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| format!("not a model list: {e}"))?;
    Ok(list
        .data
        .into_iter()
        .map(|i| i.id)
        .filter(|id| !id.trim().is_empty() && id.len() <= 256)
        .take(MAX_MODELS)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_models;

    #[test]
    fn reads_openai_model_lists() {
        let body =
            br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"},{"id":""}]}"#;
        assert_eq!(parse_models(body).unwrap(), vec!["a", "b"]);
        assert!(parse_models(b"{}").is_err());
        assert!(parse_models(b"nope").is_err());
    }
}
