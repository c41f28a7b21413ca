//! Binary upgrade (issue 15, item 2): `infergate upgrade` starts a new process that takes the
//! listening sockets over from the running one, which drains and exits; a load running
//! across it sees no failed request, streams included, and every request is recorded once
//! (that test is scenario (c) of the chaos suite, `chaos.rs`).

use crate::harness::*;
use nix::sys::signal::Signal;
use reqwest::Client;
use serde_json::Value;
use std::time::Duration;

/// A process started by `infergate upgrade` (not a child of the test): stopped on drop.
pub struct Adopted(pub i32);

impl Drop for Adopted {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

impl Adopted {
    pub fn alive(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), None).is_ok()
    }
}

/// `infergate upgrade --pid <gw> --config <its file>`: (exit status, stdout, stderr).
/// The new process inherits the command's stderr (its log), so that goes to a file, not to
/// a pipe that would stay open as long as the new process lives.
pub async fn upgrade(gw: &Gateway, config: &std::path::Path) -> (bool, String, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["upgrade", "--pid", &gw.pid().to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("INFERGATE_ADMIN_API_KEY", ADMIN_KEY)
        .env("INFERGATE_ADMIN_API_SECRET", ADMIN_SECRET)
        // The new process's environment is the command's (the fake engines run this binary).
        .env("INFERGATE_BIN", env!("CARGO_BIN_EXE_infergate"))
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

/// During an upgrade, until the old process has exited, neither process changes the node's
/// engines (they share its name): lifecycle calls are 503 `engines being handed over`; then
/// the new process runs them.
#[tokio::test]
async fn lifecycle_calls_wait_for_the_old_process_to_exit() {
    use crate::lifecycle::{call, create, runner_gateway, until_state, vllm};
    let redis = Redis::start().await;
    let store = format!("[store]\nurl = {:?}\nprefix = \"handover\"\n", redis.url());
    let (mut gw, _dir) = runner_gateway("", &store).await;
    let c = Client::new();
    let id = create(&gw, &c, vllm("hand-over", &[])).await;

    let (ok, stdout, stderr) = upgrade(&gw, &gw.config_path()).await;
    assert!(ok, "upgrade failed: {stderr}");
    let _new = Adopted(stdout.parse().expect("the new pid on stdout"));
    let start = format!("/models/{id}/start");
    let mut refused = 0;
    let mut answer = (0, Value::Null);
    loop {
        if gw.exited_within(Duration::from_millis(300)).await.is_some() {
            break;
        }
        answer = call(&gw, &c, reqwest::Method::POST, &start, None).await;
        if answer.0 != 503 {
            // Accepted: only by the new process once the old one has gone (it exited between
            // the look above and the call).
            let gone = gw.exited_within(Duration::from_secs(2)).await.is_some();
            assert!(gone, "accepted while the old process runs: {}", answer.1);
            break;
        }
        assert_eq!(
            answer.1["error"], "engines being handed over",
            "{}",
            answer.1
        );
        refused += 1;
    }
    assert!(
        refused > 3,
        "the old process drained for a while: {refused} calls"
    );
    // The new process alone: it runs the node's engines as soon as it holds the node's lock.
    for _ in 0..50 {
        if answer.0 != 0 && answer.0 != 503 {
            break;
        }
        answer = call(&gw, &c, reqwest::Method::POST, &start, None).await;
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, 202, "{}", answer.1);
    until_state(&gw, &c, &id, "running").await;
    let (status, body) = call(
        &gw,
        &c,
        reqwest::Method::POST,
        &format!("/models/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    until_state(&gw, &c, &id, "stopped").await;
}
