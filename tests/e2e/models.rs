//! Managed model records (spec 000 "Models") through real HTTP against the real binary: create,
//! list with pages and filters, get, merge-patch, delete; the 400s that keep a model inside the
//! models directory and away from what the gateway owns; records shared through Valkey.

use crate::harness::*;
use reqwest::{Client, Method};
use serde_json::{json, Value};

/// A gateway whose models directory is a fresh folder holding `qwen/` and `g/model.gguf`, and
/// a folder outside it; the directory lives as long as the returned guard.
async fn gateway_with_models(extra: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("qwen")).unwrap();
    std::fs::create_dir_all(models.join("g")).unwrap();
    std::fs::write(models.join("g/model.gguf"), b"GGUF").unwrap();
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), models.join("escape")).unwrap();
    let gw = Gateway::start(&format!(
        "{extra}[runner]\nmodels_dir = {:?}\n",
        models.to_str().unwrap()
    ))
    .await;
    (gw, dir)
}

async fn send(
    gw: &Gateway,
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = gw.admin(c, method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

async fn ok_json(r: reqwest::Response, status: u16) -> Value {
    let url = r.url().to_string();
    assert_eq!(r.status().as_u16(), status, "{url}");
    r.json().await.unwrap()
}

fn vllm(served: &str) -> Value {
    json!({"name": "Qwen 7B", "served_model_name": served, "local_path": "qwen",
        "dtype": "bfloat16", "max_model_len": 8192, "enable_prefix_caching": false,
        "engine_args": [{"flag": "--max-logprobs", "type": "int", "value": 5}],
        "engine_env": [{"key": "NCCL_P2P_DISABLE", "value": "1"}]})
}

#[tokio::test]
async fn model_records_are_created_listed_changed_and_deleted() {
    let (gw, dir) = gateway_with_models("").await;
    let c = Client::new();
    let [api, admin] = PREFIXES;

    // Create under either prefix: 201, stopped, every field as given.
    let a = ok_json(
        send(
            &gw,
            &c,
            Method::POST,
            &format!("{admin}/models"),
            Some(vllm("qwen-a")),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(a["state"], "stopped");
    assert_eq!(a["engine_type"], "vllm");
    assert_eq!(a["task"], "generate");
    assert_eq!(a["served_model_name"], "qwen-a");
    assert_eq!(a["enable_prefix_caching"], false);
    assert_eq!(a["engine_args"][0]["flag"], "--max-logprobs");
    assert!(a["id"].as_str().unwrap().starts_with("mdl_"));
    let gguf = json!({"name": "G", "served_model_name": "g", "engine_type": "llamacpp",
        "local_path": "g/model.gguf", "ngl": 0, "context_size": 4096, "task": "generate"});
    let g = ok_json(
        send(&gw, &c, Method::POST, &format!("{api}/models"), Some(gguf)).await,
        201,
    )
    .await;
    assert_eq!(g["ngl"], 0, "ngl 0 (CPU) stays 0");
    let e = json!({"name": "E", "served_model_name": "embedder", "repo_id": "BAAI/bge-m3", "task": "embed"});
    let e = ok_json(
        send(&gw, &c, Method::POST, &format!("{admin}/models"), Some(e)).await,
        201,
    )
    .await;

    // The served name is unique among managed models.
    let r = send(
        &gw,
        &c,
        Method::POST,
        &format!("{admin}/models"),
        Some(vllm("qwen-a")),
    )
    .await;
    let (_, body) = assert_error(r, 409, "conflict").await;
    assert!(
        body["detail"].as_str().unwrap().contains("qwen-a"),
        "{body}"
    );

    // Lists: pages, filters, bad filter values.
    let list = ok_json(
        send(
            &gw,
            &c,
            Method::GET,
            &format!("{api}/models?limit=2&page=2"),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (
            list["total"].as_u64(),
            list["page"].as_u64(),
            list["limit"].as_u64()
        ),
        (Some(3), Some(2), Some(2))
    );
    assert_eq!(list["models"].as_array().unwrap().len(), 1);
    assert_eq!(list["models"][0]["id"], e["id"], "oldest first");
    for (query, ids) in [
        ("engine_type=llamacpp", vec![&g["id"]]),
        ("state=stopped", vec![&a["id"], &g["id"], &e["id"]]),
        ("state=running", vec![]),
        ("q=BGE", vec![&e["id"]]),
        ("q=QWEN-A&engine_type=vllm", vec![&a["id"]]),
    ] {
        let list = ok_json(
            send(
                &gw,
                &c,
                Method::GET,
                &format!("{admin}/models?{query}"),
                None,
            )
            .await,
            200,
        )
        .await;
        let got: Vec<&Value> = list["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["id"])
            .collect();
        assert_eq!(got, ids, "{query}");
    }
    for query in ["state=sleeping", "engine_type=sglang", "page=0", "limit=x"] {
        let r = send(
            &gw,
            &c,
            Method::GET,
            &format!("{admin}/models?{query}"),
            None,
        )
        .await;
        assert_eq!(r.status(), 400, "{query}");
    }

    // Get; an unknown id is a 404 in the admin error shape.
    let id = a["id"].as_str().unwrap();
    let got = ok_json(
        send(&gw, &c, Method::GET, &format!("{api}/models/{id}"), None).await,
        200,
    )
    .await;
    assert_eq!(got, a);
    let r = send(
        &gw,
        &c,
        Method::GET,
        &format!("{admin}/models/mdl_nope"),
        None,
    )
    .await;
    assert_error(r, 404, "model not found").await;

    // PATCH is a merge patch: set, clear with null, leave the rest; checked as a whole.
    let patched = ok_json(
        send(
            &gw,
            &c,
            Method::PATCH,
            &format!("{admin}/models/{id}"),
            Some(json!({"max_model_len": 16384, "dtype": null, "served_model_name": "qwen-b"})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(patched["max_model_len"], 16384);
    assert!(patched.get("dtype").is_none(), "{patched}");
    assert_eq!(patched["local_path"], "qwen");
    assert_eq!(patched["created_at"], a["created_at"]);
    // Its old served name is free again; the new one is taken.
    ok_json(
        send(
            &gw,
            &c,
            Method::POST,
            &format!("{admin}/models"),
            Some(vllm("qwen-a")),
        )
        .await,
        201,
    )
    .await;
    let r = send(
        &gw,
        &c,
        Method::PATCH,
        &format!("{admin}/models/{}", g["id"].as_str().unwrap()),
        Some(json!({"served_model_name": "qwen-b"})),
    )
    .await;
    assert_error(r, 409, "conflict").await;
    for (body, detail) in [
        (
            json!({"engine_args": [{"flag": "--port", "type": "int", "value": 9}]}),
            "engine_args[0]: --port is forbidden",
        ),
        (json!({"colour": "blue"}), "unknown field `colour`"),
        (json!({"name": null}), "missing field `name`"),
        (json!({"ngl": 10}), "ngl: an option of llamacpp models only"),
        (json!(["not", "an", "object"]), "a JSON object"),
    ] {
        let r = send(
            &gw,
            &c,
            Method::PATCH,
            &format!("{admin}/models/{id}"),
            Some(body.clone()),
        )
        .await;
        let (_, b) = assert_error(r, 400, "invalid model").await;
        assert!(
            b["detail"].as_str().unwrap().contains(detail),
            "{body}: {b}"
        );
    }
    let r = send(
        &gw,
        &c,
        Method::PATCH,
        &format!("{admin}/models/mdl_nope"),
        Some(json!({})),
    )
    .await;
    assert_error(r, 404, "model not found").await;

    // Delete: the record goes, the files stay.
    let gid = g["id"].as_str().unwrap();
    let deleted = ok_json(
        send(
            &gw,
            &c,
            Method::DELETE,
            &format!("{api}/models/{gid}"),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        deleted,
        json!({"id": gid, "status": "deleted", "files_preserved": true})
    );
    assert!(dir.path().join("models/g/model.gguf").exists());
    let r = send(&gw, &c, Method::GET, &format!("{admin}/models/{gid}"), None).await;
    assert_error(r, 404, "model not found").await;
    let r = send(
        &gw,
        &c,
        Method::DELETE,
        &format!("{admin}/models/{gid}"),
        None,
    )
    .await;
    assert_error(r, 404, "model not found").await;
    // Its served name can be used again.
    let again = json!({"name": "G2", "served_model_name": "g", "engine_type": "llamacpp", "local_path": "g/model.gguf"});
    ok_json(
        send(
            &gw,
            &c,
            Method::POST,
            &format!("{admin}/models"),
            Some(again),
        )
        .await,
        201,
    )
    .await;

    // Credentials are required, as everywhere in the admin API.
    let r = c
        .get(format!("http://{}{admin}/models", gw.admin))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_model_that_escapes_the_models_directory_or_takes_over_the_engine_is_refused() {
    let (gw, _dir) = gateway_with_models("").await;
    let c = Client::new();
    let with = |extra: Value| {
        let mut v = json!({"name": "m", "served_model_name": "m", "local_path": "qwen"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    for (body, detail) in [
        (
            with(json!({"local_path": "../outside"})),
            "local_path: may not contain `..`",
        ),
        (
            with(json!({"local_path": "/etc/passwd"})),
            "local_path: must be relative",
        ),
        (
            with(json!({"local_path": "escape"})),
            "local_path: leads outside the models directory through a symbolic link",
        ),
        (
            with(json!({"local_path": "escape/weights.safetensors"})),
            "leads outside the models directory",
        ),
        (
            with(json!({"tokenizer": "../tok"})),
            "tokenizer: not a repository id",
        ),
        (
            with(
                json!({"engine_args": [{"flag": "--host", "type": "string", "value": "0.0.0.0"}]}),
            ),
            "--host is forbidden",
        ),
        (
            with(json!({"engine_args": [{"flag": "--api-key", "type": "string", "value": "k"}]})),
            "--api-key is forbidden",
        ),
        (
            with(
                json!({"engine_args": [{"flag": "--ssl-keyfile", "type": "string", "value": "k"}]}),
            ),
            "--ssl-keyfile is forbidden",
        ),
        (
            with(json!({"engine_env": [{"key": "VLLM_API_KEY", "value": "k"}]})),
            "VLLM_API_KEY is protected",
        ),
        (
            with(json!({"engine_env": [{"key": "LLAMA_ARG_PORT", "value": "1"}]})),
            "LLAMA_ARG_PORT is protected",
        ),
        (
            with(json!({"engine_env": [{"key": "LD_PRELOAD", "value": "/tmp/x.so"}]})),
            "LD_PRELOAD is protected",
        ),
        // Secrets are not stored: a token is named by its variable.
        (
            with(json!({"hf_token": "hf_secret"})),
            "unknown field `hf_token`",
        ),
        (
            with(json!({"hf_token_env": "not a name"})),
            "hf_token_env: the name of a variable beginning HF_",
        ),
        // The gateway's own secrets are not an engine's to read.
        (
            with(json!({"hf_token_env": "INFERGATE_ADMIN_API_SECRET"})),
            "hf_token_env: the name of a variable beginning HF_",
        ),
        // A flag hidden in a value.
        (
            with(
                json!({"engine_args": [{"flag": "--max-logprobs", "type": "list", "value": ["5", "--host", "0.0.0.0"]}]}),
            ),
            "of --max-logprobs would be read as a flag",
        ),
        (
            with(json!({"engine_env": [{"key": "LLAMA_ARG_MMPROJ", "value": "/etc/x"}]})),
            "LLAMA_ARG_MMPROJ is protected",
        ),
        (
            with(json!({"repo_id": "a/b"})),
            "give repo_id or local_path, not both",
        ),
    ] {
        let r = send(&gw, &c, Method::POST, "/admin/models", Some(body.clone())).await;
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{body}: {b}");
        let text = format!("{} {}", b["error"], b["detail"]);
        assert!(text.contains(detail), "{detail} not in {text}");
        assert!(
            !text.contains("hf_secret"),
            "a secret is never echoed: {text}"
        );
    }
    let list = ok_json(send(&gw, &c, Method::GET, "/admin/models", None).await, 200).await;
    assert_eq!(list["total"], 0, "nothing was saved");
}

#[tokio::test]
async fn with_valkey_every_instance_reads_and_guards_the_same_records() {
    let redis = Redis::start().await;
    let store = format!("[store]\nurl = {:?}\nprefix = \"mdl\"\n\n", redis.url());
    let (gw1, _d1) = gateway_with_models(&store).await;
    let (gw2, _d2) = gateway_with_models(&store).await;
    let c = Client::new();
    let m = ok_json(
        send(
            &gw1,
            &c,
            Method::POST,
            "/admin/models",
            Some(vllm("shared")),
        )
        .await,
        201,
    )
    .await;
    let id = m["id"].as_str().unwrap();
    let seen = ok_json(
        send(&gw2, &c, Method::GET, &format!("/admin/models/{id}"), None).await,
        200,
    )
    .await;
    assert_eq!(seen, m);
    // The served name is unique across instances.
    let r = send(
        &gw2,
        &c,
        Method::POST,
        "/admin/models",
        Some(vllm("shared")),
    )
    .await;
    assert_error(r, 409, "conflict").await;
    ok_json(
        send(
            &gw2,
            &c,
            Method::PATCH,
            &format!("/admin/models/{id}"),
            Some(json!({"max_num_seqs": 8})),
        )
        .await,
        200,
    )
    .await;
    let seen = ok_json(
        send(&gw1, &c, Method::GET, &format!("/admin/models/{id}"), None).await,
        200,
    )
    .await;
    assert_eq!(seen["max_num_seqs"], 8);
    ok_json(
        send(
            &gw2,
            &c,
            Method::DELETE,
            &format!("/admin/models/{id}"),
            None,
        )
        .await,
        200,
    )
    .await;
    let list = ok_json(
        send(&gw1, &c, Method::GET, "/admin/models", None).await,
        200,
    )
    .await;
    assert_eq!(list["total"], 0);
}
