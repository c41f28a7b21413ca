//! Request smuggling and framing at the edge, tried as an attacker would: a raw socket client
//! against the gateway, and behind it a raw server that records every byte it receives.

use crate::harness::*;
use crate::wire::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the recording server answers a POST with.
const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// A gateway routing the model `rec` to `up` (failures never take it out of the pool, so a
/// test sees every answer of its own).
async fn gateway_for(up: &RawUpstream) -> Gateway {
    Gateway::start(&format!(
        "health.unhealthy_threshold = 1000\n{}",
        server(&up.url, &["rec"])
    ))
    .await
}

/// A chunked chat request: `body` in one chunk, then the trailer section `trailers` (field
/// lines with their CRLFs) and the blank line that ends it.
fn chunked_post(body: &str, trailers: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n{trailers}\r\n",
        body.len()
    )
}

/// A chat request with a Content-Length body to `target`, plus `extra` header lines.
fn post_to(target: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Send `wire` on a new connection and read until the gateway closes it.
async fn send_alone(gw: &Gateway, wire: &str) -> String {
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let _ = s.write_all(wire.as_bytes()).await;
    read_to_close(&mut s).await
}

/// The response is one refusal with `status` naming `what`, and the connection closed.
fn assert_refused(all: &str, status: &str, what: &str, case: &str) {
    assert!(all.starts_with(status), "{case}: {all}");
    assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "{case}: {all}");
    assert!(all.contains(what), "{case}: {all}");
    assert!(
        all.to_ascii_lowercase().contains("connection: close"),
        "{case}: {all}"
    );
}

const CHAT: &str = r#"{"model":"rec","messages":[]}"#;

#[tokio::test]
async fn a_request_hidden_behind_the_last_chunk_never_runs() {
    let up = RawUpstream::start(OK).await;
    let gw = gateway_for(&up).await;
    let hidden = post_to(
        "/v1/chat/completions",
        r#"{"model":"rec","messages":[{"role":"user","content":"smuggled"}]}"#,
        "",
    );
    // A front end that ends the body at `0\r\n` reads a GET next, whose body is the hidden
    // request; the gateway must not read that GET's head as a trailer section and then run the
    // hidden request as its own.
    let decoy = format!(
        "GET /health HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n",
        hidden.len()
    );
    let all = send_alone(&gw, &(chunked_post(CHAT, &decoy) + &hidden)).await;
    assert_refused(&all, "HTTP/1.1 400", "trailer", "hidden request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!up.received().contains("smuggled"), "{}", up.received());
    assert!(up.posts().is_empty(), "{:?}", up.posts());
}

#[tokio::test]
async fn a_trailer_line_that_is_not_a_field_line_is_refused() {
    let up = RawUpstream::start(OK).await;
    let gw = gateway_for(&up).await;
    for (case, trailers) in [
        ("request line", "POST /v1/chat/completions HTTP/1.1\r\n"),
        ("obs-fold with a space", "x-a: 1\r\n folded\r\n"),
        ("obs-fold with a tab", "x-a: 1\r\n\tfolded\r\n"),
        ("bare CR", "x-a: 1\rx-b: 2\r\n"),
        ("NUL", "x-a: 1\0\r\n"),
        ("space before the colon", "x-a : 1\r\n"),
        ("no colon", "x-a\r\n"),
        ("empty name", ": 1\r\n"),
    ] {
        let all = send_alone(&gw, &chunked_post(CHAT, trailers)).await;
        assert_refused(&all, "HTTP/1.1 400", "trailer line", case);
        assert!(all.contains("invalid_request"), "{case}: {all}");
    }
    // Too many bytes in the trailer section.
    let big = format!("x-a: {}\r\n", "v".repeat(4000)).repeat(5);
    let all = send_alone(&gw, &chunked_post(CHAT, &big)).await;
    assert_refused(
        &all,
        "HTTP/1.1 400",
        "larger than 16384 bytes",
        "big trailers",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(up.posts().is_empty(), "{:?}", up.posts());
}

#[tokio::test]
async fn trailer_fields_are_dropped_and_change_no_framing() {
    let up = RawUpstream::start(OK).await;
    let gw = gateway_for(&up).await;
    // Valid trailer fields, those forbidden in a trailer among them: they are dropped, never
    // merged into the head the server gets, and the connection goes on.
    let trailers = "x-checksum: abc\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\nhost: evil.example\r\n";
    let next = post_to("/v1/chat/completions", CHAT, "");
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all((chunked_post(CHAT, trailers) + &next).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    for i in 0..2 {
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        assert_eq!(body, r#"{"ok":true}"#);
    }
    let posts = up.posts();
    assert_eq!(posts.len(), 2, "{posts:?}");
    for post in &posts {
        let lower = post.to_ascii_lowercase();
        assert_eq!(lower.matches("content-length:").count(), 1, "{post}");
        assert!(
            lower.contains(&format!("content-length: {}\r\n", CHAT.len())),
            "{post}"
        );
        assert!(post.ends_with(&format!("\r\n\r\n{CHAT}")), "{post}");
        for dropped in ["transfer-encoding", "evil.example", "x-checksum"] {
            assert!(!lower.contains(dropped), "{dropped}: {post}");
        }
    }
}

#[tokio::test]
async fn a_request_target_is_read_by_its_form() {
    let up = RawUpstream::start(OK).await;
    let gw = gateway_for(&up).await;
    let close = "connection: close\r\n";
    // `://` inside an origin-form path is no scheme: this path matches no endpoint.
    let all = send_alone(
        &gw,
        &post_to("/public/x://y/v1/chat/completions", CHAT, close),
    )
    .await;
    assert!(all.starts_with("HTTP/1.1 404"), "{all}");
    assert!(all.contains("/public/x://y/v1/chat/completions"), "{all}");
    // A URL in the query string is the query's business.
    let all = send_alone(
        &gw,
        &post_to("/v1/chat/completions?next=http://x/v1/models", CHAT, close),
    )
    .await;
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    // Absolute-form, with the scheme in any case.
    for target in [
        "HTTP://GW/v1/chat/completions",
        "https://gw:8443/v1/chat/completions",
    ] {
        let all = send_alone(&gw, &post_to(target, CHAT, close)).await;
        assert!(all.starts_with("HTTP/1.1 200"), "{target}: {all}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<String> = up
        .posts()
        .iter()
        .map(|p| p.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "POST /v1/chat/completions?next=http://x/v1/models HTTP/1.1",
            "POST /v1/chat/completions HTTP/1.1",
            "POST /v1/chat/completions HTTP/1.1",
        ]
    );
    // Asterisk-form with OPTIONS asks about the server as a whole.
    let all = send_alone(
        &gw,
        "OPTIONS * HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    let lower = all.to_ascii_lowercase();
    assert!(
        lower.contains("allow: get, head, post, options\r\n"),
        "{all}"
    );
    assert!(lower.contains("content-length: 0\r\n"), "{all}");
    // Refused targets: asterisk-form with another method, other schemes and shapes, user
    // information, a fragment, non-ASCII bytes.
    for (target, what) in [
        ("*", "only valid with OPTIONS"),
        ("x://y/v1/chat/completions", "must be a path"),
        ("v1/chat/completions", "must be a path"),
        ("gw:443", "must be a path"),
        ("http:///v1/chat/completions", "needs a host"),
        ("http://gw:99999/v1/chat/completions", "host or port"),
        ("http://[::1/v1/chat/completions", "host or port"),
        ("http://user@gw/v1/chat/completions", "user information"),
        ("/v1/chat/completions#x", "fragment"),
        ("/v1/chat/compl\u{e9}tions", "ASCII"),
    ] {
        let all = send_alone(&gw, &post_to(target, CHAT, "")).await;
        assert_refused(&all, "HTTP/1.1 400", what, target);
    }
    assert_eq!(up.posts().len(), 3, "{:?}", up.posts());
}

#[tokio::test]
async fn a_server_transfer_coding_other_than_chunked_is_a_502() {
    let cases: [(&str, &'static [u8]); 4] = [
        (
            "gzip, chunked",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
        ),
        (
            "chunked, gzip",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked, gzip\r\n\r\n\x1f\x8b\x08\x00",
        ),
        (
            "identity",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: identity\r\ncontent-length: 4\r\n\r\n\x1f\x8b\x08\x00",
        ),
        (
            "chunked twice",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
        ),
    ];
    let mut ups = Vec::new();
    let mut config = "health.unhealthy_threshold = 1000\n".to_string();
    for (i, (_, response)) in cases.iter().enumerate() {
        let up = RawUpstream::start(response).await;
        config.push_str(&server(&up.url, &[&format!("m{i}")]));
        ups.push(up);
    }
    let gw = Gateway::start_logged(&config, &[]).await;
    let c = reqwest::Client::new();
    for (i, (case, _)) in cases.iter().enumerate() {
        for _ in 0..2 {
            let r = gw.chat(&c, &chat_body(&format!("m{i}"))).await;
            assert_eq!(r.status(), 502, "{case}");
            let body = r.bytes().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{case}: {}", String::from_utf8_lossy(&body)));
            assert_eq!(v["error"]["code"], "upstream_bad_response", "{case}: {v}");
        }
        // Never pooled after such a response: each request came on a connection of its own.
        let connections = ups[i].post_connections();
        assert_eq!(connections.len(), 2, "{case}");
        assert_ne!(connections[0], connections[1], "{case}");
    }
    let log = gw.log();
    assert!(
        log.contains("unsupported Transfer-Encoding `gzip, chunked`"),
        "{log}"
    );
}

#[tokio::test]
async fn a_server_trailer_that_is_not_a_field_line_fails_its_response() {
    // Nothing of the body came before the bad trailer: the client gets a 502.
    let empty = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n0\r\nHTTP/1.1 200 OK\r\n\r\n",
    )
    .await;
    // Body bytes first: they reach the client, then the response is cut (no last chunk), so
    // the client cannot take it for a whole one.
    let cut = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nx-a: 1\r\n folded\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&format!(
        "health.unhealthy_threshold = 1000\n{}{}",
        server(&empty.url, &["empty"]),
        server(&cut.url, &["cut"])
    ))
    .await;
    let chat = |model: &str| {
        post_to(
            "/v1/chat/completions",
            &format!(r#"{{"model":"{model}"}}"#),
            "",
        )
    };
    let all = send_alone(&gw, &chat("empty")).await;
    assert_refused(&all, "HTTP/1.1 502", "upstream_bad_response", "empty body");
    let all = send_alone(&gw, &chat("cut")).await;
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(
        all.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{all}"
    );
    assert!(all.ends_with("\r\n\r\n2\r\n{}\r\n"), "{all:?}");
    // The same two again: neither server connection was pooled.
    for (up, model) in [(&empty, "empty"), (&cut, "cut")] {
        send_alone(&gw, &chat(model)).await;
        let connections = up.post_connections();
        assert_eq!(connections.len(), 2, "{model}");
        assert_ne!(connections[0], connections[1], "{model}");
    }
}
