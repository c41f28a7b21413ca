//! The mock server's endpoints.

use super::respond::{async_stream, error, named, tokens_wanted, StreamGuard};
use super::MockState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

type S = State<Arc<MockState>>;

pub fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions/render", post(render_chat))
        .route("/v1/completions/render", post(render_completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/rerank", post(rerank))
        .route("/v1/score", post(score))
        .route("/v1/audio/speech", post(speech))
        .route("/v1/audio/transcriptions", post(transcription))
        .route("/v1/audio/translations", post(transcription))
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(state)
}

fn authorized(st: &MockState, headers: &HeaderMap) -> bool {
    match &st.config.api_key {
        None => true,
        Some(key) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.strip_prefix("Bearer ") == Some(key.as_str())),
    }
}

/// Open to all, as vLLM's is (its API key guards only the `/v1` routes).
async fn health(State(st): S) -> Response {
    st.probes.fetch_add(1, Relaxed);
    if st.healthy.load(Relaxed) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

/// vLLM's `/metrics` (not behind the API key, as in vLLM).
async fn metrics(State(st): S) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn models(State(st): S) -> Response {
    let data: Vec<Value> = st
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 32768}))
        .collect();
    named(
        &st,
        axum::Json(json!({"object": "list", "data": data})).into_response(),
    )
}

/// Common intake: counts, records the body, checks auth, model and injected failures.
fn intake(
    st: &MockState,
    headers: &HeaderMap,
    path: &str,
    body: &Bytes,
) -> Result<Value, Box<Response>> {
    st.requests.fetch_add(1, Relaxed);
    *st.last_body.lock().expect("lock") = body.clone();
    *st.last_authorization.lock().expect("lock") = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *st.last_path.lock().expect("lock") = path.to_owned();
    if !authorized(st, headers) {
        return Err(Box::new(error(
            st,
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        )));
    }
    let fail = st.fail_status.load(Relaxed);
    if fail != 0 {
        let status = StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(Box::new(error(st, status, "injected failure")));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| -> Box<Response> {
        Box::new(error(
            st,
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON: {e}"),
        ))
    })?;
    let model = v.get("model").and_then(Value::as_str).unwrap_or_default();
    if !st.config.models.iter().any(|m| m == model) {
        return Err(Box::new(error(
            st,
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
        )));
    }
    Ok(v)
}

async fn chat(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    generate(st, headers, body, "/v1/chat/completions", true).await
}

async fn completions(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    generate(st, headers, body, "/v1/completions", false).await
}

/// vLLM's render endpoints: the prompt's token ids in the simulator's tokenizer (served with
/// or without `--sim`).
async fn render_chat(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    match intake(&st, &headers, "/v1/chat/completions/render", &body) {
        Ok(v) => super::sim::serve::render(&st, &v, true),
        Err(r) => *r,
    }
}

async fn render_completions(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    match intake(&st, &headers, "/v1/completions/render", &body) {
        Ok(v) => super::sim::serve::render(&st, &v, false),
        Err(r) => *r,
    }
}

/// vLLM's `/tokenize` and `/detokenize` in the simulator's tokenizer (`model` is optional
/// there: the first served model when it is missing).
async fn tokenize(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let body = with_model(&st, body);
    match intake(&st, &headers, "/tokenize", &body) {
        Ok(v) => super::sim::serve::tokenize(&st, &v),
        Err(r) => *r,
    }
}

async fn detokenize(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let body = with_model(&st, body);
    match intake(&st, &headers, "/detokenize", &body) {
        Ok(v) => super::sim::serve::detokenize(&st, &v),
        Err(r) => *r,
    }
}

/// `body` with the first served model as its `model` when it names none.
fn with_model(st: &MockState, body: Bytes) -> Bytes {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut o)) if !o.contains_key("model") => {
            let first = st.config.models.first().cloned().unwrap_or_default();
            o.insert("model".into(), Value::String(first));
            Bytes::from(Value::Object(o).to_string())
        }
        _ => body,
    }
}

async fn generate(
    st: Arc<MockState>,
    headers: HeaderMap,
    body: Bytes,
    path: &str,
    chat: bool,
) -> Response {
    let v = match intake(&st, &headers, path, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(sim) = st.sim.clone() {
        return super::sim::serve::generate(st, &sim, v, chat).await;
    }
    let n = tokens_wanted(&st, &v);
    let model = v["model"].as_str().unwrap_or_default().to_owned();
    let prompt_tokens = (body.len() / 4).max(1) as u64;
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        let include_usage = v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let run = st.metrics.start(&model, &body, prompt_tokens);
        return named(
            &st,
            sse(
                st.clone(),
                run,
                model,
                n,
                prompt_tokens,
                include_usage,
                chat,
            ),
        );
    }
    let mut run = st.metrics.start(&model, &body, prompt_tokens);
    st.in_flight.fetch_add(1, Relaxed);
    pause(st.config.ttft + st.config.itl * n.saturating_sub(1) as u32).await;
    st.in_flight.fetch_sub(1, Relaxed);
    run.tokens(n as u64, st.config.ttft, st.config.itl);
    run.finish();
    let text = "tok ".repeat(n);
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    let body = json!({
        "id": "cmpl-mock", "object": if chat { "chat.completion" } else { "text_completion" },
        "created": 0, "model": model, "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n as u64}
    });
    named(&st, axum::Json(body).into_response())
}

fn sse(
    st: Arc<MockState>,
    mut run: super::metrics::Running,
    model: String,
    n: usize,
    prompt_tokens: u64,
    include_usage: bool,
    chat: bool,
) -> Response {
    let (ttft, itl) = (st.config.ttft, st.config.itl);
    let mut guard = StreamGuard::start(st);
    let stream = async_stream(move |tx| async move {
        let event = |v: Value| Bytes::from(format!("data: {v}\n\n"));
        if chat {
            let role = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
            if tx.send(event(role)).await.is_err() {
                return;
            }
        }
        pause(ttft).await;
        for i in 0..n {
            if i > 0 {
                pause(itl).await;
            }
            run.token();
            let ev = if chat {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}]})
            } else {
                json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
                    "choices": [{"index": 0, "text": format!("tok{i} ")}]})
            };
            if tx.send(event(ev)).await.is_err() {
                return;
            }
        }
        if include_usage {
            let u = json!({"id": "chatcmpl-mock", "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n as u64}});
            if tx.send(event(u)).await.is_err() {
                return;
            }
        }
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_ok()
        {
            guard.done = true;
            run.finish();
        }
        drop(guard);
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

async fn embeddings(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let v = match intake(&st, &headers, "/v1/embeddings", &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let inputs = match &v["input"] {
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]}))
        .collect();
    let tokens = (body.len() / 4).max(1);
    named(
        &st,
        axum::Json(json!({"object": "list", "data": data, "model": v["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response(),
    )
}

async fn rerank(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let v = match intake(&st, &headers, "/v1/rerank", &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let docs = v["documents"].as_array().map_or(0, Vec::len);
    let results: Vec<Value> = (0..docs)
        .map(|i| json!({"index": i, "relevance_score": 1.0 / (i as f64 + 1.0)}))
        .collect();
    named(
        &st,
        axum::Json(
            json!({"id": "rerank-mock", "model": v["model"], "results": results,
        "usage": {"total_tokens": (body.len() / 4).max(1)}}),
        )
        .into_response(),
    )
}

async fn score(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let v = match intake(&st, &headers, "/v1/score", &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    named(&st, axum::Json(json!({"id": "score-mock", "object": "list", "model": v["model"],
        "data": [{"index": 0, "object": "score", "score": 0.5}],
        "usage": {"prompt_tokens": (body.len() / 4).max(1), "total_tokens": (body.len() / 4).max(1)}})).into_response())
}

async fn speech(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = intake(&st, &headers, "/v1/audio/speech", &body) {
        return *r;
    }
    let mut resp = Bytes::from_static(b"RIFF\x24\x00\x00\x00WAVEfmt ").into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    named(&st, resp)
}

async fn transcription(State(st): S, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 256 * 1024 * 1024).await else {
        return error(&st, StatusCode::BAD_REQUEST, "unreadable body");
    };
    st.requests.fetch_add(1, Relaxed);
    *st.last_body.lock().expect("lock") = body.clone();
    *st.last_path.lock().expect("lock") = parts.uri.path().to_owned();
    if !authorized(&st, &parts.headers) {
        return error(&st, StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    match crate::routing::route_key_multipart(&body, &ct) {
        Ok(k) if st.config.models.iter().any(|m| *m == k.model) => named(
            &st,
            axum::Json(
                json!({"text": "hello from the mock", "usage": {"type": "duration", "seconds": 1}}),
            )
            .into_response(),
        ),
        Ok(k) => error(
            &st,
            StatusCode::NOT_FOUND,
            &format!("The model `{}` does not exist.", k.model),
        ),
        Err(e) => error(&st, StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Wait `d`; no wait at all when it is zero (a zero Tokio sleep still waits for the timer's
/// next millisecond tick, which would put up to 1 ms of timer noise into every measurement).
async fn pause(d: std::time::Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}
