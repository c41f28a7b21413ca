//! A fake Hugging Face Hub on loopback (`HF_ENDPOINT`), answering as the Hub does: the model
//! info API (`/api/models/{repo}/revision/{rev}`), files (`/{repo}/resolve/{rev}/config.json`),
//! `X-Error-Code` on errors (`RepoNotFound`, `GatedRepo`, `EntryNotFound`), a private repository
//! readable with the token `hf_test` only, and one that answers too slowly.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub struct FakeHub {
    pub url: String,
    pub hits: Arc<AtomicU64>,
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        [("x-error-code", code)],
        Json(json!({"error": code})),
    )
        .into_response()
}

/// Count the request, and answer as the Hub does for a repository the caller may not read.
async fn admit(
    hits: &AtomicU64,
    org: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<String, Response> {
    hits.fetch_add(1, Relaxed);
    let repo = format!("{org}/{name}");
    check(&repo, headers).await.map(|()| repo)
}

async fn check(repo: &str, headers: &HeaderMap) -> Result<(), Response> {
    match repo {
        "meta-llama/Llama-3.1-8B" | "org/noconfig" => Ok(()),
        "org/private"
            if headers
                .get("authorization")
                .is_some_and(|v| v == "Bearer hf_test") =>
        {
            Ok(())
        }
        "org/gated" => Err(error(StatusCode::FORBIDDEN, "GatedRepo")),
        "org/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        }
        _ => Err(error(StatusCode::UNAUTHORIZED, "RepoNotFound")),
    }
}

async fn info(
    State(hits): State<Arc<AtomicU64>>,
    Path((org, name, rev)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = match admit(&hits, &org, &name, &headers).await {
        Ok(repo) => repo,
        Err(r) => return r,
    };
    Json(
        json!({"id": repo, "sha": format!("sha-of-{rev}"), "gated": false,
        "safetensors": {"parameters": {"BF16": 8_030_261_248u64}, "total": 8_030_261_248u64}}),
    )
    .into_response()
}

async fn config(
    State(hits): State<Arc<AtomicU64>>,
    Path((org, name, _rev)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = match admit(&hits, &org, &name, &headers).await {
        Ok(repo) => repo,
        Err(r) => return r,
    };
    if repo == "org/noconfig" {
        return error(StatusCode::NOT_FOUND, "EntryNotFound");
    }
    Json(
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 131072, "intermediate_size": 14336,
        "torch_dtype": "bfloat16", "vocab_size": 128256}),
    )
    .into_response()
}

impl FakeHub {
    pub async fn start() -> FakeHub {
        let hits = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{rev}", get(info))
            .route("/{org}/{name}/resolve/{rev}/config.json", get(config))
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeHub { url, hits }
    }
}
