//! Managed models with several gateway instances on one Valkey (a real `redis-server`): each
//! model runs on one node, a call sent to any instance is carried out by that node, and a node
//! that dies leaves its models failed.

use crate::harness::*;
use crate::lifecycle::{
    call, create, engine_pid, eventually_gone, gone, logs, runner_gateway, start_running,
    until_state, vllm,
};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The names of the two nodes: `node-a-<redis port>` and `node-b-<redis port>`.
fn names(redis: &Redis) -> (String, String) {
    let url = redis.url();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    (format!("node-a-{port}"), format!("node-b-{port}"))
}

/// Two instances with the process runner on one Valkey, named by [`names`].
async fn two_nodes(redis: &Redis) -> ((Gateway, tempfile::TempDir), (Gateway, tempfile::TempDir)) {
    let (na, nb) = names(redis);
    let store = format!("[store]\nurl = {:?}\nprefix = \"nodes\"\n", redis.url());
    // Node names are unique per host (tests run side by side, and a node kills the processes
    // of its engines that it does not know).
    let a = runner_gateway(&node(&na), &store).await;
    let b = runner_gateway(&node(&nb), &store).await;
    (a, b)
}

/// `[runner]` keys of a node named `name`.
fn node(name: &str) -> String {
    format!("node = \"{name}\"\nnode_lost_secs = 5\n")
}

#[tokio::test]
async fn a_call_to_any_instance_is_carried_out_by_the_models_node() {
    let redis = Redis::start().await;
    let ((a, _da), (b, _db)) = two_nodes(&redis).await;
    let (_, nb) = names(&redis);
    let c = Client::new();

    // Pinned to node-b, created and started through node-a.
    let mut body = vllm("pinned", &[]);
    body["node"] = json!(nb);
    let id = create(&a, &c, body).await;
    let started = Instant::now();
    let (status, m) = call(&a, &c, Method::POST, &format!("/models/{id}/start"), None).await;
    let took = started.elapsed();
    assert_eq!(status, 202, "{m}");
    assert_eq!(m["runs_on"], nb.as_str(), "{m}");
    assert_eq!(m["state"], "starting", "{m}");
    // Sent through Valkey, spawned there, answered back: within a second.
    assert!(took < Duration::from_secs(1), "the start took {took:?}");
    until_state(&a, &c, &id, "running").await;

    // node-b runs it: its engine is node-b's child, routed by node-b with the engine's key.
    let text = logs(&a, &c, &id).await;
    assert!(
        text.contains(&format!("infergate: starting on {nb}")),
        "{text}"
    );
    let pid = engine_pid(&a, &c, &id).await;
    let r = b.chat(&c, &chat_body("pinned")).await;
    assert_eq!(r.status(), 200);
    // Readiness and a test asked of node-a are probed and sent by node-b.
    let (status, r) = call(
        &a,
        &c,
        Method::GET,
        &format!("/models/{id}/readiness"),
        None,
    )
    .await;
    assert_eq!((status, r["status"].as_str()), (200, Some("ready")), "{r}");
    let (status, t) = call(&a, &c, Method::POST, &format!("/models/{id}/test"), None).await;
    assert_eq!((status, t["success"].as_bool()), (200, Some(true)), "{t}");
    // The same logs through either instance.
    let (_, la) = call(
        &a,
        &c,
        Method::GET,
        &format!("/models/{id}/logs?tail=5"),
        None,
    )
    .await;
    let (_, lb) = call(
        &b,
        &c,
        Method::GET,
        &format!("/models/{id}/logs?tail=5"),
        None,
    )
    .await;
    assert_eq!(la["lines"], lb["lines"]);
    assert_eq!(la["node"], nb.as_str());

    // A stop through node-a stops node-b's engine.
    let (status, m) = call(&a, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    assert_eq!(status, 202, "{m}");
    until_state(&b, &c, &id, "stopped").await;
    eventually_gone(pid).await;

    // An unpinned model runs where it was started; node-a carries out a delete for node-b.
    let other = create(&b, &c, vllm("unpinned", &[])).await;
    let (status, m) = call(
        &b,
        &c,
        Method::POST,
        &format!("/models/{other}/start"),
        None,
    )
    .await;
    assert_eq!(
        (status, m["runs_on"].as_str()),
        (202, Some(nb.as_str())),
        "{m}"
    );
    until_state(&a, &c, &other, "running").await;
    let pid = engine_pid(&a, &c, &other).await;
    let (status, d) = call(&a, &c, Method::DELETE, &format!("/models/{other}"), None).await;
    assert_eq!(status, 200, "{d}");
    eventually_gone(pid).await;
    let (status, _) = call(&b, &c, Method::GET, &format!("/models/{other}"), None).await;
    assert_eq!(status, 404);
    // And the loopback engine left node-b's routing table with it.
    let r = b.chat(&c, &chat_body("unpinned")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_node_that_dies_leaves_its_models_failed_and_calls_for_it_answer_503() {
    let redis = Redis::start().await;
    let ((a, _da), (mut b, _db)) = two_nodes(&redis).await;
    let (na, nb) = names(&redis);
    let c = Client::new();
    let mut body = vllm("orphaned", &[]);
    body["node"] = json!(nb);
    let id = create(&a, &c, body).await;
    start_running(&a, &c, &id).await;
    let pid = engine_pid(&a, &c, &id).await;

    // SIGKILL: no shutdown runs. Its engine dies with it (parent-death signal).
    let killed = Instant::now();
    b.kill();
    eventually_gone(pid).await;
    // Within node_lost_secs (5) and a heartbeat period or two, node-a marks it failed.
    let (m, _) = until_state(&a, &c, &id, "failed").await;
    let after = killed.elapsed();
    assert!(after < Duration::from_secs(10), "marked after {after:?}");
    let detail = m["state_detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("node lost: {nb}")), "{detail}");

    // A call for the dead node is refused at once, not left waiting.
    let t = Instant::now();
    let (status, e) = call(&a, &c, Method::POST, &format!("/models/{id}/start"), None).await;
    assert_eq!(status, 503, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(e["error"], "model node unavailable", "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains(&nb) && detail.contains("heartbeat"),
        "{detail}"
    );

    // Pinned elsewhere no more: node-a may run it.
    let (status, m) = call(
        &a,
        &c,
        Method::PATCH,
        &format!("/models/{id}"),
        Some(json!({"node": null})),
    )
    .await;
    assert_eq!(status, 200, "{m}");
    let (status, m) = call(&a, &c, Method::POST, &format!("/models/{id}/start"), None).await;
    assert_eq!(
        (status, m["runs_on"].as_str()),
        (202, Some(na.as_str())),
        "{m}"
    );
    until_state(&a, &c, &id, "running").await;
    let r = a.chat(&c, &chat_body("orphaned")).await;
    assert_eq!(r.status(), 200);
}

/// The pid of the worker a `forks` fake engine left in a session of its own.
async fn worker_pid(gw: &Gateway, c: &Client, id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = logs(gw, c, id).await;
        let pid = text.lines().rev().find_map(|l| {
            l.strip_prefix("fake-vllm worker ")
                .and_then(|p| p.trim().parse().ok())
        });
        match pid {
            Some(pid) => return pid,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("no worker in {text}"),
        }
    }
}

#[tokio::test]
async fn no_engine_process_outlives_its_engine_or_its_gateway() {
    let name = format!("leftovers-{}", free_port());
    let (mut gw, _dir) = runner_gateway(&node(&name), "").await;
    let c = Client::new();
    let id = create(&gw, &c, vllm("forker", &[("FAKE_ENGINE_MODE", "forks")])).await;
    start_running(&gw, &c, &id).await;
    let worker = worker_pid(&gw, &c, &id).await;
    assert!(!gone(worker));

    // A stop ends the engine's process group; the worker that left it goes at the next check.
    let (status, m) = call(&gw, &c, Method::POST, &format!("/models/{id}/stop"), None).await;
    assert_eq!(status, 202, "{m}");
    until_state(&gw, &c, &id, "stopped").await;
    eventually_gone(worker).await;

    // The gateway killed outright: the engine dies with it (parent-death signal), its worker
    // does not, until the node's next gateway finds it by its mark.
    start_running(&gw, &c, &id).await;
    let engine = engine_pid(&gw, &c, &id).await;
    let worker = worker_pid(&gw, &c, &id).await;
    gw.kill();
    eventually_gone(engine).await;
    assert!(
        !gone(worker),
        "the worker went with the gateway: nothing left to prove"
    );
    let (_next, _next_dir) = runner_gateway(&node(&name), "").await;
    eventually_gone(worker).await;
}

/// The ids of the nodes whose engines of `model` run on this host now (by their mark).
fn engine_nodes(model: &str) -> Vec<String> {
    let prefix = format!("INFERGATE_ENGINE={model}.");
    let mut nodes: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ.split(|&b| b == 0).find_map(|v| {
                let v = std::str::from_utf8(v).ok()?.strip_prefix(&prefix)?;
                Some(v.split_once('@')?.1.to_string())
            })
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

#[tokio::test]
async fn two_starts_on_two_instances_leave_one_engine_and_its_record_stays_true() {
    let redis = Redis::start().await;
    let ((a, _da), (b, _db)) = two_nodes(&redis).await;
    let c = Client::new();
    let id = create(&a, &c, vllm("raced", &[])).await;
    // Unpinned, started through both at once: each may run an engine for a moment.
    let path = format!("/models/{id}/start");
    let (ra, rb) = tokio::join!(
        call(&a, &c, Method::POST, &path, None),
        call(&b, &c, Method::POST, &path, None)
    );
    assert!(ra.0 == 202 || rb.0 == 202, "{ra:?} {rb:?}");
    until_state(&a, &c, &id, "running").await;
    // Within a check or two, only the node the record names still runs one (the record names
    // whichever node wrote last).
    let deadline = Instant::now() + Duration::from_secs(10);
    let owner = loop {
        let (_, m) = call(&a, &c, Method::GET, &format!("/models/{id}"), None).await;
        let owner = m["runs_on"].as_str().unwrap_or_default().to_string();
        if m["state"] == "running" && engine_nodes(&id) == [owner.clone()] {
            break owner;
        }
        assert!(
            Instant::now() < deadline,
            "engines of {id} on {:?}, record {m}",
            engine_nodes(&id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gw = if owner.starts_with("node-a") { &a } else { &b };
    assert_eq!(gw.chat(&c, &chat_body("raced")).await.status(), 200);

    // Another instance marks the node lost while it runs on (it was cut off from Valkey): the
    // node puts its record right.
    let key = "nodes:{docs}:model_states";
    let lost = json!({"state": "failed", "state_detail": format!("node lost: {owner} (no heartbeat)"),
        "node": owner, "updated_ms": 1});
    let _: i64 = redis.cmd(&["HSET", key, &id, &lost.to_string()]).await;
    let (m, _) = until_state(&a, &c, &id, "failed").await;
    assert!(m["state_detail"].as_str().unwrap().starts_with("node lost"));
    let (m, _) = until_state(&a, &c, &id, "running").await;
    assert_eq!(m["runs_on"], owner.as_str());
    assert_eq!(m["state_detail"], Value::Null);

    // Its record deleted behind its back (by an instance that thought the node lost): the
    // engine goes.
    let _: i64 = redis.cmd(&["HDEL", "nodes:{docs}:models", &id]).await;
    assert!(
        eventually(Duration::from_secs(8), || {
            let id = id.clone();
            async move { engine_nodes(&id).is_empty() }
        })
        .await,
        "engines of {id} still on {:?}",
        engine_nodes(&id)
    );
    assert_eq!(gw.chat(&c, &chat_body("raced")).await.status(), 404);
}
