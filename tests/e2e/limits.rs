//! Per-key rpm and tpm limits: 429 with Retry-After, released when the minute turns, and
//! counted across instances that share a Valkey.

use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::Duration;

async fn key(gw: &Gateway, c: &Client, body: Value) -> String {
    let r = gw
        .admin(c, Method::POST, "/admin/keys")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn chat(gw: &Gateway, c: &Client, token: &str) -> reqwest::Response {
    c.post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn rpm_and_tpm_limits_answer_429_until_the_minute_turns() {
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "auth.proxy = \"required\"\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    let rpm = key(&gw, &c, json!({"rpm": 2})).await;
    let free = key(&gw, &c, json!({})).await;
    // Tokens of one answer (prompt + completion), learned with the unlimited key.
    let probe: Value = chat(&gw, &c, &free).await.json().await.unwrap();
    let per_request = probe["usage"]["total_tokens"].as_u64().unwrap();
    let tpm_limit = 2 * per_request - 1;
    let tpm = key(&gw, &c, json!({"tpm": tpm_limit})).await;
    fresh_minute(15).await;
    assert_eq!(chat(&gw, &c, &rpm).await.status(), 200);
    assert_eq!(chat(&gw, &c, &rpm).await.status(), 200);
    let r = chat(&gw, &c, &rpm).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 requests per minute"));
    // Tokens count after each answer: the second request still fits, the third does not.
    assert_eq!(chat(&gw, &c, &tpm).await.status(), 200);
    assert_eq!(
        chat(&gw, &c, &tpm).await.status(),
        200,
        "under the limit before it"
    );
    let r = chat(&gw, &c, &tpm).await;
    assert_eq!(r.status(), 429);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(&format!("{tpm_limit} tokens per minute")));
    // Other keys are not affected; refused requests reach no server.
    assert_eq!(chat(&gw, &c, &free).await.status(), 200);
    assert_eq!(
        m.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        6
    );

    // Released when the minute turns (what Retry-After said).
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
    assert_eq!(chat(&gw, &c, &rpm).await.status(), 200);
    assert_eq!(chat(&gw, &c, &tpm).await.status(), 200);
}

#[tokio::test]
async fn limits_are_counted_across_instances() {
    let redis = Redis::start().await;
    let m = mock("a", &["m"]).await;
    let extra = format!(
        "auth.proxy = \"required\"\n{}[store]\nurl = \"{}\"\nprefix = \"lim\"\n",
        server(&m.url(), &["m"]),
        redis.url()
    );
    let gw1 = Gateway::start(&extra).await;
    let gw2 = Gateway::start(&extra).await;
    let c = Client::new();
    let token = key(&gw1, &c, json!({"rpm": 4})).await;
    fresh_minute(15).await;
    // gw2 learns the key within a second.
    assert!(
        eventually(Duration::from_secs(2), || async {
            chat(&gw2, &c, &token).await.status() == 200
        })
        .await
    );
    assert_eq!(chat(&gw1, &c, &token).await.status(), 200);
    assert_eq!(chat(&gw1, &c, &token).await.status(), 200);
    assert_eq!(chat(&gw2, &c, &token).await.status(), 200);
    // Four in this minute over both: the counters meet in Valkey within 250 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        chat(&gw1, &c, &token).await.status(),
        429,
        "gw1 counts gw2's requests"
    );
    assert_eq!(
        chat(&gw2, &c, &token).await.status(),
        429,
        "and gw2 counts gw1's"
    );
}
