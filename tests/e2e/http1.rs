//! The data plane's HTTP/1.1 handling seen on the wire: pipelining, HTTP/1.0 clients,
//! `Expect: 100-continue`, malformed and oversized heads, and upstream connection reuse.

use crate::harness::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Read until the peer closes (or `timeout`), returning everything.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

/// Read one response with a content-length body.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return (head, body);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let a = mock("a", &["ma"]).await;
    let b = mock("b", &["mb"]).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        server(&a.url(), &["ma"]),
        server(&b.url(), &["mb"])
    ))
    .await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let wire = [
        post(
            "/v1/chat/completions",
            r#"{"model":"ma","messages":[]}"#,
            "",
        ),
        "GET /health HTTP/1.1\r\nhost: gw\r\n\r\n".to_string(),
        post(
            "/v1/chat/completions",
            r#"{"model":"mb","messages":[]}"#,
            "",
        ),
    ]
    .concat();
    s.write_all(wire.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (h1, b1) = read_response(&mut s, &mut buf).await;
    let (h2, b2) = read_response(&mut s, &mut buf).await;
    let (h3, _) = read_response(&mut s, &mut buf).await;
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.to_ascii_lowercase().contains("x-mock-server: a"), "{h1}");
    assert!(b1.contains("chat.completion"), "{b1}");
    assert!(
        h2.starts_with("HTTP/1.1 200") && b2.contains("ok"),
        "{h2}{b2}"
    );
    assert!(h3.to_ascii_lowercase().contains("x-mock-server: b"), "{h3}");
    // The connection is still usable.
    s.write_all(post("/v1/chat/completions", r#"{"model":"ma"}"#, "").as_bytes())
        .await
        .unwrap();
    let (h4, _) = read_response(&mut s, &mut buf).await;
    assert!(h4.starts_with("HTTP/1.1 200"), "{h4}");
}

#[tokio::test]
async fn an_http10_client_gets_a_stream_delimited_by_close() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let body = r#"{"model":"m","stream":true,"max_tokens":3}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let all = read_to_close(&mut s).await;
    let lower = all.to_ascii_lowercase();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(!lower.contains("transfer-encoding"), "{all}");
    assert!(lower.contains("connection: close"), "{all}");
    assert!(all.contains("data: [DONE]"), "{all}");
    assert_eq!(all.matches("\"content\":\"tok").count(), 3, "{all}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "proxy.max_body_bytes = 1000\n{}",
        server(&a.url(), &["m"])
    ))
    .await;
    let body = r#"{"model":"m"}"#;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).await.unwrap();
    let (h, b) = read_response(&mut s, &mut Vec::new()).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(b.contains("chat.completion"), "{b}");

    // Too large by its Content-Length: 413 at once, no 100, and the connection closes.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut s).await;
    assert!(all.starts_with("HTTP/1.1 413"), "{all}");
    assert!(all.contains("request_too_large"), "{all}");
}

#[tokio::test]
async fn malformed_and_oversized_heads_are_refused_and_closed() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let cases: [(Vec<u8>, &str); 5] = [
        (b"NOT A REQUEST\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (b"GET /health HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip\r\n\r\n"
                .to_vec(),
            "HTTP/1.1 400",
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\nx-big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
    ];
    for (wire, status) in cases {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        let _ = s.write_all(&wire).await;
        let all = read_to_close(&mut s).await;
        assert!(all.starts_with(status), "{status}: {all}");
        assert!(all.contains("invalid_request"), "{all}");
        assert!(
            all.to_ascii_lowercase().contains("connection: close"),
            "{all}"
        );
    }
    // A broken chunked body is a 400 too.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut s).await;
    assert!(all.starts_with("HTTP/1.1 400"), "{all}");
    assert!(all.contains("chunked"), "{all}");
}

#[tokio::test]
async fn server_connections_are_pooled_and_reused() {
    let a = mock("a", &["m"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let c = reqwest::Client::new();
    let probes_before = a.state.connections.load(Relaxed);
    for _ in 0..30 {
        let r = gw.chat(&c, &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let opened = a.state.connections.load(Relaxed) - probes_before;
    // One worker thread: sequential requests share one pooled connection (a health probe
    // may open another).
    assert!(
        opened <= 2,
        "{opened} connections for 30 sequential requests"
    );
    assert_eq!(a.state.requests.load(Relaxed), 30);
}

/// A raw upstream answering every request (probes included) with `response`; counts the
/// connections it accepted.
async fn raw_upstream(
    response: &'static [u8],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    // One response per complete request (heads, plus a body by Content-Length).
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        buf.drain(..end + 4 + len);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn odd_but_valid_server_responses_are_relayed_correctly() {
    // No reason phrase; a hop-by-hop field named by `Connection` (not forwarded).
    let (plain, _) = raw_upstream(
        b"HTTP/1.1 200\r\ncontent-type: application/json\r\nconnection: x-hop\r\nx-hop: 1\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    // Both Transfer-Encoding and Content-Length: the body is read as chunked, the client gets
    // a correctly framed response, and the connection is not reused.
    let (both, accepted) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&format!(
        "{}{}",
        server(&plain, &["plain"]),
        server(&both, &["both"])
    ))
    .await;
    let c = reqwest::Client::new();
    for model in ["plain", "plain", "both", "both", "both"] {
        let r = gw.chat(&c, &chat_body(model)).await;
        assert_eq!(r.status(), 200, "{model}");
        assert!(r.headers().get("x-hop").is_none(), "{model}");
        assert_eq!(r.text().await.unwrap(), "{}", "{model}");
    }
    // Each of the three requests to `both` needed its own connection (probes may add more).
    assert!(accepted.load(Relaxed) >= 3, "{}", accepted.load(Relaxed));
}
