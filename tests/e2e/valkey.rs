//! Many gateway instances as one through Valkey: shared affinity, clears honoured everywhere,
//! exact counters, shared health, and a Valkey outage survived.

use crate::harness::*;
use infergate::config::Provider;
use infergate::store::valkey::{ValkeyConfig, ValkeyStore};
use infergate::store::Store;
use reqwest::Client;
use serde_json::json;
use std::time::Duration;

fn store_config(redis: &str, cluster: bool) -> String {
    format!("[store]\nurl = {redis:?}\ncluster = {cluster}\nprefix = \"t\"\n\n")
}

fn admin_store(url: &str, cluster: bool) -> std::sync::Arc<ValkeyStore> {
    ValkeyStore::start(ValkeyConfig {
        url: url.into(),
        cluster,
        prefix: "t".into(),
        ttl_ms: 30 * 60_000,
        max_entries: 1000,
        usage_retention_ms: 3_600_000,
        audit_retention_ms: 3_600_000,
    })
    .unwrap()
}

async fn served_by(c: &Client, gw: &Gateway, user: &str) -> String {
    let mut body = chat_body("m");
    body["user"] = json!(user);
    let r = gw.chat(c, &body).await;
    assert_eq!(r.status(), 200);
    r.headers()["x-mock-server"].to_str().unwrap().to_string()
}

async fn two_gateways_share_affinity(redis_url: &str, cluster: bool) {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let servers = server(&a.url(), &["m"]) + &server(&b.url(), &["m"]);
    let gw1 = Gateway::start(&(store_config(redis_url, cluster) + &servers)).await;
    let gw2 = Gateway::start(&(store_config(redis_url, cluster) + &servers)).await;
    let c = Client::new();
    let mut spread = std::collections::HashSet::new();
    for i in 0..20 {
        let user = format!("user-{i}");
        let first = served_by(&c, &gw1, &user).await;
        spread.insert(first.clone());
        for _ in 0..3 {
            assert_eq!(
                served_by(&c, &gw2, &user).await,
                first,
                "{user} through the other instance"
            );
            assert_eq!(
                served_by(&c, &gw1, &user).await,
                first,
                "{user} through the first instance"
            );
        }
    }
    assert_eq!(spread.len(), 2, "users spread over both servers");
}

#[tokio::test]
async fn a_user_pinned_through_one_instance_sticks_through_the_other() {
    let redis = Redis::start().await;
    two_gateways_share_affinity(&redis.url(), false).await;
}

#[tokio::test]
async fn a_clear_through_one_instance_is_honoured_by_all_within_a_second() {
    let redis = Redis::start().await;
    let a = mock("a", &["m", "n"]).await;
    let servers = server(&a.url(), &["m", "n"]);
    let gw1 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let gw2 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let c = Client::new();
    for gw in [&gw1, &gw2] {
        served_by(&c, gw, "dave").await;
    }
    let mut body = json!({"model": "n", "user": "dave"});
    c.post(gw1.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let hits = |m: &str| {
        metric_value(
            m,
            "infergate_affinity_total{outcome=\"hit\",provider=\"vllm\"}",
        )
    };
    let misses = |m: &str| {
        metric_value(
            m,
            "infergate_affinity_total{outcome=\"miss\",provider=\"vllm\"}",
        )
    };
    let before = gw2.metrics().await;
    served_by(&c, &gw2, "dave").await;
    let now = gw2.metrics().await;
    assert_eq!(
        hits(&now),
        hits(&before) + 1.0,
        "a local hit before the clear: misses {} -> {}",
        misses(&before),
        misses(&now)
    );

    // The admin side: clear dave's entry for model m only.
    let admin = admin_store(&redis.url(), false);
    assert_eq!(admin.affinity_clear("dave", Some("m")).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = gw2.metrics().await;
    served_by(&c, &gw2, "dave").await;
    let after = gw2.metrics().await;
    assert_eq!(
        misses(&after),
        misses(&before) + 1.0,
        "the cleared entry is gone on the other instance"
    );
    // Model n was not cleared.
    body["prompt"] = json!("x");
    c.post(gw2.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(hits(&gw2.metrics().await), hits(&after) + 1.0);
    // Clearing every model of the user.
    assert_eq!(admin.affinity_clear("dave", None).await.unwrap(), 2);
}

#[tokio::test]
async fn counters_are_exact_across_instances_and_health_is_shared() {
    let redis = Redis::start().await;
    let a = mock("a", &["m"]).await;
    let servers = server(&a.url(), &["m"]);
    let gw1 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let gw2 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let c = Client::new();
    for i in 0..30 {
        let gw = if i % 3 == 0 { &gw2 } else { &gw1 };
        served_by(&c, gw, &format!("u{}", i % 7)).await;
    }
    let admin = admin_store(&redis.url(), false);
    let counted = eventually(Duration::from_secs(4), || async {
        let n = admin.affinity_counts(Provider::Vllm).await.unwrap();
        n.hits + n.misses + n.fallbacks == 30
    })
    .await;
    let n = admin.affinity_counts(Provider::Vllm).await.unwrap();
    assert!(counted, "30 lookups counted once each: {n:?}");
    assert_eq!(n.misses, 7, "{n:?}");
    assert_eq!(n.hits, 23, "{n:?}");
    // Health written by the instances' probes.
    let h = admin
        .health(&a.url())
        .await
        .unwrap()
        .expect("a shared snapshot");
    assert!(h.healthy && h.last_check_ms > 0);
}

#[tokio::test]
async fn valkey_outage_is_survived_and_sharing_resumes() {
    let mut redis = Redis::start().await;
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let servers = server(&a.url(), &["m"]) + &server(&b.url(), &["m"]);
    let gw1 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let gw2 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let c = Client::new();
    let erin = served_by(&c, &gw1, "erin").await;

    redis.kill();
    // Every request is still served; new users are fallbacks (local-only assignments).
    for i in 0..10 {
        served_by(&c, &gw1, &format!("outage-{i}")).await;
        served_by(&c, &gw2, &format!("outage-{i}")).await;
    }
    assert_eq!(
        served_by(&c, &gw1, "erin").await,
        erin,
        "local affinity kept"
    );
    let m = gw1.metrics().await;
    assert!(
        metric_value(
            &m,
            "infergate_affinity_total{outcome=\"fallback\",provider=\"vllm\"}"
        ) >= 10.0
    );

    // Valkey comes back empty: repopulated from the instances, sharing resumes without restart.
    redis.restart().await;
    let key = "t:aff:{erin}:m";
    let repopulated = eventually(Duration::from_secs(5), || async {
        redis.cmd::<Option<String>>(&["GET", key]).await.is_some()
    })
    .await;
    assert!(repopulated, "erin's entry written back");
    assert_eq!(served_by(&c, &gw2, "erin").await, erin);
    for i in 0..5 {
        let user = format!("after-{i}");
        let first = served_by(&c, &gw2, &user).await;
        assert_eq!(served_by(&c, &gw1, &user).await, first);
    }
}

#[tokio::test]
async fn a_valkey_cluster_shares_affinity_the_same_way() {
    let ports = [free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for p in ports {
        nodes.push(Redis::start_on(p, true).await);
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Wait for the slots to be served.
    let ok = eventually(Duration::from_secs(10), || async {
        nodes[0]
            .cmd::<String>(&["CLUSTER", "INFO"])
            .await
            .contains("cluster_state:ok")
    })
    .await;
    assert!(ok, "cluster formed");
    two_gateways_share_affinity(&nodes[0].url(), true).await;
    let admin = admin_store(&nodes[1].url(), true);
    assert_eq!(admin.affinity_clear("user-1", None).await.unwrap(), 1);
    keys_usage_and_limits_work_on_a_cluster(&nodes[0].url()).await;
}

/// Identity documents (one hash tag), usage (one list per hour), audit records (one list per
/// day) and rate counters (one hash tag per key) through a cluster: pipelines that span slots included.
async fn keys_usage_and_limits_work_on_a_cluster(url: &str) {
    let m = mock("a", &["m"]).await;
    let extra = format!(
        "auth.proxy = \"required\"\n{}[store]\nurl = \"{url}\"\ncluster = true\nprefix = \"cl\"\n",
        server(&m.url(), &["m"])
    );
    let gw1 = Gateway::start(&extra).await;
    let gw2 = Gateway::start(&extra).await;
    let c = Client::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let r = gw1
            .admin(&c, reqwest::Method::POST, "/admin/keys")
            .json(&json!({"rpm": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        tokens.push(
            r.json::<serde_json::Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let chat = |gw: &Gateway, token: &str| {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(token.to_string())
            .json(&chat_body("m"))
            .send()
    };
    // Every key reaches gw2; one request per key per instance, all within one minute (rpm
    // windows are per minute).
    fresh_minute(15).await;
    for t in &tokens {
        let ok = eventually(Duration::from_secs(2), || async {
            chat(&gw2, t).await.unwrap().status() == 200
        })
        .await;
        assert!(ok, "the key reached gw2");
        assert_eq!(chat(&gw1, t).await.unwrap().status(), 200);
    }
    // The counters of all keys meet in the cluster (one pipeline across their slots). Counts
    // are exchanged every 250 ms; the wait leaves room for a loaded machine.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let limited = {
        let mut n = 0;
        for t in &tokens {
            if chat(&gw1, t).await.unwrap().status() == 429 {
                n += 1;
            }
        }
        n
    };
    assert_eq!(limited, 3, "keys limited across instances");
    let total = |gw: &Gateway| {
        let (c, url) = (
            c.clone(),
            format!("http://{}/admin/usage?limit=1", gw.admin),
        );
        async move {
            c.get(url)
                .bearer_auth(format!("{ADMIN_KEY}:{ADMIN_SECRET}"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["total"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async { total(&gw2).await >= 6 }).await,
        "usage of both instances read back through the cluster"
    );
    // The audit records of the keys created through gw1 (one list per day) read through gw2.
    let audited = eventually(Duration::from_secs(5), || async {
        let (s, v) = gw2.admin_get(&c, "/admin/audit?action=key.create").await;
        s == 200 && v["total"] == 3
    })
    .await;
    assert!(audited, "audit records read back through the cluster");
}

#[tokio::test]
async fn demand_sums_instances_and_forgets_a_dead_one() {
    use infergate::telemetry::demand::{Demand, ModelDemand};
    let redis = Redis::start().await;
    let slow = mock_with(infergate::mock::MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        itl: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let servers = server(&slow.url(), &["m"]);
    let gw1 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let gw2 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let c = Client::new();
    for (gw, n) in [(&gw1, 3), (&gw2, 2)] {
        for _ in 0..n {
            let body = json!({"model": "m", "max_tokens": 1});
            assert_eq!(
                c.post(gw.url("/v1/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
    }
    // One long stream in flight through the second instance.
    let body = json!({"model": "m", "stream": true, "max_tokens": 200});
    let mut stream = gw2.chat(&c, &body).await;
    stream.chunk().await.unwrap();

    let admin = admin_store(&redis.url(), false);
    let shape = || Demand {
        models: vec![ModelDemand {
            model: "m".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let summed = eventually(Duration::from_secs(4), || async {
        let d = admin.demand(&slow.url(), shape()).await.unwrap();
        d.inflight == 1 && d.models[0].inflight == 1 && d.models[0].requests_5m == 6
    })
    .await;
    let d = admin.demand(&slow.url(), shape()).await.unwrap();
    assert!(
        summed,
        "in flight and 5-minute requests summed over both instances: {d:?}"
    );
    assert!(d.last_use_ms > 0);

    // The instance holding the stream dies: its in-flight count expires with it.
    drop(gw2);
    let forgotten = eventually(Duration::from_secs(10), || async {
        admin.demand(&slow.url(), shape()).await.unwrap().inflight == 0
    })
    .await;
    assert!(
        forgotten,
        "a dead instance leaves no in-flight count behind"
    );
    assert_eq!(
        admin.demand(&slow.url(), shape()).await.unwrap().models[0].requests_5m,
        6
    );
    drop(stream);
}

#[tokio::test]
async fn a_registry_change_reaches_every_instance_within_a_second() {
    let redis = Redis::start().await;
    let a = mock("a", &["m"]).await;
    let c_mock = mock("c", &["m", "extra"]).await;
    let servers = server(&a.url(), &["m"]);
    let gw1 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let gw2 = Gateway::start(&(store_config(&redis.url(), false) + &servers)).await;
    let c = Client::new();
    let status = |gw: &Gateway, model: &str| {
        let req = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body(model));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(&gw1, "extra").await, 404);
    // The config's routes are in the registry (so a Valkey that lost them gets them back).
    let admin = admin_store(&redis.url(), false);
    let seeded = eventually(Duration::from_secs(3), || async {
        admin
            .registry()
            .await
            .unwrap()
            .contains(&("m".to_string(), a.url()))
    })
    .await;
    assert!(seeded);

    admin
        .registry_add(&[("extra".into(), c_mock.url())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for gw in [&gw1, &gw2] {
        let r = gw.chat(&c, &chat_body("extra")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-mock-server"], "c");
        let models: serde_json::Value = c
            .get(gw.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "extra"));
    }
    assert!(matches!(
        admin
            .registry_add(&[("x".into(), "ftp://nope/v1".into())])
            .await,
        Err(infergate::store::StoreError::Invalid(_))
    ));

    assert!(admin.registry_remove("extra", &c_mock.url()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(status(&gw1, "extra").await, 404);
    assert_eq!(status(&gw2, "extra").await, 404);
    assert_eq!(status(&gw2, "m").await, 200);
}
