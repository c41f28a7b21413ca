//! SSE passes through event by event; TTFT, inter-token latency and tokens are measured;
//! a client that leaves mid-stream frees the server's slot.

use crate::harness::*;
use infergate::mock::MockConfig;
use reqwest::Client;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

fn slow_mock(ttft_ms: u64, itl_ms: u64) -> MockConfig {
    MockConfig {
        name: "slow".into(),
        models: vec!["m".into()],
        ttft: Duration::from_millis(ttft_ms),
        itl: Duration::from_millis(itl_ms),
        ..Default::default()
    }
}

#[tokio::test]
async fn first_event_reaches_the_client_before_the_upstream_finishes() {
    let a = mock_with(slow_mock(50, 150)).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let body = json!({"model": "m", "stream": true, "max_tokens": 6, "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": true}});
    let start = Instant::now();
    let mut r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut first_token_at = None;
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if first_token_at.is_none() && text.contains("tok0") {
            first_token_at = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let first = first_token_at.expect("a token event");
    // The upstream takes 50 ms + 5 x 150 ms; the first token must not wait for the end.
    assert!(total >= Duration::from_millis(750), "{total:?}");
    assert!(
        first + Duration::from_millis(500) < total,
        "first token at {first:?} of {total:?}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("\"content\":\"tok").count(), 6);
}

#[tokio::test]
async fn ttft_inter_token_latency_and_tokens_reach_metrics() {
    let a = mock_with(slow_mock(100, 20)).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let c = Client::new();
    let body = json!({"model": "m", "stream": true, "max_tokens": 5, "stream_options": {"include_usage": true}});
    let text = gw.chat(&c, &body).await.text().await.unwrap();
    assert!(text.contains("\"usage\""));
    // Without include_usage the token events are counted.
    let body = json!({"model": "m", "stream": true, "max_tokens": 3});
    gw.chat(&c, &body).await.text().await.unwrap();
    // Non-streaming usage comes from the body.
    let body = json!({"model": "m", "max_tokens": 7, "prompt": "x"});
    assert_eq!(
        c.post(gw.url("/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let m = gw.metrics().await;
    let labels = format!("model=\"m\",server=\"{}\"", a.url());
    assert_eq!(
        metric_value(&m, &format!("infergate_ttft_seconds_count{{{labels}}}")),
        2.0
    );
    let ttft_sum = metric_value(&m, &format!("infergate_ttft_seconds_sum{{{labels}}}"));
    assert!(
        (0.2..1.0).contains(&ttft_sum),
        "two TTFTs of about 100 ms: {ttft_sum}"
    );
    assert_eq!(
        metric_value(
            &m,
            &format!("infergate_ttft_seconds_bucket{{{labels},le=\"0.05\"}}")
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            &format!("infergate_inter_token_latency_seconds_count{{{labels}}}")
        ),
        2.0
    );
    let itl_sum = metric_value(
        &m,
        &format!("infergate_inter_token_latency_seconds_sum{{{labels}}}"),
    );
    // Two ITLs of about 20 ms; the upper bound leaves room for a loaded CI machine.
    assert!(
        (0.03..0.5).contains(&itl_sum),
        "two ITLs of about 20 ms: {itl_sum}"
    );
    assert_eq!(
        metric_value(
            &m,
            "infergate_tokens_total{kind=\"completion\",model=\"m\"}"
        ),
        5.0 + 3.0 + 7.0
    );
    assert!(metric_value(&m, "infergate_tokens_total{kind=\"prompt\",model=\"m\"}") >= 2.0);
    assert_eq!(
        metric_value(
            &m,
            &format!("infergate_requests_total{{{labels},status=\"200\"}}")
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            &format!("infergate_request_duration_seconds_count{{{labels}}}")
        ),
        3.0
    );
}

#[tokio::test]
async fn a_client_leaving_mid_stream_aborts_the_upstream_request() {
    let a = mock_with(slow_mock(10, 200)).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let body = json!({"model": "m", "stream": true, "max_tokens": 100});
    let mut r = Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut got = String::new();
    while !got.contains("tok1") {
        got.push_str(std::str::from_utf8(&r.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert_eq!(a.state.in_flight.load(Relaxed), 1);
    drop(r);
    assert!(
        eventually(Duration::from_secs(3), || async {
            a.state.aborted_streams.load(Relaxed) == 1
        })
        .await,
        "the server saw the stream aborted"
    );
    assert_eq!(a.state.in_flight.load(Relaxed), 0);
    assert!(
        eventually(Duration::from_secs(2), || async {
            gw.metric(&format!(
                "infergate_server_inflight{{server=\"{}\"}}",
                a.url()
            ))
            .await
                == 0.0
        })
        .await
    );
    assert_eq!(
        gw.metric(&format!(
            "infergate_requests_total{{model=\"m\",server=\"{}\",status=\"499\"}}",
            a.url()
        ))
        .await,
        1.0
    );
}
