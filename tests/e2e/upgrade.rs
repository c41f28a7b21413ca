//! Binary upgrade (issue 15, item 2): `infergate upgrade` starts a new process that takes the
//! listening sockets over from the running one, which drains and exits; a load running
//! across it sees no failed request, streams included, and every request is recorded once.

use crate::harness::*;
use infergate::mock::MockConfig;
use nix::sys::signal::Signal;
use reqwest::Client;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A process started by `infergate upgrade` (not a child of the test): stopped on drop.
struct Adopted(i32);

impl Drop for Adopted {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

impl Adopted {
    fn alive(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), None).is_ok()
    }
}

/// `infergate upgrade --pid <gw> --config <its file>`: (exit status, stdout, stderr).
/// The new process inherits the command's stderr (its log), so that goes to a file, not to
/// a pipe that would stay open as long as the new process lives.
async fn upgrade(gw: &Gateway, config: &std::path::Path) -> (bool, String, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["upgrade", "--pid", &gw.pid().to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("INFERGATE_ADMIN_API_KEY", ADMIN_KEY)
        .env("INFERGATE_ADMIN_API_SECRET", ADMIN_SECRET)
        .stderr(log.reopen().unwrap())
        .stdout(std::process::Stdio::piped())
        // (`output()` would pipe stderr too.)
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        std::fs::read_to_string(log.path()).unwrap_or_default(),
    )
}

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    streams: AtomicUsize,
    failed: AtomicUsize,
}

/// One client looping until `stop`: each request on its own keep-alive client (a response
/// with `Connection: close` makes it reconnect). Streams must end with `[DONE]` and carry
/// all their tokens.
async fn client_loop(url: String, stream: bool, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let c = Client::new();
    let body = json!({"model": "m", "stream": stream, "max_tokens": 10, "user": "upgrade",
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": true}});
    while !stop.load(Relaxed) {
        let outcome = match c.post(&url).json(&body).send().await {
            Ok(r) if r.status() == 200 => match r.text().await {
                Ok(t)
                    if !stream
                        || (t.ends_with("data: [DONE]\n\n")
                            && t.matches("\"content\":\"tok").count() == 10) =>
                {
                    Ok(())
                }
                Ok(t) => Err(format!("incomplete body: {t}")),
                Err(e) => Err(format!("body cut: {e}")),
            },
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(format!("connection error: {e:?}")),
        };
        match outcome {
            Ok(()) if stream => _ = counts.streams.fetch_add(1, Relaxed),
            Ok(()) => _ = counts.ok.fetch_add(1, Relaxed),
            Err(e) => {
                eprintln!("failed: {e}");
                counts.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

#[tokio::test]
async fn an_upgrade_under_load_fails_no_request_and_records_each_once() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        models: vec!["m".into()],
        itl: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let redis = Redis::start().await;
    let store = format!("[store]\nurl = {:?}\nprefix = \"upgrade\"\n\n", redis.url());
    let mut gw = Gateway::start_logged(
        &format!(
            "proxy.graceful_shutdown_timeout_seconds = 10\n{}{store}",
            server(&m.url(), &["m"])
        ),
        &[],
    )
    .await;
    let (stop, counts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counts::default()),
    );
    let url = gw.url("/v1/chat/completions");
    let clients: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(client_loop(
                url.clone(),
                i < 2,
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = counts.ok.load(Relaxed) + counts.streams.load(Relaxed);
    assert!(before > 0, "the load runs");

    let (ok, stdout, stderr) = upgrade(&gw, &gw.config_path()).await;
    assert!(ok, "upgrade failed: {stderr}");
    let new = Adopted(stdout.parse().expect("the new pid on stdout"));
    assert!(new.alive());
    // Whichever process answers, the port is served: /health stays 200 until the old process
    // has exited (its listener closes 5 s after the hand-over), and after.
    let c = Client::new();
    let mut status = None;
    for _ in 0..100 {
        let health = c.get(gw.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let admin = c.get(format!("http://{}/health", gw.admin)).send().await;
        assert_eq!(admin.unwrap().status(), 200);
        status = gw.exited_within(Duration::from_millis(200)).await;
        if status.is_some() {
            break;
        }
    }
    // The old process drains and exits on its own, cleanly.
    let status = status.expect("the old gateway exits after its drain");
    assert!(status.success(), "{status:?}");
    let at_exit = counts.ok.load(Relaxed) + counts.streams.load(Relaxed);
    // The new process serves both ports alone now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, streams, failed) = (
        counts.ok.load(Relaxed),
        counts.streams.load(Relaxed),
        counts.failed.load(Relaxed),
    );
    assert_eq!(failed, 0, "{ok} answers and {streams} streams whole");
    assert!(
        ok + streams > at_exit,
        "served after the old process exited"
    );
    assert!(streams > 0);
    let health = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, page) = gw.admin_get(&c, "/admin/usage?limit=1").await;
    assert_eq!(
        status, 200,
        "the admin port is served by the new process: {page}"
    );
    // Every served request has one usage record: the old process wrote its own before it
    // exited; the new one writes within its flush interval.
    let mut recorded = 0;
    for _ in 0..50 {
        let (_, page) = gw.admin_get(&c, "/admin/usage?limit=1").await;
        recorded = page["total"].as_u64().unwrap_or_default() as usize;
        if recorded >= ok + streams {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        recorded,
        ok + streams,
        "usage records against requests served"
    );
    eprintln!(
        "upgrade under load: {ok} answers and {streams} streams whole, none failed, {} of them \
         after the old process exited; {recorded} usage records",
        ok + streams - at_exit
    );
    let log = gw.log();
    assert!(log.contains("handing the listening sockets over"), "{log}");
}

#[tokio::test]
async fn an_upgrade_with_a_bad_configuration_leaves_the_running_gateway_alone() {
    let m = mock("m", &["m"]).await;
    let mut gw = Gateway::start_logged(&server(&m.url(), &["m"]), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[proxy]\nlisten = 8080\n").unwrap();
    let (ok, stdout, stderr) = upgrade(&gw, &bad).await;
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("bad.toml: line 2"), "{stderr}");
    // Nothing was signalled: the gateway serves as before.
    assert!(gw.exited_within(Duration::from_millis(500)).await.is_none());
    let r = gw.chat(&Client::new(), &chat_body("m")).await;
    assert_eq!(r.status(), 200);
    assert!(!gw.log().contains("SIGQUIT"), "{}", gw.log());
}

#[tokio::test]
async fn only_the_gateway_holding_the_configurations_lock_is_signalled() {
    let m = mock("m", &["m"]).await;
    let gw = Gateway::start(&server(&m.url(), &["m"])).await;
    // Another process of this user, and pids that name groups: none is signalled.
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    for pid in [bystander.id() as i32, 0, -1] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(["upgrade", &format!("--pid={pid}"), "--config"])
            .arg(gw.config_path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("does not hold the gateway lock"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("held by process {}", gw.pid())),
            "{stderr}"
        );
    }
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was not signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[tokio::test]
async fn sigquit_without_a_new_process_keeps_serving() {
    let m = mock("m", &["m"]).await;
    let mut gw = Gateway::start_logged(&server(&m.url(), &["m"]), &[]).await;
    gw.signal(Signal::SIGQUIT);
    let c = Client::new();
    // While it waits for a new process, and after it gave up, it serves and stays healthy.
    for wait in [1, 16] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        assert!(gw.exited_within(Duration::from_millis(10)).await.is_none());
        let r = gw.chat(&c, &chat_body("m")).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("connection").is_none_or(|v| v != "close"));
        let health: Value = c
            .get(gw.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
    }
    let log = gw.log();
    assert!(
        log.contains("no new process waits on the upgrade socket"),
        "{log}"
    );
}
