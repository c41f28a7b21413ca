//! The simulator's HTTP side: generation through the engine (answers shaped as the mock's,
//! with vLLM's `prompt_tokens_details.cached_tokens`), and vLLM's render endpoints, which
//! answer what the engine would see: the prompt's token ids.

use super::engine::{Event, Submit};
use super::tokens::{self, RenderError};
use super::SimHandle;
use crate::mock::respond::{async_stream, error, named, tokens_wanted, StreamGuard};
use crate::mock::MockState;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The token ids of a request's prompts: one for a chat request, one per prompt for a
/// completion request.
fn prompts(v: &Value, chat: bool) -> Result<Vec<Vec<u32>>, RenderError> {
    if chat {
        let add = v
            .get("add_generation_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let text = tokens::render_chat(&v["messages"], add)?;
        Ok(vec![tokens::tokenize(text.as_bytes())])
    } else {
        Ok(tokens::completion_prompts(&v["prompt"])?
            .into_iter()
            .map(|p| p.token_ids)
            .collect())
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens}})
}

/// `/v1/chat/completions` and `/v1/completions` on the simulated GPU (a completion request
/// with several prompts is served for its first).
pub(in crate::mock) async fn generate(
    st: Arc<MockState>,
    sim: &SimHandle,
    v: Value,
    chat: bool,
) -> Response {
    let ids = match prompts(&v, chat) {
        Ok(mut p) => p.swap_remove(0),
        Err(e) => return error(&st, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let n = tokens_wanted(&st, &v).max(1);
    let prompt_tokens = ids.len();
    if !sim.fits(prompt_tokens, n) {
        let msg = format!(
            "This server's KV cache holds {} tokens; the request needs {} ({prompt_tokens} in the prompt, {n} to generate).",
            sim.num_blocks * sim.config.block_tokens,
            prompt_tokens + n
        );
        return error(&st, StatusCode::BAD_REQUEST, &msg);
    }
    let salt = v.get("cache_salt").and_then(Value::as_str);
    let hashes = tokens::block_hashes(&ids, sim.config.block_tokens, salt);
    let model = v["model"].as_str().unwrap_or_default().to_owned();
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let (tx, rx) = mpsc::unbounded_channel();
    let submitted = sim.submit(Submit {
        model: st
            .config
            .models
            .iter()
            .position(|m| *m == model)
            .unwrap_or(0),
        hashes,
        prompt_tokens,
        max_tokens: n,
        assume_cached: match sim.config.assume_cached_field {
            true => v["sim_assume_cached_tokens"].as_u64().unwrap_or(0) as usize,
            false => 0,
        },
        stream,
        events: tx,
    });
    if let Err(e) = submitted {
        return error(&st, StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    if stream {
        let include_usage = v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let resp = sse(st.clone(), rx, model, prompt_tokens, include_usage, chat);
        return named(&st, resp);
    }
    whole(st, rx, model, prompt_tokens, n, chat).await
}

/// A non-streamed answer, once the engine has produced every token. Dropping this future
/// (the client went away) drops the receiver, which aborts the request in the engine.
async fn whole(
    st: Arc<MockState>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    model: String,
    prompt_tokens: usize,
    n: usize,
    chat: bool,
) -> Response {
    struct InFlight(Arc<MockState>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Relaxed);
        }
    }
    st.in_flight.fetch_add(1, Relaxed);
    let _in_flight = InFlight(st.clone());
    let (mut cached, mut done) = (0, false);
    while let Some(e) = rx.recv().await {
        match e {
            Event::First { cached_tokens } => cached = cached_tokens,
            Event::Token => {}
            Event::Done => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return error(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "the simulated engine has stopped",
        );
    }
    let text = "tok ".repeat(n);
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    let body = json!({
        "id": "cmpl-mock", "object": if chat { "chat.completion" } else { "text_completion" },
        "created": 0, "model": model, "choices": [choice],
        "usage": usage(prompt_tokens, n, cached),
    });
    named(&st, axum::Json(body).into_response())
}

/// A streamed answer: an event per token as the engine produces it (the chat role's event
/// with the first token, as vLLM sends it), the usage if asked, `[DONE]`.
fn sse(
    st: Arc<MockState>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
    chat: bool,
) -> Response {
    let guard = StreamGuard::start(st);
    let stream = async_stream(move |tx| async move {
        // The whole guard moves in (not just its field): dropped when the stream ends.
        let mut guard = guard;
        let event = |v: Value| Bytes::from(format!("data: {v}\n\n"));
        let token = |i: usize| {
            if chat {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}]})
            } else {
                json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
                    "choices": [{"index": 0, "text": format!("tok{i} ")}]})
            }
        };
        let (mut i, mut cached) = (0, 0);
        while let Some(e) = rx.recv().await {
            let mut out = Vec::with_capacity(2);
            match e {
                Event::First { cached_tokens } => {
                    cached = cached_tokens;
                    if chat {
                        out.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}));
                    }
                    out.push(token(i));
                    i += 1;
                }
                Event::Token => {
                    out.push(token(i));
                    i += 1;
                }
                Event::Done => {
                    if include_usage {
                        let u = json!({"id": "chatcmpl-mock", "model": model, "choices": [],
                            "usage": usage(prompt_tokens, i, cached)});
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
                    }
                    return;
                }
            }
            for v in out {
                if tx.send(event(v)).await.is_err() {
                    return;
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// `POST /v1/chat/completions/render` (one object) and `POST /v1/completions/render` (a list,
/// one per prompt): vLLM's `GenerateRequest`, the request as its engine would take it.
pub(in crate::mock) fn render(st: &MockState, v: &Value, chat: bool) -> Response {
    let prompts = match prompts(v, chat) {
        Ok(p) => p,
        Err(e) => return error(st, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let max_tokens = tokens_wanted(st, v).max(1);
    let mut items: Vec<Value> = prompts
        .into_iter()
        .map(|ids| generate_request(v, ids, max_tokens, chat))
        .collect();
    let body = if chat {
        items.swap_remove(0)
    } else {
        Value::Array(items)
    };
    named(st, axum::Json(body).into_response())
}

/// `POST /tokenize`: a chat request's rendered `messages` or a `prompt` string, as vLLM's
/// `TokenizeResponse` (`count`, `max_model_len`, `tokens`, and `token_strs` when
/// `return_token_strs` is set).
pub(in crate::mock) fn tokenize(st: &MockState, v: &Value) -> Response {
    let ids = if v.get("messages").is_some() {
        prompts(v, true).map(|mut p| p.swap_remove(0))
    } else {
        match v.get("prompt") {
            Some(Value::String(p)) => Ok(tokens::tokenize(p.as_bytes())),
            _ => Err(RenderError::BadPrompt),
        }
    };
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => return error(st, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let strs = v
        .get("return_token_strs")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        .then(|| {
            ids.iter()
                .map(|&t| String::from_utf8_lossy(&tokens::token_bytes(t)).into_owned())
                .collect::<Vec<_>>()
        });
    let body = json!({"count": ids.len(), "max_model_len": MAX_MODEL_LEN, "tokens": ids,
        "token_strs": strs});
    named(st, axum::Json(body).into_response())
}

/// `POST /detokenize`: `tokens` back to text (vLLM's `DetokenizeResponse`).
pub(in crate::mock) fn detokenize(st: &MockState, v: &Value) -> Response {
    let ids: Option<Vec<u32>> = v.get("tokens").and_then(Value::as_array).and_then(|a| {
        a.iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    });
    let Some(ids) = ids else {
        return error(
            st,
            StatusCode::BAD_REQUEST,
            "'tokens' must be an array of token ids",
        );
    };
    let prompt = String::from_utf8_lossy(&tokens::detokenize(&ids)).into_owned();
    named(st, axum::Json(json!({"prompt": prompt})).into_response())
}

/// The context length the mock's `/v1/models` reports.
const MAX_MODEL_LEN: usize = 32_768;

/// vLLM's `GenerateRequest` (`vllm/entrypoints/serve/disagg/protocol.py`) for one prompt.
fn generate_request(v: &Value, token_ids: Vec<u32>, max_tokens: usize, chat: bool) -> Value {
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let prefix = if chat { "chatcmpl" } else { "cmpl" };
    json!({
        "request_id": format!("{prefix}-{:032x}", rand::random::<u128>()),
        "token_ids": token_ids,
        "features": null,
        "sampling_params": sampling_params(v, max_tokens),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "stream": stream,
        "stream_options": if stream { v.get("stream_options").cloned().unwrap_or(Value::Null) } else { Value::Null },
        "cache_salt": v.get("cache_salt").cloned().unwrap_or(Value::Null),
        "priority": v.get("priority").and_then(Value::as_i64).unwrap_or(0),
        "kv_transfer_params": null,
    })
}

/// The request's sampling parameters with vLLM's defaults for those it does not set.
fn sampling_params(v: &Value, max_tokens: usize) -> Value {
    let f = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
    let stop = match v.get("stop") {
        Some(Value::String(s)) => json!([s]),
        Some(a @ Value::Array(_)) => a.clone(),
        _ => json!([]),
    };
    json!({
        "n": v.get("n").and_then(Value::as_u64).unwrap_or(1),
        "presence_penalty": f("presence_penalty", 0.0),
        "frequency_penalty": f("frequency_penalty", 0.0),
        "repetition_penalty": f("repetition_penalty", 1.0),
        "temperature": f("temperature", 1.0),
        "top_p": f("top_p", 1.0),
        "top_k": v.get("top_k").and_then(Value::as_i64).unwrap_or(0),
        "min_p": f("min_p", 0.0),
        "seed": v.get("seed").cloned().unwrap_or(Value::Null),
        "stop": stop,
        "stop_token_ids": v.get("stop_token_ids").cloned().unwrap_or(json!([])),
        "ignore_eos": v.get("ignore_eos").and_then(Value::as_bool).unwrap_or(false),
        "max_tokens": max_tokens,
        "min_tokens": v.get("min_tokens").and_then(Value::as_u64).unwrap_or(0),
        "logprobs": v.get("logprobs").filter(|l| l.is_number()).cloned().unwrap_or(Value::Null),
        "prompt_logprobs": v.get("prompt_logprobs").cloned().unwrap_or(Value::Null),
        "skip_special_tokens": v.get("skip_special_tokens").and_then(Value::as_bool).unwrap_or(true),
        "spaces_between_special_tokens": true,
    })
}
