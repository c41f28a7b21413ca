//! The fleet admin API (spec 002) through real HTTP: auth, error shape, pagination, pods on a
//! fake RunPod, servers, affinity, registry, demand and the OpenAPI document.

use crate::fake_runpod::{FakeRunPod, API_KEY};
use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

#[tokio::test]
async fn auth_is_required_and_errors_have_the_spec_shape() {
    let m = mock("a", &["m"]).await;
    // A service account without the ai_admin role (secret "viewer-secret").
    let viewer = infergate::admin::auth::hash_secret_hex("viewer-secret");
    let gw = Gateway::start(&format!(
        "{}[[admin.credentials]]\napi_key = \"viewer\"\nsecret_sha256 = \"{viewer}\"\nroles = [\"viewer\"]\n",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    let mut ids = Vec::new();
    for prefix in PREFIXES {
        let url = format!("http://{}{prefix}/servers", gw.admin);
        // No credentials.
        let (id, body) = assert_error(c.get(&url).send().await.unwrap(), 401, "unauthorized").await;
        assert!(body["detail"]
            .as_str()
            .unwrap()
            .contains("missing credentials"));
        ids.push(id);
        // Wrong secret, as bearer and as headers.
        let r = c
            .get(&url)
            .bearer_auth(format!("{ADMIN_KEY}:wrong"))
            .send()
            .await
            .unwrap();
        ids.push(assert_error(r, 401, "unauthorized").await.0);
        let r = c
            .get(&url)
            .header("api-key", ADMIN_KEY)
            .header("api-secret", "wrong")
            .send()
            .await
            .unwrap();
        ids.push(assert_error(r, 401, "unauthorized").await.0);
        // A bearer that is not key:secret.
        let r = c.get(&url).bearer_auth(ADMIN_SECRET).send().await.unwrap();
        ids.push(assert_error(r, 401, "unauthorized").await.0);
        // A valid credential without ai_admin.
        let r = c
            .get(&url)
            .bearer_auth("viewer:viewer-secret")
            .send()
            .await
            .unwrap();
        let (id, body) = assert_error(r, 403, "forbidden").await;
        assert!(body["detail"].as_str().unwrap().contains("ai_admin"));
        ids.push(id);
        // The environment's admin pair, both ways.
        let r = c
            .get(&url)
            .bearer_auth(format!("{ADMIN_KEY}:{ADMIN_SECRET}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-error").is_none());
        let r = c
            .get(&url)
            .header("api-key", ADMIN_KEY)
            .header("api-secret", ADMIN_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Unknown paths and methods are errors of the same shape.
        let r = gw
            .admin(&c, Method::GET, &format!("{prefix}/nope"))
            .send()
            .await
            .unwrap();
        ids.push(assert_error(r, 404, "not found").await.0);
        let r = gw
            .admin(&c, Method::DELETE, &format!("{prefix}/servers"))
            .send()
            .await
            .unwrap();
        ids.push(assert_error(r, 405, "method not allowed").await.0);
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every error has its own id");
    // Metrics and liveness stay open for scrapers.
    assert_eq!(
        c.get(format!("http://{}/metrics", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("http://{}/health", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn servers_list_health_models_and_pages() {
    let a = mock("a", &["m", "n"]).await;
    let b = mock("b", &["m"]).await;
    let dead = dead_url();
    let mut extra = server(&a.url(), &["m", "n"]) + &server(&b.url(), &["m"]);
    extra += &format!("[[servers]]\nurl = {dead:?}\nprovider = \"sglang\"\nmodels = [\"m\"]\n");
    let gw = Gateway::start(&extra).await;
    let c = Client::new();
    let mut urls = vec![a.url(), b.url(), dead.clone()];
    urls.sort();
    // The dead server fails its probes.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, body) = gw.admin_get(&c, "/api/ai/v1/admin/servers").await;
            body["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["url"] == dead.as_str() && s["healthy"] == false)
        })
        .await
    );
    let (status, body) = gw.admin_get(&c, "/api/ai/v1/admin/servers").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["page"].clone(),
            body["limit"].clone(),
            body["total"].clone()
        ),
        (json!(1), json!(10), json!(3))
    );
    let servers = body["servers"].as_array().unwrap();
    let listed: Vec<&str> = servers.iter().map(|s| s["url"].as_str().unwrap()).collect();
    assert_eq!(listed, urls, "sorted by URL");
    let dead_s = servers.iter().find(|s| s["url"] == dead.as_str()).unwrap();
    assert_eq!(dead_s["provider"], "sglang");
    assert!(dead_s["consecutive_failures"].as_u64().unwrap() >= 2);
    assert_eq!(dead_s["consecutive_successes"], 0);
    assert!(dead_s["last_failure_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let a_s = servers
        .iter()
        .find(|s| s["url"] == a.url().as_str())
        .unwrap();
    assert_eq!(a_s["healthy"], true);
    assert_eq!(a_s["provider"], "vllm");
    assert_eq!(a_s["models"], json!(["m", "n"]));
    assert_eq!(a_s["last_failure_ms"], 0);
    assert!(a_s["consecutive_successes"].as_u64().unwrap() >= 1);
    assert!(a_s["last_check_ms"].as_u64().unwrap() > 1_600_000_000_000);
    // Pages.
    let (_, p2) = gw.admin_get(&c, "/admin/servers?page=2&limit=2").await;
    assert_eq!(
        (p2["page"].clone(), p2["limit"].clone(), p2["total"].clone()),
        (json!(2), json!(2), json!(3))
    );
    assert_eq!(p2["servers"].as_array().unwrap().len(), 1);
    assert_eq!(p2["servers"][0]["url"], urls[2].as_str());
    let (_, p9) = gw.admin_get(&c, "/admin/servers?page=9").await;
    assert_eq!(p9["servers"], json!([]));
    let (_, capped) = gw.admin_get(&c, "/admin/servers?limit=1000").await;
    assert_eq!(capped["limit"], 100, "a larger limit is served as 100");
    for bad in ["page=0", "limit=0", "page=-1", "limit=ten", "page=1.5"] {
        let r = gw
            .admin(&c, Method::GET, &format!("/admin/servers?{bad}"))
            .send()
            .await
            .unwrap();
        let (_, body) = assert_error(r, 400, "invalid query parameter").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("positive integer"),
            "{bad}"
        );
    }
}

fn runpod_pods() -> Vec<Value> {
    vec![
        json!({
            "id": "localhost", "name": "aiapi-dev-vllm-qwen3-8b-1", "desiredStatus": "RUNNING",
            "costPerHr": "0.44", "image": "vllm/vllm-openai:latest",
            "machine": {"dataCenterId": "US-GA-1", "location": "Georgia", "gpuTypeId": "NVIDIA A100 80GB PCIe"},
            "gpu": {"id": "ignored-when-machine-has-one", "count": 1},
            "lastStartedAt": "2026-06-25 08:00:00.000 +0000 UTC",
            "lastStatusChange": "Rented by User: Thu Jun 25 2026 10:00:00 GMT+0000 (Coordinated Universal Time)"
        }),
        json!({
            "id": "pod2", "name": "aiapi-dev-vllm-qwen3-8b-2", "desiredStatus": "EXITED",
            "costPerHr": 0.5, "gpu": {"id": "NVIDIA L40S", "count": 1},
            "lastStatusChange": "Exited by User: Fri Jul 12 2024 15:14:40 GMT-0400 (Eastern Daylight Time)"
        }),
        json!({"id": "pod3", "name": "someone-elses-pod", "desiredStatus": "RUNNING"}),
    ]
}

/// A gateway whose pods come from `rp`; the pod "localhost" serves model "qwen3-8b" at the
/// mock `m` (url_template http://{id}:{port}/v1).
async fn pods_gateway(rp: &FakeRunPod, m: &infergate::mock::MockServer, cache_ms: u64) -> Gateway {
    let port = m.addr.port();
    let url = format!("http://localhost:{port}/v1");
    Gateway::start_with_env(
        &format!(
            "{}[pods]\nprovider = \"runpod\"\napi_url = {:?}\napi_key_env = \"RP_KEY\"\n\
             name_prefix = \"aiapi-dev-\"\nurl_template = \"http://{{id}}:{{port}}/v1\"\nport = {port}\n\
             cache_ttl_ms = {cache_ms}\ntimeout_ms = 2000\n",
            server(&url, &["qwen3-8b"]),
            rp.url
        ),
        &[("RP_KEY", API_KEY)],
    )
    .await
}

#[tokio::test]
async fn pods_come_from_runpod_with_health_models_and_demand() {
    let rp = FakeRunPod::start(runpod_pods()).await;
    let m = mock_with(infergate::mock::MockConfig {
        name: "pod".into(),
        models: vec!["qwen3-8b".into()],
        ttft: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let gw = pods_gateway(&rp, &m, 60_000).await;
    let c = Client::new();
    // One request in flight while the pods are listed.
    let slow = {
        let (c, url) = (c.clone(), gw.url("/v1/chat/completions"));
        tokio::spawn(async move {
            c.post(url)
                .json(&chat_body("qwen3-8b"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Until the slow request is in flight (the mock holds it for 1.5 s): a loaded machine may
    // take a while to send it.
    let started = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = gw
            .admin_get(&c, "/api/ai/v1/admin/pods?page=1&limit=20")
            .await;
        if body["pods"][0]["inflight"] == 1 || started.elapsed() > Duration::from_millis(1200) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["page"].clone(),
            body["limit"].clone(),
            body["total"].clone()
        ),
        (json!(1), json!(20), json!(2))
    );
    let pods = body["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 2, "only pods named with the prefix");
    let p1 = &pods[0];
    assert_eq!(p1["id"], "localhost");
    assert_eq!(p1["name"], "aiapi-dev-vllm-qwen3-8b-1");
    assert_eq!(p1["desired_status"], "RUNNING");
    assert_eq!(p1["kind"], "vllm-qwen3-8b");
    assert_eq!(p1["models"], json!(["qwen3-8b"]));
    assert_eq!(p1["healthy"], true);
    assert_eq!(p1["inflight"], 1, "the slow request");
    assert!(p1["last_use_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(p1["idle_seconds"].as_u64().unwrap() <= 2);
    assert_eq!(p1["last_status_change"], "2026-06-25T10:00:00Z");
    assert_eq!(p1["cost_per_hr"], 0.44);
    assert_eq!(p1["data_center_id"], "US-GA-1");
    assert_eq!(p1["location"], "Georgia");
    assert_eq!(p1["gpu_type_id"], "NVIDIA A100 80GB PCIe");
    assert!(p1.get("last_started_at").is_none(), "detail only");
    let p2 = &pods[1];
    assert_eq!(p2["id"], "pod2");
    assert_eq!(p2["healthy"], Value::Null, "its URL is in no pool");
    assert_eq!(p2["models"], json!([]));
    assert_eq!(p2["inflight"], 0);
    assert_eq!(p2["last_use_ms"], 0);
    assert_eq!(
        p2["gpu_type_id"], "NVIDIA L40S",
        "from gpu.id without machine info"
    );
    assert_eq!(p2["cost_per_hr"], 0.5);
    assert_eq!(p2["last_status_change"], "2024-07-12T19:14:40Z");
    assert_eq!(slow.await.unwrap(), 200);
    // (The client has the answer's head a moment before the gateway counts the request out.)
    let out = eventually(Duration::from_secs(2), || async {
        let (_, d) = gw.admin_get(&c, "/api/ai/v1/admin/pods/localhost").await;
        d["inflight"] == 0
    })
    .await;
    assert!(out, "the slow request still counts as in flight");

    // Detail, under both prefixes; served from the cached list.
    for prefix in PREFIXES {
        let (status, d) = gw.admin_get(&c, &format!("{prefix}/pods/localhost")).await;
        assert_eq!(status, 200);
        assert_eq!(d["last_started_at"], "2026-06-25T08:00:00Z");
        assert_eq!(d["last_status_change"], "2026-06-25T10:00:00Z");
        assert_eq!(d["kind"], "vllm-qwen3-8b");
        assert_eq!(d["inflight"], 0);
    }
    assert_eq!(
        rp.state.list_calls.load(SeqCst),
        1,
        "the pod list is cached"
    );
    // Not ours, unknown, malformed: 404.
    for id in ["pod3", "nope", "bad.id"] {
        let r = gw
            .admin(&c, Method::GET, &format!("/admin/pods/{id}"))
            .send()
            .await
            .unwrap();
        assert_error(r, 404, "pod not found").await;
    }
}

#[tokio::test]
async fn pod_restart_stops_then_starts_and_reports_the_failed_phase() {
    let rp = FakeRunPod::start(runpod_pods()).await;
    let m = mock("pod", &["qwen3-8b"]).await;
    let gw = pods_gateway(&rp, &m, 60_000).await;
    let c = Client::new();
    let restart = |id: &str| {
        gw.admin(
            &c,
            Method::POST,
            &format!("/api/ai/v1/admin/pods/{id}/restart"),
        )
        .send()
    };

    // Without credentials nothing happens.
    for path in [
        "/admin/pods/pod2/restart",
        "/api/ai/v1/admin/pods/pod2/restart",
    ] {
        let r = c
            .post(format!("http://{}{path}", gw.admin))
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    assert!(
        rp.calls().is_empty(),
        "an unauthenticated restart reaches no provider"
    );

    let r = restart("pod2").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "initiated", "pod_id": "pod2"})
    );
    assert_eq!(rp.calls(), vec!["stop:pod2", "start:pod2"]);
    let (_, d) = gw.admin_get(&c, "/admin/pods/pod2").await;
    assert_eq!(
        d["desired_status"], "RUNNING",
        "the cache was dropped after the restart"
    );

    // Malformed, unknown, not ours.
    let long = "x".repeat(65);
    for bad in ["bad.id", long.as_str(), "%FF", "a%2Fb"] {
        let (_, body) = assert_error(restart(bad).await.unwrap(), 422, "invalid pod id").await;
        assert_eq!(body["error"], "invalid pod id");
    }
    assert_error(restart("nope").await.unwrap(), 404, "pod not found").await;
    assert_error(restart("pod3").await.unwrap(), 404, "pod not found").await;
    assert_eq!(rp.calls().len(), 2, "nothing was stopped for them");
    // Bad pages on the pod list.
    let r = gw
        .admin(&c, Method::GET, "/admin/pods?limit=0")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid query parameter").await;
    let (_, capped) = gw.admin_get(&c, "/admin/pods?limit=500").await;
    assert_eq!(capped["limit"], 100);

    rp.state.fail_stop.store(true, SeqCst);
    let (_, body) = assert_error(
        restart("pod2").await.unwrap(),
        502,
        "pod restart failed at stop",
    )
    .await;
    assert_eq!(body["status"], "failed");
    assert_eq!(body["failed_at"], "stop");
    assert_eq!(body["pod_id"], "pod2");
    assert!(
        body["detail"].as_str().unwrap().contains("stop exploded"),
        "{body}"
    );
    rp.state.fail_stop.store(false, SeqCst);
    rp.state.fail_start.store(true, SeqCst);
    let (_, body) = assert_error(
        restart("pod2").await.unwrap(),
        502,
        "pod restart failed at resume",
    )
    .await;
    assert_eq!(body["failed_at"], "resume");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no GPU available"),
        "{body}"
    );

    // A failing provider list is a 502 with the spec's error.
    rp.state.fail_list.store(true, SeqCst);
    let r = gw
        .admin(&c, Method::GET, "/admin/pods")
        .send()
        .await
        .unwrap();
    let (_, body) = assert_error(r, 502, "runpod API error").await;
    assert!(body["detail"].as_str().unwrap().contains("429"), "{body}");
}

#[tokio::test]
async fn a_runpod_provider_without_its_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[pods]\nprovider = \"runpod\"\napi_key_env = \"NO_SUCH_RUNPOD_KEY\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("NO_SUCH_RUNPOD_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NO_SUCH_RUNPOD_KEY"), "{err}");
}

#[tokio::test]
async fn static_pods_are_listed_and_cannot_be_restarted() {
    let m = mock("s", &["m"]).await;
    let gw = Gateway::start(&format!(
        "{}[pods]\nprovider = \"static\"\nname_prefix = \"lab-\"\n\
         [[pods.static]]\nid = \"box-1\"\nname = \"lab-vllm-m-1\"\nurl = \"{}\"\ncost_per_hr = 1.5\nlocation = \"Lisbon\"\n",
        server(&m.url(), &["m"]),
        m.url()
    ))
    .await;
    let c = Client::new();
    let (status, body) = gw.admin_get(&c, "/admin/pods").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1);
    let p = &body["pods"][0];
    assert_eq!(
        (p["id"].clone(), p["kind"].clone(), p["healthy"].clone()),
        (json!("box-1"), json!("vllm-m"), json!(true))
    );
    assert_eq!(p["models"], json!(["m"]));
    assert_eq!(p["desired_status"], "RUNNING");
    assert_eq!(p["location"], "Lisbon");
    assert_eq!(p["data_center_id"], Value::Null);
    let r = gw
        .admin(&c, Method::POST, "/admin/pods/box-1/restart")
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "pod cannot be restarted").await;
}

#[tokio::test]
async fn affinity_counts_and_clear() {
    let a = mock("a", &["m", "n"]).await;
    let b = mock("b", &["m", "n"]).await;
    let gw =
        Gateway::start(&(server(&a.url(), &["m", "n"]) + &server(&b.url(), &["m", "n"]))).await;
    let c = Client::new();
    for (user, model) in [("alice", "m"), ("alice", "m"), ("alice", "n"), ("bob", "m")] {
        let mut body = chat_body(model);
        body["user"] = json!(user);
        assert_eq!(gw.chat(&c, &body).await.status(), 200);
    }
    let (status, body) = gw.admin_get(&c, "/api/ai/v1/admin/affinity").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"providers": [{"name": "vllm", "session_hit_count": 1, "session_miss_count": 3, "fallback_count": 0, "ttl_minutes": 30}]})
    );
    let clear = |body: &'static str| {
        gw.admin(&c, Method::POST, "/admin/affinity/clear")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = clear(r#"{"user_id": "alice", "model_id": "n"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"user_id": "alice", "model_id": "n", "cleared": 1})
    );
    let r = clear(r#"{"user_id": "alice", "model_id": null}"#)
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"user_id": "alice", "cleared": 1})
    );
    let r = clear(r#"{"user_id": "carol"}"#).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"user_id": "carol", "cleared": 0})
    );
    // Alice is a miss again; Bob still a hit.
    for user in ["alice", "bob"] {
        let mut body = chat_body("m");
        body["user"] = json!(user);
        gw.chat(&c, &body).await;
    }
    let (_, body) = gw.admin_get(&c, "/admin/affinity").await;
    assert_eq!(body["providers"][0]["session_hit_count"], 2);
    assert_eq!(body["providers"][0]["session_miss_count"], 4);
    for bad in [
        "not json",
        "{}",
        r#"{"user_id": 5}"#,
        r#"{"model_id": "m"}"#,
        "[]",
    ] {
        let (_, body) = assert_error(clear(bad).await.unwrap(), 400, "invalid request body").await;
        assert!(body["detail"].is_string(), "{bad}: {body}");
    }
}

#[tokio::test]
async fn registry_lists_urls_and_refresh_discovers_models() {
    // Server a also serves "extra", which the config does not name.
    let a = mock("a", &["m", "extra", "org/model"]).await;
    let b = mock("b", &["m"]).await;
    let gw =
        Gateway::start(&(server(&a.url(), &["m", "org/model"]) + &server(&b.url(), &["m"]))).await;
    let c = Client::new();
    let mut both = vec![a.url(), b.url()];
    both.sort();
    let (status, body) = gw
        .admin_get(&c, "/api/ai/v1/admin/registry/m?page=1&limit=50")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"model_id": "m", "urls": both, "page": 1, "limit": 50, "total": 2})
    );
    let (_, body) = gw.admin_get(&c, "/admin/registry/m?limit=1&page=2").await;
    assert_eq!(body["urls"], json!([both[1]]));
    assert_eq!(body["total"], 2);
    let (status, body) = gw.admin_get(&c, "/admin/registry/unknown-model").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"model_id": "unknown-model", "urls": [], "page": 1, "limit": 10, "total": 0})
    );
    // Model ids with a slash, encoded or not.
    for path in ["/admin/registry/org/model", "/admin/registry/org%2Fmodel"] {
        let (_, body) = gw.admin_get(&c, path).await;
        assert_eq!(body["model_id"], "org/model", "{path}");
        assert_eq!(body["urls"], json!([a.url()]));
    }
    let (_, body) = gw.admin_get(&c, "/admin/registry/refresh").await;
    assert_eq!(body["model_id"], "refresh", "GET is a model named refresh");
    let (_, body) = gw.admin_get(&c, "/admin/registry/m?limit=101").await;
    assert_eq!(body["limit"], 100);
    let r = gw
        .admin(&c, Method::GET, "/admin/registry/m?page=x")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid query parameter").await;
    let long = "m".repeat(257);
    let r = gw
        .admin(&c, Method::GET, &format!("/admin/registry/{long}"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid model id").await;

    // Before a refresh, "extra" is not routed; after, it is (discovered from a's /v1/models).
    assert_eq!(gw.chat(&c, &chat_body("extra")).await.status(), 404);
    let r = gw
        .admin(&c, Method::POST, "/api/ai/v1/admin/registry/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "triggered"})
    );
    let r = gw.chat(&c, &chat_body("extra")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-server"], "a");
    let (_, body) = gw.admin_get(&c, "/admin/registry/extra").await;
    assert_eq!(body["urls"], json!([a.url()]));
    let (_, servers) = gw.admin_get(&c, "/admin/servers").await;
    let a_s = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == a.url().as_str())
        .unwrap()
        .clone();
    assert_eq!(a_s["models"], json!(["extra", "m", "org/model"]));
}

#[tokio::test]
async fn demand_of_a_server_url() {
    let a = mock("a", &["m", "n"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m", "n"])).await;
    let c = Client::new();
    for model in ["m", "m", "m", "n"] {
        assert_eq!(gw.chat(&c, &chat_body(model)).await.status(), 200);
    }
    let encoded: String = url::form_urlencoded::byte_serialize(a.url().as_bytes()).collect();
    // (The client has an answer a moment before the gateway counts its request out.)
    let out = eventually(Duration::from_secs(2), || async {
        let (_, d) = gw.admin_get(&c, &format!("/admin/demand/{encoded}")).await;
        d["inflight"] == 0
            && d["models"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["inflight"] == 0))
    })
    .await;
    assert!(out, "a request still counts as in flight");
    let (status, body) = gw
        .admin_get(&c, &format!("/api/ai/v1/admin/demand/{encoded}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], a.url().as_str());
    assert_eq!(body["inflight"], 0);
    assert!(body["last_use_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(body["idle_seconds"].as_u64().unwrap() <= 5);
    assert_eq!(
        body["models"],
        json!([{"model_id": "m", "inflight": 0, "rate_5m": 3}, {"model_id": "n", "inflight": 0, "rate_5m": 1}])
    );
    // A URL nobody routes to has no demand.
    let (status, body) = gw
        .admin_get(&c, "/admin/demand/http%3A%2F%2F10.9.9.9%3A8000%2Fv1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["inflight"].clone(),
            body["last_use_ms"].clone(),
            body["models"].clone()
        ),
        (json!(0), json!(0), json!([]))
    );
    let r = gw
        .admin(&c, Method::GET, "/admin/demand/not-a-url")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid pod url").await;
}

#[tokio::test]
async fn openapi_document_covers_every_endpoint() {
    let gw = Gateway::start("").await;
    let c = Client::new();
    let r = c
        .get(format!("http://{}/admin/openapi.json", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/api/ai/v1/admin/pods", "get"),
        ("/api/ai/v1/admin/pods/{id}", "get"),
        ("/api/ai/v1/admin/pods/{id}/restart", "post"),
        ("/api/ai/v1/admin/servers", "get"),
        ("/api/ai/v1/admin/affinity", "get"),
        ("/api/ai/v1/admin/affinity/clear", "post"),
        ("/api/ai/v1/admin/registry/{modelId}", "get"),
        ("/api/ai/v1/admin/registry/refresh", "post"),
        ("/api/ai/v1/admin/demand/{podUrl}", "get"),
        ("/admin/orgs", "get"),
        ("/admin/orgs", "post"),
        ("/admin/orgs/{id}", "patch"),
        ("/admin/orgs/{id}", "delete"),
        ("/admin/orgs/lookup", "get"),
        ("/admin/users", "get"),
        ("/admin/users", "post"),
        ("/admin/users/{id}", "patch"),
        ("/admin/users/{id}", "delete"),
        ("/admin/users/lookup", "get"),
        ("/admin/keys", "get"),
        ("/admin/keys", "post"),
        ("/admin/keys/{id}", "delete"),
        ("/admin/usage", "get"),
        ("/admin/usage/aggregate", "get"),
        ("/admin/usage/series", "get"),
        ("/admin/usage/latency", "get"),
        ("/admin/usage/ttft", "get"),
        ("/admin/usage/export", "get"),
        ("/admin/upstreams", "get"),
        ("/admin/upstreams/refresh-health", "post"),
        ("/admin/models/registry", "get"),
        ("/admin/models/registry", "post"),
        ("/admin/models/registry", "delete"),
        ("/admin/models", "get"),
        ("/admin/models", "post"),
        ("/admin/models/{id}", "get"),
        ("/admin/models/{id}", "patch"),
        ("/admin/models/{id}", "delete"),
        ("/admin/models/{id}/start", "post"),
        ("/admin/models/{id}/stop", "post"),
        ("/admin/models/{id}/apply", "post"),
        ("/admin/models/{id}/test", "post"),
        ("/admin/models/{id}/readiness", "get"),
        ("/admin/models/{id}/logs", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} documented"
        );
    }
    let schemas = &doc["components"]["schemas"];
    // A model's configuration: every engine option of the notes' sections 1.1 and 1.2 that
    // the gateway maps to a flag, and no secret (a token is named by its variable).
    let spec = schemas["ModelSpec"]["properties"].as_object().unwrap();
    for field in [
        "name",
        "served_model_name",
        "task",
        "engine_type",
        "repo_id",
        "local_path",
        "engine_image",
        "selected_gpus",
        "hf_token_env",
        "startup_timeout_sec",
        "engine_args",
        "engine_env",
        "dtype",
        "tp_size",
        "pipeline_parallel_size",
        "gpu_memory_utilization",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "kv_cache_dtype",
        "quantization",
        "block_size",
        "enable_prefix_caching",
        "enable_chunked_prefill",
        "enforce_eager",
        "trust_remote_code",
        "cpu_offload_gb",
        "tokenizer",
        "hf_config_path",
        "ngl",
        "context_size",
        "batch_size",
        "ubatch_size",
        "threads",
        "parallel_slots",
        "tensor_split",
        "flash_attention",
        "cache_type_k",
        "cache_type_v",
    ] {
        assert!(spec.contains_key(field), "ModelSpec.{field}");
    }
    assert!(!spec.contains_key("hf_token"));
    let props = |name: &str| -> Vec<String> {
        let mut v: Vec<String> = schemas[name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        props("PodSummary"),
        [
            "cost_per_hr",
            "data_center_id",
            "desired_status",
            "gpu_type_id",
            "healthy",
            "id",
            "idle_seconds",
            "inflight",
            "kind",
            "last_status_change",
            "last_use_ms",
            "location",
            "models",
            "name"
        ]
    );
    assert_eq!(
        props("ServerInfo"),
        [
            "consecutive_failures",
            "consecutive_successes",
            "healthy",
            "last_check_ms",
            "last_failure_ms",
            "models",
            "provider",
            "url"
        ]
    );
    assert_eq!(
        props("DemandInfo"),
        ["idle_seconds", "inflight", "last_use_ms", "models", "url"]
    );
    assert_eq!(
        props("ModelDemandInfo"),
        ["inflight", "model_id", "rate_5m"]
    );
    assert_eq!(
        props("ProviderAffinity"),
        [
            "fallback_count",
            "name",
            "session_hit_count",
            "session_miss_count",
            "ttl_minutes"
        ]
    );
    assert_eq!(
        props("RegistryPage"),
        ["limit", "model_id", "page", "total", "urls"]
    );
    assert_eq!(props("ErrorBody"), ["detail", "error"]);
    for scheme in ["bearer", "api_key", "api_secret"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    assert_eq!(props("RestartAccepted"), ["pod_id", "status"]);
    assert_eq!(
        props("RestartFailed"),
        ["detail", "failed_at", "pod_id", "status"]
    );
    assert_eq!(props("ClearResult"), ["cleared", "model_id", "user_id"]);
    let detail = serde_json::to_string(&schemas["PodDetail"]).unwrap();
    assert!(
        detail.contains("last_started_at") && detail.contains("gpu_type_id"),
        "{detail}"
    );
    let restart = &doc["paths"]["/api/ai/v1/admin/pods/{id}/restart"]["post"]["responses"];
    for status in ["200", "401", "403", "404", "422", "502"] {
        assert!(restart[status].is_object(), "restart documents {status}");
    }
}

#[tokio::test]
async fn with_valkey_clear_reaches_every_instance_and_an_outage_is_503() {
    let mut redis = Redis::start().await;
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let extra = format!(
        "{}{}[store]\nurl = \"{}\"\nprefix = \"adm\"\n",
        server(&a.url(), &["m"]),
        server(&b.url(), &["m"]),
        redis.url()
    );
    let gw1 = Gateway::start(&extra).await;
    let gw2 = Gateway::start(&extra).await;
    let c = Client::new();
    let mut body = chat_body("m");
    body["user"] = json!("erin");
    assert_eq!(gw1.chat(&c, &body).await.status(), 200);
    assert_eq!(
        gw2.chat(&c, &body).await.status(),
        200,
        "gw2 takes gw1's entry"
    );
    // Counts are summed over both instances (flushed about once a second).
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, r) = gw2.admin_get(&c, "/admin/affinity").await;
            r["providers"][0]["session_miss_count"] == 1
                && r["providers"][0]["session_hit_count"] == 1
        })
        .await,
        "one miss on gw1, one hit on gw2"
    );
    // Cleared through gw1's admin API: gw2's next request is a miss.
    let r = gw1
        .admin(&c, Method::POST, "/api/ai/v1/admin/affinity/clear")
        .json(&json!({"user_id": "erin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["cleared"], 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw2.chat(&c, &body).await.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, r) = gw1.admin_get(&c, "/admin/affinity").await;
            r["providers"][0]["session_miss_count"] == 2
        })
        .await,
        "the clear reached gw2"
    );
    // Demand is summed over both instances.
    assert_eq!(gw2.chat(&c, &chat_body("m")).await.status(), 200);
    let total_5m = |d: &Value| d["models"][0]["rate_5m"].as_u64().unwrap_or(0);
    let encoded =
        |u: String| url::form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>();
    let (ea, eb) = (encoded(a.url()), encoded(b.url()));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, da) = gw1.admin_get(&c, &format!("/admin/demand/{ea}")).await;
            let (_, db) = gw1.admin_get(&c, &format!("/admin/demand/{eb}")).await;
            total_5m(&da) + total_5m(&db) == 4
        })
        .await,
        "four requests over both instances"
    );

    redis.kill();
    let r = gw1
        .admin(&c, Method::POST, "/admin/affinity/clear")
        .json(&json!({"user_id": "erin"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "valkey unavailable").await;
    let r = gw1
        .admin(&c, Method::GET, &format!("/admin/demand/{ea}"))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "valkey unavailable").await;
    let r = gw1
        .admin(&c, Method::GET, "/admin/registry/m")
        .send()
        .await
        .unwrap();
    let (_, body) = assert_error(r, 503, "valkey error").await;
    assert!(body["detail"].is_string());
    let r = gw1
        .admin(&c, Method::GET, "/admin/affinity")
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "valkey unavailable").await;
    let r = gw1
        .admin(&c, Method::POST, "/admin/registry/refresh")
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "valkey unavailable").await;
    // The data plane and the local views keep working.
    assert_eq!(gw1.chat(&c, &chat_body("m")).await.status(), 200);
    assert_eq!(gw1.admin_get(&c, "/admin/servers").await.0, 200);
    redis.restart().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw1.admin_get(&c, "/admin/registry/m").await.0 == 200
        })
        .await,
        "the admin API recovers with Valkey"
    );
}

#[tokio::test]
async fn runpod_read_failures_are_502_and_nothing_secret_is_logged() {
    let rp = FakeRunPod::start(runpod_pods()).await;
    let m = mock("pod", &["qwen3-8b"]).await;
    // No cache: every read asks the provider.
    let port = m.addr.port();
    let config = format!(
        "{}[pods]\nprovider = \"runpod\"\napi_url = {:?}\napi_key_env = \"RP_KEY\"\n\
         name_prefix = \"aiapi-dev-\"\nurl_template = \"http://{{id}}:{{port}}/v1\"\nport = {port}\n\
         cache_ttl_ms = 0\n",
        server(&format!("http://localhost:{port}/v1"), &["qwen3-8b"]),
        rp.url
    );
    let gw = Gateway::start_logged(&config, &[("RP_KEY", API_KEY)]).await;
    let c = Client::new();
    rp.state.fail_get.store(true, SeqCst);
    let r = gw
        .admin(&c, Method::GET, "/admin/pods/pod2")
        .send()
        .await
        .unwrap();
    let (id, body) = assert_error(r, 502, "runpod API error").await;
    assert!(body["detail"].as_str().unwrap().contains("502"), "{body}");
    // A restart whose lookup fails stops nothing.
    let r = gw
        .admin(&c, Method::POST, "/admin/pods/pod2/restart")
        .send()
        .await
        .unwrap();
    assert_error(r, 502, "runpod API error").await;
    assert!(rp.calls().is_empty());
    let r = c
        .get(format!("http://{}/admin/servers", gw.admin))
        .bearer_auth(format!("{ADMIN_KEY}:not-the-secret"))
        .send()
        .await
        .unwrap();
    let (id401, _) = assert_error(r, 401, "unauthorized").await;
    // Logged with their ids; no secret in the log.
    let log = gw.log();
    assert!(log.contains(&id) && log.contains(&id401), "{log}");
    for secret in [ADMIN_SECRET, API_KEY, "not-the-secret"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }

    // A gateway holding the wrong RunPod key: RunPod's 401 is a 502 for the admin.
    let wrong = Gateway::start_with_env(&config, &[("RP_KEY", "wrong-key")]).await;
    let r = wrong
        .admin(&c, Method::GET, "/admin/pods")
        .send()
        .await
        .unwrap();
    let (_, body) = assert_error(r, 502, "runpod API error").await;
    assert!(body["detail"].as_str().unwrap().contains("401"), "{body}");
}

#[tokio::test]
async fn repeated_failed_authentications_block_the_address_for_a_while() {
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start_logged(
        &format!(
            "admin.auth_failures_max = 3\nadmin.auth_block_secs = 2\n{}",
            server(&m.url(), &["m"])
        ),
        &[],
    )
    .await;
    let url = format!("http://{}/admin/servers", gw.admin);
    let c = Client::new();
    let guess = |n: u32| {
        c.get(&url)
            .bearer_auth(format!("{ADMIN_KEY}:wrong-guess-{n}"))
            .send()
    };
    for n in 0..2 {
        assert_eq!(guess(n).await.unwrap().status(), 401);
    }
    // The third failure blocks: 429 with Retry-After, in the admin API's error shape.
    let r = guess(2).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert!(r.headers().contains_key("x-error-id"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too many failed authentications");
    // While blocked, even the right credentials are refused from this address...
    let right = gw
        .admin(&c, Method::GET, "/admin/servers")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 429);
    // ... but not from another one.
    let other = Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = gw
        .admin(&other, Method::GET, "/admin/servers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unauthenticated endpoints stay open.
    let health = c
        .get(format!("http://{}/health", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The block ends.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = gw
        .admin(&c, Method::GET, "/admin/servers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Logged with the address, never with the secret tried.
    let log = gw.log();
    assert!(log.contains("too many failures"), "{log}");
    assert!(!log.contains("wrong-guess"), "a tried secret was logged");
    assert!(!log.contains(ADMIN_SECRET), "the secret was logged");
}

#[tokio::test]
async fn the_admin_port_bounds_silent_slow_idle_and_too_many_clients() {
    use crate::wire::{closed_silently, read_response};
    use std::time::Instant;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "admin.header_timeout_secs = 1\nadmin.max_connections = 2\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let health = format!("http://{}/health", gw.admin);
    // Two silent connections take both slots: a third client waits in the backlog until the
    // header timeout closes them, then is served.
    let started = Instant::now();
    let mut silent = [
        TcpStream::connect(gw.admin).await.unwrap(),
        TcpStream::connect(gw.admin).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = Client::new().get(&health).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    for s in &mut silent {
        closed_silently(s, Duration::from_secs(1)).await;
    }
    // A head sent a byte at a time is cut at the header timeout.
    let mut slow = TcpStream::connect(gw.admin).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /health HTTP/1.1\r\nHost: a\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut byte = [0u8; 1];
        match slow.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Closed (or reset) by the gateway, answered nothing.
            Ok(0) | Err(_) => {
                cut = true;
                break;
            }
            Ok(_) => panic!("a dribbled head was answered"),
        }
    }
    assert!(cut, "a head dribbled over 3 s was served");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A keep-alive connection idle past the header timeout is closed.
    let mut idle = TcpStream::connect(gw.admin).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut idle, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let waited = closed_silently(&mut idle, Duration::from_secs(4)).await;
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
}
