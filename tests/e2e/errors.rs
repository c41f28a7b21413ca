//! Every error the gateway answers itself, in OpenAI's shape.

use crate::harness::*;
use infergate::mock::MockConfig;
use reqwest::Client;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["type"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    v
}

#[tokio::test]
async fn client_errors_are_400_404_405_413() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "proxy.max_body_bytes = 1000\n{}",
        server(&a.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    let post = |body: &'static str| {
        c.post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let v = expect_error(post("{\"model\": ").await.unwrap(), 400, "invalid_request").await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let v = expect_error(
        post("{\"messages\": []}").await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"model\" field"));
    expect_error(post("").await.unwrap(), 400, "invalid_request").await;
    let v = expect_error(
        post("{\"model\": \"gpt-9\"}").await.unwrap(),
        404,
        "model_not_found",
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
    expect_error(
        c.post(gw.url("/v1/nothing"))
            .body("{}")
            .send()
            .await
            .unwrap(),
        404,
        "unknown_url",
    )
    .await;
    expect_error(
        c.get(gw.url("/v1/chat/completions")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    let big = format!("{{\"model\":\"m\",\"prompt\":\"{}\"}}", "x".repeat(2000));
    expect_error(
        c.post(gw.url("/v1/completions"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        413,
        "request_too_large",
    )
    .await;
    // Chunked (no Content-Length) bodies are bounded while read.
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(big[..900].to_string()), Ok(big[900..].to_string())];
    let r = c
        .post(gw.url("/v1/completions"))
        .body(reqwest::Body::wrap_stream(tokio_stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "request_too_large").await;
    assert_eq!(
        a.state.requests.load(Relaxed),
        0,
        "nothing reached the server"
    );
    // The connection still works after the errors.
    assert_eq!(gw.chat(&c, &chat_body("m")).await.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "infergate_requests_total{model=\"\",server=\"\",status=\"413\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn unreachable_servers_are_502() {
    let gw = Gateway::start(&format!(
        "health.interval_ms = 60000\n{}{}",
        server(&dead_url(), &["m"]),
        server(&dead_url(), &["m"])
    ))
    .await;
    let r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    expect_error(r, 502, "upstream_unreachable").await;
}

#[tokio::test]
async fn no_healthy_server_is_503_with_retry_after() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "proxy.retry_after_secs = 9\n{}",
        server(&a.url(), &["m"])
    ))
    .await;
    a.state.set_healthy(false);
    let c = Client::new();
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.chat(&c, &chat_body("m")).await.status() == 503
        })
        .await
    );
    let r = gw.chat(&c, &chat_body("m")).await;
    assert_eq!(r.headers()["retry-after"], "9");
    expect_error(r, 503, "no_healthy_server").await;
}

#[tokio::test]
async fn a_slow_server_is_504_after_read_timeout() {
    let a = mock_with(MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        ttft: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "proxy.read_timeout_secs = 1\nhealth.interval_ms = 60000\n{}",
        server(&a.url(), &["m"])
    ))
    .await;
    let r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    expect_error(r, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn server_errors_pass_through_unchanged() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    a.state.fail_status.store(429, Relaxed);
    let r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-mock-server"], "a");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"object": "error", "message": "injected failure", "type": "BadRequestError", "code": 429})
    );
}
