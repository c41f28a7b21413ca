//! The audit log of admin changes (issue 15, item 6) through real HTTP against the real binary:
//! every changing call of an authenticated caller leaves one record (actor, action, target,
//! outcome, status, error id), refused ones too; reads and failed authentications do not;
//! filters, pages and the CSV export; no secret in any record; records shared through Valkey
//! between instances, and kept (not lost, not blocking the change) while Valkey is down.

use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::Duration;

/// `/admin/audit?<query>` once `total` is `n` (within 5 s), else the last answer.
async fn audit_when(gw: &Gateway, c: &Client, query: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, v) = gw.admin_get(c, &format!("/admin/audit?{query}")).await;
        assert_eq!(status, 200, "{v}");
        if v["total"] == n {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("audit total never reached {n}: {last}");
}

/// A change with the admin bearer: (status, x-error-id, JSON body).
async fn change(
    gw: &Gateway,
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut r = gw.admin(c, method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-error-id")
        .map(|v| v.to_str().unwrap().to_string());
    (status, id, r.json().await.unwrap_or_default())
}

/// The one record of `action` with `status`.
fn record<'a>(records: &'a [Value], action: &str, status: u16) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == action && r["status"] == status)
        .collect();
    assert_eq!(found.len(), 1, "one {action} {status} in {records:#?}");
    found[0]
}

fn assert_record(r: &Value, actor: &str, target: Option<&str>, outcome: &str) {
    assert_eq!(r["actor"], actor, "{r}");
    assert_eq!(r["target"], target.map_or(Value::Null, Value::from), "{r}");
    assert_eq!(r["outcome"], outcome, "{r}");
    assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["address"], "127.0.0.1", "{r}");
}

#[tokio::test]
async fn every_admin_change_leaves_a_record_refused_ones_too() {
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start(&server(&m.url(), &["m"])).await;
    let c = Client::new();
    let mut errors = Vec::new();
    let mut expect = 0;
    let mut call = |method: Method, path: &str, body: Option<Value>| {
        expect += 1;
        let (gw, c) = (&gw, &c);
        let path = path.to_string();
        async move { change(gw, c, method, &path, body).await }
    };

    // Organizations, users, keys (a create's target is the new id).
    let (s, _, org) = call(Method::POST, "/admin/orgs", Some(json!({"name": "acme"}))).await;
    assert_eq!(s, 201);
    let org_id = org["id"].as_str().unwrap().to_string();
    let (s, e, _) = call(Method::POST, "/admin/orgs", Some(json!({"name": "acme"}))).await;
    assert_eq!(s, 409, "a name taken");
    errors.push(e.unwrap());
    let (s, _, _) = call(
        Method::PATCH,
        &format!("/api/ai/v1/admin/orgs/{org_id}"),
        Some(json!({"description": "d"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, user) = call(
        Method::POST,
        "/admin/users",
        Some(json!({"name": "u", "org_id": org_id})),
    )
    .await;
    assert_eq!(s, 201);
    let user_id = user["id"].as_str().unwrap().to_string();
    let (s, _, _) = call(
        Method::PATCH,
        &format!("/admin/users/{user_id}"),
        Some(json!({"bogus": 1})),
    )
    .await;
    assert_eq!(s, 400, "an unknown field");
    let (s, _, key) = call(
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "ci", "user_id": user_id})),
    )
    .await;
    assert_eq!(s, 201);
    let key_id = key["id"].as_str().unwrap().to_string();
    let token = key["token"].as_str().unwrap().to_string();
    let secret = token.split_once(':').unwrap().1.to_string();

    // A key without the ai_admin role is refused (403) and recorded under its id; a wrong
    // secret (401) and reads are not recorded.
    let r = c
        .post(format!("http://{}/admin/orgs", gw.admin))
        .bearer_auth(&token)
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("http://{}/admin/orgs", gw.admin))
        .bearer_auth(format!("{ADMIN_KEY}:wrong"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(gw.admin_get(&c, "/admin/orgs").await.0, 200);

    // A token pasted in place of a key id: its secret is never recorded.
    let (s, _, _) = call(Method::DELETE, &format!("/admin/keys/{token}"), None).await;
    assert_eq!(s, 404);
    let (s, _, _) = call(Method::DELETE, &format!("/admin/keys/{key_id}"), None).await;
    assert_eq!(s, 200);

    // Registry routes (target: model and url, from the body or the query).
    let url = "http://10.1.2.3:8000/v1";
    let route = json!({"model": "extra", "url": url});
    let (s, _, _) = call(Method::POST, "/admin/models/registry", Some(route.clone())).await;
    assert_eq!(s, 201);
    let (s, _, _) = call(
        Method::DELETE,
        &format!("/admin/models/registry?model=extra&url={url}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, e, _) = call(Method::DELETE, "/admin/models/registry", Some(route)).await;
    assert_eq!(s, 404, "already removed");
    errors.push(e.unwrap());

    // Affinity, configuration, pods, models.
    let (s, _, _) = call(
        Method::POST,
        "/admin/affinity/clear",
        Some(json!({"user_id": "alice", "model_id": "m"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = call(Method::POST, "/admin/config/reload", None).await;
    assert_eq!(s, 200);
    let path = gw.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[proxy\n")).unwrap();
    let (s, e, _) = call(Method::POST, "/admin/config/reload", None).await;
    assert_eq!(s, 422);
    errors.push(e.unwrap());
    std::fs::write(&path, good).unwrap();
    let (s, _, _) = call(Method::POST, "/admin/pods/nope/restart", None).await;
    assert!(s >= 400, "no such pod: {s}");
    let (s, _, model) = call(
        Method::POST,
        "/admin/models",
        Some(json!({"name": "E", "served_model_name": "embedder", "repo_id": "BAAI/bge-m3", "task": "embed"})),
    )
    .await;
    assert_eq!(s, 201, "{model}");
    let model_id = model["id"].as_str().unwrap().to_string();
    let (s, _, _) = call(
        Method::POST,
        &format!("/admin/models/{model_id}/start"),
        None,
    )
    .await;
    assert_eq!(s, 409, "no runner");
    let (s, _, _) = call(Method::DELETE, &format!("/admin/models/{model_id}"), None).await;
    assert_eq!(s, 200);
    let (s, _, _) = call(
        Method::DELETE,
        &format!("/admin/orgs/{org_id}?cascade=true"),
        None,
    )
    .await;
    assert_eq!(s, 200);

    let total = expect + 1; // and the 403
    let page = audit_when(&gw, &c, "limit=100", total).await;
    let text = page.to_string();
    let records = page["records"].as_array().unwrap();
    let admin = ADMIN_KEY;
    assert_record(
        record(records, "org.create", 201),
        admin,
        Some(&org_id),
        "success",
    );
    let taken = record(records, "org.create", 409);
    assert_record(taken, admin, Some("acme"), "failure");
    assert_eq!(taken["error"], "conflict");
    let update = record(records, "org.update", 200);
    assert_record(update, admin, Some(&org_id), "success");
    assert_eq!(update["path"], "/api/ai/v1/admin/orgs/{id}");
    assert_eq!(update["method"], "PATCH");
    assert_eq!(update["error"], Value::Null);
    assert_record(
        record(records, "user.create", 201),
        admin,
        Some(&user_id),
        "success",
    );
    assert_record(
        record(records, "user.update", 400),
        admin,
        Some(&user_id),
        "failure",
    );
    assert_record(
        record(records, "key.create", 201),
        admin,
        Some(&key_id),
        "success",
    );
    let refused = record(records, "org.create", 403);
    assert_record(refused, &key_id, Some("sneaky"), "failure");
    assert_eq!(refused["error"], "forbidden");
    assert_record(
        record(records, "key.revoke", 404),
        admin,
        Some(&key_id),
        "failure",
    );
    assert_record(
        record(records, "key.revoke", 200),
        admin,
        Some(&key_id),
        "success",
    );
    let target = format!("model=extra url={url}");
    assert_record(
        record(records, "registry.add", 201),
        admin,
        Some(&target),
        "success",
    );
    assert_record(
        record(records, "registry.remove", 200),
        admin,
        Some(&target),
        "success",
    );
    assert_record(
        record(records, "registry.remove", 404),
        admin,
        Some(&target),
        "failure",
    );
    assert_record(
        record(records, "affinity.clear", 200),
        admin,
        Some("user_id=alice model_id=m"),
        "success",
    );
    let config = path.display().to_string();
    assert_record(
        record(records, "config.reload", 200),
        admin,
        Some(&config),
        "success",
    );
    let refused = record(records, "config.reload", 422);
    assert_record(refused, admin, Some(&config), "failure");
    assert_eq!(refused["error"], "invalid configuration");
    let pod: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "pod.restart")
        .collect();
    assert_eq!(pod.len(), 1);
    assert_record(pod[0], admin, Some("nope"), "failure");
    assert_record(
        record(records, "model.create", 201),
        admin,
        Some(&model_id),
        "success",
    );
    assert_record(
        record(records, "model.start", 409),
        admin,
        Some(&model_id),
        "failure",
    );
    assert_record(
        record(records, "model.delete", 200),
        admin,
        Some(&model_id),
        "success",
    );
    assert_record(
        record(records, "org.delete", 200),
        admin,
        Some(&org_id),
        "success",
    );
    // Each failure's error id is the one its answer carried (and the log has).
    for id in &errors {
        assert_eq!(
            records
                .iter()
                .filter(|r| r["error_id"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    // Newest first.
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert_eq!(records[0]["action"], "org.delete");
    // No secret anywhere: not the key's, not the admin credential's.
    let csv = gw
        .admin(&c, Method::GET, "/admin/audit/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for out in [&text, &csv] {
        assert!(
            !out.contains(&secret),
            "the key's secret is in the audit output"
        );
        assert!(!out.contains(ADMIN_SECRET));
        assert!(!out.contains(&token));
    }
}

#[tokio::test]
async fn audit_filters_pages_and_csv_export() {
    let gw = Gateway::start("").await;
    let c = Client::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let (s, _, org) = change(
            &gw,
            &c,
            Method::POST,
            "/admin/orgs",
            // (A hyphen: no generated id, `org_` and 16 letters or digits, contains these names.)
            Some(json!({"name": format!("org-{i}")})),
        )
        .await;
        assert_eq!(s, 201);
        ids.push(org["id"].as_str().unwrap().to_string());
    }
    let dup = Some(json!({"name": "org-0"}));
    assert_eq!(
        change(&gw, &c, Method::POST, "/admin/orgs", dup).await.0,
        409
    );
    let bad = Some(json!({"model": "m", "url": "not a url"}));
    assert_eq!(
        change(&gw, &c, Method::POST, "/admin/models/registry", bad)
            .await
            .0,
        400
    );
    let all = audit_when(&gw, &c, "limit=100", 14).await;
    let all = all["records"].as_array().unwrap().clone();
    let total = |q: &'static str| {
        let (gw, c) = (&gw, &c);
        async move {
            let (s, v) = gw.admin_get(c, &format!("/admin/audit?{q}")).await;
            assert_eq!(s, 200, "{q}: {v}");
            v["total"].as_u64().unwrap()
        }
    };

    // Pages: the same fields as usage's list; together, every record once, newest first.
    let mut paged = Vec::new();
    for p in 1..=4 {
        let (_, v) = gw
            .admin_get(&c, &format!("/api/ai/v1/admin/audit?limit=5&page={p}"))
            .await;
        assert_eq!(
            (v["page"].as_u64(), v["limit"].as_u64()),
            (Some(p), Some(5))
        );
        assert_eq!(v["total"], 14);
        assert!(v["from"].as_str().is_some() && v["to"].as_str().is_some());
        paged.extend(v["records"].as_array().unwrap().clone());
    }
    assert_eq!(paged, all, "pages 1-3 hold 5, 5 and 4; page 4 none");
    assert_eq!(all[0]["action"], "registry.add");
    assert_eq!(all[13]["target"], ids[0].as_str());

    // Filters.
    assert_eq!(total("actor=test-admin").await, 14);
    assert_eq!(total("actor=someone").await, 0);
    assert_eq!(total("action=org.create").await, 13);
    assert_eq!(total("action=org.*").await, 13);
    assert_eq!(total("action=org").await, 0, "exact, or a family with .*");
    assert_eq!(total("action=registry.add&status=400").await, 1);
    assert_eq!(total("outcome=failure").await, 2);
    assert_eq!(total("outcome=success").await, 12);
    assert_eq!(total("status=409").await, 1);
    assert_eq!(total("status=4xx").await, 2);
    assert_eq!(
        total("target=org-0").await,
        1,
        "the name a refused create asked for"
    );
    assert_eq!(total("target=model%3Dm").await, 1, "contains");
    let (_, one) = gw
        .admin_get(&c, &format!("/admin/audit?target={}", ids[5]))
        .await;
    assert_eq!(one["total"], 1);
    // Times: RFC 3339 or Unix ms, as `from`/`to` or `since`/`until`.
    let t = all[6]["time"].as_str().unwrap();
    let t_ms = chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .timestamp_millis();
    let newer = all
        .iter()
        .filter(|r| r["time"].as_str().unwrap() >= t)
        .count() as u64;
    for q in [format!("from={t}"), format!("since={t_ms}")] {
        let (_, v) = gw
            .admin_get(&c, &format!("/admin/audit?{}", q.replace('+', "%2B")))
            .await;
        assert_eq!(v["total"], newer, "{q}");
    }
    let (_, v) = gw
        .admin_get(&c, &format!("/admin/audit?until={t_ms}&limit=100"))
        .await;
    assert_eq!(v["total"], 14 - newer);
    assert_eq!(total("from=0&to=1").await, 0);

    // Every bad parameter is a precise 400.
    for (q, detail) in [
        ("outcome=ok", "outcome must be success or failure"),
        ("status=abc", "status must be"),
        ("status=6xx", "status must be"),
        ("from=yesterday", "from must be an RFC 3339 time"),
        ("until=x", "until must be an RFC 3339 time"),
        ("from=2000&to=1000", "from must be before to"),
        ("from=1&since=2", "give from or since, not both"),
        ("page=0", "page must be a positive integer"),
        ("limit=abc", "limit must be a positive integer"),
    ] {
        for path in ["/admin/audit", "/admin/audit/export"] {
            if path.ends_with("export") && (q.starts_with("page") || q.starts_with("limit")) {
                continue; // the export has no pages
            }
            let r = gw
                .admin(&c, Method::GET, &format!("{path}?{q}"))
                .send()
                .await
                .unwrap();
            let (_, body) = assert_error(r, 400, "invalid query parameter").await;
            assert!(
                body["detail"].as_str().unwrap().contains(detail),
                "{q}: {body}"
            );
        }
    }

    // The CSV: every record, oldest first, under a header row; filters apply.
    let r = gw
        .admin(&c, Method::GET, "/admin/audit/export")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"audit.csv\""
    );
    let text = r.text().await.unwrap();
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "time", "actor", "action", "target", "outcome", "status", "error", "error_id",
            "method", "path", "address"
        ]
    );
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 14);
    assert_eq!(&rows[0][3], ids[0].as_str(), "oldest first");
    assert_eq!(&rows[13][2], "registry.add");
    assert_eq!(&rows[13][3], "model=m url=not a url");
    assert_eq!(&rows[13][4], "failure");
    assert_eq!(&rows[13][5], "400");
    assert_eq!(&rows[13][9], "/admin/models/registry");
    let failures = gw
        .admin(
            &c,
            Method::GET,
            "/api/ai/v1/admin/audit/export?outcome=failure",
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(failures.lines().count(), 3, "{failures}");
    // Reads are not changes: still 14.
    assert_eq!(total("").await, 14);
}

fn shared_store(redis: &Redis) -> String {
    format!(
        "[store]\nurl = {:?}\nprefix = \"t\"\n\n[audit]\nretention_hours = 48\n\n",
        redis.url()
    )
}

#[tokio::test]
async fn audit_records_are_shared_through_valkey_and_kept_through_an_outage() {
    let mut redis = Redis::start().await;
    let gw1 = Gateway::start(&shared_store(&redis)).await;
    let gw2 = Gateway::start(&shared_store(&redis)).await;
    let c = Client::new();

    let (s, _, org) = change(
        &gw1,
        &c,
        Method::POST,
        "/admin/orgs",
        Some(json!({"name": "shared"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _, key) = change(
        &gw1,
        &c,
        Method::POST,
        "/admin/keys",
        Some(json!({"org_id": org["id"]})),
    )
    .await;
    assert_eq!(s, 201);
    let secret = key["token"]
        .as_str()
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .to_string();
    let clear = Some(json!({"user_id": "bob"}));
    assert_eq!(
        change(&gw2, &c, Method::POST, "/admin/affinity/clear", clear)
            .await
            .0,
        200
    );
    assert_eq!(
        change(&gw2, &c, Method::DELETE, "/admin/orgs/nope", None)
            .await
            .0,
        404
    );

    // Either instance sees every instance's records.
    for gw in [&gw1, &gw2] {
        let page = audit_when(gw, &c, "limit=100", 4).await;
        let records = page["records"].as_array().unwrap();
        assert_record(
            record(records, "org.create", 201),
            ADMIN_KEY,
            org["id"].as_str(),
            "success",
        );
        assert_record(
            record(records, "key.create", 201),
            ADMIN_KEY,
            key["id"].as_str(),
            "success",
        );
        assert_record(
            record(records, "affinity.clear", 200),
            ADMIN_KEY,
            Some("user_id=bob"),
            "success",
        );
        assert_record(
            record(records, "org.delete", 404),
            ADMIN_KEY,
            Some("nope"),
            "failure",
        );
    }
    let csv = gw2
        .admin(&c, Method::GET, "/admin/audit/export?action=org.*")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // In Valkey: one list per day, expiring the retention after the day ends; no secret.
    let keys: Vec<String> = redis.cmd(&["KEYS", "t:audit:*"]).await;
    let lists: Vec<&String> = keys.iter().filter(|k| !k.contains("batch")).collect();
    assert!(!lists.is_empty() && lists.len() <= 2, "{keys:?}");
    let mut stored = 0;
    for k in lists {
        let ttl: i64 = redis.cmd(&["PTTL", k]).await;
        assert!(ttl > 47 * 3_600_000 && ttl <= 72 * 3_600_000, "{k}: {ttl}");
        let entries: Vec<String> = redis.cmd(&["LRANGE", k, "0", "-1"]).await;
        for e in &entries {
            assert!(!e.contains(&secret) && !e.contains(ADMIN_SECRET), "{e}");
        }
        stored += entries.len();
    }
    assert_eq!(stored, 4, "each record once");

    // Valkey down: a change is not held up by its record, which is kept and written once
    // Valkey is back (here empty: it lost the others).
    redis.kill();
    let started = std::time::Instant::now();
    let (s, _, outcome) = change(&gw1, &c, Method::POST, "/admin/config/reload", None).await;
    assert_eq!(s, 200, "{outcome}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    redis.restart().await;
    let written = eventually(Duration::from_secs(15), || async {
        let (s, v) = gw2.admin_get(&c, "/admin/audit?action=config.reload").await;
        s == 200 && v["total"] == 1
    })
    .await;
    assert!(written, "the record kept through the outage is written");
    let (_, v) = gw2.admin_get(&c, "/admin/audit?action=config.reload").await;
    assert_record(
        &v["records"][0],
        ADMIN_KEY,
        Some(&gw1.config_path().display().to_string()),
        "success",
    );
}
