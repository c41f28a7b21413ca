//! The simulator over real HTTP on loopback.

use super::tokens;
use super::SimConfig;
use crate::mock::{MockConfig, MockServer};
use crate::monitoring::engine_figures::Reading;
use crate::monitoring::promtext::Page;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn sim_server(sim: SimConfig) -> MockServer {
    let cfg = MockConfig {
        name: "sim".into(),
        models: vec!["m".into()],
        default_tokens: 4,
        kv_cache_tokens: 16_384,
        sim: Some(sim),
        ..MockConfig::default()
    };
    MockServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

async fn reading(s: &MockServer) -> Reading {
    let text = reqwest::get(format!("http://{}/metrics", s.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Reading::from_page(&Page::parse(&text).unwrap(), 0)
}

/// Stream a chat request; the time to its first content event and its usage.
async fn ttft_and_usage(s: &MockServer, system: &str, user: &str) -> (Duration, Value) {
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": 2,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]});
    let start = Instant::now();
    let mut resp = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", s.addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut ttft, mut text) = (None, String::new());
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if ttft.is_none() && text.contains("tok0") {
            ttft = Some(start.elapsed());
        }
    }
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v.get("usage").cloned())
        .expect("a usage event");
    assert!(text.ends_with("data: [DONE]\n\n"));
    (ttft.expect("a first token"), usage)
}

#[tokio::test]
async fn a_cached_prompt_answers_sooner_by_the_prefill_of_its_cached_tokens() {
    let per_token = Duration::from_micros(100);
    let s = sim_server(SimConfig {
        prefill_per_token: per_token,
        decode_per_step: Duration::from_millis(2),
        ..SimConfig::default()
    })
    .await;
    let system = "You are a careful assistant. ".repeat(280); // about 2,000 tokens
    let (cold, u1) = ttft_and_usage(&s, &system, "first question").await;
    let (warm, u2) = ttft_and_usage(&s, &system, "second question").await;
    assert_eq!(u1["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = u2["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = u2["prompt_tokens"].as_u64().unwrap();
    assert!(cached > 1900 && cached < prompt, "{cached} of {prompt}");
    assert_eq!(cached % 16, 0);
    // Cold: every prompt token prefilled (~200 ms, never less: the engine sleeps that long);
    // warm: only the tokens past the cached prefix. Bounds loose enough for a busy machine.
    let cold_prefill = per_token * u1["prompt_tokens"].as_u64().unwrap() as u32;
    assert!(cold >= cold_prefill, "cold {cold:?} < {cold_prefill:?}");
    let saved = per_token * cached as u32;
    let gained = cold.saturating_sub(warm);
    assert!(
        gained > saved * 7 / 10 && gained < saved + Duration::from_millis(100),
        "cold {cold:?}, warm {warm:?}, expected a gain of about {saved:?}"
    );
    let r = reading(&s).await;
    assert_eq!(
        (r.prefix_queries, r.prefix_hits),
        (
            Some((u1["prompt_tokens"].as_u64().unwrap() + prompt) as f64),
            Some(cached as f64)
        )
    );
    assert_eq!(r.ttft.unwrap().count, 2.0);
}

#[tokio::test]
async fn more_requests_than_max_num_seqs_wait_and_the_metrics_show_it() {
    let s = sim_server(SimConfig {
        prefill_per_token: Duration::from_micros(10),
        decode_per_step: Duration::from_millis(20),
        max_num_seqs: 2,
        ..SimConfig::default()
    })
    .await;
    let url = format!("http://{}/v1/chat/completions", s.addr);
    let c = reqwest::Client::new();
    let requests: Vec<_> = (0..5)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let body = json!({"model": "m", "max_tokens": 25,
                    "messages": [{"role": "user", "content": format!("question {i}")}]});
                let v: Value = c
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v
            })
        })
        .collect();
    // Each takes about 25 steps of 20 ms: after 100 ms, two run and three wait.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = reading(&s).await;
    assert_eq!((during.running, during.waiting), (Some(2.0), Some(3.0)));
    assert!(during.kv_cache.unwrap() > 0.0);
    for r in requests {
        let v = r.await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 25);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    let after = reading(&s).await;
    assert_eq!(
        (after.running, after.waiting, after.kv_cache),
        (Some(0.0), Some(0.0), Some(0.0))
    );
    assert_eq!(after.e2e.unwrap().count, 5.0);
    assert_eq!(after.generation_tokens, Some(125.0));
}

#[tokio::test]
async fn render_and_tokenize_answer_vllms_shapes_with_the_engines_token_ids() {
    let s = sim_server(SimConfig::default()).await;
    let c = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        c.post(format!("http://{}{path}", s.addr))
            .json(&body)
            .send()
    };
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]);
    let resp = post(
        "/v1/chat/completions/render",
        json!({"model": "m", "messages": messages, "max_tokens": 7, "temperature": 0.5}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let expected = tokens::tokenize(b"<|system|>\nbe brief\n<|user|>\nhi there\n<|assistant|>\n");
    assert_eq!(v["token_ids"], json!(expected));
    assert!(v["request_id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "m");
    assert_eq!(v["features"], Value::Null);
    assert_eq!(v["stream"], false);
    assert_eq!(v["priority"], 0);
    assert_eq!(v["sampling_params"]["max_tokens"], 7);
    assert_eq!(v["sampling_params"]["temperature"], 0.5);
    // The engine counts the same tokens.
    let gen: Value = post(
        "/v1/chat/completions",
        json!({"model": "m", "messages": messages, "max_tokens": 1}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(gen["usage"]["prompt_tokens"], expected.len());
    // Completions: a list, one per prompt.
    let v: Value = post(
        "/v1/completions/render",
        json!({"model": "m", "prompt": ["abcdefgh", "xyz"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["token_ids"], json!(tokens::tokenize(b"abcdefgh")));
    assert_eq!(list[1]["token_ids"].as_array().unwrap().len(), 1);
    assert!(list[0]["request_id"].as_str().unwrap().starts_with("cmpl-"));
    // /tokenize and /detokenize: the same ids (the model may be left out).
    let t: Value = post(
        "/tokenize",
        json!({"messages": messages, "return_token_strs": true}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(t["tokens"], json!(expected));
    assert_eq!(t["count"], expected.len());
    assert_eq!(t["token_strs"][0], "<|sy");
    let t: Value = post("/tokenize", json!({"model": "m", "prompt": "abcdefgh"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["tokens"], json!(tokens::tokenize(b"abcdefgh")));
    assert_eq!(t["token_strs"], Value::Null);
    let d: Value = post("/detokenize", json!({"model": "m", "tokens": t["tokens"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["prompt"], "abcdefgh");
    // vLLM's errors: an unknown model, a request it cannot render.
    let unknown = post(
        "/v1/chat/completions/render",
        json!({"model": "other", "messages": messages}),
    )
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = post(
        "/v1/chat/completions/render",
        json!({"model": "m", "messages": []}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_request_larger_than_the_kv_cache_is_refused() {
    let s = sim_server(SimConfig::default()).await; // 16,384 tokens of KV cache
    let body = json!({"model": "m", "prompt": "x".repeat(4 * 16_000), "max_tokens": 1_000});
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/completions", s.addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
