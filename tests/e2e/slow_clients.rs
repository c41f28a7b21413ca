//! Slow and idle clients on the data plane (`[proxy]` header, body and keep-alive timeouts,
//! the minimum body rate and the connection cap), tried with raw sockets as slowloris would.

use crate::harness::*;
use crate::wire::{closed_silently, read_response, read_to_close};
use infergate::mock::MockServer;
use reqwest::Client;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HEAD: &str =
    "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n";

async fn gateway(extra: &str) -> (MockServer, Gateway) {
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!("{extra}\n{}", server(&m.url(), &["m"]))).await;
    (m, gw)
}

/// Send `bytes` one at a time, `every` apart, until the gateway answers (or stops taking
/// them); then read its answer to the close. Stopping at the answer matters: bytes sent after
/// the gateway closed would make it reset the connection, and the answer be lost.
async fn dribble(s: &mut TcpStream, bytes: &[u8], every: Duration) -> String {
    let mut answer = Vec::new();
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
        let mut chunk = [0u8; 4096];
        match s.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned() + &read_to_close(s).await
}

#[tokio::test]
async fn a_head_sent_slowly_is_cut_at_the_header_timeout_with_a_408() {
    let (_m, gw) = gateway("proxy.header_timeout_secs = 1").await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    // A byte every 100 ms: each read is quick, the head never completes.
    let answer = dribble(
        &mut s,
        &HEAD.repeat(10).into_bytes(),
        Duration::from_millis(100),
    )
    .await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(
        gw.metric("infergate_client_timeouts_total{phase=\"head\"}")
            .await,
        1.0
    );
    // Others are served meanwhile and after.
    assert_eq!(gw.chat(&Client::new(), &chat_body("m")).await.status(), 200);
}

#[tokio::test]
async fn a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let (_m, gw) = gateway("proxy.header_timeout_secs = 1").await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    // Closed at the header timeout, not held for the keep-alive one, and sent nothing.
    let idle = closed_silently(&mut s, Duration::from_secs(5)).await;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test]
async fn a_body_under_the_minimum_rate_or_pausing_too_long_is_a_408() {
    let (_m, gw) = gateway(
        "proxy.header_timeout_secs = 1\nproxy.body_min_rate_bytes_per_sec = 100\nproxy.body_timeout_secs = 1",
    )
    .await;
    // 10,000 bytes announced, 10 bytes a second sent: under 100 B/s once the first second is
    // over.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(format!("{HEAD}content-length: 10000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let answer = dribble(&mut s, &[b' '; 100], Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    // A chunked body that stops for longer than body_timeout_secs.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(format!("{HEAD}transfer-encoding: chunked\r\n\r\n5\r\n{{\"mo").as_bytes())
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(
        gw.metric("infergate_client_timeouts_total{phase=\"body\"}")
            .await,
        2.0
    );
    // A body at a fair pace is read whole.
    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(format!("{HEAD}content-length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    for piece in body.chunks(20) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (head, _) = read_response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_their_timeout() {
    let (_m, gw) = gateway("proxy.keepalive_timeout_secs = 1").await;
    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(format!("{HEAD}content-length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    let (head, _) = read_response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle = closed_silently(&mut s, Duration::from_secs(5)).await;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test]
async fn blank_lines_before_a_request_are_skipped_but_do_not_hold_a_connection() {
    let (_m, gw) = gateway("proxy.header_timeout_secs = 1\nproxy.keepalive_timeout_secs = 4").await;
    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let request = format!("{HEAD}content-length: {}\r\n\r\n", body.len());
    // Blank lines before a request line are ignored (RFC 9112 2.2), and the one a client sends
    // after a body leaves the connection idle, under the keep-alive timeout, not the header one.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let mut wire = "\r\n\n".repeat(100).into_bytes();
    wire.extend_from_slice(request.as_bytes());
    wire.extend_from_slice(&body);
    wire.extend_from_slice(b"\r\n");
    s.write_all(&wire).await.unwrap();
    let (head, _) = read_response(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // No 408 for an idle connection: closed silently at the keep-alive timeout.
    let idle = closed_silently(&mut s, Duration::from_secs(8)).await;
    assert!(idle >= Duration::from_millis(3500), "{idle:?}");
    // Blank lines sent now start a head: sent forever, they are cut at the header timeout.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let answer = dribble(&mut s, &b"\r\n".repeat(100), Duration::from_millis(50)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn beyond_max_connections_new_ones_get_a_503_and_open_ones_keep_working() {
    let (_m, gw) = gateway("proxy.max_connections = 3").await;
    // Three open connections (idle, nothing sent yet).
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(TcpStream::connect(gw.proxy).await.unwrap());
    }
    let counted = eventually(Duration::from_secs(5), || async {
        gw.metric("infergate_client_connections").await == 3.0
    })
    .await;
    assert!(
        counted,
        "{}",
        gw.metric("infergate_client_connections").await
    );
    let mut extra = TcpStream::connect(gw.proxy).await.unwrap();
    let answer = read_to_close(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert_eq!(
        gw.metric("infergate_client_connections_refused_total")
            .await,
        1.0
    );
    // The open ones are served.
    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let s = &mut open[0];
    s.write_all(format!("{HEAD}content-length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    let (head, _) = read_response(s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // One leaves: a new one is taken.
    drop(open.pop());
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("infergate_client_connections").await == 2.0
        })
        .await
    );
    let r = gw.chat(&Client::new(), &chat_body("m")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn many_slowloris_connections_do_not_starve_other_clients() {
    let (_m, gw) = gateway("proxy.header_timeout_secs = 2").await;
    // 300 connections each sending a byte of a head every 200 ms.
    let mut holders = Vec::new();
    for _ in 0..300 {
        let addr = gw.proxy;
        holders.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            dribble(
                &mut s,
                &HEAD.repeat(4).into_bytes(),
                Duration::from_millis(200),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile, every normal request is answered, quickly.
    let c = Client::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(gw.chat(&c, &chat_body("m")).await.status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // Each of them is cut at the header timeout with a 408.
    for h in holders {
        let answer = h.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
    assert_eq!(
        gw.metric("infergate_client_timeouts_total{phase=\"head\"}")
            .await,
        300.0
    );
}
