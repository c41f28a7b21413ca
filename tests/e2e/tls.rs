//! https servers: the certificate is verified against the configured CA, SNI is sent, and both
//! JSON answers and event streams pass through.

use crate::harness::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use infergate::mock::{MockConfig, MockServer, MockState};
use reqwest::Client;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct TlsMock {
    port: u16,
    state: Arc<MockState>,
    sni: Arc<Mutex<Option<String>>>,
}

/// A CA and a server certificate for `localhost` signed by it (PEMs).
fn pki() -> (String, String, String) {
    let ca = Ca::new();
    let (cert, _, key) = ca.leaf();
    (ca.cert.pem(), cert, key)
}

async fn tls_mock(cert_pem: &str, key_pem: &str, config: MockConfig) -> TlsMock {
    use rustls::pki_types::pem::PemObject;
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = MockState::new(config);
    let sni = Arc::new(Mutex::new(None));
    let (app, sni2) = (infergate::mock::router(state.clone()), sni.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app, sni) = (acceptor.clone(), app.clone(), sni2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                *sni.lock().unwrap() = tls.get_ref().1.server_name().map(str::to_owned);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    TlsMock { port, state, sni }
}

#[tokio::test]
async fn https_servers_are_verified_and_stream() {
    let (ca, cert, key) = pki();
    let good = tls_mock(
        &cert,
        &key,
        MockConfig {
            name: "tls".into(),
            models: vec!["m".into()],
            itl: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .await;
    // A server whose certificate no trusted CA signed.
    let (_, rogue_cert, rogue_key) = pki();
    let rogue = tls_mock(
        &rogue_cert,
        &rogue_key,
        MockConfig {
            name: "rogue".into(),
            models: vec!["r".into()],
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let gw = Gateway::start(&format!(
        "proxy.ca_file = {:?}\n{}{}",
        ca_path.to_str().unwrap(),
        server(&format!("https://localhost:{}/v1", good.port), &["m"]),
        server(&format!("https://localhost:{}/v1", rogue.port), &["r"]),
    ))
    .await;
    let c = Client::new();
    let r = gw.chat(&c, &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-server"], "tls");
    assert_eq!(
        good.sni.lock().unwrap().as_deref(),
        Some("localhost"),
        "SNI sent"
    );

    let body = json!({"model": "m", "stream": true, "max_tokens": 5});
    let text = gw.chat(&c, &body).await.text().await.unwrap();
    assert_eq!(text.matches("\"content\":\"tok").count(), 5);
    assert!(text.ends_with("data: [DONE]\n\n"));
    let m = gw.metrics().await;
    let labels = format!("model=\"m\",server=\"https://localhost:{}/v1\"", good.port);
    assert_eq!(
        metric_value(&m, &format!("infergate_ttft_seconds_count{{{labels}}}")),
        1.0
    );

    // Probes over https pass too.
    assert!(
        eventually(Duration::from_secs(3), || async {
            good.state.probes.load(std::sync::atomic::Ordering::Relaxed) >= 1
        })
        .await
    );

    // An unverifiable certificate never gets a request.
    let r = gw.chat(&c, &chat_body("r")).await;
    assert!(matches!(r.status().as_u16(), 502 | 503), "{}", r.status());
    assert_eq!(
        rogue
            .state
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A CA, and leaf certificates for `localhost` signed by it.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "infergate listener CA");
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// (certificate PEM, its DER, key PEM)
    fn leaf(&self) -> (String, Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (cert.pem(), cert.der().to_vec(), key.serialize_pem())
    }
}

/// A TLS connection to `addr` offering h2 and http/1.1: (the protocol chosen, the
/// certificate presented).
async fn handshake(addr: std::net::SocketAddr, ca_pem: &str) -> (Option<Vec<u8>>, Vec<u8>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    (
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.peer_certificates().unwrap()[0].to_vec(),
    )
}

#[tokio::test]
async fn both_listeners_speak_tls_over_http11_and_pick_up_a_new_certificate() {
    let ca = Ca::new();
    let ca_pem = ca.cert.pem();
    let (cert, der, key) = ca.leaf();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let m = mock("a", &["m"]).await;
    let files = format!("tls_cert = {cert_path:?}\ntls_key = {key_path:?}\n");
    let gw = Gateway::start_tls(
        &format!(
            "{}{}{}",
            files
                .lines()
                .map(|l| format!("proxy.{l}\n"))
                .collect::<String>(),
            files
                .lines()
                .map(|l| format!("admin.{l}\n"))
                .collect::<String>(),
            server(&m.url(), &["m"])
        ),
        &ca_pem,
    )
    .await;
    let c = gw.client();
    let chat = format!("{}/v1/chat/completions", gw.base(gw.proxy));
    let r = c.post(&chat).json(&chat_body("m")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // A stream over TLS.
    let body = json!({"model": "m", "stream": true, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]});
    let text = c
        .post(&chat)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    // The admin API over TLS.
    let r = c
        .get(format!("{}/admin/servers", gw.base(gw.admin)))
        .bearer_auth(format!("{ADMIN_KEY}:{ADMIN_SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on a TLS port gets no answer.
    let plain = Client::new()
        .get(format!("http://{}/health", gw.proxy))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // HTTP/1.1 only, even to a client offering h2 first; the certificate from the files.
    for addr in [gw.proxy, gw.admin] {
        let (alpn, presented) = handshake(addr, &ca_pem).await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(presented, der);
    }
    // New files: new handshakes get the new certificate, without a restart.
    let (cert2, der2, key2) = ca.leaf();
    std::fs::write(&key_path, &key2).unwrap();
    std::fs::write(&cert_path, &cert2).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for addr in [gw.proxy, gw.admin] {
        loop {
            if handshake(addr, &ca_pem).await.1 == der2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new certificate was not served"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The client's open connection (old certificate) and new ones both work.
    let r = c.post(&chat).json(&chat_body("m")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let fresh = gw.client();
    assert_eq!(
        fresh
            .post(&chat)
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Files that are not a certificate keep the running one.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(handshake(gw.proxy, &ca_pem).await.1, der2);
}

/// A gateway whose two listeners speak TLS with a fresh leaf of `ca` (files in `dir`), with
/// `extra` settings and a mock serving "m".
async fn tls_gateway(ca: &Ca, dir: &std::path::Path, extra: &str) -> (MockServer, Gateway) {
    let (cert, _, key) = ca.leaf();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &cert).unwrap();
    std::fs::write(&k, &key).unwrap();
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start_tls(
        &format!(
            "{extra}proxy.tls_cert = {c:?}\nproxy.tls_key = {k:?}\nadmin.tls_cert = {c:?}\nadmin.tls_key = {k:?}\n{}",
            server(&m.url(), &["m"])
        ),
        &ca.cert.pem(),
    )
    .await;
    (m, gw)
}

/// A Python with the OpenAI SDK: `INFERGATE_TEST_PYTHON` (set by `.ci/run`, which installs the
/// SDK in a virtual environment), else `python3` if it has the SDK.
fn python_with_openai() -> Option<String> {
    let has_sdk = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Ok(py) = std::env::var("INFERGATE_TEST_PYTHON") {
        // Named on purpose (CI): it must work.
        assert!(
            has_sdk(&py),
            "INFERGATE_TEST_PYTHON={py} cannot import openai"
        );
        return Some(py);
    }
    has_sdk("python3").then(|| "python3".to_string())
}

#[tokio::test]
async fn the_openai_sdk_works_over_https_with_its_own_ca() {
    let Some(python) = python_with_openai() else {
        // .ci/run installs the SDK, so CI always runs this test.
        eprintln!("SKIPPED: no Python with the openai package (set INFERGATE_TEST_PYTHON)");
        return;
    };
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), ca.cert.pem()).unwrap();
    let (_m, gw) = tls_gateway(&ca, dir.path(), "").await;
    let script = format!(
        r#"
from openai import OpenAI
c = OpenAI(base_url="https://localhost:{port}/v1", api_key="unused")
print("models", [m.id for m in c.models.list()])
r = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "hi"}}], max_tokens=4)
print("chat", r.choices[0].message.content.strip(), r.usage.completion_tokens)
s = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "hi"}}], max_tokens=3, stream=True)
print("stream", sum(1 for ch in s if ch.choices and ch.choices[0].delta.content))
"#,
        port = gw.proxy.port()
    );
    let out = tokio::process::Command::new(&python)
        .args(["-c", &script])
        .env("SSL_CERT_FILE", path("ca.pem"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("models ['m']"), "{stdout}");
    assert!(stdout.contains("chat tok tok tok tok 4"), "{stdout}");
    assert!(stdout.contains("stream 3"), "{stdout}");
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_its_handshake_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (_m, gw) = tls_gateway(&ca, dir.path(), "proxy.header_timeout_secs = 1\n").await;
    // A TLS record header and nothing more: the handshake never completes.
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed at the header timeout, not Pingora's 60 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        gw.metric("infergate_client_timeouts_total{phase=\"tls\"}")
            .await,
        1.0
    );
    // Others are served meanwhile.
    let chat = format!("{}/v1/chat/completions", gw.base(gw.proxy));
    let r = gw
        .client()
        .post(&chat)
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
