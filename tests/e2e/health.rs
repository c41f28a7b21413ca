//! Active probes eject and readmit; passive failures count; connect failures retry elsewhere.

use crate::harness::*;
use reqwest::Client;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn healthy_sample(url: &str) -> String {
    format!("infergate_server_healthy{{provider=\"vllm\",server=\"{url}\"}}")
}

#[tokio::test]
async fn failed_probes_eject_and_passing_probes_readmit() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m", "only-b"]).await;
    let gw =
        Gateway::start(&(server(&a.url(), &["m"]) + &server(&b.url(), &["m", "only-b"]))).await;
    let c = Client::new();
    assert!(
        eventually(Duration::from_secs(3), || async {
            b.state.probes.load(Relaxed) >= 2
        })
        .await,
        "probes run"
    );

    b.state.set_healthy(false);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric(&healthy_sample(&b.url())).await == 0.0
        })
        .await
    );
    // Ejected: no new requests, and its models leave /v1/models when no other server has them.
    let before = b.state.requests.load(Relaxed);
    for _ in 0..10 {
        let r = gw.chat(&c, &chat_body("m")).await;
        assert_eq!(r.headers()["x-mock-server"], "a");
    }
    assert_eq!(b.state.requests.load(Relaxed), before);
    let models: serde_json::Value = c
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: HashSet<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["m"]));
    let r = gw.chat(&c, &chat_body("only-b")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());

    b.state.set_healthy(true);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric(&healthy_sample(&b.url())).await == 1.0
        })
        .await
    );
    let r = gw.chat(&c, &chat_body("only-b")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn connect_failures_retry_on_another_server_and_eject_the_dead_one() {
    let a = mock("a", &["m"]).await;
    let dead = dead_url();
    // Probes rarely, so that ejection here comes from passive failures.
    let gw = Gateway::start(&format!(
        "health.interval_ms = 60000\n{}{}",
        server(&dead, &["m"]),
        server(&a.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    for i in 0..20 {
        let r = gw.chat(&c, &chat_body("m")).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            &format!("infergate_upstream_retries_total{{server=\"{dead}\"}}")
        ) >= 1.0
    );
    assert_eq!(
        metric_value(&m, &healthy_sample(&dead)),
        0.0,
        "passively ejected"
    );
    assert_eq!(a.state.requests.load(Relaxed), 20);
}

#[tokio::test]
async fn a_killed_server_is_ejected_and_a_restarted_one_readmitted() {
    let a = mock("a", &["m"]).await;
    let port = free_port();
    let b_url = format!("http://127.0.0.1:{port}/v1");
    let mut b = MockProcess::start(port, "b", "m").await;
    let gw = Gateway::start(&(server(&a.url(), &["m"]) + &server(&b_url, &["m"]))).await;
    b.kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric(&healthy_sample(&b_url)).await == 0.0
        })
        .await
    );
    let c = Client::new();
    for _ in 0..5 {
        let r = gw.chat(&c, &chat_body("m")).await;
        assert_eq!(r.status(), 200);
    }
    let _b2 = MockProcess::start(port, "b", "m").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric(&healthy_sample(&b_url)).await == 1.0
        })
        .await
    );
    let mut served = HashSet::new();
    for i in 0..20 {
        let mut body = chat_body("m");
        body["user"] = serde_json::json!(format!("u{i}"));
        let r = gw.chat(&c, &body).await;
        assert_eq!(r.status(), 200);
        served.insert(r.headers()["x-mock-server"].to_str().unwrap().to_string());
    }
    assert!(served.contains("b"), "readmitted server gets traffic again");
}

#[tokio::test]
async fn server_errors_count_as_passive_failures_and_pass_through() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "health.interval_ms = 60000\n{}",
        server(&a.url(), &["m"])
    ))
    .await;
    a.state.fail_status.store(500, Relaxed);
    let c = Client::new();
    for _ in 0..2 {
        let r = gw.chat(&c, &chat_body("m")).await;
        assert_eq!(r.status(), 500);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["message"], "injected failure",
            "the server's own error body"
        );
    }
    assert_eq!(gw.metric(&healthy_sample(&a.url())).await, 0.0);
}

/// A server ejected by its failing answers is held out of rotation while others can serve, but
/// a pool left with no healthy server falls back to it (its probes pass) instead of answering
/// 503 for the whole hold.
#[tokio::test]
async fn a_pool_whose_only_server_is_held_falls_back_to_it() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "health.passive_ejection_ms = 60000\n{}",
        server(&a.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    a.state.fail_status.store(500, Relaxed);
    for _ in 0..2 {
        assert_eq!(gw.chat(&c, &chat_body("m")).await.status(), 500);
    }
    a.state.fail_status.store(0, Relaxed);
    // Ejected (held for a minute), yet after a passing probe it still serves the pool.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sample = format!("{} 0", healthy_sample(&a.url()));
    let metrics = gw.metrics().await;
    assert!(metrics.lines().any(|l| l == sample), "held out: {metrics}");
    let r = gw.chat(&c, &chat_body("m")).await;
    assert_eq!(
        r.status(),
        200,
        "the held server serves a pool with no other"
    );
}
