//! Stopping under load (issue 15, item 1): SIGTERM drains (the grace period still serves, with
//! `/health` at 503 and connections closed after their response; streams in flight finish;
//! the usage of every served request reaches the store before the process exits); a stream
//! still running at the deadline ends with an error event and a whole body, and its usage is
//! recorded; SIGHUP does not stop the gateway.

use crate::harness::*;
use crate::wire::read_response;
use infergate::mock::MockConfig;
use nix::sys::signal::Signal;
use reqwest::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn slow_stream_mock(itl_ms: u64) -> MockConfig {
    MockConfig {
        name: "slow".into(),
        models: vec!["m".into()],
        itl: Duration::from_millis(itl_ms),
        ..Default::default()
    }
}

fn stream_body(tokens: u32) -> Value {
    json!({"model": "m", "stream": true, "max_tokens": tokens, "user": "drain-test",
        "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}})
}

/// The whole streamed body (a cut connection is a failure: `None`).
async fn stream(url: String, tokens: u32) -> Option<String> {
    let r = Client::new()
        .post(url)
        .json(&stream_body(tokens))
        .send()
        .await
        .ok()?;
    assert_eq!(r.status(), 200);
    r.text().await.ok()
}

/// Usage rows read through a second gateway on the same Valkey (the first has exited).
async fn usage_rows(redis: &Redis, extra: &str) -> Vec<Value> {
    let reader = Gateway::start(&format!("{}{extra}", valkey_store(redis))).await;
    let (status, page) = reader
        .admin_get(&Client::new(), "/admin/usage?limit=100")
        .await;
    assert_eq!(status, 200, "{page}");
    page["records"].as_array().unwrap().clone()
}

fn valkey_store(redis: &Redis) -> String {
    format!("[store]\nurl = {:?}\nprefix = \"drain\"\n\n", redis.url())
}

#[tokio::test]
async fn sigterm_drains_what_is_in_flight_and_writes_its_usage_before_exiting() {
    let m = mock_with(slow_stream_mock(100)).await;
    let redis = Redis::start().await;
    let mut gw = Gateway::start_logged(
        &format!(
            "proxy.grace_period_seconds = 1\nproxy.graceful_shutdown_timeout_seconds = 10\n{}{}",
            server(&m.url(), &["m"]),
            valkey_store(&redis)
        ),
        &[],
    )
    .await;
    // Two streams of 20 tokens (2 s each) in flight when SIGTERM comes.
    let streams: Vec<_> = (0..2)
        .map(|_| tokio::spawn(stream(gw.url("/v1/chat/completions"), 20)))
        .collect();
    // A keep-alive connection that is idle at SIGTERM, and one whose (2 s) answer is on its way.
    let mut idle = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let request = |body: &Value| {
        let body = body.to_string();
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let quick =
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    idle.write_all(request(&quick).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut idle, &mut Vec::new()).await;
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let slow =
        json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let mut busy = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    busy.write_all(request(&slow).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    gw.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The idle connection still serves during the grace period, and then closes.
    idle.write_all(request(&quick).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut idle, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The grace period: health says draining, on both ports; new requests are still served,
    // each told to close its connection.
    let c = Client::new();
    let health = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "draining");
    let admin_health = c
        .get(format!("http://{}/health", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(admin_health.status(), 503);
    let served = gw.chat(&c, &chat_body("m")).await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["connection"], "close");
    // The answer that was on its way when the drain began closes its connection too.
    let (head, _) = read_response(&mut busy, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The streams finish whole.
    for s in streams {
        let text = s.await.unwrap().expect("the stream was not cut");
        assert_eq!(text.matches("\"content\":\"tok").count(), 20, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    // Then the process exits, cleanly, well before the timeout.
    let status = gw
        .exited_within(Duration::from_secs(8))
        .await
        .expect("the gateway exits once drained");
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // Every request served left its usage record: the two streams, the request of the grace
    // period, and the three on raw connections.
    let rows = usage_rows(&redis, "").await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    let streamed: Vec<_> = rows.iter().filter(|r| r["stream"] == true).collect();
    assert_eq!(streamed.len(), 2);
    assert!(streamed.iter().all(|r| r["completion_tokens"] == 20));
    let log = gw.log();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("usage records written"), "{log}");
}

#[tokio::test]
async fn a_stream_still_running_at_the_deadline_ends_whole_with_an_error_event() {
    let m = mock_with(slow_stream_mock(100)).await;
    let redis = Redis::start().await;
    let mut gw = Gateway::start(&format!(
        "proxy.grace_period_seconds = 0\nproxy.graceful_shutdown_timeout_seconds = 1\n{}{}",
        server(&m.url(), &["m"]),
        valkey_store(&redis)
    ))
    .await;
    // 100 tokens at 100 ms: 10 s, far past the 1 s the drain allows.
    let running = tokio::spawn(stream(gw.url("/v1/chat/completions"), 100));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    gw.signal(Signal::SIGTERM);
    let text = running
        .await
        .unwrap()
        .expect("a whole body, not a cut connection");
    let relayed = text.matches("\"content\":\"tok").count();
    assert!((5..100).contains(&relayed), "{relayed} tokens relayed");
    assert!(
        text.contains("\"code\":\"gateway_shutting_down\""),
        "{text}"
    );
    assert!(
        !text.contains("[DONE]"),
        "a cut answer must not look complete"
    );
    let status = gw
        .exited_within(Duration::from_secs(6))
        .await
        .expect("the gateway exits after the cut");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    // Its usage is what was relayed.
    let rows = usage_rows(&redis, "").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let tokens = rows[0]["completion_tokens"].as_u64().unwrap();
    assert!(
        (relayed as u64 - 1..=relayed as u64 + 1).contains(&tokens),
        "{tokens} recorded, {relayed} relayed"
    );
}

#[tokio::test]
async fn sighup_does_not_stop_the_gateway() {
    let m = mock("a", &["m"]).await;
    let mut gw = Gateway::start(&server(&m.url(), &["m"])).await;
    gw.signal(Signal::SIGHUP);
    assert!(gw.exited_within(Duration::from_millis(500)).await.is_none());
    assert_eq!(gw.chat(&Client::new(), &chat_body("m")).await.status(), 200);
    let health = Client::new().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn sigint_during_the_drain_stops_at_once() {
    let m = mock("a", &["m"]).await;
    let mut gw = Gateway::start(&format!(
        "proxy.grace_period_seconds = 30\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    gw.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.exited_within(Duration::ZERO).await.is_none(), "draining");
    let signalled = Instant::now();
    gw.signal(Signal::SIGINT);
    assert!(
        gw.exited_within(Duration::from_secs(3)).await.is_some(),
        "SIGINT ends a drain"
    );
    assert!(signalled.elapsed() < Duration::from_secs(3));
}
