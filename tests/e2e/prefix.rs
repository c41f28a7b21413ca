//! Cache-aware routing (`[routing] policy = "prefix"`): a shared prompt prefix goes to the
//! server that holds it, an overloaded holder is skipped, a prompt asked for often spreads,
//! an ejected server's blocks go, the index stays within each server's capacity, and
//! per-model policies.

use crate::harness::*;
use infergate::mock::MockConfig;
use reqwest::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn served_by(r: &reqwest::Response) -> String {
    r.headers()["x-mock-server"].to_str().unwrap().to_string()
}

/// A system prompt of about 2,000 bytes, different for each `name`.
fn system(name: &str) -> String {
    let mut s = format!("You are {name}, the assistant of a large company. ");
    while s.len() < 2000 {
        s.push_str(
            "Answer briefly, cite the policy you rely on, and never invent an order number. ",
        );
    }
    s
}

fn chat(model: &str, system: &str, question: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 4, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]})
}

async fn three(models: &[&str], config: MockConfig) -> Vec<infergate::mock::MockServer> {
    let mut out = Vec::new();
    for name in ["a", "b", "c"] {
        out.push(
            mock_with(MockConfig {
                name: name.into(),
                models: models.iter().map(|m| m.to_string()).collect(),
                ..config.clone()
            })
            .await,
        );
    }
    out
}

/// Three servers of model `m` whose streams take 3 s to their first token: each stream holds
/// its server's in-flight count (and its prefill queued) that long.
async fn three_slow() -> Vec<infergate::mock::MockServer> {
    three(
        &["m"],
        MockConfig {
            ttft: Duration::from_secs(3),
            ..MockConfig::default()
        },
    )
    .await
}

/// A configuration routing model m by prefix over `mocks`, sharing through `redis` (key
/// prefix `t`).
fn prefix_on_valkey(redis: &Redis, mocks: &[infergate::mock::MockServer]) -> String {
    format!(
        "routing.policy = \"prefix\"\n[store]\nurl = {:?}\nprefix = \"t\"\n\n{}",
        redis.url(),
        servers(mocks, &["m"])
    )
}

/// The URL of the mock named `name`.
fn url_of(mocks: &[infergate::mock::MockServer], name: &str) -> String {
    mocks
        .iter()
        .find(|m| m.state.config.name == name)
        .unwrap_or_else(|| panic!("no mock {name}"))
        .url()
}

fn servers(mocks: &[infergate::mock::MockServer], models: &[&str]) -> String {
    mocks.iter().map(|m| server(&m.url(), models)).collect()
}

fn model_report<'a>(routing: &'a Value, model: &str) -> &'a Value {
    routing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("{model} in {routing}"))
}

/// Blocks each server holds in `model`'s index, by server URL.
fn held(routing: &Value, model: &str) -> BTreeMap<String, u64> {
    model_report(routing, model)["index"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["server"].as_str().unwrap().to_string(),
                s["blocks"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_shared_prefix_lands_on_the_server_that_holds_it() {
    let mocks = three(&["m", "n"], MockConfig::default()).await;
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\nrouting.models.n = \"least_inflight\"\n{}",
        servers(&mocks, &["m", "n"])
    ))
    .await;
    let c = Client::new();
    // Users who share a system prompt follow the first one's server; another prompt's users
    // follow theirs.
    for family in ["Ada", "Grace"] {
        let s = system(family);
        let first = gw
            .chat(&c, &chat("m", &s, "Where is my order?", false))
            .await;
        assert_eq!(first.status(), 200);
        let holder = served_by(&first);
        for i in 0..12 {
            let q = format!("Question {i}: how do I return item {i}?");
            let r = gw.chat(&c, &chat("m", &s, &q, false)).await;
            assert_eq!(r.status(), 200);
            assert_eq!(served_by(&r), holder, "{family}, request {i}");
        }
    }
    // 2 of 26 requests found nothing; the others found the ~2,000-byte system prompt (15
    // blocks of 128 bytes and more).
    let m = gw.metrics().await;
    assert!(
        m.contains("infergate_prefix_match_blocks_bucket{model=\"m\",le=\"0\"} 2\n"),
        "{m}"
    );
    assert!(m.contains("infergate_prefix_match_blocks_count{model=\"m\"} 26\n"));
    assert!(m.contains("infergate_prefix_match_blocks_bucket{model=\"m\",le=\"8\"} 2\n"));
    // A model whose own policy is least_inflight spreads the same prompts.
    let mut by = BTreeSet::new();
    let s = system("Ada");
    for i in 0..24 {
        let r = gw.chat(&c, &chat("n", &s, &format!("q{i}"), false)).await;
        by.insert(served_by(&r));
    }
    assert!(by.len() > 1, "least_inflight sent every request to {by:?}");
    assert!(!m.contains("infergate_prefix_match_blocks_count{model=\"n\"}"));
    // The admin view: each model's policy, and m's index.
    let (status, routing) = gw.admin_get(&c, "/admin/routing").await;
    assert_eq!(status, 200, "{routing}");
    assert_eq!(routing["policy"], "prefix");
    assert_eq!(routing["block_bytes"], 128);
    assert_eq!(model_report(&routing, "n")["policy"], "least_inflight");
    assert!(model_report(&routing, "n").get("index").is_none());
    let ix = &model_report(&routing, "m")["index"];
    assert_eq!(model_report(&routing, "m")["policy"], "prefix");
    assert_eq!(ix["servers"].as_array().unwrap().len(), 3);
    assert!(ix["blocks"].as_u64().unwrap() >= 2 * 15, "{ix}");
    assert!(ix["bytes"].as_u64().unwrap() >= 16 * 1024);
}

#[tokio::test]
async fn an_overloaded_holder_is_skipped() {
    // Streams take 3 s to their first token: each holds its server's in-flight count.
    let mocks = three_slow().await;
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\nrouting.balance_abs = 2\nrouting.balance_rel = 1.0\nrouting.balance_share = 0\n{}",
        servers(&mocks, &["m"])
    ))
    .await;
    let c = Client::new();
    let s = system("Ada");
    let mut open = Vec::new();
    let mut by = Vec::new();
    // The holder takes requests while it has at most 2 more in flight than the least loaded.
    for i in 0..4 {
        let r = gw.chat(&c, &chat("m", &s, &format!("q{i}"), true)).await;
        assert_eq!(r.status(), 200);
        by.push(served_by(&r));
        open.push(r);
    }
    assert_eq!(by[1], by[0]);
    assert_eq!(by[2], by[0]);
    assert_ne!(
        by[3], by[0],
        "the fourth went to a server with none in flight: {by:?}"
    );
    // Once the others are loaded alike, the holder is within the balance again.
    let fifth = gw.chat(&c, &chat("m", &s, "q5", true)).await;
    let sixth = gw.chat(&c, &chat("m", &s, "q6", true)).await;
    // The fourth made its server a holder too; both holders have 3 and 1 in flight, the
    // third server none: the holder with 1 is within 2 of it.
    assert_eq!(served_by(&fifth), by[3], "{by:?}");
    drop((fifth, sixth, open));
}

#[tokio::test]
async fn a_prompt_asked_for_often_spreads_once_its_holder_is_over_its_share() {
    // Streams take 3 s to their first token: each holds its server's in-flight count, far
    // within balance_abs (64).
    let mocks = three_slow().await;
    let c = Client::new();
    let s = system("Ada");
    // Each gateway: three requests for one prompt, with pauses for the rates to be taken
    // (every 50 ms).
    let three_asks = |share: &'static str| {
        let (c, s, mocks) = (&c, &s, &mocks);
        async move {
            let gw = Gateway::start(&format!(
                "routing.policy = \"prefix\"\nrouting.balance_share = {share}\n{}",
                servers(mocks, &["m"])
            ))
            .await;
            let mut open = Vec::new();
            for i in 0..3 {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let r = gw.chat(c, &chat("m", s, &format!("q{i}"), true)).await;
                assert_eq!(r.status(), 200);
                open.push(r);
            }
            let (_, routing) = gw.admin_get(c, "/admin/routing").await;
            let by: Vec<String> = open.iter().map(served_by).collect();
            drop(open);
            (by, routing)
        }
    };
    // Unbounded: the holder takes all three (it is within balance_abs of the others).
    let (by, _) = three_asks("0").await;
    assert!(by.iter().all(|b| *b == by[0]), "{by:?}");
    // Bounded at 1.2x: the holder took all of the pool's requests (3x its share) and has more
    // in flight than the others. The second request's prefix had never been asked for (as a
    // conversation's history is asked for once): it stays. By the third, that prefix is asked
    // for more than the bound's margin of a server's requests: it goes to another server.
    let (by, routing) = three_asks("1.2").await;
    assert_eq!(by[1], by[0], "a prefix asked for once stays on its holder");
    assert_ne!(by[2], by[0], "a prefix asked for often spreads: {by:?}");
    assert_eq!(routing["balance_share"], 1.2, "{routing}");
    let rates: Vec<f64> = model_report(&routing, "m")["index"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests_per_s"].as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 3, "{routing}");
    assert!(
        rates.iter().any(|r| *r > 0.0) && rates.iter().all(|r| r.is_finite() && *r >= 0.0),
        "the holder's recent requests are reported: {rates:?}"
    );
}

#[tokio::test]
async fn a_server_still_prefilling_a_long_prompt_takes_no_new_one_among_equals() {
    // Streams take 3 s to their first token: a request's prefill stays queued that long.
    let mocks = three_slow().await;
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\n{}",
        servers(&mocks, &["m"])
    ))
    .await;
    let c = Client::new();
    // A 20 KB prompt nobody holds: ~160 blocks queued at its server.
    let long = "w".repeat(20_000);
    let first = gw.chat(&c, &chat("m", &long, "long", true)).await;
    assert_eq!(first.status(), 200);
    let busy = served_by(&first);
    // Short unrelated prompts: no server holds them, so the least queued prefill decides. By
    // requests in flight the busy server (1) would take the fifth at the latest, when the
    // others have 2 each.
    let (by, open) = five_short_prompts(&gw, &c).await;
    assert!(
        by.iter().all(|b| *b != busy),
        "the server prefilling {busy} got one of {by:?}"
    );
    drop((first, open));
}

/// Five short unrelated streamed prompts through `gw`, kept open: who served each, and the
/// open answers.
async fn five_short_prompts(gw: &Gateway, c: &Client) -> (Vec<String>, Vec<reqwest::Response>) {
    let (mut by, mut open) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let r = gw
            .chat(c, &chat("m", &format!("short {i}"), "hi", true))
            .await;
        assert_eq!(r.status(), 200);
        by.push(served_by(&r));
        open.push(r);
    }
    (by, open)
}

/// One server's queued prefill and learnt pace, from `GET /admin/routing`.
/// Server `url`'s queued prefill blocks and learnt pace in model m's pool.
async fn queue_of(gw: &Gateway, c: &Client, url: &str) -> (i64, Option<f64>) {
    let (_, routing) = gw.admin_get(c, "/admin/routing").await;
    let s = server_report(&routing, "m", url);
    (
        s["queued_prefill_blocks"].as_i64().unwrap(),
        s["prefill_ms_per_block"].as_f64(),
    )
}

#[tokio::test]
async fn an_answer_not_streamed_leaves_the_queue_when_its_prefill_is_likely_done() {
    // First token after 1 s; a whole answer after its 8 tokens, 250 ms apart: 2.75 s.
    let m = mock_with(MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        ttft: Duration::from_secs(1),
        itl: Duration::from_millis(250),
        default_tokens: 8,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    let whole = |text: &str| json!({"model": "m", "messages": [{"role": "user", "content": text}]});
    let spawn_whole = |text: String| {
        let (url, c) = (gw.url("/v1/chat/completions"), c.clone());
        tokio::spawn(async move { c.post(url).json(&whole(&text)).send().await.unwrap() })
    };
    // Nothing learnt yet: a whole answer keeps its prompt queued until it ends.
    let a = spawn_whole("a".repeat(4000));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (queued, pace) = queue_of(&gw, &c, &m.url()).await;
    assert!(queued >= 30, "{queued} blocks queued");
    assert_eq!(pace, None);
    assert_eq!(a.await.unwrap().status(), 200);
    // (The client has the answer a moment before the gateway ends the attempt.)
    let out = eventually(Duration::from_secs(2), || async {
        queue_of(&gw, &c, &m.url()).await.0 == 0
    })
    .await;
    assert!(out, "the whole answer's prompt stayed queued after its end");
    // A streamed answer teaches the pace: its first token after 1 s for its ~31 blocks.
    let b = gw.chat(&c, &chat("m", &"b".repeat(4000), "q", true)).await;
    assert_eq!(b.status(), 200);
    b.bytes().await.unwrap();
    let (queued, pace) = queue_of(&gw, &c, &m.url()).await;
    assert_eq!(queued, 0);
    let pace = pace.expect("a pace learnt");
    assert!((25.0..=60.0).contains(&pace), "{pace} ms a block");
    // Now a whole answer leaves the queue after about its prefill (1 s), long before its end.
    let sent = std::time::Instant::now();
    let c3 = spawn_whole("c".repeat(4000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(queue_of(&gw, &c, &m.url()).await.0 >= 30);
    let left = eventually(Duration::from_secs(3), || async {
        queue_of(&gw, &c, &m.url()).await.0 == 0
    })
    .await;
    let at = sent.elapsed();
    assert!(left, "the whole answer's prompt stayed queued");
    assert!(
        at < Duration::from_millis(2300) && !c3.is_finished(),
        "taken off the queue at {at:?}, before its answer (2.75 s)"
    );
    assert_eq!(c3.await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_server_that_learnt_no_pace_takes_its_pools() {
    // As above: first token after 1 s, a whole answer after 2.75 s. Server a serves models m
    // and n, server b only m.
    let config = |name: &str, models: &[&str]| MockConfig {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ttft: Duration::from_secs(1),
        itl: Duration::from_millis(250),
        default_tokens: 8,
        ..MockConfig::default()
    };
    let a = mock_with(config("a", &["m", "n"])).await;
    let b = mock_with(config("b", &["m"])).await;
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\n{}{}",
        server(&a.url(), &["m", "n"]),
        server(&b.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    // A stream of n (only a serves it) teaches a its pace.
    let r = gw.chat(&c, &chat("n", &"x".repeat(4000), "q", true)).await;
    assert_eq!(served_by(&r), "a");
    r.bytes().await.unwrap();
    assert!(queue_of(&gw, &c, &a.url()).await.1.is_some());
    // Another keeps a prefilling, so a whole answer of m goes to b, which never streamed.
    let busy = gw.chat(&c, &chat("n", &"y".repeat(4000), "q", true)).await;
    assert_eq!(served_by(&busy), "a");
    let sent = std::time::Instant::now();
    let whole = {
        let (url, c) = (gw.url("/v1/chat/completions"), c.clone());
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "z".repeat(4000)}]});
        tokio::spawn(async move { c.post(url).json(&body).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (queued, pace) = queue_of(&gw, &c, &b.url()).await;
    assert!(queued >= 30, "{queued} blocks queued on b");
    assert_eq!(pace, None, "b learnt nothing");
    // It leaves b's queue after a's pace times its blocks (about 1 s), not at its end.
    let left = eventually(Duration::from_secs(3), || async {
        queue_of(&gw, &c, &b.url()).await.0 == 0
    })
    .await;
    let at = sent.elapsed();
    assert!(left, "the whole answer's prompt stayed queued on b");
    assert!(
        at < Duration::from_millis(2300) && !whole.is_finished(),
        "taken off b's queue at {at:?}, before its answer (2.75 s)"
    );
    let whole = whole.await.unwrap();
    assert_eq!(served_by(&whole), "b");
    busy.bytes().await.unwrap();
}

#[tokio::test]
async fn an_ejected_servers_blocks_go_and_it_is_never_chosen() {
    let mocks = three(&["m"], MockConfig::default()).await;
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\nhealth.interval_ms = 100\nhealth.unhealthy_threshold = 1\n{}",
        servers(&mocks, &["m"])
    ))
    .await;
    let c = Client::new();
    let s = system("Ada");
    let r = gw.chat(&c, &chat("m", &s, "first", false)).await;
    let holder = served_by(&r);
    let url = mocks
        .iter()
        .find(|m| m.state.config.name == holder)
        .unwrap();
    let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
    assert!(held(&routing, "m")[&url.url()] >= 15, "{routing}");
    url.state.set_healthy(false);
    // Ejected by its probes: its blocks leave the index, and its users go elsewhere.
    let gone = eventually(Duration::from_secs(10), || async {
        let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
        held(&routing, "m")[&url.url()] == 0
    })
    .await;
    assert!(gone, "the ejected server's blocks stayed");
    for i in 0..6 {
        let r = gw.chat(&c, &chat("m", &s, &format!("q{i}"), false)).await;
        assert_eq!(r.status(), 200);
        assert_ne!(served_by(&r), holder);
    }
    let m = gw.metrics().await;
    let evicted = metric_value(&m, "infergate_prefix_index_evicted_total{model=\"m\"}");
    assert!(evicted >= 15.0, "{m}");
}

#[tokio::test]
async fn eviction_keeps_each_server_within_its_capacity() {
    let mocks = three(&["m"], MockConfig::default()).await;
    // 512 tokens: 16 blocks of 128 bytes per server.
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\nrouting.server_cache_tokens = 512\n{}",
        servers(&mocks, &["m"])
    ))
    .await;
    let c = Client::new();
    for i in 0..30 {
        // Each prompt recorded at an instant of its own (the table's stamps count
        // milliseconds): then a bucket of this tiny table full of one instant's blocks holds
        // four of the same prompt's, and a block it turns away is its fifth or later.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let r = gw
            .chat(
                &c,
                &chat("m", &system(&format!("assistant {i}")), "hi", false),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let within = eventually(Duration::from_secs(5), || async {
        let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
        let ix = &model_report(&routing, "m")["index"];
        assert_eq!(ix["capacity_blocks"], 16);
        held(&routing, "m").values().all(|b| *b <= 16)
    })
    .await;
    assert!(within, "a server holds more than its capacity");
    let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
    let ix = &model_report(&routing, "m")["index"];
    // 30 prompts of 16 blocks or more, 16 recorded each: all but the 48 held went, by
    // eviction or to other blocks of the (here small) table.
    let gone = ix["evicted"].as_u64().unwrap() + ix["replaced"].as_u64().unwrap();
    assert!(gone >= 30 * 16 - 3 * 16, "{ix}");
    assert!(ix["evicted"].as_u64().unwrap() > 0, "{ix}");
    let last = gw
        .chat(&c, &chat("m", &system("assistant 29"), "again", false))
        .await;
    assert_eq!(last.status(), 200);
    // Its first four blocks at least (the table is lossy: with 32 buckets, five of its 16
    // blocks may share one, and the fifth goes unrecorded).
    let m = gw.metrics().await;
    assert!(
        m.contains("infergate_prefix_match_blocks_bucket{model=\"m\",le=\"2\"} 30\n"),
        "the last prompt is still held (index: {ix}): {m}"
    );
}

#[tokio::test]
async fn two_instances_on_valkey_learn_each_others_prefixes() {
    let redis = Redis::start().await;
    let mocks = three(&["m"], MockConfig::default()).await;
    let config = prefix_on_valkey(&redis, &mocks);
    let (gw1, gw2) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let c = Client::new();
    // Each instance routes a family of its own; the other learns where it went.
    for (first, second, family) in [(&gw1, &gw2, "Ada"), (&gw2, &gw1, "Grace")] {
        let s = system(family);
        let (_, before) = second.admin_get(&c, "/admin/routing").await;
        let before = held(&before, "m");
        let r = first.chat(&c, &chat("m", &s, "first", false)).await;
        let holder = served_by(&r);
        let url = url_of(&mocks, &holder);
        let started = std::time::Instant::now();
        // (The holder may hold the other family already.)
        let learnt = eventually(Duration::from_secs(5), || async {
            let (_, routing) = second.admin_get(&c, "/admin/routing").await;
            held(&routing, "m")[&url] >= before[&url] + 15
        })
        .await;
        let xlen: i64 = redis.cmd(&["XLEN", "t:prefixes"]).await;
        assert!(
            learnt,
            "{family}: the other instance never learnt of {holder} (stream: {xlen})"
        );
        eprintln!(
            "{family}: learnt by the other instance within {:?}",
            started.elapsed()
        );
        for i in 0..8 {
            let r = second
                .chat(&c, &chat("m", &s, &format!("q{i}"), false))
                .await;
            assert_eq!(
                served_by(&r),
                holder,
                "{family}, request {i} through the other"
            );
        }
    }
    // Learnt blocks are not shared back: each instance's shares are its own routing only.
    let m = gw2.metrics().await;
    assert!(
        m.contains("infergate_prefix_match_blocks_bucket{model=\"m\",le=\"0\"} 1\n"),
        "{m}"
    );
}

/// The entry of server `url` in `model`'s index report.
fn server_report<'a>(routing: &'a Value, model: &str, url: &str) -> &'a Value {
    model_report(routing, model)["index"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == url)
        .unwrap_or_else(|| panic!("{url} in {routing}"))
}

#[tokio::test]
async fn two_instances_on_valkey_balance_on_each_others_load() {
    let redis = Redis::start().await;
    // Streams take 3 s to their first token: a request's prefill stays queued that long.
    let mocks = three_slow().await;
    let config = prefix_on_valkey(&redis, &mocks);
    let (gw1, gw2) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let c = Client::new();
    // Through the first instance: a 20 KB prompt nobody holds, ~160 blocks queued at its
    // server.
    let long = "w".repeat(20_000);
    let first = gw1.chat(&c, &chat("m", &long, "long", true)).await;
    assert_eq!(first.status(), 200);
    let busy = served_by(&first);
    let busy_url = url_of(&mocks, &busy);
    // The second hears of it (the first shares its load every 50 ms).
    let started = std::time::Instant::now();
    let heard = eventually(Duration::from_secs(3), || async {
        let (_, r) = gw2.admin_get(&c, "/admin/routing").await;
        let s = server_report(&r, "m", &busy_url);
        r["load_shared_by_instances"] == 1
            && s["others_inflight"] == 1
            && s["others_queued_prefill_blocks"].as_i64().unwrap() > 100
            && s["queued_prefill_blocks"] == 0
    })
    .await;
    let (_, report) = gw2.admin_get(&c, "/admin/routing").await;
    assert!(heard, "the second instance never heard: {report}");
    eprintln!("heard within {:?}", started.elapsed());
    let m = gw2.metrics().await;
    assert!(
        m.contains("infergate_routing_load_sharing_instances 1\n"),
        "{m}"
    );
    // Short unrelated prompts through the second instance: the least queued prefill decides,
    // the whole fleet's. Alone, the second would see the busy server idle (none of its own
    // requests there) and send it about one in three.
    let (by, mut open) = five_short_prompts(&gw2, &c).await;
    open.push(first);
    assert!(
        by.iter().all(|b| *b != busy),
        "the server prefilling through the other instance ({busy}) got one of {by:?}"
    );
    // Once the first instance's stream is over, its load goes from the second's figures.
    for r in open {
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let gone = eventually(Duration::from_secs(5), || async {
        let (_, r) = gw2.admin_get(&c, "/admin/routing").await;
        let s = server_report(&r, "m", &busy_url);
        s["others_inflight"] == 0 && s["others_queued_prefill_blocks"] == 0
    })
    .await;
    let (_, report) = gw2.admin_get(&c, "/admin/routing").await;
    assert!(
        gone,
        "the first instance's finished stream still counts: {report}"
    );
    // Without a shared store there is nothing to count.
    let alone = Gateway::start(&format!(
        "routing.policy = \"prefix\"\n{}",
        servers(&mocks, &["m"])
    ))
    .await;
    let (_, r) = alone.admin_get(&c, "/admin/routing").await;
    assert!(r["load_shared_by_instances"].is_null(), "{r}");
}

/// Blocks held in model m's index of `gw`.
async fn index_blocks(gw: &Gateway, c: &Client) -> u64 {
    let (_, r) = gw.admin_get(c, "/admin/routing").await;
    model_report(&r, "m")["index"]["blocks"].as_u64().unwrap()
}

#[tokio::test]
async fn instances_on_valkey_agree_on_a_random_hash_seed() {
    let redis = Redis::start().await;
    let mocks = three(&["m"], MockConfig::default()).await;
    let config = prefix_on_valkey(&redis, &mocks);
    let seed = || async { redis.cmd::<Option<String>>(&["GET", "t:prefix:seed"]).await };
    let gw1 = Gateway::start(&config).await;
    let first: u64 = seed().await.expect("a seed").parse().unwrap();
    let gw2 = Gateway::start(&config).await;
    assert_eq!(seed().await.unwrap().parse::<u64>().unwrap(), first);
    // (Both hash alike: two_instances_on_valkey_learn_each_others_prefixes.) A store that lost
    // its data gets the running instances' seed back.
    let _: i64 = redis.cmd(&["DEL", "t:prefix:seed"]).await;
    let back = eventually(Duration::from_secs(5), || async {
        seed().await.is_some_and(|s| s == first.to_string())
    })
    .await;
    assert!(back, "the seed was not put back: {:?}", seed().await);
    // A value that is not a seed is replaced by the instances' seed.
    let c = Client::new();
    let r = gw1.chat(&c, &chat("m", &system("Ada"), "q", false)).await;
    assert_eq!(r.status(), 200);
    assert!(index_blocks(&gw1, &c).await >= 15);
    let _: String = redis.cmd(&["SET", "t:prefix:seed", "not a seed"]).await;
    let back = eventually(Duration::from_secs(5), || async {
        seed().await.is_some_and(|s| s == first.to_string())
    })
    .await;
    assert!(back, "not replaced: {:?}", seed().await);
    assert!(
        index_blocks(&gw1, &c).await >= 15,
        "kept its index and its seed"
    );
    // Another seed in the store (a new instance's, after the store lost its data before the
    // running ones put theirs back): they take it, and empty their indexes, whose blocks were
    // hashed with the old one.
    let _: String = redis.cmd(&["SET", "t:prefix:seed", "12345"]).await;
    let emptied = eventually(Duration::from_secs(5), || async {
        index_blocks(&gw1, &c).await == 0 && index_blocks(&gw2, &c).await == 0
    })
    .await;
    assert!(emptied, "the indexes of the old seed were kept");
    assert_eq!(seed().await.as_deref(), Some("12345"));
    // And they still share what they route.
    let r = gw1.chat(&c, &chat("m", &system("Grace"), "q", false)).await;
    let holder = served_by(&r);
    let learnt = eventually(Duration::from_secs(5), || async {
        index_blocks(&gw2, &c).await >= 15
    })
    .await;
    assert!(learnt, "the second instance did not learn of {holder}");
    for i in 0..4 {
        let r = gw2
            .chat(&c, &chat("m", &system("Grace"), &format!("q{i}"), false))
            .await;
        assert_eq!(served_by(&r), holder);
    }
}

#[tokio::test]
async fn a_pool_that_outgrows_its_index_keeps_what_it_learnt() {
    let mocks = three(&["m"], MockConfig::default()).await;
    // 64 blocks of 128 bytes per server: a table of 512 entries.
    let gw = Gateway::start(&format!(
        "routing.policy = \"prefix\"\nrouting.server_cache_tokens = 2048\n{}",
        servers(&mocks, &["m"])
    ))
    .await;
    let c = Client::new();
    let s = system("Ada");
    let holder = served_by(&gw.chat(&c, &chat("m", &s, "first", false)).await);
    let (_, before) = gw.admin_get(&c, "/admin/routing").await;
    assert_eq!(model_report(&before, "m")["index"]["entries"], 512);
    let held_before = held(&before, "m");
    assert!(held_before.values().any(|b| *b >= 15), "{before}");
    // A larger cache configured: a table eight times larger, with every block learnt so far.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        text.replacen(
            "server_cache_tokens = 2048",
            "server_cache_tokens = 16384",
            1,
        ),
    )
    .unwrap();
    let (status, outcome) = gw.reload(&c).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["routing.server_cache_tokens"]));
    let (_, after) = gw.admin_get(&c, "/admin/routing").await;
    let ix = &model_report(&after, "m")["index"];
    assert_eq!(ix["entries"], 4096, "{after}");
    assert_eq!(ix["capacity_blocks"], 512, "{after}");
    assert_eq!(held(&after, "m"), held_before, "{after}");
    // The next user of the prompt is sent to its holder, which still has it.
    let again = gw.chat(&c, &chat("m", &s, "second", false)).await;
    assert_eq!(served_by(&again), holder);
    let m = gw.metrics().await;
    assert!(
        m.contains("infergate_prefix_match_blocks_bucket{model=\"m\",le=\"8\"} 1\n")
            && m.contains("infergate_prefix_match_blocks_count{model=\"m\"} 2\n"),
        "the second request matched the prompt: {m}"
    );
}

#[tokio::test]
async fn a_reload_switches_policies_live() {
    let mocks = three(&["m"], MockConfig::default()).await;
    let gw = Gateway::start(&servers(&mocks, &["m"])).await;
    let c = Client::new();
    let s = system("Ada");
    let spread = |by: &BTreeSet<String>| by.len();
    let mut by = BTreeSet::new();
    for i in 0..24 {
        by.insert(served_by(
            &gw.chat(&c, &chat("m", &s, &format!("q{i}"), false)).await,
        ));
    }
    assert!(
        spread(&by) > 1,
        "affinity without a user balances by load: {by:?}"
    );
    let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
    assert_eq!(model_report(&routing, "m")["policy"], "affinity");

    let reload = |text: String| {
        let (gw, c) = (&gw, &c);
        async move {
            std::fs::write(gw.config_path(), text).unwrap();
            gw.reload(c).await
        }
    };
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let prefix = text.replacen("[routing]\n", "[routing]\npolicy = \"prefix\"\n", 1);
    let (status, outcome) = reload(prefix.clone()).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["routing.policy"]));
    let mut by = BTreeSet::new();
    for i in 0..12 {
        by.insert(served_by(
            &gw.chat(&c, &chat("m", &s, &format!("p{i}"), false)).await,
        ));
    }
    assert_eq!(
        spread(&by),
        1,
        "prefix sends the shared prompt to its holder: {by:?}"
    );
    let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
    let blocks = model_report(&routing, "m")["index"]["blocks"]
        .as_u64()
        .unwrap();
    assert!(blocks >= 15, "{routing}");

    // Another block size: the index is made anew (the old hashes mean nothing).
    let (status, outcome) =
        reload(prefix.replacen("[routing]\n", "[routing]\nblock_bytes = 64\n", 1)).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["routing.block_bytes"]));
    let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
    assert_eq!(routing["block_bytes"], 64);
    assert_eq!(
        model_report(&routing, "m")["index"]["blocks"],
        0,
        "{routing}"
    );
    // An invalid value is refused with its key; the running one stays.
    let (status, outcome) =
        reload(prefix.replacen("[routing]\n", "[routing]\nbalance_rel = 0.5\n", 1)).await;
    assert_eq!(status, 422, "{outcome}");
    assert!(
        outcome.to_string().contains("routing.balance_rel"),
        "{outcome}"
    );
    let (status, outcome) =
        reload(prefix.replacen("[routing]\n", "[routing]\nbalance_share = 0.5\n", 1)).await;
    assert_eq!(status, 422, "{outcome}");
    assert!(
        outcome.to_string().contains("routing.balance_share")
            && outcome.to_string().contains("0 (no bound) or 1.0 to 100.0"),
        "{outcome}"
    );
    // The share bound is applied live too.
    let (status, outcome) = reload(prefix.replacen(
        "[routing]\n",
        "[routing]\nblock_bytes = 64\nbalance_share = 2.5\n",
        1,
    ))
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], json!(["routing.balance_share"]));
    let (_, routing) = gw.admin_get(&c, "/admin/routing").await;
    assert_eq!(routing["balance_share"], 2.5, "{routing}");
}
