//! The fleet simulator (`infergate mock --sim`): a simulated vLLM server behind the gateway,
//! and the command line's flags.

use crate::harness::*;
use infergate::mock::{MockConfig, SimConfig};
use serde_json::{json, Value};
use std::time::Duration;

fn fast_sim() -> SimConfig {
    SimConfig {
        prefill_per_token: Duration::from_micros(20),
        decode_per_step: Duration::from_millis(2),
        ..SimConfig::default()
    }
}

fn chat(system: &str, user: &str) -> Value {
    json!({"model": "sim-model", "max_tokens": 3,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
}

#[tokio::test]
async fn the_ideal_runs_assumed_cache_is_honoured_only_when_asked_for() {
    // The fleet benchmark's ideal-placement run tells cold servers what to take as cached.
    for honour in [true, false] {
        let m = mock_with(MockConfig {
            name: "sim0".into(),
            models: vec!["sim-model".into()],
            sim: Some(SimConfig {
                assume_cached_field: honour,
                ..fast_sim()
            }),
            ..MockConfig::default()
        })
        .await;
        let gw = Gateway::start(&server(&m.url(), &["sim-model"])).await;
        let c = gw.client();
        let mut body = chat(&"A long system prompt. ".repeat(40), "Hello?");
        body["sim_assume_cached_tokens"] = json!(70);
        let r = gw.chat(&c, &body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        // Whole blocks of 16 tokens.
        let expect = if honour { 64 } else { 0 };
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"], expect,
            "honoured: {honour}: {v}"
        );
    }
}

#[tokio::test]
async fn two_requests_sharing_a_long_system_prompt_hit_the_prefix_cache() {
    let m = mock_with(MockConfig {
        name: "sim0".into(),
        models: vec!["sim-model".into()],
        sim: Some(fast_sim()),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&server(&m.url(), &["sim-model"])).await;
    let c = gw.client();
    let system = "Answer in the voice of a ship's log. ".repeat(100); // 3,700 bytes
    let mut usages = Vec::new();
    for user in ["Where are we?", "What is the weather?"] {
        let r = gw.chat(&c, &chat(&system, user)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        usages.push(v["usage"].clone());
    }
    // The rendered prompts share the template's system part and "<|user|>\n"; the whole
    // blocks of that shared prefix are the second request's hit.
    let shared_bytes = format!("<|system|>\n{system}\n<|user|>\n").len();
    let hit = (shared_bytes / 4) / 16 * 16;
    assert_eq!(usages[0]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usages[1]["prompt_tokens_details"]["cached_tokens"], hit);
    let page = reqwest::get(format!("http://{}/metrics", m.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = "{engine=\"0\",model_name=\"sim-model\"}";
    let prompts =
        usages[0]["prompt_tokens"].as_f64().unwrap() + usages[1]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(
        metric_value(&page, &format!("vllm:prefix_cache_queries_total{labels}")),
        prompts
    );
    assert_eq!(
        metric_value(&page, &format!("vllm:prefix_cache_hits_total{labels}")),
        hit as f64
    );
    assert_eq!(
        metric_value(
            &page,
            &format!("vllm:time_to_first_token_seconds_count{labels}")
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &page,
            "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"sim-model\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn the_command_line_runs_the_simulator_with_its_flags() {
    let port = free_port();
    let _m = MockProcess::start_with(
        port,
        "sim1",
        "sim-model",
        &[
            "--sim",
            "--sim-block-tokens",
            "8",
            "--sim-prefill-us-per-token",
            "10",
            "--sim-decode-ms-per-step",
            "0.5",
            "--sim-max-num-seqs",
            "4",
            "--sim-max-batched-tokens",
            "512",
            "--kv-cache-tokens",
            "4096",
            "--tokens",
            "5",
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let mut body = chat(&"x".repeat(400), "hi");
    body.as_object_mut().unwrap().remove("max_tokens"); // --tokens applies
    let v: Value = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let v: Value = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Blocks of 8 tokens: the whole prompt but its last block is a hit.
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"],
        (prompt - 1) / 8 * 8
    );
    let rendered: Value = c
        .post(format!(
            "http://127.0.0.1:{port}/v1/chat/completions/render"
        ))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        rendered["token_ids"].as_array().unwrap().len() as u64,
        prompt
    );
    // A flag of the simulator without --sim is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["mock", "--sim-max-num-seqs", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
