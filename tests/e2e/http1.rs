//! The data plane's HTTP/1.1 handling seen on the wire: pipelining, HTTP/1.0 clients,
//! `Expect: 100-continue`, malformed and oversized heads, and upstream connection reuse.

use crate::harness::*;
use crate::wire::*;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
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
    // A 431 names the limit that was passed: the head's size or its number of fields.
    let fields: String = (0..129).map(|i| format!("x-f{i}: 1\r\n")).collect();
    for (wire, limit) in [
        (
            format!("GET /health HTTP/1.1\r\nhost: gw\r\n{fields}\r\n"),
            "has more than 128 header fields",
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\nx-big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            ),
            "is larger than 65536 bytes",
        ),
    ] {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        let _ = s.write_all(wire.as_bytes()).await;
        let all = read_to_close(&mut s).await;
        assert!(all.starts_with("HTTP/1.1 431"), "{all}");
        let message = all.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(message.contains(limit), "{limit}: {message}");
        assert_eq!(message.matches("than").count(), 1, "{message}");
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

#[tokio::test]
async fn odd_but_valid_server_responses_are_relayed_correctly() {
    // No reason phrase; a hop-by-hop field named by `Connection` (not forwarded).
    let plain = RawUpstream::start(
        b"HTTP/1.1 200\r\ncontent-type: application/json\r\nconnection: x-hop\r\nx-hop: 1\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    // Both Transfer-Encoding and Content-Length: the body is read as chunked, the client gets
    // a correctly framed response, and the connection is not reused.
    let both = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&format!(
        "{}{}",
        server(&plain.url, &["plain"]),
        server(&both.url, &["both"])
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
    let accepted = both.accepted.load(Relaxed);
    assert!(accepted >= 3, "{accepted}");
}
