//! Usage records and analytics (spec 000) through real HTTP: rows for streaming and
//! non-streaming requests, aggregates and percentiles against known inputs, the CSV read back
//! with a CSV parser, and two instances writing into one Valkey.

use crate::harness::*;
use infergate::store::valkey::{ValkeyConfig, ValkeyStore};
use infergate::store::Store;
use infergate::usage::UsageRecord;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::Duration;

async fn usage_total(gw: &Gateway, c: &Client, query: &str) -> u64 {
    gw.admin_get(c, &format!("/admin/usage?{query}")).await.1["total"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn every_proxied_request_leaves_a_usage_row() {
    let m = mock_with(infergate::mock::MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        ttft: Duration::from_millis(40),
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "auth.proxy = \"required\"\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    let (_, org) = gw
        .admin(&c, Method::POST, "/admin/orgs")
        .json(&json!({"name": "o"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .map(|v| (0, v))
        .unwrap();
    let user: Value = gw
        .admin(&c, Method::POST, "/admin/users")
        .json(&json!({"name": "u", "org_id": org["id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: Value = gw
        .admin(&c, Method::POST, "/admin/keys")
        .json(&json!({"user_id": user["id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = key["token"].as_str().unwrap();

    for _ in 0..2 {
        let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(token)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
            .send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(token)
        .json(&json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}))
        .send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    m.state
        .fail_status
        .store(500, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    m.state
        .fail_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    // Refused before routing: no row.
    assert_eq!(
        c.post(gw.url("/v1/chat/completions"))
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    assert!(
        eventually(Duration::from_secs(5), || async {
            usage_total(&gw, &c, "").await == 4
        })
        .await,
        "four rows, written within a flush"
    );
    let (status, page) = gw.admin_get(&c, "/admin/usage?limit=10").await;
    assert_eq!(status, 200);
    let rows = page["records"].as_array().unwrap();
    assert_eq!(rows[0]["status"], 500, "newest first");
    let stream = rows.iter().find(|r| r["stream"] == true).unwrap();
    assert_eq!(stream["completion_tokens"], 7);
    assert!(stream["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(stream["ttft_ms"].as_f64().unwrap() >= 40.0, "{stream}");
    assert!(stream["latency_ms"].as_f64().unwrap() >= stream["ttft_ms"].as_f64().unwrap());
    for r in rows {
        assert_eq!(r["key_id"], key["id"]);
        assert_eq!(r["user_id"], user["id"]);
        assert_eq!(r["org_id"], org["id"]);
        assert_eq!(r["model"], "m");
        assert_eq!(r["server"], m.url().as_str());
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }
    let plain: Vec<&Value> = rows
        .iter()
        .filter(|r| r["stream"] == false && r["status"] == 200)
        .collect();
    assert_eq!(plain.len(), 2);
    assert_eq!(plain[0]["completion_tokens"], 5);
    assert_eq!(plain[0]["ttft_ms"], Value::Null);
    // Filters.
    assert_eq!(usage_total(&gw, &c, "status=5xx").await, 1);
    assert_eq!(usage_total(&gw, &c, "status=200").await, 3);
    assert_eq!(
        usage_total(&gw, &c, &format!("key_id={}", key["id"].as_str().unwrap())).await,
        4
    );
    assert_eq!(usage_total(&gw, &c, "model=other").await, 0);
    assert_eq!(
        usage_total(&gw, &c, "from=2001-01-01T00:00:00Z&to=2001-01-02T00:00:00Z").await,
        0
    );
    let (_, agg) = gw.admin_get(&c, "/admin/usage/aggregate").await;
    assert_eq!(agg["models"][0]["requests"], 4);
    assert_eq!(agg["models"][0]["errors"], 1);
    assert_eq!(agg["models"][0]["completion_tokens"], 5 + 5 + 7);
    let (_, ttft) = gw.admin_get(&c, "/admin/usage/ttft").await;
    assert_eq!(ttft["models"][0]["count"], 1, "streams only");
    for bad in ["from=yesterday", "status=9xx", "from=2&to=1"] {
        let (status, e) = gw.admin_get(&c, &format!("/admin/usage?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {e}");
    }
}

fn record(
    ts_ms: u64,
    model: &str,
    status: u16,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    tokens: (u64, u64),
    user: &str,
) -> UsageRecord {
    UsageRecord {
        ts_ms,
        key_id: Some("igk_test".into()),
        user_id: Some(user.into()),
        org_id: None,
        model: model.into(),
        server: Some("http://10.0.0.1:8000/v1".into()),
        status,
        latency_ms,
        ttft_ms,
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        stream: ttft_ms.is_some(),
    }
}

fn instance(url: &str, prefix: &str) -> std::sync::Arc<ValkeyStore> {
    ValkeyStore::start(ValkeyConfig {
        url: url.into(),
        cluster: false,
        prefix: prefix.into(),
        ttl_ms: 60_000,
        max_entries: 100,
        usage_retention_ms: 7 * 24 * 3_600_000,
        audit_retention_ms: 3_600_000,
    })
    .unwrap()
}

#[tokio::test]
async fn analytics_merge_every_instances_records() {
    let redis = Redis::start().await;
    // Two writers (as two gateway instances would be), with known latencies: one saw 1..=50 ms
    // on model a, the other 51..=100 ms. Their merged p50 is 50 and p95 is 95; the average of
    // their own p50s would be 50.5.
    let (w1, w2) = (instance(&redis.url(), "an"), instance(&redis.url(), "an"));
    // Two hours ago, 20 s into a minute.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let base = (now / 60_000 - 120) * 60_000 + 20_000;
    let iso = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let first: Vec<UsageRecord> = (1..=50)
        .map(|i| record(base + i * 1000, "a", 200, i as f64, None, (10, 1), "u1"))
        .collect();
    let mut second: Vec<UsageRecord> = (51..=100)
        .map(|i| {
            record(
                base + i * 1000,
                "a",
                if i % 10 == 0 { 502 } else { 200 },
                i as f64,
                None,
                (10, 1),
                "u2",
            )
        })
        .collect();
    // Streams on model b: TTFT 5, 10, 15, 20 ms.
    second.extend((1..=4).map(|i| {
        record(
            base + 200_000 + i * 1000,
            "b",
            200,
            100.0,
            Some(5.0 * i as f64),
            (3, 4),
            "u,\"3\"",
        )
    }));
    w1.usage_append("b1", &first).await.unwrap();
    w2.usage_append("b2", &second).await.unwrap();

    let gw = Gateway::start(&format!(
        "[store]\nurl = \"{}\"\nprefix = \"an\"\n",
        redis.url()
    ))
    .await;
    let c = Client::new();
    let range = format!("from={}&to={}", base, base + 3_600_000);
    let (status, lat) = gw
        .admin_get(&c, &format!("/admin/usage/latency?{range}"))
        .await;
    assert_eq!(status, 200, "{lat}");
    assert_eq!(
        lat["models"][0],
        json!({"model": "a", "count": 100, "p50_ms": 50.0, "p95_ms": 95.0})
    );
    assert_eq!(lat["models"][1]["model"], "b");
    let (_, ttft) = gw
        .admin_get(&c, &format!("/admin/usage/ttft?{range}"))
        .await;
    assert_eq!(
        ttft["models"],
        json!([{"model": "b", "count": 4, "p50_ms": 10.0, "p95_ms": 20.0}])
    );
    let (_, agg) = gw
        .admin_get(&c, &format!("/admin/usage/aggregate?{range}"))
        .await;
    assert_eq!(
        agg["models"],
        json!([
            {"model": "a", "requests": 100, "errors": 5, "prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
            {"model": "b", "requests": 4, "errors": 0, "prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
        ])
    );
    // Buckets of 1 minute from base (aligned to the minute: base is 20 s into one).
    let (_, series) = gw
        .admin_get(
            &c,
            &format!(
                "/admin/usage/series?from={}&to={}&bucket=1m",
                base,
                base + 240_000
            ),
        )
        .await;
    let reqs: Vec<u64> = series["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .collect();
    // Records at base+1 s .. base+100 s and base+201..204 s; buckets start at base-20 s.
    assert_eq!(reqs, vec![39, 60, 1, 4, 0]);
    assert_eq!(series["bucket_seconds"], 60);
    assert_eq!(series["buckets"][1]["start"], iso(base + 40_000));
    // Filters reach the analytics too.
    let (_, u1) = gw
        .admin_get(&c, &format!("/admin/usage/latency?{range}&user_id=u1"))
        .await;
    assert_eq!(u1["models"][0]["p50_ms"], 25.0);

    // The CSV, read back with a CSV parser: a header, then every record in time order.
    let r = gw
        .admin(&c, Method::GET, &format!("/admin/usage/export?{range}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "time",
            "key_id",
            "user_id",
            "org_id",
            "model",
            "server",
            "status",
            "latency_ms",
            "ttft_ms",
            "prompt_tokens",
            "completion_tokens",
            "stream"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 104);
    assert_eq!(&rows[0][0], iso(base + 1000));
    assert_eq!(&rows[0][2], "u1");
    assert_eq!(&rows[99][6], "502");
    let last = &rows[103];
    assert_eq!(
        &last[2], "u,\"3\"",
        "a quoted field survives the round trip"
    );
    assert_eq!((&last[4], &last[8], &last[11]), ("b", "20.000", "true"));
    // The export streams in chunks: more than 1,000 rows still arrive whole.
    let many: Vec<UsageRecord> = (0..2500)
        .map(|i| record(base + 400_000 + i, "c", 200, 1.0, None, (0, 0), "bulk"))
        .collect();
    w1.usage_append("b3", &many).await.unwrap();
    let text = gw
        .admin(
            &c,
            Method::GET,
            &format!("/admin/usage/export?{range}&model=c"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv::Reader::from_reader(text.as_bytes()).records().count(),
        2500
    );
}

#[tokio::test]
async fn two_instances_write_usage_into_one_valkey() {
    let redis = Redis::start().await;
    let m = mock("a", &["m"]).await;
    let extra = format!(
        "{}[store]\nurl = \"{}\"\nprefix = \"two\"\n",
        server(&m.url(), &["m"]),
        redis.url()
    );
    let gw1 = Gateway::start(&extra).await;
    let gw2 = Gateway::start(&extra).await;
    let c = Client::new();
    for gw in [&gw1, &gw2, &gw2] {
        let mut body = chat_body("m");
        body["user"] = json!("shared");
        assert_eq!(gw.chat(&c, &body).await.status(), 200);
    }
    for gw in [&gw1, &gw2] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                usage_total(gw, &c, "user_id=shared").await == 3
            })
            .await,
            "each instance sees the rows of both"
        );
    }
    let (_, agg) = gw1.admin_get(&c, "/admin/usage/aggregate").await;
    assert_eq!(agg["models"][0]["requests"], 3);
}

/// A batch Valkey applied but whose reply was lost comes again with the same id: nothing is
/// added twice, across hours and chunks too; another batch with the same records is added.
#[tokio::test]
async fn a_batch_sent_again_after_a_lost_reply_is_not_counted_twice() {
    let redis = Redis::start().await;
    let w = instance(&redis.url(), "once");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // 2,500 records over two hours (three chunks of the script in the second one).
    let base = (now / 3_600_000 - 1) * 3_600_000 + 3_599_000;
    let records: Vec<UsageRecord> = (0..2_500)
        .map(|i| record(base + i, "a", 200, 1.0, None, (1, 1), "u"))
        .collect();
    w.usage_append("inst-7", &records).await.unwrap();
    w.usage_append("inst-7", &records).await.unwrap();
    let range = (base - 1, base + 10_000);
    let stored = w.usage_scan(range.0, range.1, 10_000).await.unwrap();
    assert_eq!(stored.len(), 2_500, "a retried batch is written once");
    w.usage_append("inst-8", &records[..10]).await.unwrap();
    let stored = w.usage_scan(range.0, range.1, 10_000).await.unwrap();
    assert_eq!(stored.len(), 2_510, "another batch is another write");
}

/// Two instances under load, and Valkey killed and restarted (its data kept on disk, as a
/// production Valkey keeps it): every request served has exactly one usage record.
#[tokio::test]
async fn two_instances_across_a_valkey_restart_record_each_request_once() {
    let mut redis = Redis::start_durable().await;
    let m = mock("a", &["m"]).await;
    let extra = format!(
        "{}[store]\nurl = \"{}\"\nprefix = \"restart\"\n",
        server(&m.url(), &["m"]),
        redis.url()
    );
    let gw1 = Gateway::start(&extra).await;
    let gw2 = Gateway::start(&extra).await;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = [
        gw1.url("/v1/chat/completions"),
        gw2.url("/v1/chat/completions"),
    ]
    .into_iter()
    .flat_map(|u| [u.clone(), u])
    .map(|url| {
        let (served, stop) = (served.clone(), stop.clone());
        tokio::spawn(async move {
            let c = Client::new();
            let mut body = chat_body("m");
            body["user"] = json!("restart");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = c.post(&url).json(&body).send().await {
                    if r.status() == 200 && r.bytes().await.is_ok() {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    })
    .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served > 20, "{served}");
    let c = Client::new();
    let all_in = eventually(Duration::from_secs(20), || async {
        usage_total(&gw1, &c, "user_id=restart").await as usize >= served
    })
    .await;
    assert!(all_in, "every record arrives");
    // A moment more: a record counted twice would show now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = usage_total(&gw1, &c, "user_id=restart").await;
    assert_eq!(seen as usize, served, "one usage record per request served");
}

/// Records the store did not take before the gateway exited (Valkey down through its drain)
/// are spooled, and the next gateway sharing the spool directory writes them once Valkey is
/// back: every served request is counted, once.
#[tokio::test]
async fn records_unwritten_at_exit_are_spooled_and_written_by_the_next_gateway() {
    let mut redis = Redis::start_durable().await;
    let m = mock("a", &["m"]).await;
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().join("spool");
    let extra = format!(
        "usage.exit_flush_secs = 1\nusage.spool_dir = {:?}\n{}[store]\nurl = \"{}\"\nprefix = \"spool\"\n",
        spool_dir.display().to_string(),
        server(&m.url(), &["m"]),
        redis.url()
    );
    let c = Client::new();
    let mut gw1 = Gateway::start_logged(&extra, &[]).await;
    for _ in 0..5 {
        assert_eq!(gw1.chat(&c, &chat_body("m")).await.status(), 200);
    }
    let written = eventually(Duration::from_secs(5), || async {
        usage_total(&gw1, &c, "limit=1").await == 5
    })
    .await;
    assert!(written);

    redis.kill();
    for _ in 0..7 {
        assert_eq!(gw1.chat(&c, &chat_body("m")).await.status(), 200);
    }
    // An admin change while the store is down: its audit record cannot be written either.
    let r = gw1
        .admin(&c, Method::POST, "/admin/affinity/clear")
        .json(&json!({"user_id": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 400);
    let metrics = c
        .get(format!("http://{}/metrics", gw1.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("infergate_records_lost_total{kind=\"audit\"} 0"),
        "{metrics}"
    );
    gw1.signal(nix::sys::signal::Signal::SIGTERM);
    let status = gw1.exited_within(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", gw1.log());
    let files: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("usage-spool-"), "{files:?}");
    assert!(gw1.log().contains("spooled"), "{}", gw1.log());
    // The audit record the store never took is in the log, its only trace.
    let log = gw1.log();
    assert!(
        log.lines()
            .any(|l| l.contains("audit record lost") && l.contains("affinity.clear")),
        "{log}"
    );

    redis.restart().await;
    let gw2 = Gateway::start(&extra).await;
    let all = eventually(Duration::from_secs(15), || async {
        usage_total(&gw2, &c, "limit=1").await >= 12
    })
    .await;
    assert!(all, "total {}", usage_total(&gw2, &c, "limit=1").await);
    let gone = eventually(Duration::from_secs(3), || async {
        std::fs::read_dir(&spool_dir).unwrap().count() == 0
    })
    .await;
    assert!(gone, "the spool file is removed once written");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(usage_total(&gw2, &c, "limit=1").await, 12, "each once");
}
