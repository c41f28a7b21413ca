//! The data plane's HTTP/1.1 request parsing, checked against hyper's server on the same
//! bytes: every request built from the RFC 9112 smuggling classics (CL.TE, TE.CL, obfuscated
//! Transfer-Encoding, duplicate and malformed Content-Length, chunk-size overflow, bare LF,
//! obs-fold, whitespace before the colon) must get the same verdict from both, and the same
//! body when both accept. Where infergate is stricter than hyper by design (a coding list is
//! refused rather than forwarded still encoded; an HTTP/1.1 request needs one Host), the
//! difference must be one of those, and never the other way round: infergate never accepts
//! what hyper refuses, and never frames a body differently.

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use infergate::proxy::h1::chunked::{Chunked, Step};
use infergate::proxy::h1::request::{BodyFraming, Parsed, RequestHead};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Accept { path: String, body: Vec<u8> },
    Reject,
}

/// infergate's reading: the head parser, then the body by its framing.
fn infergate(wire: &[u8]) -> Verdict {
    let mut head = RequestHead::default();
    let n = match head.parse(wire) {
        Ok(Parsed::Complete(n)) => n,
        _ => return Verdict::Reject,
    };
    let mut rest = BytesMut::from(&wire[n..]);
    let body = match head.framing {
        None => Vec::new(),
        Some(BodyFraming::Length(l)) => {
            if (rest.len() as u64) < l {
                return Verdict::Reject;
            }
            rest[..l as usize].to_vec()
        }
        Some(BodyFraming::Chunked) => {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            loop {
                match d.step(&mut rest) {
                    Ok(Step::Data(k)) => {
                        out.extend_from_slice(&rest[..k]);
                        rest.advance(k);
                    }
                    Ok(Step::Done) => break out,
                    Ok(Step::NeedMore) | Err(_) => return Verdict::Reject,
                }
            }
        }
    };
    Verdict::Accept {
        path: head.path().to_string(),
        body,
    }
}

/// hyper's reading: its HTTP/1 server on an in-memory connection, the first request's path
/// and whole body (a body error, or no request at all, is a refusal).
async fn hyper(wire: &[u8]) -> Verdict {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let got: Arc<Mutex<Option<Verdict>>> = Arc::default();
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
            let mut s = seen.lock().unwrap();
            if s.is_none() {
                *s = Some(verdict);
            }
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
    task.abort();
    let verdict = got.lock().unwrap().take();
    verdict.unwrap_or(Verdict::Reject)
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
    let mut failures = Vec::new();
    for case in &cases {
        let wire = case.wire();
        let (ours, theirs) = (infergate(&wire), hyper(&wire).await);
        match (&ours, &theirs) {
            (a, b) if a == b => agreed += 1,
            (Verdict::Reject, Verdict::Accept { .. }) => match case.stricter_by_design() {
                Some(rule) => *stricter.entry(rule).or_default() += 1,
                None => failures.push(format!(
                    "infergate refused what hyper accepted ({theirs:?}): {:?}",
                    String::from_utf8_lossy(&wire)
                )),
            },
            _ => failures.push(format!(
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
    eprintln!(
        "{agreed} of {} requests judged alike; stricter by design: {stricter:?}",
        cases.len()
    );
}
