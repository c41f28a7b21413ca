//! Configuration reload (issue 15, item 3): `POST /admin/config/reload` and SIGHUP read the
//! file again; live settings (servers, health, auth, data-plane limits) apply without a
//! restart and without dropping a connection; the others are reported as waiting for a
//! restart; an invalid file is refused with its error and nothing changes.

use crate::harness::*;
use crate::wire::read_response;
use nix::sys::signal::Signal;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn request(model: &str, padding: usize) -> String {
    let body = json!({"model": model, "max_tokens": 1, "pad": "x".repeat(padding),
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_reload_applies_limits_live_on_open_connections_and_reports_the_rest() {
    let (a, b) = (mock("a", &["a"]).await, mock("b", &["b"]).await);
    let gw = Gateway::start(&server(&a.url(), &["a"])).await;
    let c = Client::new();
    let mut conn = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let mut buf = Vec::new();
    conn.write_all(request("a", 3000).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A smaller body limit and a new server (live); a new listen address (restart only).
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[proxy]\n", "[proxy]\nmax_body_bytes = 2000\n", 1);
    let text = text.replacen(
        &gw.proxy.to_string(),
        &format!("127.0.0.1:{}", free_port()),
        1,
    );
    std::fs::write(&path, format!("{text}\n{}", server(&b.url(), &["b"]))).unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["version"], 2);
    assert_eq!(
        outcome["applied"],
        json!(["proxy.max_body_bytes", "servers"])
    );
    assert_eq!(outcome["pending_restart"], json!(["proxy.listen"]));
    assert_eq!(outcome["warnings"], json!([]));

    // The connection opened before is still served: by the new server, and under the new
    // limit (a 413 closes the connection).
    conn.write_all(request("b", 0).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "model b is served: {head}"
    );
    assert!(head.contains("x-mock-server: b"), "{head}");
    conn.write_all(request("a", 3000).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "the new body limit: {head}"
    );

    // The running configuration: the new limit and servers, the old listen address.
    let (status, running) = gw.admin_get(&c, "/admin/config").await;
    assert_eq!(status, 200);
    assert_eq!(running["version"], 2);
    assert_eq!(running["config"]["proxy"]["max_body_bytes"], 2000);
    assert_eq!(running["config"]["proxy"]["listen"], gw.proxy.to_string());
    assert_eq!(running["config"]["servers"].as_array().unwrap().len(), 2);
    assert_eq!(running["sha256"].as_str().unwrap().len(), 64);
    // The same file again changes nothing.
    let (_, again) = gw.reload(&c).await;
    assert_eq!(again["version"], 2);
    assert_eq!(again["applied"], json!([]));
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_its_error_and_the_running_configuration_stays() {
    let a = mock("a", &["a"]).await;
    let gw = Gateway::start(&server(&a.url(), &["a"])).await;
    let c = Client::new();
    let path = gw.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replacen("[proxy]\n", "[proxy]\nmax_body_byts = 1\n", 1),
    )
    .unwrap();
    let (status, body) = gw.reload(&c).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("max_body_byts"),
        "the key at fault: {body}"
    );
    let (_, running) = gw.admin_get(&c, "/admin/config").await;
    assert_eq!(running["version"], 1);
    assert_eq!(gw.chat(&c, &chat_body("a")).await.status(), 200);
}

#[tokio::test]
async fn sighup_reloads_and_a_key_becomes_required_on_open_connections() {
    let a = mock("a", &["a"]).await;
    let gw = Gateway::start_logged(&server(&a.url(), &["a"]), &[]).await;
    let c = Client::new();
    let mut conn = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let mut buf = Vec::new();
    conn.write_all(request("a", 0).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("proxy = \"off\"", "proxy = \"required\"", 1),
    )
    .unwrap();
    gw.signal(Signal::SIGHUP);
    let reloaded = eventually(Duration::from_secs(5), || async {
        gw.admin_get(&c, "/admin/config").await.1["version"] == 2
    })
    .await;
    assert!(reloaded, "{}", gw.log());
    conn.write_all(request("a", 0).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "a key is required now: {head}"
    );
    // (The log line may come a moment after the new version is served.)
    let logged = eventually(Duration::from_secs(2), || async {
        gw.log().contains("SIGHUP: configuration reloaded")
    })
    .await;
    assert!(logged, "{}", gw.log());
    // The audit log has the reload, with the signal as its actor.
    let recorded = eventually(Duration::from_secs(5), || async {
        let (_, page) = gw.admin_get(&c, "/admin/audit?action=config.reload").await;
        page["records"].as_array().is_some_and(|r| {
            r.iter().any(|r| {
                r["actor"] == "signal:SIGHUP" && r["outcome"] == "success" && r["status"] == 200
            })
        })
    })
    .await;
    assert!(recorded, "{}", gw.admin_get(&c, "/admin/audit").await.1);
}

/// A reload that lowers `[auth] max_stale_secs` also makes the key cache resync more often:
/// valid keys are never refused as unconfirmed while the store answers.
#[tokio::test]
async fn a_lowered_max_stale_keeps_valid_keys_confirmed() {
    let a = mock("a", &["a"]).await;
    let gw = Gateway::start(&format!(
        "auth.proxy = \"required\"\n{}",
        server(&a.url(), &["a"])
    ))
    .await;
    let c = Client::new();
    let (status, k) = admin_call(
        &gw,
        &c,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "k", "scopes": "chat"})),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    let token = k["token"].as_str().unwrap().to_string();
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("[auth]\n", "[auth]\nmax_stale_secs = 3\n", 1),
    )
    .unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["auth.max_stale_secs"]));
    for _ in 0..8 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&chat_body("a"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a reload does to `[[servers]]`: a server added with `api_key_env` sends its key, one
/// whose key changes is rebuilt, one removed stops being routed (it was seeded into the
/// registry too); an unset variable is refused.
#[tokio::test]
async fn a_reloaded_server_list_applies_new_servers_keys_and_removals() {
    let a = mock("a", &["a"]).await;
    let keyed = mock_with(infergate::mock::MockConfig {
        name: "k".into(),
        models: vec!["k".into()],
        api_key: Some("sk-upstream".into()),
        ..Default::default()
    })
    .await;
    let gw = Gateway::start_with_env(
        &server(&a.url(), &["a"]),
        &[("UPSTREAM_KEY", "sk-upstream")],
    )
    .await;
    let c = Client::new();
    let path = gw.config_path();
    let base = std::fs::read_to_string(&path).unwrap();
    let without_servers = base.split("[[servers]]").next().unwrap().to_string();
    let keyed_block = format!(
        "[[servers]]\nurl = {:?}\nprovider = \"vllm\"\nmodels = [\"k\"]\napi_key_env = \"UPSTREAM_KEY\"\n\n",
        keyed.url()
    );

    // Added with its key: served (the mock answers 401 without it).
    std::fs::write(&path, format!("{base}\n{keyed_block}")).unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["servers"]));
    let r = gw.chat(&c, &chat_body("k")).await;
    assert_eq!(r.status(), 200, "the added server gets its key");
    assert_eq!(r.headers()["x-mock-server"], "k");

    // An unset variable: refused, named, and nothing changes.
    std::fs::write(
        &path,
        format!(
            "{base}\n{}",
            keyed_block.replace("UPSTREAM_KEY", "NOT_SET_ANYWHERE")
        ),
    )
    .unwrap();
    let (status, body) = gw.reload(&c).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("servers[1].api_key_env")
            && body.to_string().contains("NOT_SET_ANYWHERE"),
        "{body}"
    );
    assert_eq!(gw.chat(&c, &chat_body("k")).await.status(), 200);

    // The key removed from the entry: the backend is rebuilt without it (the mock refuses).
    std::fs::write(
        &path,
        format!(
            "{base}\n{}",
            keyed_block.replace("api_key_env = \"UPSTREAM_KEY\"\n", "")
        ),
    )
    .unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    let r = gw.chat(&c, &chat_body("k")).await;
    assert_ne!(r.status(), 200, "the key went with the entry");

    // Server a removed (k back with its key): a is no longer routed, here or in the
    // registry, and k's entry has its key again.
    std::fs::write(&path, format!("{without_servers}\n{keyed_block}")).unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["warnings"], json!([]));
    assert_eq!(gw.chat(&c, &chat_body("a")).await.status(), 404);
    assert_eq!(gw.chat(&c, &chat_body("k")).await.status(), 200);
    let (_, routes) = gw.admin_get(&c, "/admin/models/registry").await;
    let urls: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, [keyed.url().as_str()], "{routes}");
    // The registry sync (every 10 s, and on every change) does not bring it back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.chat(&c, &chat_body("a")).await.status(), 404);
}

/// `[pods]` and `[[admin.credentials]]` change live: a static pod appears, a new ai_admin
/// account works and a removed one stops working; a RunPod provider whose key variable is
/// unset is refused.
#[tokio::test]
async fn pods_and_admin_credentials_change_live() {
    let a = mock("a", &["a"]).await;
    let ops = infergate::admin::auth::hash_secret_hex("ops-secret");
    let account = format!(
        "[[admin.credentials]]\napi_key = \"ops\"\nsecret_sha256 = \"{ops}\"\nroles = [\"ai_admin\"]\n\n"
    );
    let gw = Gateway::start(&server(&a.url(), &["a"])).await;
    let c = Client::new();
    let as_ops = || {
        c.get(format!("http://{}/admin/pods", gw.admin))
            .header("api-key", "ops")
            .header("api-secret", "ops-secret")
    };
    assert_eq!(as_ops().send().await.unwrap().status(), 401);
    let path = gw.config_path();
    let base = std::fs::read_to_string(&path).unwrap();
    let pods = format!(
        "[pods]\nprovider = \"static\"\n[[pods.static]]\nid = \"box-1\"\nname = \"lab-1\"\nurl = {:?}\n\n",
        a.url()
    );
    std::fs::write(&path, format!("{base}\n{pods}{account}")).unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        outcome["applied"],
        json!(["admin.credentials", "pods.provider", "pods.static"])
    );
    let r = as_ops().send().await.unwrap();
    assert_eq!(r.status(), 200, "the new account works");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["pods"][0]["id"], "box-1", "{page}");
    assert_eq!(page["pods"][0]["healthy"], true, "{page}");

    // A RunPod provider without its key in the environment: refused, nothing changes.
    std::fs::write(
        &path,
        format!(
            "{base}\n[pods]\nprovider = \"runpod\"\napi_key_env = \"NO_SUCH_KEY_VAR\"\n\n{account}"
        ),
    )
    .unwrap();
    let (status, body) = gw.reload(&c).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("NO_SUCH_KEY_VAR"), "{body}");
    assert_eq!(as_ops().send().await.unwrap().status(), 200);

    // The account removed: refused again; the pods are gone with their table.
    std::fs::write(&path, &base).unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(as_ops().send().await.unwrap().status(), 401);
    let (_, page) = gw.admin_get(&c, "/admin/pods").await;
    assert_eq!(page["pods"], json!([]), "{page}");
}

/// `[affinity]` changes live: the TTL the admin report shows, and the bound on entries (a user
/// beyond it is served without an entry, so each of their requests is a miss).
#[tokio::test]
async fn affinity_limits_change_live() {
    let (a, b) = (mock("a", &["m"]).await, mock("b", &["m"]).await);
    let gw = Gateway::start(&(server(&a.url(), &["m"]) + &server(&b.url(), &["m"]))).await;
    let c = Client::new();
    let path = gw.config_path();
    let base = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{base}\n[affinity]\nttl_minutes = 5\nmax_entries = 1\n"),
    )
    .unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        outcome["applied"],
        json!(["affinity.max_entries", "affinity.ttl_minutes"])
    );
    for user in ["alice", "alice", "bob", "bob"] {
        let mut body = chat_body("m");
        body["user"] = json!(user);
        assert_eq!(gw.chat(&c, &body).await.status(), 200);
    }
    let (_, report) = gw.admin_get(&c, "/admin/affinity").await;
    let p = &report["providers"][0];
    assert_eq!(p["ttl_minutes"], 5, "{report}");
    // alice: a miss, then a hit; bob, beyond the bound of one entry: two misses.
    assert_eq!(
        (
            p["session_hit_count"].as_u64(),
            p["session_miss_count"].as_u64()
        ),
        (Some(1), Some(3)),
        "{report}"
    );
}

/// A shortened probe interval applies at once, not after the long wait already under way.
#[tokio::test]
async fn a_shortened_probe_interval_applies_at_once() {
    let a = mock("a", &["a"]).await;
    let gw = Gateway::start(&format!(
        "health.interval_ms = 60000\n{}",
        server(&a.url(), &["a"])
    ))
    .await;
    let c = Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = a.state.probes.load(std::sync::atomic::Ordering::Relaxed);
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("interval_ms = 60000", "interval_ms = 200"),
    )
    .unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["health.interval_ms"]));
    let probed = eventually(Duration::from_secs(2), || async {
        a.state.probes.load(std::sync::atomic::Ordering::Relaxed) >= before + 3
    })
    .await;
    assert!(probed, "probes every 200 ms from the reload on");
}

/// A server dropped by a reload while the shared store is down stays out: this instance routes
/// nothing to it, and its routes leave the registry once the store is back (before, the next
/// registry sync brought it back as a keyless vLLM server).
#[tokio::test]
async fn a_server_dropped_while_the_store_is_down_stays_out() {
    let mut redis = Redis::start_durable().await;
    let (a, b) = (mock("a", &["ma"]).await, mock("b", &["mb"]).await);
    let gw = Gateway::start(&format!(
        "{}{}[store]\nurl = {:?}\nprefix = \"dropped\"\n",
        server(&a.url(), &["ma"]),
        server(&b.url(), &["mb"]),
        redis.url()
    ))
    .await;
    let c = Client::new();
    let registry_has_b = || async {
        let (_, routes) = gw.admin_get(&c, "/admin/models/registry?model=mb").await;
        routes["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["source"] == "registry"))
    };
    // Seeded into the shared registry by the registry sync.
    let seeded = eventually(Duration::from_secs(5), || async {
        let n: i64 = redis
            .cmd(&["SISMEMBER", "dropped:registry:models", "mb"])
            .await;
        n == 1
    })
    .await;
    assert!(seeded);

    redis.kill();
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&server(&b.url(), &["mb"]), "")).unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert!(
        outcome["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("still in the shared registry")),
        "{outcome}"
    );
    assert_eq!(gw.chat(&c, &chat_body("mb")).await.status(), 404);

    redis.restart().await;
    // The registry sync (every 10 s) removes it; meanwhile it is never routed.
    let removed = eventually(Duration::from_secs(15), || async {
        assert_eq!(gw.chat(&c, &chat_body("mb")).await.status(), 404);
        let left: i64 = redis.cmd(&["SCARD", "dropped:registry:{mb}"]).await;
        left == 0 && !registry_has_b().await
    })
    .await;
    assert!(
        removed,
        "{}",
        gw.admin_get(&c, "/admin/models/registry").await.1
    );
    assert_eq!(gw.chat(&c, &chat_body("ma")).await.status(), 200);
}
