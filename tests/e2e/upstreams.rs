//! `/admin/upstreams` and `/admin/models/registry` (spec 000) through real HTTP.

use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};

#[tokio::test]
async fn upstreams_show_health_and_refresh_probes_now() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m", "n"]).await;
    // Probes every 60 s: only the refresh can change what is seen.
    let gw = Gateway::start(&format!(
        "health.interval_ms = 60000\n{}{}",
        server(&a.url(), &["m"]),
        server(&b.url(), &["m", "n"])
    ))
    .await;
    let c = Client::new();
    let (status, up) = gw.admin_get(&c, "/admin/upstreams").await;
    assert_eq!(status, 200);
    let mut both = vec![a.url(), b.url()];
    both.sort();
    assert_eq!(up["registry"], json!({"m": both, "n": [b.url()]}));
    assert_eq!(up["upstreams"].as_array().unwrap().len(), 2);
    let checked = |v: &Value, url: &str| -> (u64, u64) {
        let s = v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["url"] == url)
            .unwrap();
        (
            s["last_check_ms"].as_u64().unwrap(),
            s["consecutive_failures"].as_u64().unwrap(),
        )
    };
    let (before, _) = checked(&up, &a.url());
    a.state.set_healthy(false);
    let r = gw
        .admin(
            &c,
            Method::POST,
            "/api/ai/v1/admin/upstreams/refresh-health",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.unwrap();
    let (after, failures) = checked(&fresh, &a.url());
    assert!(after > before, "probed now");
    assert_eq!(failures, 1, "a's failed probe is in the answer");
    assert_eq!(checked(&fresh, &b.url()).1, 0);
}

#[tokio::test]
async fn registry_routes_are_added_listed_and_removed() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m", "extra"]).await;
    let gw = Gateway::start(&server(&a.url(), &["m"])).await;
    let c = Client::new();
    let post = |body: Value| {
        gw.admin(&c, Method::POST, "/admin/models/registry")
            .json(&body)
            .send()
    };
    assert_eq!(gw.chat(&c, &chat_body("extra")).await.status(), 404);

    let r = post(json!({"model": "extra", "url": format!("{}/", b.url())}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"model": "extra", "url": b.url(), "status": "added"})
    );
    let r = gw.chat(&c, &chat_body("extra")).await;
    assert_eq!(r.status(), 200, "applied when the call returns");
    assert_eq!(r.headers()["x-mock-server"], "b");
    let r = post(json!({"model": "extra", "url": b.url()}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "adding it again changes nothing");

    let (status, list) = gw.admin_get(&c, "/admin/models/registry").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["routes"],
        json!([
            {"model": "extra", "url": b.url(), "source": "registry"},
            {"model": "m", "url": a.url(), "source": "config"},
        ])
    );
    let (_, only) = gw
        .admin_get(&c, "/admin/models/registry?model=m&limit=1")
        .await;
    assert_eq!(
        (only["total"].clone(), only["limit"].clone()),
        (json!(1), json!(1))
    );

    for (body, what) in [
        (json!({"model": "x", "url": "ftp://host/v1"}), "http"),
        (json!({"model": "", "url": b.url()}), "model"),
        (json!({"model": "x"}), "url"),
    ] {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["detail"].as_str().unwrap().contains(what), "{body}: {e}");
    }

    // Removing: a config route is refused, an unknown one is 404.
    let del = |body: Value| {
        gw.admin(&c, Method::DELETE, "/admin/models/registry")
            .json(&body)
            .send()
    };
    assert_eq!(
        del(json!({"model": "m", "url": a.url()}))
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        del(json!({"model": "nope", "url": b.url()}))
            .await
            .unwrap()
            .status(),
        404
    );
    let r = gw
        .admin(
            &c,
            Method::DELETE,
            &format!(
                "/admin/models/registry?model=extra&url={}",
                url::form_urlencoded::byte_serialize(b.url().as_bytes()).collect::<String>()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "removed");
    assert_eq!(
        gw.chat(&c, &chat_body("extra")).await.status(),
        404,
        "unrouted at once"
    );
}
