//! The data plane's HTTP/1.1 request parsing, checked against hyper's server on the same
//! bytes: every request built from the RFC 9112 smuggling classics (CL.TE, TE.CL, obfuscated
//! Transfer-Encoding, duplicate and malformed Content-Length, chunk-size overflow, bare LF,
//! obs-fold, whitespace before the colon) must get the same verdict from both, and the same
//! body when both accept. Each connection's bytes are read to their end as a sequence of
//! requests, so where a request ends is compared too: a body framed one byte differently
//! shows as a different next request (the smuggling property proper). Where infergate is stricter than hyper by design (a coding list is
//! refused rather than forwarded still encoded; an HTTP/1.1 request needs one Host), the
//! difference must be one of those, and never the other way round: infergate never accepts
//! what hyper refuses, and never frames a body differently.

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use infergate::proxy::h1::chunked::{Chunked, Step};
use infergate::proxy::h1::head_scan::HeadScan;
use infergate::proxy::h1::request::{BodyFraming, RequestHead};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Accept { path: String, body: Vec<u8> },
    Reject,
}

/// infergate's reading of a connection's bytes, as its client connection does: each head by
/// the head scan, each body by its framing, then the next request from the bytes left, until
/// a refusal, a request that closes the connection, or the end of the bytes (a request left
/// incomplete there is not one).
fn infergate(wire: &[u8]) -> Vec<Verdict> {
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    loop {
        let mut head = RequestHead::default();
        match HeadScan::default().poll(&mut buf, &mut head) {
            Ok(true) => {}
            Ok(false) => return out,
            Err(_) => {
                out.push(Verdict::Reject);
                return out;
            }
        }
        let body = match head.framing {
            None => Some(Vec::new()),
            Some(BodyFraming::Length(l)) => {
                (buf.len() as u64 >= l).then(|| buf.split_to(l as usize).to_vec())
            }
            Some(BodyFraming::Chunked) => {
                let mut d = Chunked::default();
                let mut body = Vec::new();
                loop {
                    match d.step(&mut buf) {
                        Ok(Step::Data(k)) => {
                            body.extend_from_slice(&buf[..k]);
                            buf.advance(k);
                        }
                        Ok(Step::Done) => break Some(body),
                        Ok(Step::NeedMore) | Err(_) => break None,
                    }
                }
            }
        };
        let Some(body) = body else {
            out.push(Verdict::Reject);
            return out;
        };
        out.push(Verdict::Accept {
            path: head.path().to_string(),
            body,
        });
        if head.close {
            return out;
        }
    }
}

/// hyper's reading: its HTTP/1 server on an in-memory connection; every request it serves
/// (path and whole body; a body error is a refusal), then a refusal if the connection ended
/// on a parse error.
async fn hyper(wire: &[u8]) -> Vec<Verdict> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let got: Arc<Mutex<Vec<Verdict>>> = Arc::default();
    let seen = got.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let path = req.uri().path().to_string();
            let verdict = match req.into_body().collect().await {
                Ok(b) => Verdict::Accept {
                    path,
                    body: b.to_bytes().to_vec(),
                },
                Err(_) => Verdict::Reject,
            };
            seen.lock().unwrap().push(verdict);
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
        }
    });
    // half_close: the end of the client's bytes does not cut the request being served.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let task = tokio::spawn(conn);
    let _ = client.write_all(wire).await;
    let _ = client.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        client.read_to_end(&mut sink),
    )
    .await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    let mut out = std::mem::take(&mut *got.lock().unwrap());
    if let Ok(Ok(Err(e))) = ended {
        if e.is_parse() && out.last() != Some(&Verdict::Reject) {
            out.push(Verdict::Reject);
        }
    }
    out
}

/// One request of the corpus: its parts, to tell which rule a difference comes under.
struct Case {
    version: &'static str,
    host: bool,
    fields: Vec<String>,
    body: &'static str,
    eol: &'static str,
}

impl Case {
    fn wire(&self) -> Vec<u8> {
        let eol = self.eol;
        let mut w = format!("POST /v1/chat/completions HTTP/{}{eol}", self.version);
        if self.host {
            w.push_str(&format!("Host: gw{eol}"));
        }
        for f in &self.fields {
            w.push_str(f);
            w.push_str(eol);
        }
        w.push_str(eol);
        w.push_str(self.body);
        w.into_bytes()
    }

    /// The rules by which infergate refuses what hyper may accept, on purpose.
    fn stricter_by_design(&self) -> Option<&'static str> {
        let te: Vec<String> = self
            .fields
            .iter()
            .filter_map(|f| {
                let (n, v) = f.split_once(':')?;
                n.eq_ignore_ascii_case("transfer-encoding")
                    .then(|| v.trim().to_ascii_lowercase())
            })
            .collect();
        if !te.is_empty() && (te.len() > 1 || te[0] != "chunked") {
            return Some("a Transfer-Encoding other than one `chunked` is refused, never forwarded still encoded");
        }
        if !te.is_empty() && self.version == "1.0" {
            return Some("Transfer-Encoding on HTTP/1.0 is refused");
        }
        if self.version == "1.1" && !self.host {
            return Some("an HTTP/1.1 request needs exactly one Host");
        }
        None
    }

    /// Why infergate reads no request after the first where hyper goes on.
    fn closes_after_first(&self) -> Option<&'static str> {
        let has = |name: &str| {
            self.fields.iter().any(|f| {
                f.split_once(':')
                    .is_some_and(|(n, _)| n.trim_end().eq_ignore_ascii_case(name))
            })
        };
        (has("transfer-encoding") && has("content-length")).then_some(
            "a request framed by both Transfer-Encoding and Content-Length is the last on its connection (RFC 9112 6.3)",
        )
    }
}

/// The corpus: every framing field (alone, doubled, and with the other framing) with every
/// body, in both versions, with and without Host, with CRLF and bare LF.
fn corpus() -> Vec<Case> {
    let lengths = [
        "5",
        "05",
        "+5",
        "-5",
        " 5",
        "5 ",
        "5,5",
        "5, 5",
        "5,6",
        "0x5",
        "",
        "5a",
        "18446744073709551616",
        "99999999999999999999999",
    ];
    let codings = [
        "chunked",
        "Chunked",
        "CHUNKED",
        " chunked",
        "chunked ",
        "\tchunked",
        "identity",
        "gzip, chunked",
        "chunked, gzip",
        "chunked,chunked",
        "chunked, identity",
        "xchunked",
        "chunked;q=1",
        "\"chunked\"",
    ];
    let mut framings: Vec<Vec<String>> = vec![vec![]];
    for l in lengths {
        framings.push(vec![format!("Content-Length: {l}")]);
        framings.push(vec![
            format!("Content-Length: {l}"),
            "Content-Length: 5".into(),
        ]);
        framings.push(vec![format!("content-length :{l}")]);
    }
    for c in codings {
        framings.push(vec![format!("Transfer-Encoding: {c}")]);
        framings.push(vec![
            format!("Transfer-Encoding: {c}"),
            "Content-Length: 5".into(),
        ]);
        framings.push(vec![
            "Content-Length: 5".into(),
            format!("Transfer-Encoding: {c}"),
        ]);
        framings.push(vec![
            format!("Transfer-Encoding: {c}"),
            "Transfer-Encoding: chunked".into(),
        ]);
        framings.push(vec![format!("Transfer-Encoding:{c}")]);
        // obs-fold: the coding continued on a folded line.
        framings.push(vec![format!("Transfer-Encoding: x"), format!(" {c}")]);
        framings.push(vec![
            format!("X-Padding: a"),
            format!(" Transfer-Encoding: {c}"),
        ]);
    }
    let bodies = [
        "",
        "hello",
        "hellohello",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;ext=1\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        "10000000000000005\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nbad trailer line\r\n\r\n",
        "5\r\nhello",
        "helloGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello",
    ];
    let mut out = Vec::new();
    for f in &framings {
        for body in bodies {
            for (version, host, eol) in [
                ("1.1", true, "\r\n"),
                ("1.1", true, "\n"),
                ("1.1", false, "\r\n"),
                ("1.0", true, "\r\n"),
            ] {
                out.push(Case {
                    version,
                    host,
                    fields: f.clone(),
                    body,
                    eol,
                });
            }
        }
    }
    out
}

#[tokio::test]
async fn infergate_and_hyper_agree_on_every_smuggling_classic() {
    let cases = corpus();
    let (mut agreed, mut stricter) = (0, std::collections::BTreeMap::<&str, usize>::new());
    // Connections on which both read more than one request, alike.
    let mut followed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let wire = case.wire();
        let (ours, theirs) = (infergate(&wire), hyper(&wire).await);
        if ours == theirs {
            agreed += 1;
            if ours
                .iter()
                .filter(|v| matches!(v, Verdict::Accept { .. }))
                .count()
                > 1
            {
                followed += 1;
            }
            continue;
        }
        // Where the two readings part.
        let at = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        let rule = match (ours.get(at), theirs.get(at)) {
            (Some(Verdict::Reject), Some(Verdict::Accept { .. })) if at == 0 => {
                case.stricter_by_design()
            }
            (None, Some(Verdict::Accept { .. })) => case.closes_after_first(),
            // Bytes left that start no valid request line but end no head either: hyper
            // refuses the line at once, infergate judges a head when its blank line is in
            // (and a client that never sends it meets the header timeout).
            (None, Some(Verdict::Reject)) if theirs.len() == at + 1 => {
                Some("an unfinished head is judged when its blank line arrives")
            }
            _ => None,
        };
        match rule {
            Some(rule) => *stricter.entry(rule).or_default() += 1,
            None => failures.push(format!(
                "infergate {ours:?}, hyper {theirs:?}: {:?}",
                String::from_utf8_lossy(&wire)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Most of the corpus is judged the same, and each difference is a documented rule.
    assert!(agreed * 2 > cases.len(), "{agreed} of {}", cases.len());
    assert!(followed > 100, "{followed}");
    eprintln!(
        "{agreed} of {} connections read alike ({followed} with a request after the first); stricter by design: {stricter:?}",
        cases.len()
    );
}
