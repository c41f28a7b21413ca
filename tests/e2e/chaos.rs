//! The chaos suite (issue 15, item 4): faults under a steady load of non-streaming and
//! streaming requests, each scenario counting what the clients saw.
//!
//! (a) kill -9 one of three servers, (b) kill Valkey and restart it, (c) upgrade the gateway
//! binary, (d) reload a changed server list, (e) a server answering 500 for a while.
//!
//! `cargo test --test e2e chaos::` runs the short form (CI); `benches/chaos.sh` runs the long
//! form (`CHAOS_SECS`, seconds per phase, default 2) in release and prints each line that
//! starts with `chaos`.

use crate::harness::*;
use crate::load::{Load, Report};
use crate::upgrade::{upgrade, Adopted};
use infergate::mock::MockConfig;
use nix::sys::signal::Signal;
use reqwest::{Client, Method};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Seconds per phase (steady, fault, recovery).
fn phase() -> Duration {
    let secs: f64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

const CHAT: &str = "/v1/chat/completions";

/// A mock whose answers take a while (so that requests are in flight when a fault hits).
async fn slow_mock(name: &str) -> infergate::mock::MockServer {
    mock_with(MockConfig {
        name: name.into(),
        models: vec!["m".into()],
        ttft: Duration::from_millis(40),
        itl: Duration::from_millis(20),
        ..Default::default()
    })
    .await
}

fn report(scenario: &str, r: &Report, extra: &str) {
    eprintln!("chaos {scenario}: {r} {extra}");
}

#[tokio::test]
async fn a_a_server_killed_under_load_fails_only_its_requests_in_flight_and_returns() {
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize| async move {
        let name = format!("s{i}");
        MockProcess::start_with(ports[i], &name, "m", &["--ttft-ms", "40", "--itl-ms", "20"]).await
    };
    let mut servers = [start(0).await, start(1).await, start(2).await];
    let urls: String = ports
        .iter()
        .map(|p| server(&format!("http://127.0.0.1:{p}/v1"), &["m"]))
        .collect();
    let gw = Gateway::start(&urls).await;
    let load = Load::start(&gw.url(CHAT), "m", 4, 2);
    tokio::time::sleep(phase()).await;

    let killed = Instant::now();
    servers[1].kill();
    tokio::time::sleep(phase()).await;
    let failed_by_then = load.failed();
    let others = load.served_by_since("s0", killed) + load.served_by_since("s2", killed);

    servers[1] = start(1).await;
    let back = Instant::now();
    let readmitted = eventually(Duration::from_secs(10), || async {
        load.served_by_since("s1", back) > 0
    })
    .await;
    tokio::time::sleep(phase()).await;
    let r = load.stop().await;
    let readmitted_after = r.served_by["s1"]
        .iter()
        .find(|t| **t >= back)
        .map(|t| t.duration_since(back));
    report(
        "a (kill -9 one of three servers)",
        &r,
        &format!("served_by_others_after_kill={others} readmitted_after={readmitted_after:?}"),
    );

    // Only requests in flight on the killed server failed: each was sent before the kill,
    // and at most one per client was in flight.
    for f in &r.failures {
        assert!(
            f.sent < killed,
            "a request sent after the kill failed: {f:?}"
        );
        assert!(f.failed >= killed, "{f:?}");
    }
    assert!(r.failures.len() <= 6, "{r}: {:?}", r.failures);
    assert_eq!(
        r.failures.len(),
        failed_by_then,
        "no failure after the kill's phase"
    );
    assert!(others > 0, "the other servers served after the kill");
    assert!(readmitted, "the server is readmitted when it returns: {r}");
}

#[tokio::test]
async fn b_valkey_killed_and_restarted_fails_no_request_and_sharing_resumes() {
    let (a, b) = (slow_mock("a").await, slow_mock("b").await);
    let extra = mock("x", &["extra"]).await;
    let mut redis = Redis::start_durable().await;
    let config = format!(
        "[store]\nurl = {:?}\nprefix = \"chaos\"\n\n{}{}",
        redis.url(),
        server(&a.url(), &["m"]),
        server(&b.url(), &["m"])
    );
    let (gw1, gw2) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let loads = [
        Load::start(&gw1.url(CHAT), "m", 2, 1),
        Load::start(&gw2.url(CHAT), "m", 2, 1),
    ];
    tokio::time::sleep(phase()).await;

    redis.kill();
    tokio::time::sleep(phase()).await;
    redis.restart().await;
    // Sharing resumes: a route added through one instance reaches the other.
    let c = Client::new();
    let added = eventually(Duration::from_secs(10), || async {
        gw1.admin(&c, Method::POST, "/admin/models/registry")
            .json(&json!({"model": "extra", "url": extra.url()}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(added, "the store takes writes again");
    let shared_at = Instant::now();
    let shared = eventually(Duration::from_secs(5), || async {
        gw2.chat(&c, &chat_body("extra")).await.status() == 200
    })
    .await;
    let shared_after = shared_at.elapsed();
    tokio::time::sleep(phase()).await;
    let [l1, l2] = loads;
    let (r1, r2) = (l1.stop().await, l2.stop().await);
    for (i, r) in [&r1, &r2].into_iter().enumerate() {
        report(
            &format!("b (Valkey killed and restarted), instance {}", i + 1),
            r,
            &format!("shared_after={shared_after:?}"),
        );
        assert!(r.failures.is_empty(), "{r}: {:?}", r.failures);
        assert!(r.streams > 0 && r.ok > 0, "{r}");
    }
    assert!(
        shared,
        "a route added after the restart reaches the other instance"
    );
}

#[tokio::test]
async fn c_an_upgrade_under_load_fails_no_request_and_records_each_once() {
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
    let load = Load::start(&gw.url(CHAT), "m", 4, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(load.served() > 0, "the load runs");

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
    let at_exit = load.served();
    // The new process serves both ports alone now.
    tokio::time::sleep(phase().max(Duration::from_secs(1))).await;
    let r = load.stop().await;
    assert!(r.failures.is_empty(), "{r}: {:?}", r.failures);
    assert!(r.served() > at_exit, "served after the old process exited");
    assert!(r.streams > 0);
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
        if recorded >= r.served() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        recorded,
        r.served(),
        "usage records against requests served"
    );
    report(
        "c (binary upgrade)",
        &r,
        &format!(
            "after_old_exit={} usage_records={recorded}",
            r.served() - at_exit
        ),
    );
    let log = gw.log();
    assert!(log.contains("handing the listening sockets over"), "{log}");
}

#[tokio::test]
async fn d_a_reloaded_server_list_under_load_fails_no_request() {
    let (a, b, c3) = (
        slow_mock("a").await,
        slow_mock("b").await,
        slow_mock("c").await,
    );
    let gw =
        Gateway::start_logged(&(server(&a.url(), &["m"]) + &server(&b.url(), &["m"])), &[]).await;
    let load = Load::start(&gw.url(CHAT), "m", 4, 2);
    tokio::time::sleep(phase()).await;

    // b leaves, c joins.
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(&server(&b.url(), &["m"]), &server(&c3.url(), &["m"]));
    std::fs::write(&path, text).unwrap();
    gw.signal(Signal::SIGHUP);
    let c = Client::new();
    let reloaded = eventually(Duration::from_secs(5), || async {
        gw.admin_get(&c, "/admin/config").await.1["version"] == 2
    })
    .await;
    assert!(reloaded, "{}", gw.log());
    // Once the added server has answered, the table is the new one: every request sent from
    // then on is routed by it (the version shows a moment before the table is rebuilt).
    let sighup = Instant::now();
    let routed = eventually(Duration::from_secs(5), || async {
        load.served_by_since("c", sighup) > 0
    })
    .await;
    assert!(routed, "the added server serves");
    let applied = Instant::now();
    tokio::time::sleep(phase()).await;
    let r = load.stop().await;
    let (to_b, to_c) = (
        r.served_by
            .get("b")
            .map_or(0, |t| t.iter().filter(|t| **t >= applied).count()),
        r.served_by
            .get("c")
            .map_or(0, |t| t.iter().filter(|t| **t >= applied).count()),
    );
    report(
        "d (reload: one server out, one in)",
        &r,
        &format!("removed_server_after_reload={to_b} added_server_after_reload={to_c}"),
    );
    assert!(r.failures.is_empty(), "{r}: {:?}", r.failures);
    assert_eq!(to_b, 0, "the removed server takes no new request");
    assert!(to_c > 0, "the added server serves");
    assert_eq!(b.state.in_flight.load(Relaxed), 0);
}

#[tokio::test]
async fn e_a_server_answering_500_for_a_while_is_ejected_and_readmitted() {
    let servers = [
        slow_mock("a").await,
        slow_mock("b").await,
        slow_mock("c").await,
    ];
    let config: String = servers.iter().map(|s| server(&s.url(), &["m"])).collect();
    let gw = Gateway::start(&format!("health.passive_ejection_ms = 1000\n{config}")).await;
    let load = Load::start(&gw.url(CHAT), "m", 4, 2);
    tokio::time::sleep(phase()).await;

    let faulty = &servers[1].state;
    let requests_before = faulty.requests.load(Relaxed);
    // Taken before the fault: a request sent just before it may be answered 500.
    let failing = Instant::now();
    faulty.fail_status.store(500, Relaxed);
    // Watch the server's requests through the fault: the longest time it got none is the
    // hold (without it, two passing probes readmit it within about 400 ms).
    let until = Instant::now() + phase().max(Duration::from_secs(3));
    let (mut seen, mut quiet_since, mut longest_quiet) = (
        faulty.requests.load(Relaxed),
        Instant::now(),
        Duration::ZERO,
    );
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = faulty.requests.load(Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
        longest_quiet = longest_quiet.max(quiet_since.elapsed());
    }
    let answered_500 = faulty.requests.load(Relaxed) - requests_before;
    let failed = load.failed();

    faulty.fail_status.store(0, Relaxed);
    let recovered = Instant::now();
    // Probes readmit it once its last hold (up to 8 s) has passed.
    let readmitted = eventually(Duration::from_secs(12), || async {
        load.served_by_since("b", recovered) > 0
    })
    .await;
    let readmitted_after = recovered.elapsed();
    tokio::time::sleep(phase()).await;
    let r = load.stop().await;
    // Ejections that fit in the failing phase: at once, then after holds of 1, 2, 4, 8, 8... s
    // (each followed by two passing probes, 200 ms apart).
    let (mut at, mut hold, mut ejections) = (Duration::ZERO, Duration::from_secs(1), 1);
    while at + hold < recovered.duration_since(failing) {
        at += hold + Duration::from_millis(400);
        hold = (hold * 2).min(Duration::from_secs(8));
        ejections += 1;
    }
    report(
        "e (a server answers 500 for a while)",
        &r,
        &format!(
            "answered_500={answered_500} failed_while_failing={failed} \
             failing_for={:?} ejections_at_most={ejections} longest_hold={longest_quiet:?} \
             readmitted_after={readmitted_after:?}",
            recovered.duration_since(failing)
        ),
    );
    // The 500s the clients saw are those the server answered before passive health ejected it
    // (each is relayed as the server's answer): the threshold's two, plus the requests in
    // flight on it then (two or three of the six clients' at these rates), per ejection.
    for f in &r.failures {
        assert!(f.sent >= failing && f.sent < recovered, "{f:?}");
        assert!(f.why.contains("500"), "{f:?}");
    }
    assert_eq!(r.failures.len(), failed, "none after the recovery");
    assert!(
        longest_quiet >= Duration::from_millis(900),
        "held out for the 1 s hold, not readmitted by the next probes: {longest_quiet:?}"
    );
    assert!(
        failed <= ejections * 5,
        "ejected after a few 500s, and held out: {failed} in {ejections} ejections at most"
    );
    assert!(readmitted, "readmitted after the recovery: {r}");
}
