//! Identity (spec 000) through real HTTP: organizations, users, API keys, and keys at work on
//! the data plane (scopes, revocation, expiry, the key's user as affinity identity).

use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::time::Duration;

use crate::harness::admin_call as admin;

async fn create_key(gw: &Gateway, c: &Client, body: Value) -> (String, Value) {
    let (status, k) = admin(gw, c, Method::POST, "/admin/keys", Some(body)).await;
    assert_eq!(status, 201, "{k}");
    (k["token"].as_str().unwrap().to_string(), k)
}

async fn chat_with(gw: &Gateway, c: &Client, token: &str, model: &str) -> reqwest::Response {
    c.post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&chat_body(model))
        .send()
        .await
        .unwrap()
}

fn openai_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn a_keys_life_on_the_data_plane() {
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "auth.proxy = \"required\"\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    // No key, a malformed one, an unknown one: 401 in OpenAI's shape.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    openai_error(&r.json().await.unwrap(), "invalid_api_key");
    for bad in ["nonsense", "igk_nope:secret"] {
        let r = chat_with(&gw, &c, bad, "m").await;
        assert_eq!(r.status(), 401, "{bad}");
    }
    let r = c.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401, "the model list needs a key too");
    assert_eq!(
        m.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the server"
    );

    let (_, org) = admin(
        &gw,
        &c,
        Method::POST,
        "/admin/orgs",
        Some(json!({"name": "Acme"})),
    )
    .await;
    let (_, user) = admin(
        &gw,
        &c,
        Method::POST,
        "/admin/users",
        Some(json!({"name": "alice", "org_id": org["id"]})),
    )
    .await;
    let (token, key) = create_key(
        &gw,
        &c,
        json!({"scopes": "chat,completions", "user_id": user["id"], "name": "alice's"}),
    )
    .await;
    assert_eq!(key["scopes"], json!(["chat", "completions"]));
    assert_eq!(
        key["org_id"], org["id"],
        "a user's key belongs to the user's organization"
    );
    assert_eq!(key["status"], "active");
    assert!(key.get("secret_sha256").is_none());
    let (id, secret) = token.split_once(':').unwrap();
    assert_eq!(id, key["id"].as_str().unwrap());

    // Used as a bearer and as the header pair; the server never sees it.
    let r = chat_with(&gw, &c, &token, "m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        *m.state.last_authorization.lock().unwrap(),
        None,
        "the client's key is not forwarded"
    );
    let r = c
        .post(gw.url("/v1/completions"))
        .header("api-key", id)
        .header("api-secret", secret)
        .json(&json!({"model": "m", "prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Out of scope: 403.
    let r = c
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(&token)
        .json(&json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    openai_error(&r.json().await.unwrap(), "insufficient_scope");
    let r = c
        .get(gw.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A wrong secret for a real key id.
    let r = chat_with(&gw, &c, &format!("{id}:wrong"), "m").await;
    assert_eq!(r.status(), 401);

    // The key's user is the affinity identity: one miss, then a hit.
    chat_with(&gw, &c, &token, "m").await;
    let (_, aff) = gw.admin_get(&c, "/admin/affinity").await;
    assert_eq!(aff["providers"][0]["session_miss_count"], 1);
    assert_eq!(aff["providers"][0]["session_hit_count"], 2);

    // Revoked: refused at once, listed as revoked.
    let (status, revoked) =
        admin(&gw, &c, Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_string());
    let r = chat_with(&gw, &c, &token, "m").await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let (_, list) = gw
        .admin_get(
            &c,
            &format!("/admin/keys?user_id={}", user["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["keys"][0]["status"], "revoked");
    assert!(
        list["keys"][0].get("token").is_none(),
        "the token is shown once"
    );
    let (status, _) = admin(&gw, &c, Method::DELETE, "/admin/keys/igk_nope", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn keys_expire_carry_admin_roles_and_are_validated() {
    let m = mock("a", &["m"]).await;
    let gw = Gateway::start(&format!(
        "auth.proxy = \"required\"\n{}",
        server(&m.url(), &["m"])
    ))
    .await;
    let c = Client::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let soon = chrono::DateTime::from_timestamp_millis(now_ms + 1500).unwrap();
    let (token, key) = create_key(
        &gw,
        &c,
        json!({"scopes": ["chat"], "expires_at": soon.to_rfc3339()}),
    )
    .await;
    assert!(key["expires_at"].is_string());
    assert_eq!(chat_with(&gw, &c, &token, "m").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = chat_with(&gw, &c, &token, "m").await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));

    // A key with the ai_admin role administers; one without is refused (403).
    let (admin_token, _) = create_key(&gw, &c, json!({"scopes": "", "roles": ["ai_admin"]})).await;
    let (plain_token, _) = create_key(&gw, &c, json!({})).await;
    let url = format!("http://{}/admin/servers", gw.admin);
    assert_eq!(
        c.get(&url)
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(&url)
            .bearer_auth(&plain_token)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        chat_with(&gw, &c, &admin_token, "m").await.status(),
        403,
        "no data-plane scope"
    );
    assert_eq!(
        chat_with(&gw, &c, &plain_token, "m").await.status(),
        200,
        "all scopes by default"
    );

    for (body, what) in [
        (json!({"scopes": "chat,nope"}), "unknown scope"),
        (json!({"expires_at": "tomorrow"}), "RFC 3339"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "future"),
        (json!({"rpm": 0}), "at least 1"),
        (json!({"user_id": "usr_missing"}), "does not exist"),
        (json!({"roles": ["Admin!"]}), "role"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let (status, e) = admin(&gw, &c, Method::POST, "/admin/keys", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}");
        assert!(e["detail"].as_str().unwrap().contains(what), "{body}: {e}");
    }
    let r = gw
        .admin(&c, Method::POST, "/admin/keys")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn organizations_and_users() {
    let gw = Gateway::start("").await;
    let c = Client::new();
    let (status, acme) = admin(
        &gw,
        &c,
        Method::POST,
        "/admin/orgs",
        Some(json!({"name": "Acme", "description": "first"})),
    )
    .await;
    assert_eq!(status, 201);
    assert!(acme["id"].as_str().unwrap().starts_with("org_"));
    assert!(acme["created_at"].as_str().unwrap().ends_with('Z'));
    let (status, e) = admin(
        &gw,
        &c,
        Method::POST,
        "/api/ai/v1/admin/orgs",
        Some(json!({"name": "ACME"})),
    )
    .await;
    assert_eq!(
        (status, e["error"].clone()),
        (409, json!("conflict")),
        "names are unique, case-insensitively"
    );
    for bad in [
        json!({"name": ""}),
        json!({"name": "x".repeat(129)}),
        json!({}),
        json!({"name": "a", "extra": 1}),
    ] {
        assert_eq!(
            admin(&gw, &c, Method::POST, "/admin/orgs", Some(bad.clone()))
                .await
                .0,
            400,
            "{bad}"
        );
    }
    let (_, globex) = admin(
        &gw,
        &c,
        Method::POST,
        "/admin/orgs",
        Some(json!({"name": "Globex"})),
    )
    .await;
    let acme_id = acme["id"].as_str().unwrap();
    let globex_id = globex["id"].as_str().unwrap();

    // Rename; the old name is free again; description cleared with null.
    let (status, renamed) = admin(
        &gw,
        &c,
        Method::PATCH,
        &format!("/admin/orgs/{acme_id}"),
        Some(json!({"name": "Acme Corp", "description": null})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (renamed["name"].clone(), renamed["description"].clone()),
        (json!("Acme Corp"), Value::Null)
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::PATCH,
            &format!("/admin/orgs/{acme_id}"),
            Some(json!({"name": "globex"}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::PATCH,
            "/admin/orgs/org_nope",
            Some(json!({"name": "z"}))
        )
        .await
        .0,
        404
    );

    let (_, list) = gw.admin_get(&c, "/admin/orgs?q=corp").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["orgs"][0]["name"], "Acme Corp");
    let (status, lookup) = gw.admin_get(&c, "/admin/orgs/lookup?q=glo").await;
    assert_eq!(status, 200);
    assert_eq!(lookup, json!([{"id": globex_id, "name": "Globex"}]));

    // Users: unique within an organization.
    let (status, bob) = admin(
        &gw,
        &c,
        Method::POST,
        "/admin/users",
        Some(json!({"name": "bob", "email": "bob@acme.test", "org_id": acme_id})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::POST,
            "/admin/users",
            Some(json!({"name": "Bob", "org_id": acme_id}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::POST,
            "/admin/users",
            Some(json!({"name": "bob", "org_id": globex_id}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::POST,
            "/admin/users",
            Some(json!({"name": "eve", "org_id": "org_nope"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::POST,
            "/admin/users",
            Some(json!({"name": "eve", "email": "not-an-address"}))
        )
        .await
        .0,
        400
    );
    let (_, users) = gw
        .admin_get(&c, &format!("/admin/users?org_id={acme_id}"))
        .await;
    assert_eq!(users["total"], 1);
    let (_, lookup) = gw.admin_get(&c, "/admin/users/lookup?q=acme.test").await;
    assert_eq!(lookup, json!([{"id": bob["id"], "name": "bob"}]));
    let bob_id = bob["id"].as_str().unwrap();
    let (status, patched) = admin(
        &gw,
        &c,
        Method::PATCH,
        &format!("/admin/users/{bob_id}"),
        Some(json!({"email": null})),
    )
    .await;
    assert_eq!((status, patched["email"].clone()), (200, Value::Null));

    // A referenced organization or user is only deleted with cascade.
    let (_, _) = create_key(&gw, &c, json!({"user_id": bob_id})).await;
    let (status, e) = admin(
        &gw,
        &c,
        Method::DELETE,
        &format!("/admin/users/{bob_id}"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert!(e["detail"].as_str().unwrap().contains("cascade"));
    let (status, e) = admin(
        &gw,
        &c,
        Method::DELETE,
        &format!("/admin/orgs/{acme_id}"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{e}");
    let (status, done) = admin(
        &gw,
        &c,
        Method::DELETE,
        &format!("/admin/orgs/{acme_id}?cascade=true"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        done,
        json!({"id": acme_id, "deleted": true, "users_deleted": 1, "keys_revoked": 1})
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::DELETE,
            &format!("/admin/orgs/{acme_id}"),
            None
        )
        .await
        .0,
        404
    );
    let (_, keys) = gw
        .admin_get(&c, &format!("/admin/keys?user_id={bob_id}"))
        .await;
    assert_eq!(
        keys["keys"][0]["status"], "revoked",
        "kept for the record, revoked"
    );
    // Globex's bob is deleted without cascade (no keys); the name can be reused.
    let (_, gusers) = gw
        .admin_get(&c, &format!("/admin/users?org_id={globex_id}"))
        .await;
    let gbob = gusers["users"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::DELETE,
            &format!("/admin/users/{gbob}"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        admin(
            &gw,
            &c,
            Method::POST,
            "/admin/users",
            Some(json!({"name": "bob", "org_id": globex_id}))
        )
        .await
        .0,
        201
    );
    let r = gw
        .admin(&c, Method::DELETE, "/admin/orgs/x?cascade=maybe")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn key_lists_filter_sort_and_page() {
    let gw = Gateway::start("").await;
    let c = Client::new();
    let (_, org) = admin(
        &gw,
        &c,
        Method::POST,
        "/admin/orgs",
        Some(json!({"name": "o"})),
    )
    .await;
    for name in ["beta", "alpha", "gamma"] {
        create_key(&gw, &c, json!({"name": name, "org_id": org["id"]})).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    create_key(&gw, &c, json!({"name": "other"})).await;
    let org_id = org["id"].as_str().unwrap();
    let names = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = gw.admin_get(&c, "/admin/keys").await;
    assert_eq!(
        names(&all),
        ["other", "gamma", "alpha", "beta"],
        "newest first"
    );
    let (_, org_keys) = gw
        .admin_get(&c, &format!("/admin/keys?org_id={org_id}&sort=name"))
        .await;
    assert_eq!(names(&org_keys), ["alpha", "beta", "gamma"]);
    let (_, page2) = gw
        .admin_get(
            &c,
            &format!("/admin/keys?org_id={org_id}&sort=-name&limit=2&page=2"),
        )
        .await;
    assert_eq!(
        (names(&page2), page2["total"].clone()),
        (vec!["alpha".to_string()], json!(3))
    );
    let (_, q) = gw.admin_get(&c, "/admin/keys?q=AMM").await;
    assert_eq!(names(&q), ["gamma"]);
    let (status, _) = gw.admin_get(&c, "/admin/keys?sort=colour").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn with_valkey_keys_reach_every_instance_within_a_second() {
    let redis = Redis::start().await;
    let m = mock("a", &["m"]).await;
    let extra = format!(
        "auth.proxy = \"required\"\n{}[store]\nurl = \"{}\"\nprefix = \"idk\"\n",
        server(&m.url(), &["m"]),
        redis.url()
    );
    let gw1 = Gateway::start(&extra).await;
    let gw2 = Gateway::start(&extra).await;
    let c = Client::new();
    let (token, key) = create_key(&gw1, &c, json!({"scopes": "chat"})).await;
    let id = key["id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(1), || async {
            chat_with(&gw2, &c, &token, "m").await.status() == 200
        })
        .await,
        "a key created through gw1 works on gw2 within a second"
    );
    let (status, _) = admin(&gw2, &c, Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(1), || async {
            chat_with(&gw1, &c, &token, "m").await.status() == 401
        })
        .await,
        "revoked through gw2, refused by gw1 within a second"
    );
    // A third instance started later loads the keys before serving.
    let (token2, _) = create_key(&gw1, &c, json!({"scopes": "chat"})).await;
    let gw3 = Gateway::start(&extra).await;
    assert_eq!(chat_with(&gw3, &c, &token2, "m").await.status(), 200);
    assert_eq!(chat_with(&gw3, &c, &token, "m").await.status(), 401);
}

#[tokio::test]
async fn cut_off_from_valkey_keys_serve_from_the_cache_until_max_stale_then_503() {
    let m = mock("a", &["m"]).await;
    let mut redis = Redis::start().await;
    let gw = Gateway::start(&format!(
        "auth.proxy = \"required\"\nauth.max_stale_secs = 3\n{}[store]\nurl = {:?}\nprefix = \"stale\"\n",
        server(&m.url(), &["m"]),
        redis.url()
    ))
    .await;
    let c = Client::new();
    let (token, _) = create_key(&gw, &c, json!({})).await;
    let ok = || async { chat_with(&gw, &c, &token, "m").await.status() == 200 };
    assert!(eventually(Duration::from_secs(5), ok).await);
    // Keep the keys for the restart (the test server persists nothing on its own).
    let _: String = redis.cmd(&["SAVE"]).await;
    redis.kill();
    let cut = std::time::Instant::now();
    // The cache still serves...
    assert_eq!(chat_with(&gw, &c, &token, "m").await.status(), 200);
    // ...until it has not been confirmed for max_stale_secs: then 503, with Retry-After.
    let refused = || async { chat_with(&gw, &c, &token, "m").await.status() == 503 };
    assert!(eventually(Duration::from_secs(10), refused).await);
    let after = cut.elapsed();
    assert!(after >= Duration::from_secs(1), "refused after {after:?}");
    let r = chat_with(&gw, &c, &token, "m").await;
    assert!(r.headers().contains_key("retry-after"));
    openai_error(&r.json().await.unwrap(), "keys_unconfirmed");
    // An unknown key cannot be told from a new one either: 503, not 401.
    assert_eq!(
        chat_with(&gw, &c, "ak_unknown:secret", "m").await.status(),
        503
    );
    // Valkey back: the keys are confirmed again and served.
    redis.restart().await;
    assert!(eventually(Duration::from_secs(10), ok).await);
}
