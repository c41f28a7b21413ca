//! Managed models run by the process runner, through real HTTP against the real binary: fake
//! `vllm` and `llama-server` executables (`tests/fixtures/`) parse the argv the gateway builds
//! and run the project's mock with the key the gateway gave them, loading slowly, failing with a
//! CUDA out-of-memory log, or crashing, as a model's `engine_env` asks.

use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A gateway with the process runner, the fake engines, and a models directory holding `qwen/`
/// and `g/model.gguf`.
async fn gateway_with_runner() -> (Gateway, tempfile::TempDir) {
    runner_gateway("", "").await
}

/// Like [`gateway_with_runner`], with more `[runner]` keys and more configuration after it.
pub async fn runner_gateway(runner_extra: &str, extra: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("qwen")).unwrap();
    std::fs::create_dir_all(models.join("g")).unwrap();
    std::fs::write(models.join("g/model.gguf"), b"GGUF").unwrap();
    // Engine ports below the ephemeral range, in a stretch of their own for this gateway.
    let base = 20000 + free_port() % 9000;
    let config = format!(
        "{extra}\n[runner]\nkind = \"process\"\nmodels_dir = {models:?}\nport_min = {base}\nport_max = {}\nstop_grace_secs = 3\npass_env = [\"INFERGATE_BIN\"]\n{runner_extra}\n\
         [runner.vllm]\ncommand = [\"{FIXTURES}/fake-vllm\", \"serve\"]\nimage = \"unused\"\nstartup_timeout_secs = 30\n\
         [runner.llamacpp]\ncommand = [\"{FIXTURES}/fake-llama-server\"]\nimage = \"unused\"\nstartup_timeout_secs = 30\n",
        base + 40,
        models = models.to_str().unwrap(),
    );
    let gw = Gateway::start_with_env(
        &config,
        &[("INFERGATE_BIN", env!("CARGO_BIN_EXE_infergate"))],
    )
    .await;
    (gw, dir)
}

pub async fn call(
    gw: &Gateway,
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    admin_call(gw, c, method, &format!("/admin{path}"), body).await
}

pub async fn create(gw: &Gateway, c: &Client, body: Value) -> String {
    let (status, m) = call(gw, c, Method::POST, "/models", Some(body)).await;
    assert_eq!(status, 201, "{m}");
    m["id"].as_str().unwrap().to_string()
}

pub fn vllm(served: &str, env: &[(&str, &str)]) -> Value {
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    json!({"name": served, "served_model_name": served, "local_path": "qwen",
        "max_model_len": 4096, "engine_env": env})
}

/// Start a model: 202, with the model as the start left it.
pub async fn start(gw: &Gateway, c: &Client, id: &str) -> Value {
    let (status, m) = call(gw, c, Method::POST, &format!("/models/{id}/start"), None).await;
    assert_eq!(status, 202, "{m}");
    m
}

/// Start a model and wait until it runs.
pub async fn start_running(gw: &Gateway, c: &Client, id: &str) -> Value {
    start(gw, c, id).await;
    until_state(gw, c, id, "running").await.0
}

/// Poll the model until its state is `want` (panics after 20 s), noting every state seen.
pub async fn until_state(gw: &Gateway, c: &Client, id: &str, want: &str) -> (Value, Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = call(gw, c, Method::GET, &format!("/models/{id}"), None).await;
        let state = m["state"].as_str().unwrap_or_default().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == want {
            return (m, seen);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {want}: {seen:?} {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid the fake engine printed last (it execs the mock, so the mock keeps it).
pub async fn engine_pid(gw: &Gateway, c: &Client, id: &str) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = logs(gw, c, id).await;
        let pid = text.lines().rev().find_map(|l| {
            l.split_once(" pid ")
                .and_then(|(_, p)| p.trim().parse().ok())
        });
        match pid {
            Some(pid) => return pid,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("no pid in {text}"),
        }
    }
}

/// Whether a process is gone (or a zombie no one reaped yet).
pub fn gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next();
    matches!(state, None | Some('Z') | Some('X'))
}

pub async fn eventually_gone(pid: u32) {
    assert!(
        eventually(Duration::from_secs(10), || async move { gone(pid) }).await,
        "engine process {pid} is still there"
    );
}

pub async fn logs(gw: &Gateway, c: &Client, id: &str) -> String {
    let (status, l) = call(
        gw,
        c,
        Method::GET,
        &format!("/models/{id}/logs?tail=500"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{l}");
    l["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_managed_model_starts_loads_runs_is_routed_with_its_key_and_stops() {
    let (gw, _dir) = gateway_with_runner().await;
    let c = Client::new();
    let id = create(
        &gw,
        &c,
        vllm(
            "managed-qwen",
            &[("FAKE_ENGINE_MODE", "slow"), ("FAKE_LOAD_MS", "1500")],
        ),
    )
    .await;
    // Not routed before it runs.
    assert_eq!(gw.chat(&c, &chat_body("managed-qwen")).await.status(), 404);

    let m = start(&gw, &c, &id).await;
    // It claims no more than is true: spawned, perhaps already answering, never running yet.
    assert!(
        ["starting", "loading"].contains(&m["state"].as_str().unwrap()),
        "{m}"
    );
    let (status, again) = call(&gw, &c, Method::POST, &format!("/models/{id}/start"), None).await;
    assert_eq!(status, 409, "{again}");
    let (_, seen) = until_state(&gw, &c, &id, "running").await;
    assert!(seen.contains(&"loading".to_string()), "{seen:?}");
    let (_, ready) = call(
        &gw,
        &c,
        Method::GET,
        &format!("/models/{id}/readiness"),
        None,
    )
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");

    // Routed at once, with the engine's own key (the mock refuses requests without it).
    let r = gw.chat(&c, &chat_body("managed-qwen")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-server"], "fake-vllm");
    let text = logs(&gw, &c, &id).await;
    assert!(text.contains("infergate: starting on"), "{text}");
    assert!(text.contains("fake-vllm argv: serve "), "{text}");
    assert!(text.contains("--served-model-name managed-qwen"), "{text}");
    assert!(text.contains("--max-model-len 4096"), "{text}");
    assert!(text.contains("Model loading took"), "{text}");
    assert!(!text.contains("VLLM_API_KEY"), "{text}");
    // The engine's key is in its environment, never on its command line; none of the gateway's
    // own secrets reach it.
    let pid = engine_pid(&gw, &c, &id).await;
    // Its own empty working directory, gone with it.
    let workdir = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert!(
        workdir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("infergate-engine-{id}-")),
        "{workdir:?}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ).to_string();
    let key = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("VLLM_API_KEY="))
        .expect("the engine has its key")
        .to_string();
    assert!(key.len() >= 32);
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .to_string();
    assert!(!cmdline.contains(&key), "{cmdline}");
    assert!(!text.contains(&key));
    assert!(!environ.contains("INFERGATE_ADMIN_API_SECRET"), "{environ}");
    // The registry view shows where the route comes from.
    let (_, reg) = call(
        &gw,
        &c,
        Method::GET,
        "/models/registry?model=managed-qwen",
        None,
    )
    .await;
    assert_eq!(reg["routes"][0]["source"], "lifecycle", "{reg}");
    assert!(reg["routes"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    // A test goes to the engine itself.
    let (status, t) = call(&gw, &c, Method::POST, &format!("/models/{id}/test"), None).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["success"].as_bool(), t["test_type"].as_str()),
        (Some(true), Some("chat")),
        "{t}"
    );
    assert_eq!(t["request"]["model"], "managed-qwen");
    assert!(
        t["response"]["choices"][0]["message"]["content"].is_string(),
        "{t}"
    );
    assert!(t["latency_ms"].is_u64());

    // Stop: unrouted, then the engine goes.
    let (status, m) = call(&gw, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    assert_eq!(status, 202, "{m}");
    until_state(&gw, &c, &id, "stopped").await;
    assert_eq!(gw.chat(&c, &chat_body("managed-qwen")).await.status(), 404);
    eventually_gone(pid).await;
    let removed = eventually(Duration::from_secs(5), || async { !workdir.exists() }).await;
    assert!(
        removed,
        "the ended engine's working directory {workdir:?} is left behind"
    );
    let (_, ready) = call(
        &gw,
        &c,
        Method::GET,
        &format!("/models/{id}/readiness"),
        None,
    )
    .await;
    assert_eq!(ready["status"], "stopped");
    let (status, t) = call(&gw, &c, Method::POST, &format!("/models/{id}/test"), None).await;
    assert_eq!(status, 409, "{t}");
    let (_, reg) = call(
        &gw,
        &c,
        Method::GET,
        "/models/registry?model=managed-qwen",
        None,
    )
    .await;
    assert_eq!(reg["total"], 0, "{reg}");
    // An unknown model is a 404 (Cortex answered 200).
    let (status, _) = call(&gw, &c, Method::GET, "/models/mdl_nope/readiness", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_failed_start_is_explained_and_a_crash_or_a_timeout_fails_the_model() {
    let (gw, _dir) = gateway_with_runner().await;
    let c = Client::new();
    // The engine exits during its load: failed, with the exit code; the log holds the cause.
    let oom = create(&gw, &c, vllm("oom", &[("FAKE_ENGINE_MODE", "oom")])).await;
    // It serves, then dies: failed within seconds, and unrouted.
    let crash = create(
        &gw,
        &c,
        vllm(
            "crash",
            &[("FAKE_ENGINE_MODE", "crash"), ("FAKE_CRASH_MS", "2500")],
        ),
    )
    .await;
    // It never becomes ready: failed at its startup timeout, and its process is stopped.
    let mut slow = vllm(
        "slow",
        &[("FAKE_ENGINE_MODE", "slow"), ("FAKE_LOAD_MS", "60000")],
    );
    slow["startup_timeout_sec"] = json!(2);
    let slow = create(&gw, &c, slow).await;
    for id in [&oom, &crash, &slow] {
        start(&gw, &c, id).await;
    }

    let (m, _) = until_state(&gw, &c, &oom, "failed").await;
    let detail = m["state_detail"].as_str().unwrap();
    assert!(
        detail.contains("exited with code 1 before it was ready"),
        "{detail}"
    );
    assert!(logs(&gw, &c, &oom).await.contains("CUDA out of memory"));
    let (_, d) = call(
        &gw,
        &c,
        Method::GET,
        &format!("/models/{oom}/logs?diagnose=true"),
        None,
    )
    .await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["diagnosis"][0]["title"], "CUDA Out of Memory", "{d}");
    assert_eq!(d["diagnosis"][0]["severity"], "error");
    assert!(
        d["diagnosis"][0]["fixes"].as_array().unwrap().len() >= 2,
        "{d}"
    );
    assert_eq!(d["summary"]["engine_version"], "0.0.0-fake", "{d}");
    let (_, ready) = call(
        &gw,
        &c,
        Method::GET,
        &format!("/models/{oom}/readiness"),
        None,
    )
    .await;
    assert_eq!(ready["status"], "failed");

    until_state(&gw, &c, &crash, "running").await;
    assert_eq!(gw.chat(&c, &chat_body("crash")).await.status(), 200);
    let (m, _) = until_state(&gw, &c, &crash, "failed").await;
    let detail = m["state_detail"].as_str().unwrap();
    assert!(
        detail.contains("exited with code 1 while running"),
        "{detail}"
    );
    assert_eq!(
        gw.chat(&c, &chat_body("crash")).await.status(),
        404,
        "unrouted at once"
    );

    let (m, _) = until_state(&gw, &c, &slow, "failed").await;
    let detail = m["state_detail"].as_str().unwrap();
    assert!(detail.contains("not ready within 2 s"), "{detail}");
    eventually_gone(engine_pid(&gw, &c, &slow).await).await;
    // A failed model can be started again (and fails again the same way).
    start(&gw, &c, &oom).await;
    until_state(&gw, &c, &oom, "failed").await;
}

#[tokio::test]
async fn apply_restarts_a_running_model_with_its_new_configuration() {
    let (gw, dir) = gateway_with_runner().await;
    let c = Client::new();
    let id = create(
        &gw,
        &c,
        json!({"name": "g", "served_model_name": "g-managed",
        "engine_type": "llamacpp", "local_path": "g", "ngl": 0, "context_size": 4096}),
    )
    .await;
    // Apply on a stopped model only checks it.
    let (status, r) = call(&gw, &c, Method::POST, &format!("/models/{id}/apply"), None).await;
    assert_eq!(
        (status, r["status"].as_str()),
        (200, Some("validated")),
        "{r}"
    );
    assert_eq!(r["model"]["state"], "stopped");

    start_running(&gw, &c, &id).await;
    let r = gw.chat(&c, &chat_body("g-managed")).await;
    assert_eq!(r.headers()["x-mock-server"], "fake-llama-server");
    let first = logs(&gw, &c, &id).await;
    assert!(first.contains("-ngl 0 -c 4096"), "{first}");

    let (status, _) = call(
        &gw,
        &c,
        Method::PATCH,
        &format!("/models/{id}"),
        Some(json!({"context_size": 2048})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, r) = call(&gw, &c, Method::POST, &format!("/models/{id}/apply"), None).await;
    assert_eq!(
        (status, r["status"].as_str()),
        (202, Some("restarting")),
        "{r}"
    );
    until_state(&gw, &c, &id, "running").await;
    let second = logs(&gw, &c, &id).await;
    assert!(second.contains("-ngl 0 -c 2048"), "{second}");
    assert_eq!(gw.chat(&c, &chat_body("g-managed")).await.status(), 200);

    // A stop right after an apply wins over the restart the apply began.
    let pid = engine_pid(&gw, &c, &id).await;
    let (status, r) = call(&gw, &c, Method::POST, &format!("/models/{id}/apply"), None).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["model"]["state"], "stopping", "{r}");
    let (status, m) = call(&gw, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    assert_eq!(status, 202, "{m}");
    eventually_gone(pid).await;
    let (m, _) = until_state(&gw, &c, &id, "stopped").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, m2) = call(&gw, &c, Method::GET, &format!("/models/{id}"), None).await;
    assert_eq!(
        (m2["state"].as_str(), &m2["state_detail"]),
        (Some("stopped"), &Value::Null),
        "{m} then {m2}"
    );
    assert_eq!(gw.chat(&c, &chat_body("g-managed")).await.status(), 404);

    // Delete stops and unroutes it first; the files stay.
    start_running(&gw, &c, &id).await;
    let pid = engine_pid(&gw, &c, &id).await;
    let (status, d) = call(&gw, &c, Method::DELETE, &format!("/models/{id}"), None).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(gw.chat(&c, &chat_body("g-managed")).await.status(), 404);
    assert!(dir.path().join("models/g/model.gguf").exists());
    eventually_gone(pid).await;
}

#[tokio::test]
async fn concurrent_starts_run_one_engine_and_a_stop_during_a_start_wins() {
    let (gw, _dir) = gateway_with_runner().await;
    let c = Client::new();
    let id = create(
        &gw,
        &c,
        vllm(
            "racy",
            &[("FAKE_ENGINE_MODE", "slow"), ("FAKE_LOAD_MS", "800")],
        ),
    )
    .await;
    let path = format!("/models/{id}/start");
    let (a, b) = tokio::join!(
        call(&gw, &c, Method::POST, &path, None),
        call(&gw, &c, Method::POST, &path, None)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "{a:?} {b:?}");
    // A stop while it loads: it ends stopped, its engine gone, and it never comes back.
    let pid = engine_pid(&gw, &c, &id).await;
    let (status, m) = call(&gw, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    assert_eq!(status, 202, "{m}");
    until_state(&gw, &c, &id, "stopped").await;
    eventually_gone(pid).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, m) = call(&gw, &c, Method::GET, &format!("/models/{id}"), None).await;
    assert_eq!(m["state"], "stopped", "{m}");
    assert_eq!(gw.chat(&c, &chat_body("racy")).await.status(), 404);
    // A PATCH while it runs changes its configuration and leaves its state alone.
    call(&gw, &c, Method::POST, &path, None).await;
    until_state(&gw, &c, &id, "running").await;
    let (status, m) = call(
        &gw,
        &c,
        Method::PATCH,
        &format!("/models/{id}"),
        Some(json!({"max_model_len": 2048})),
    )
    .await;
    assert_eq!((status, m["state"].as_str()), (200, Some("running")), "{m}");
    let (_, m) = call(&gw, &c, Method::GET, &format!("/models/{id}"), None).await;
    assert_eq!(
        (m["state"].as_str(), m["max_model_len"].as_u64()),
        (Some("running"), Some(2048))
    );
}

#[tokio::test]
async fn an_embedding_model_is_judged_ready_and_tested_without_a_chat() {
    let (gw, _dir) = gateway_with_runner().await;
    let c = Client::new();
    let mut body = vllm("embedder", &[]);
    body["task"] = json!("embed");
    let id = create(&gw, &c, body).await;
    start_running(&gw, &c, &id).await;
    assert!(logs(&gw, &c, &id).await.contains("--runner pooling"));
    let (_, t) = call(&gw, &c, Method::POST, &format!("/models/{id}/test"), None).await;
    assert_eq!(
        (t["success"].as_bool(), t["test_type"].as_str()),
        (Some(true), Some("embeddings")),
        "{t}"
    );
    assert!(t["response"]["data"][0]["embedding"].is_array(), "{t}");
}

#[tokio::test]
async fn without_a_runner_lifecycle_calls_are_409() {
    let gw = Gateway::start("").await;
    let c = Client::new();
    let dir = tempfile::tempdir().unwrap();
    let id = create(&gw, &c, json!({"name": "m", "served_model_name": "m", "local_path": dir.path().file_name().unwrap().to_str().unwrap()})).await;
    for action in ["start", "stop", "apply", "test"] {
        let r = gw
            .admin(&c, Method::POST, &format!("/admin/models/{id}/{action}"))
            .send()
            .await
            .unwrap();
        let (_, body) = assert_error(r, 409, "no model runner").await;
        assert!(
            body["detail"].as_str().unwrap().contains("[runner] kind"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_docker_runner_creates_a_loopback_container_with_its_key_and_removes_it() {
    let fake = crate::fake_docker::FakeDocker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("qwen")).unwrap();
    let base = 20000 + free_port() % 9000;
    // Left by an earlier run of this node (a killed gateway): removed at start. Another node's
    // container is not this node's to touch.
    fake.plant(
        "infergate-model-mdl_orphan",
        json!({"infergate.model": "mdl_orphan", "infergate.node": "box-1"}),
    );
    fake.plant(
        "infergate-model-mdl_theirs",
        json!({"infergate.model": "mdl_theirs", "infergate.node": "box-2"}),
    );
    let gw = Gateway::start(&format!(
        "[runner]\nkind = \"docker\"\nnode = \"box-1\"\ndocker_socket = {:?}\nmodels_dir = {:?}\nport_min = {base}\nport_max = {}\nstop_grace_secs = 2\n\
         [runner.vllm]\ncommand = [\"unused\"]\nimage = \"missing/vllm:test\"\nstartup_timeout_secs = 30\n",
        fake.socket.to_str().unwrap(),
        models.to_str().unwrap(),
        base + 40,
    ))
    .await;
    let c = Client::new();
    let state = fake.state.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let state = state.clone();
            async move {
                state
                    .removed
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|n| n == "infergate-model-mdl_orphan")
            }
        })
        .await,
        "the orphan container was not removed"
    );
    assert!(!fake
        .state
        .removed
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.contains("mdl_theirs")));
    let id = create(&gw, &c, vllm("boxed", &[("NCCL_P2P_DISABLE", "1")])).await;
    start_running(&gw, &c, &id).await;
    // Routed to the container's published port, with the engine's key.
    let r = gw.chat(&c, &chat_body("boxed")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-server"], "fake-docker");

    // The image was pulled when the engine did not have it; the container is what the issue asks.
    assert_eq!(*fake.state.pulled.lock().unwrap(), ["missing/vllm:test"]);
    let body = fake.state.created.lock().unwrap()[0].clone();
    assert_eq!(body["Image"], "missing/vllm:test");
    assert_eq!(body["Entrypoint"], json!(["vllm", "serve"]));
    let cmd: Vec<&str> = body["Cmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        cmd[..8],
        [
            "/models/qwen",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--served-model-name",
            "boxed",
            "--max-model-len"
        ]
    );
    let env: Vec<&str> = body["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.iter()
            .any(|e| e.starts_with("VLLM_API_KEY=") && e.len() > 40),
        "{env:?}"
    );
    assert!(env.contains(&"NCCL_P2P_DISABLE=1"), "{env:?}");
    assert!(!cmd.iter().any(|a| a.contains("API_KEY")));
    let host = &body["HostConfig"];
    assert_eq!(host["PortBindings"]["8000/tcp"][0]["HostIp"], "127.0.0.1");
    assert_eq!(
        host["Binds"],
        json!([format!("{}:/models:ro", models.to_str().unwrap())])
    );
    assert_eq!(
        host["DeviceRequests"],
        json!([{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}])
    );
    assert_eq!(body["Labels"]["infergate.model"], id.as_str());
    let name = format!("infergate-model-{id}");
    assert!(logs(&gw, &c, &id)
        .await
        .contains(&format!("fake-docker: container {name} started")));

    // Stop: unrouted, the container stopped and removed.
    call(&gw, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    until_state(&gw, &c, &id, "stopped").await;
    assert_eq!(gw.chat(&c, &chat_body("boxed")).await.status(), 404);
    assert!(fake.state.stopped.lock().unwrap().contains(&name));
    assert!(fake.state.removed.lock().unwrap().contains(&name));
}

#[tokio::test]
async fn the_demo_has_a_managed_model_a_newcomer_can_start_test_read_and_stop() {
    // `serve --demo`: the process runner with infergate's own mock engine as `vllm`.
    let gw = Gateway::start_demo("").await;
    let c = Client::new();
    let (status, list) = call(&gw, &c, Method::GET, "/models?q=demo-managed", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1, "{list}");
    let m = &list["models"][0];
    assert_eq!(m["state"], "stopped");
    let id = m["id"].as_str().unwrap().to_string();

    start_running(&gw, &c, &id).await;
    let (_, r) = call(
        &gw,
        &c,
        Method::GET,
        &format!("/models/{id}/readiness"),
        None,
    )
    .await;
    assert_eq!(r["status"], "ready", "{r}");
    let r = gw.chat(&c, &chat_body("demo-managed")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-server"], "mock-engine");
    let (_, t) = call(&gw, &c, Method::POST, &format!("/models/{id}/test"), None).await;
    assert_eq!(t["success"], true, "{t}");
    let (_, l) = call(
        &gw,
        &c,
        Method::GET,
        &format!("/models/{id}/logs?tail=50&diagnose=true"),
        None,
    )
    .await;
    let text = l["lines"].to_string();
    assert!(text.contains("mock-engine"), "{text}");
    assert_eq!(
        l["summary"]["engine_version"], "0.0.0-infergate-mock",
        "{l}"
    );
    let (status, _) = call(&gw, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    assert_eq!(status, 202);
    until_state(&gw, &c, &id, "stopped").await;
    assert_eq!(gw.chat(&c, &chat_body("demo-managed")).await.status(), 404);
}

#[tokio::test]
async fn sigterm_stops_the_managed_engines_after_the_drain_and_records_it() {
    let redis = Redis::start().await;
    let store = format!(
        "[store]\nurl = {:?}\nprefix = \"life-drain\"\n",
        redis.url()
    );
    let (mut gw, _dir) = runner_gateway("", &store).await;
    let c = Client::new();
    let id = create(&gw, &c, vllm("drained-qwen", &[])).await;
    start_running(&gw, &c, &id).await;
    let (_, m) = call(&gw, &c, Method::GET, &format!("/models/{id}"), None).await;
    // `runs_on` is the node and the engine's port.
    let port = m["runs_on"].as_str().unwrap().rsplit(':').next().unwrap();
    let engine = format!("http://127.0.0.1:{port}/v1");
    assert_eq!(gw.chat(&c, &chat_body("drained-qwen")).await.status(), 200);
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let status = gw
        .exited_within(Duration::from_secs(15))
        .await
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
    // The engine was stopped before the exit, and its record says so.
    assert!(reqwest::get(format!("{engine}/models")).await.is_err());
    let reader = Gateway::start(&store).await;
    let (_, m) = call(&reader, &c, Method::GET, &format!("/models/{id}"), None).await;
    assert_eq!(m["state"], "stopped", "{m}");
}
