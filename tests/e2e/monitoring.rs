//! System and engine monitoring (spec 000 "System Monitoring") through the real binary: host
//! figures checked against `/proc`, throughput and percentiles against known traffic through
//! two instances sharing Valkey, engine scrapes of mock vLLM servers and of real engines'
//! exports (fixtures served over HTTP), node_exporter and dcgm-exporter pages, and the engine
//! gauges on the gateway's own `/metrics`.

use crate::harness::*;
use infergate::mock::MockConfig;
use reqwest::Client;
use serde_json::{json, Value};
use std::time::Duration;

/// Samples and scrapes every second (the default is 5 s).
const FAST: &str = "[monitoring]\nsample_interval_secs = 1\nscrape_interval_secs = 1\n";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/metrics/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// An HTTP server answering `GET /metrics` with the pages of `pages` in turn (the last one
/// repeats) after `delay`: a real engine's or exporter's export, as it would be scraped.
struct Exporter {
    url: String,
    /// Requests received.
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn exporter_after(pages: Vec<String>, delay: Duration) -> Exporter {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (pages, counted) = (pages.clone(), counted.clone());
            async move {
                let i = counted.fetch_add(1, Ordering::Relaxed).min(pages.len() - 1);
                tokio::time::sleep(delay).await;
                pages[i].clone()
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Exporter {
        url: format!("http://{addr}"),
        asked,
        _task: task,
    }
}

async fn exporter(pages: Vec<String>) -> Exporter {
    exporter_after(pages, Duration::ZERO).await
}

fn proc_kib(key: &str) -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn ok(gw: &Gateway, c: &Client, path: &str) -> Value {
    let (status, body) = admin_call(gw, c, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GET `path` until it answers 200 and `done` holds of the answer (15 s at most).
async fn until(gw: &Gateway, c: &Client, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // 503 until the first sample: keep asking.
        let (status, v) = admin_call(gw, c, reqwest::Method::GET, path, None).await;
        if status == 200 && done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never got there: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn host_gpu_and_capability_figures_come_from_the_machine() {
    let m = mock("a", &["m"]).await;
    // A node_exporter that does not answer: host figures are sampled in-process meanwhile.
    let gone = format!("{}/metrics", dead_url());
    let gw = Gateway::start(&format!(
        "{FAST}node_exporter_url = {gone:?}\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.admin_get(&c, "/admin/system/host/summary").await.0 == 200
        })
        .await
    );
    // Against /proc.
    let host = ok(&gw, &c, "/admin/system/host/summary").await;
    let nproc = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(host["provider"], "in_process");
    assert!(host["cpu_count"].as_u64().unwrap() >= nproc, "{host}");
    assert_eq!(
        host["cpu_per_core_pct"].as_array().unwrap().len() as u64,
        host["cpu_count"].as_u64().unwrap()
    );
    let total_mb = proc_kib("MemTotal:") / 1024.0;
    assert!((host["mem_total_mb"].as_f64().unwrap() - total_mb).abs() < 1.0);
    let used = host["mem_used_mb"].as_f64().unwrap();
    assert!(used > 0.0 && used < total_mb, "{host}");
    assert!((0.0..=100.0).contains(&host["cpu_util_pct"].as_f64().unwrap()));
    assert!((0.0..=100.0).contains(&host["disk_used_pct"].as_f64().unwrap()));
    assert!(host["net_rx_bps"].as_f64().unwrap() >= 0.0);
    assert!(host["interfaces"].get("lo").is_none());
    // The summary (both prefixes) agrees. Without a GPU driver (as here): 0 GPUs, said why,
    // no error; a machine with one answers with its GPUs.
    let caps = ok(&gw, &c, "/admin/system/capabilities").await;
    let driver = caps["gpu"]["nvml"] == true;
    for prefix in ["/admin", "/api/ai/v1/admin"] {
        let s = ok(&gw, &c, &format!("{prefix}/system/summary")).await;
        assert_eq!(s["cpu_count"], host["cpu_count"]);
        assert!((s["mem_total_mb"].as_f64().unwrap() - total_mb).abs() < 1.0);
        assert!(s["disk_total_gb"].as_f64().unwrap() > 0.0);
        assert_eq!(s["gpus"], caps["gpu"]["count"]);
        assert_eq!(s["cuda_driver"].is_null(), !driver);
    }
    let gpus = ok(&gw, &c, "/admin/system/gpus").await;
    assert_eq!(
        gpus.as_array().unwrap().len() as u64,
        caps["gpu"]["count"].as_u64().unwrap()
    );
    assert_eq!(caps["os"], "linux");
    if !driver {
        assert_eq!(gpus, json!([]));
        assert!(
            caps["gpu"]["reason"].as_str().unwrap().contains("NVML"),
            "{caps}"
        );
        assert_eq!(
            caps["selectedProviders"],
            json!({"host": "in_process", "gpu": "none"})
        );
    }
    assert_eq!(caps["exporters"]["nodeExporter"]["status"], "down");
    assert_eq!(
        caps["exporters"]["dcgmExporter"]["status"],
        "not_configured"
    );
    let suggestions = caps["suggestions"].to_string();
    assert!(suggestions.contains(&gone), "{caps}");
    assert!(driver || suggestions.contains("dcgm_url"), "{caps}");
    // Trends: only samples taken (one a second since the start), never padded to the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = ok(&gw, &c, "/admin/system/host/trends?minutes=60&step_s=1").await;
    assert_eq!(
        (t["minutes"].as_u64(), t["step_s"].as_u64()),
        (Some(60), Some(1))
    );
    let cpu = t["cpu_util_pct"].as_array().unwrap();
    assert!(
        (2..=12).contains(&cpu.len()),
        "{} points after ~4 s",
        cpu.len()
    );
    let ts: Vec<f64> = cpu.iter().map(|p| p["ts"].as_f64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[1] > w[0]), "{ts:?}");
    assert_eq!(
        t["cpu_per_core_pct"]["0"].as_array().unwrap().len(),
        cpu.len()
    );
    // Out-of-range values are clamped (and said); a value that is not a number is refused.
    let t = ok(&gw, &c, "/admin/system/host/trends?minutes=100000&step_s=1").await;
    assert_eq!(
        (t["minutes"].as_u64(), t["step_s"].as_u64()),
        (Some(60), Some(1))
    );
    let (status, body) = admin_call(
        &gw,
        &c,
        reqwest::Method::GET,
        "/admin/system/host/trends?minutes=x&step_s=0",
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("minutes"),
        "{body}"
    );
    // Admin only.
    let r = c
        .get(format!("http://{}/admin/system/summary", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn throughput_sums_known_traffic_over_two_instances() {
    let redis = Redis::start().await;
    let slow = MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        ttft: Duration::from_millis(35),
        ..Default::default()
    };
    let m = mock_with(slow).await;
    let broken = mock("b", &["bad"]).await;
    broken
        .state
        .fail_status
        .store(500, std::sync::atomic::Ordering::Relaxed);
    let extra = format!(
        "{FAST}[store]\nurl = {:?}\nprefix = \"mon\"\n\n{}{}",
        redis.url(),
        server(&m.url(), &["m"]),
        server(&broken.url(), &["bad"])
    );
    let (a, b) = (Gateway::start(&extra).await, Gateway::start(&extra).await);
    let c = Client::new();
    // A: 20 answers of ~35 ms; B: 10 streams with a first token after ~35 ms, and 5 errors.
    for _ in 0..20 {
        assert_eq!(a.chat(&c, &chat_body("m")).await.status(), 200);
    }
    for _ in 0..10 {
        let body = json!({"model": "m", "stream": true, "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}]});
        let r = b.chat(&c, &body).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    for _ in 0..5 {
        // 500 from the server, or 503 once passive health ejected it.
        assert!(b
            .chat(&c, &chat_body("bad"))
            .await
            .status()
            .is_server_error());
    }
    let t = until(&a, &c, "/admin/system/throughput", |t| {
        t["1m"]["requests"].as_f64() == Some(35.0)
    })
    .await;
    assert_eq!(t["instances"], 2);
    let one = &t["1m"];
    assert_eq!(one["errors"].as_f64(), Some(5.0));
    assert_eq!(t["error_rate"].as_f64(), Some(5.0 / 35.0));
    // Rates: every instance's count over its own span, added.
    let rate = t["req_per_sec"].as_f64().unwrap();
    assert!(
        rate >= 35.0 / one["window_s"].as_f64().unwrap() - 1e-9,
        "{t}"
    );
    assert!(t["prompt_tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert!(t["generation_tokens_per_sec"].as_f64().unwrap() > 0.0);
    // Percentiles from the buckets: 30 of 35 requests took 35 ms and more (the 25–50 ms
    // bucket, or the next on a loaded machine), the 5 errors a few ms; TTFT only of streams,
    // all ~35 ms.
    let p50 = t["latency_p50_ms"].as_f64().unwrap();
    assert!((25.0..=100.0).contains(&p50), "latency p50 {p50}");
    let ttft50 = t["ttft_p50_ms"].as_f64().unwrap();
    let ttft95 = t["ttft_p95_ms"].as_f64().unwrap();
    assert!(
        (25.0..=100.0).contains(&ttft50) && ttft50 <= ttft95 && ttft95 <= 250.0,
        "{t}"
    );
    assert_eq!(t["5m"]["requests"].as_f64(), Some(35.0));
    // B sees the same sums.
    let tb = ok(&b, &c, "/admin/system/throughput").await;
    assert_eq!(
        (tb["instances"].as_u64(), tb["1m"]["requests"].as_f64()),
        (Some(2), Some(35.0))
    );
}

#[tokio::test]
async fn engine_metrics_are_scraped_per_server_summed_per_model_and_exported() {
    let cfg = |name: &str| MockConfig {
        name: name.into(),
        models: vec!["m".into()],
        ttft: Duration::from_millis(30),
        ..Default::default()
    };
    let (m1, m2) = (mock_with(cfg("a")).await, mock_with(cfg("b")).await);
    let dead = dead_url();
    let gw = Gateway::start(&format!(
        "{FAST}{}{}{}",
        server(&m1.url(), &["m"]),
        server(&m2.url(), &["m"]),
        server(&dead, &["m"])
    ))
    .await;
    let c = Client::new();
    let mut served = 0;
    while served < 12 {
        if gw.chat(&c, &chat_body("m")).await.status() == 200 {
            served += 1;
        }
    }
    let list = until(&gw, &c, "/admin/models/metrics", |list| {
        let m = &list[0];
        m["generation_tokens_total"].as_f64() == Some(48.0)
            && m["request_latency_p50_ms"].is_number()
    })
    .await;
    let model = list[0].clone();
    assert_eq!(model["served_name"], "m");
    assert_eq!(
        (model["status"].as_str(), model["model_id"].is_null()),
        (Some("routed"), true)
    );
    // Every series of both servers is counted: 12 answers of 4 tokens each.
    let servers = model["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    let by_url = |u: &str| servers.iter().find(|s| s["server"] == u).unwrap().clone();
    let (s1, s2, sd) = (by_url(&m1.url()), by_url(&m2.url()), by_url(&dead));
    assert_eq!(
        (s1["engine"].as_str(), s1["error"].is_null()),
        (Some("vllm"), true)
    );
    let gen = |s: &Value| s["generation_tokens_total"].as_f64().unwrap_or(0.0);
    assert_eq!(gen(&s1) + gen(&s2), 48.0);
    assert!(
        sd["error"].as_str().unwrap().starts_with("unreachable"),
        "{sd}"
    );
    assert_eq!(model["error"], "1 of 3 servers could not be scraped");
    // The engines' TTFT was 30 ms: the p50 from their buckets lies in vLLM's 20–40 ms bucket.
    let ttft = model["time_to_first_token_p50_ms"].as_f64().unwrap();
    assert!((20.0..=40.0).contains(&ttft), "{model}");
    assert_eq!(model["num_requests_running"].as_f64(), Some(0.0));
    let hit_rate = model["prefix_cache_hit_rate"].as_f64().unwrap();
    assert!(
        hit_rate > 0.0 && hit_rate <= 1.0,
        "the same prompt 12 times: {model}"
    );
    // One scrape of the gateway shows the fleet.
    let text = gw.metrics().await;
    let up = |url: &str| {
        metric_value(
            &text,
            &format!("infergate_engine_scrape_up{{server=\"{url}\"}}"),
        )
    };
    assert_eq!((up(&m1.url()), up(&dead)), (1.0, 0.0));
    assert!(text.contains(&format!(
        "infergate_engine_kv_cache_usage{{server=\"{}\"}}",
        m1.url()
    )));
    assert!(
        text.contains("infergate_engine_ttft_seconds{quantile=\"0.5\""),
        "quantile gauges"
    );
    // A server that stops answering: its last figures stay on its own entry (with the
    // error), leave the model's totals, and leave the gateway's gauges (but for up = 0).
    m2.stop();
    let list = until(&gw, &c, "/admin/models/metrics", |l| {
        l[0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server"] == m2.url() && s["error"].is_string())
    })
    .await;
    let gone = list[0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == m2.url())
        .unwrap()
        .clone();
    assert_eq!(gone["generation_tokens_total"].as_f64(), Some(gen(&s2)));
    assert_eq!(list[0]["generation_tokens_total"].as_f64(), Some(gen(&s1)));
    assert_eq!(list[0]["error"], "2 of 3 servers could not be scraped");
    let text = gw.metrics().await;
    let up = |url: &str| {
        metric_value(
            &text,
            &format!("infergate_engine_scrape_up{{server=\"{url}\"}}"),
        )
    };
    assert_eq!(up(&m2.url()), 0.0);
    assert!(!text.contains(&format!(
        "infergate_engine_kv_cache_usage{{server=\"{}\"}}",
        m2.url()
    )));
}

#[tokio::test]
async fn real_engine_exports_and_exporters_are_read_over_http() {
    let sglang = exporter(vec![fixture("sglang.prom")]).await;
    let llama = exporter(vec![fixture("llamacpp.prom")]).await;
    let node = exporter(vec![
        fixture("node_exporter_a.prom"),
        fixture("node_exporter_b.prom"),
    ])
    .await;
    let dcgm = exporter(vec![fixture("dcgm.prom")]).await;
    let gw = Gateway::start(&format!(
        "{FAST}node_exporter_url = \"{}/metrics\"\ndcgm_url = \"{}/metrics\"\n{}{}",
        node.url,
        dcgm.url,
        server(&format!("{}/v1", sglang.url), &["sg"]),
        server(&format!("{}/v1", llama.url), &["ll"])
    ))
    .await;
    let c = Client::new();
    let list = until(&gw, &c, "/admin/models/metrics", |l| {
        l.as_array()
            .unwrap()
            .iter()
            .all(|m| m["servers"][0]["scraped_at_ms"].is_number())
    })
    .await;
    let (ll, sg) = (&list[0], &list[1]);
    assert_eq!(
        (ll["served_name"].as_str(), sg["served_name"].as_str()),
        (Some("ll"), Some("sg"))
    );
    assert_eq!(sg["servers"][0]["engine"], "sglang");
    assert_eq!(
        (
            sg["num_requests_running"].as_f64(),
            sg["num_requests_waiting"].as_f64()
        ),
        (Some(23.0), Some(3.0))
    );
    assert_eq!(sg["prompt_tokens_total"].as_f64(), Some(4719253.0));
    assert_eq!(ll["servers"][0]["engine"], "llamacpp");
    assert_eq!(ll["generation_tokens_total"].as_f64(), Some(612904.0));
    assert!(
        ll["time_to_first_token_p50_ms"].is_null(),
        "llama-server has no histograms"
    );
    // GPUs from dcgm-exporter, named by its label; the total is used + free + reserved.
    let gpus = until(&gw, &c, "/admin/system/gpus", |g| {
        g.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(
        (gpus[1]["index"].as_u64(), gpus[1]["mem_total_mb"].as_f64()),
        (Some(1), Some(81559.0))
    );
    assert_eq!(gpus[0]["source"], "dcgm");
    // Host figures from node_exporter: its CPUs and memory, not this machine's.
    let host = until(&gw, &c, "/admin/system/host/summary", |h| {
        h["provider"] == "node_exporter"
    })
    .await;
    assert_eq!(host["cpu_count"], 4);
    assert_eq!(
        host["mem_total_mb"].as_f64(),
        Some(67277438976.0 / 1048576.0)
    );
    let summary = ok(&gw, &c, "/admin/system/summary").await;
    assert_eq!(
        (summary["gpus"].as_u64(), summary["cuda_driver"].as_str()),
        (Some(2), Some("570.133.20"))
    );
    let caps = ok(&gw, &c, "/admin/system/capabilities").await;
    assert_eq!(
        caps["selectedProviders"],
        json!({"host": "node_exporter", "gpu": "dcgm"})
    );
    assert_eq!(caps["exporters"]["dcgmExporter"]["status"], "up");
    // The first sample's CPU figures (scrape a to scrape b) are in the trend as they were.
    let t = ok(&gw, &c, "/admin/system/host/trends?minutes=5&step_s=1").await;
    let has = |series: &Value, v: f64| {
        series
            .as_array()
            .unwrap()
            .iter()
            .any(|p| (p["value"].as_f64().unwrap() - v).abs() < 1e-6)
    };
    assert!(has(&t["cpu_util_pct"], 48.75), "{t}");
    assert!(has(&t["cpu_per_core_pct"]["1"], 92.0), "{t}");
}

#[tokio::test]
async fn scrapes_run_once_per_interval_concurrently_within_their_deadline() {
    // One quick server and six that answer after 3 s; scrapes give up after 500 ms.
    let quick = exporter(vec![fixture("vllm_v1.prom")]).await;
    let mut slow = Vec::new();
    for _ in 0..6 {
        slow.push(exporter_after(vec![fixture("vllm_v1.prom")], Duration::from_secs(3)).await);
    }
    let mut extra = format!(
        "{FAST}scrape_timeout_ms = 500\n{}",
        server(&format!("{}/v1", quick.url), &["m"])
    );
    for s in &slow {
        extra += &server(&format!("{}/v1", s.url), &["m"]);
    }
    let gw = Gateway::start(&extra).await;
    let c = Client::new();
    let started = std::time::Instant::now();
    let asked_before = quick.asked.load(std::sync::atomic::Ordering::Relaxed);
    // Forty callers at a time for four seconds: none of them makes a scrape.
    while started.elapsed() < Duration::from_secs(4) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let call = gw.admin(&c, reqwest::Method::GET, "/admin/models/metrics");
            calls.spawn(async move { call.send().await.map(|r| r.status().as_u16()) });
        }
        while let Some(done) = calls.join_next().await {
            assert_eq!(done.unwrap().unwrap(), 200);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let asked = quick.asked.load(std::sync::atomic::Ordering::Relaxed) - asked_before;
    // Once a second, whatever the callers; and the slow servers, scraped alongside, do not
    // hold the quick one back (one after the other, a round would take 3.5 s).
    assert!(
        asked as f64 <= elapsed + 1.0,
        "{asked} scrapes in {elapsed:.1} s"
    );
    assert!(asked >= 3, "{asked} scrapes in {elapsed:.1} s");
    let list = ok(&gw, &c, "/admin/models/metrics").await;
    let servers = list[0]["servers"].as_array().unwrap();
    let failed: Vec<&Value> = servers.iter().filter(|s| s["error"].is_string()).collect();
    assert_eq!(failed.len(), 6, "{list}");
    assert!(
        failed
            .iter()
            .all(|s| s["error"] == "no answer within 500 ms"),
        "{list}"
    );
    assert_eq!(list[0]["error"], "6 of 7 servers could not be scraped");
    assert_eq!(
        list[0]["num_requests_running"].as_f64(),
        Some(40.0),
        "the quick one's figures"
    );
}
