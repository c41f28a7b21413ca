//! Routing by model, bodies forwarded intact, affinity.

use crate::harness::*;
use reqwest::Client;
use serde_json::json;
use std::collections::HashMap;

fn served_by(r: &reqwest::Response) -> String {
    r.headers()["x-mock-server"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn routes_each_model_to_its_pool_and_maps_paths() {
    let a = mock("a", &["llama", "embed"]).await;
    let b = mock("b", &["qwen"]).await;
    let gw =
        Gateway::start(&(server(&a.url(), &["llama", "embed"]) + &server(&b.url(), &["qwen"])))
            .await;
    let c = Client::new();
    for (model, who) in [("llama", "a"), ("qwen", "b"), ("llama", "a"), ("qwen", "b")] {
        let r = gw.chat(&c, &chat_body(model)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r), who, "model {model}");
    }
    assert_eq!(*b.state.last_path.lock().unwrap(), "/v1/chat/completions");
    for path in [
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/score",
        "/v1/audio/speech",
    ] {
        let body = json!({"model": "embed", "prompt": "x", "input": "x", "documents": ["a"], "text_1": "a", "text_2": "b"});
        let r = c.post(gw.url(path)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(*a.state.last_path.lock().unwrap(), path);
    }
    // /v1/models: the union of models with a healthy server.
    let models: serde_json::Value = c
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let mut ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["embed", "llama", "qwen"]);
}

#[tokio::test]
async fn multipart_audio_routes_on_the_model_form_field() {
    let a = mock("a", &["whisper"]).await;
    let b = mock("b", &["other"]).await;
    let gw =
        Gateway::start(&(server(&a.url(), &["whisper"]) + &server(&b.url(), &["other"]))).await;
    let audio = vec![7u8; 300_000];
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(audio.clone()).file_name("a.wav"),
        )
        .text("model", "whisper");
    let r = Client::new()
        .post(gw.url("/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r), "a");
    let body = a.state.last_body.lock().unwrap().clone();
    assert!(
        body.windows(audio.len()).any(|w| w == &audio[..]),
        "file part arrived intact"
    );
    assert_eq!(
        *a.state.last_path.lock().unwrap(),
        "/v1/audio/transcriptions"
    );
}

#[tokio::test]
async fn five_mib_body_with_model_last_arrives_byte_for_byte() {
    let a = mock("a", &["big"]).await;
    let gw = Gateway::start(&server(&a.url(), &["big"])).await;
    let filler = "x".repeat(5 * 1024 * 1024);
    // `messages` before `model`, as the OpenAI Python client writes it; a nested decoy model too.
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{filler}","model":"decoy"}}],"max_tokens":2,"model":"big"}}"#
    );
    let r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = a.state.last_body.lock().unwrap().clone();
    assert_eq!(got.len(), body.len());
    assert!(got == body.as_bytes(), "body forwarded byte for byte");
}

#[tokio::test]
async fn chunked_request_bodies_are_forwarded_whole() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let parts: Vec<Result<&'static str, std::io::Error>> = vec![
        Ok(r#"{"messages":[{"role":"user","#),
        Ok(r#""content":"hi"}],"#),
        Ok(r#""model":"m"}"#),
    ];
    let r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(tokio_stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        &a.state.last_body.lock().unwrap()[..],
        br#"{"messages":[{"role":"user","content":"hi"}],"model":"m"}"#
    );
}

#[tokio::test]
async fn only_the_top_level_model_routes() {
    let a = mock("a", &["real"]).await;
    let b = mock("b", &["decoy"]).await;
    let gw = Gateway::start(&(server(&a.url(), &["real"]) + &server(&b.url(), &["decoy"]))).await;
    let c = Client::new();
    let body = json!({"messages": [{"role": "user", "content": "x", "model": "decoy"}],
        "metadata": {"model": "decoy"}, "model": "real"});
    let r = gw.chat(&c, &body).await;
    assert_eq!(served_by(&r), "a");
    let nested_only = json!({"messages": [{"role": "user", "model": "decoy"}]});
    let r = gw.chat(&c, &nested_only).await;
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"model\""),
        "{e}"
    );
    assert_eq!(
        b.state.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn server_key_replaces_client_credentials() {
    let a = mock_with(infergate::mock::MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        api_key: Some("server-secret".into()),
        ..Default::default()
    })
    .await;
    let gw = Gateway::start_with_env(
        &format!(
            "{}api_key_env = \"TEST_VLLM_KEY\"\n",
            server(&a.url(), &["m"])
        ),
        &[("TEST_VLLM_KEY", "server-secret")],
    )
    .await;
    let r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-token")
        .header("api-key", "k")
        .header("api-secret", "s")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        a.state.last_authorization.lock().unwrap().as_deref(),
        Some("Bearer server-secret")
    );
    // Probes carry the key too: the server stays healthy although /health needs it.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        gw.metric(&format!(
            "infergate_server_healthy{{provider=\"vllm\",server=\"{}\"}}",
            a.url()
        ))
        .await,
        1.0
    );
}

#[tokio::test]
async fn affinity_sticks_a_user_and_spreads_users() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let gw = Gateway::start(&(server(&a.url(), &["m"]) + &server(&b.url(), &["m"]))).await;
    let c = Client::new();
    // Body `user`: every request of alice goes to one server.
    let mut seen = HashMap::new();
    for _ in 0..20 {
        let mut body = chat_body("m");
        body["user"] = json!("alice");
        let r = gw.chat(&c, &body).await;
        *seen.entry(served_by(&r)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1, "alice stuck to one server: {seen:?}");
    // x-user-id header when the body has no user.
    let mut header_seen = HashMap::new();
    for _ in 0..10 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-user-id", "bob")
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap();
        *header_seen.entry(served_by(&r)).or_insert(0) += 1;
    }
    assert_eq!(
        header_seen.len(),
        1,
        "bob stuck to one server: {header_seen:?}"
    );
    // Many users spread over both servers.
    let mut spread = HashMap::new();
    for i in 0..40 {
        let mut body = chat_body("m");
        body["user"] = json!(format!("user-{i}"));
        let r = gw.chat(&c, &body).await;
        *spread.entry(served_by(&r)).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        2,
        "users spread over both servers: {spread:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "infergate_affinity_total{outcome=\"hit\",provider=\"vllm\"}"
        ),
        19.0 + 9.0
    );
    assert_eq!(
        metric_value(
            &m,
            "infergate_affinity_total{outcome=\"miss\",provider=\"vllm\"}"
        ),
        2.0 + 40.0
    );
}

#[tokio::test]
async fn affinity_falls_back_when_the_pinned_server_is_ejected() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let gw = Gateway::start(&(server(&a.url(), &["m"]) + &server(&b.url(), &["m"]))).await;
    let c = Client::new();
    let mut body = chat_body("m");
    body["user"] = json!("carol");
    let first = served_by(&gw.chat(&c, &body).await);
    let (pinned, other) = if first == "a" { (&a, "b") } else { (&b, "a") };
    pinned.state.set_healthy(false);
    let url = pinned.url();
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            gw.metric(&format!(
                "infergate_server_healthy{{provider=\"vllm\",server=\"{url}\"}}"
            ))
            .await
                == 0.0
        })
        .await
    );
    let r = gw.chat(&c, &body).await;
    assert_eq!(served_by(&r), other);
    // Reassigned: carol now sticks to the other server, even after the first comes back.
    pinned.state.set_healthy(true);
    let r = gw.chat(&c, &body).await;
    assert_eq!(served_by(&r), other);
    assert_eq!(
        gw.metric("infergate_affinity_total{outcome=\"fallback\",provider=\"vllm\"}")
            .await,
        1.0
    );
}
