//! Model discovery through the real binary: the models directory (set through the admin API,
//! kept in the store, shared by instances), its folders, and what one holds, read from headers
//! of fixture files the test writes (sparse: an 8B layout costs no disk). Nothing outside the
//! models directory is ever listed or read.

use crate::harness::*;
use crate::lifecycle::call;
use infergate::modelfiles::gguf::{self, Meta};
use infergate::modelfiles::safetensors;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A models directory: `llama` (two bf16 safetensors shards of a Llama-3.1-8B layout and its
/// config), `gguf` (a Q4_K_M file and a split Q8_0 set missing a part), `empty`, a hidden
/// folder, and `escape`, a link to a folder outside.
fn models_dir(root: &Path) -> std::path::PathBuf {
    let models = root.join("models");
    let llama = models.join("llama");
    std::fs::create_dir_all(&llama).unwrap();
    safetensors::write_sparse(
        &llama.join("model-00001-of-00002.safetensors"),
        &[
            ("model.embed_tokens.weight", "BF16", &[128_256, 4096]),
            (
                "model.layers.0.mlp.down_proj.weight",
                "BF16",
                &[4096, 14_336],
            ),
        ],
    )
    .unwrap();
    safetensors::write_sparse(
        &llama.join("model-00002-of-00002.safetensors"),
        &[("lm_head.weight", "BF16", &[128_256, 4096])],
    )
    .unwrap();
    std::fs::write(
        llama.join("config.json"),
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 131072,
            "torch_dtype": "bfloat16", "vocab_size": 128256})
        .to_string(),
    )
    .unwrap();
    std::fs::write(llama.join("tokenizer.json"), b"{}").unwrap();
    let g = models.join("gguf");
    std::fs::create_dir_all(&g).unwrap();
    let meta = |ft: u32| {
        vec![
            ("general.architecture", Meta::Str("llama".into())),
            ("general.file_type", Meta::U32(ft)),
            ("llama.context_length", Meta::U32(131_072)),
            ("llama.block_count", Meta::U32(32)),
            ("llama.embedding_length", Meta::U32(4096)),
            ("llama.attention.head_count", Meta::U32(32)),
            ("llama.attention.head_count_kv", Meta::U32(8)),
        ]
    };
    gguf::write_sparse(
        &g.join("llama-Q4_K_M.gguf"),
        &meta(15),
        &[("blk.0.attn_q.weight", 12, &[4096, 4096])],
    )
    .unwrap();
    gguf::write_sparse(
        &g.join("llama-Q8_0-00001-of-00002.gguf"),
        &meta(7),
        &[("blk.0.attn_q.weight", 8, &[4096, 4096])],
    )
    .unwrap();
    std::fs::write(g.join("truncated.gguf"), &b"GGUF\x03\x00\x00\x00\x01"[..]).unwrap();
    std::fs::create_dir_all(models.join("empty")).unwrap();
    std::fs::create_dir_all(models.join(".cache")).unwrap();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(root.join("outside/secret.gguf"), b"GGUF").unwrap();
    std::os::unix::fs::symlink(root.join("outside"), models.join("escape")).unwrap();
    // Links out from inside model folders, and a FIFO where a config should be.
    std::os::unix::fs::symlink(root.join("outside"), g.join("ext")).unwrap();
    let linked = models.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    safetensors::write_sparse(
        &root.join("outside/secret.safetensors"),
        &[("s", "F32", &[4])],
    )
    .unwrap();
    std::os::unix::fs::symlink(
        root.join("outside/secret.safetensors"),
        linked.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        linked.join("config.json"),
        r#"{"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":4}"#,
    )
    .unwrap();
    let fifo = models.join("fifo");
    std::fs::create_dir_all(&fifo).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(fifo.join("config.json"))
        .status()
        .unwrap();
    assert!(made.success());
    safetensors::write_sparse(&fifo.join("model.safetensors"), &[("w", "BF16", &[64, 64])])
        .unwrap();
    models
}

#[tokio::test]
async fn folders_of_the_models_directory_are_listed_and_inspected_from_their_headers() {
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    let gw = Gateway::start(&format!(
        "[runner]\nmodels_dir = {:?}\n",
        models.to_str().unwrap()
    ))
    .await;
    let c = Client::new();

    let (status, b) = call(&gw, &c, Method::GET, "/models/base-dir", None).await;
    assert_eq!((status, b["source"].as_str()), (200, Some("config")), "{b}");
    assert_eq!(b["base_dir"], models.to_str().unwrap());

    // Hidden folders and links out are not listed; sizes and contents are.
    let (status, list) = call(&gw, &c, Method::GET, "/models/local-folders", None).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["empty", "fifo", "gguf", "linked", "llama"]);
    let llama = &list[4];
    assert_eq!(
        (
            llama["safetensors_files"].as_u64(),
            llama["has_config"].as_bool()
        ),
        (Some(2), Some(true))
    );
    // Sparse files: their length counts, not their blocks on disk.
    assert!(
        llama["size_bytes"].as_u64().unwrap() > 2 * 128_256 * 4096 * 2,
        "{llama}"
    );
    // The linked folder inside is not counted.
    assert_eq!(list[2]["gguf_files"], 3);

    let (status, r) = call(
        &gw,
        &c,
        Method::GET,
        "/models/inspect-folder?folder=llama",
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let st = &r["safetensor_info"];
    assert_eq!(st["file_count"], 2);
    assert_eq!(st["parameters"], 2 * 128_256 * 4096 + 4096 * 14_336);
    assert_eq!(st["dtype"], "BF16");
    assert_eq!(r["config"]["num_key_value_heads"], 8);
    assert_eq!(r["config"]["head_dim"], 128);
    assert_eq!(r["params_b"], 1.11);
    assert_eq!(r["engine_recommendation"]["recommended"], "vllm");
    assert_eq!(r["warnings"], json!([]));

    let (status, r) = call(
        &gw,
        &c,
        Method::GET,
        "/models/inspect-folder?folder=gguf",
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let groups = r["gguf_groups"].as_array().unwrap();
    let q4 = groups.iter().find(|g| g["quant_type"] == "Q4_K_M").unwrap();
    assert_eq!(
        (q4["status"].as_str(), q4["is_recommended"].as_bool()),
        (Some("ready"), Some(true))
    );
    assert_eq!(q4["metadata"]["head_count_kv"], 8);
    let q8 = groups.iter().find(|g| g["quant_type"] == "Q8_0").unwrap();
    assert_eq!(
        (q8["status"].as_str(), &q8["missing_parts"]),
        (Some("incomplete"), &json!([2]))
    );
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("truncated.gguf: "), "{r}");
    // A linked folder is not looked into: nothing of what it holds is named.
    assert!(
        warnings.contains("ext/: leads outside the models directory"),
        "{r}"
    );
    assert!(!warnings.contains("secret"), "{r}");
    assert_eq!(r["engine_recommendation"]["recommended"], "llamacpp");

    // A linked shard is not read, and a FIFO does not hold the call.
    let (s, r) = call(
        &gw,
        &c,
        Method::GET,
        "/models/inspect-folder?folder=linked",
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["warnings"]
            .to_string()
            .contains("leads outside the models directory"),
        "{r}"
    );
    assert_eq!(r["safetensor_info"], Value::Null, "{r}");
    let (s, r) = call(
        &gw,
        &c,
        Method::GET,
        "/models/inspect-folder?folder=fifo",
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    // Not a file: not listed, not opened (a FIFO would block a reader).
    assert_eq!(r["config"], Value::Null, "{r}");
    assert_eq!(r["config_files"], json!([]), "{r}");
    let (s, r) = call(
        &gw,
        &c,
        Method::POST,
        "/models/dry-run",
        Some(json!({"name": "f", "served_model_name": "f", "local_path": "fifo"})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["warnings"].to_string().contains("not a regular file"),
        "{r}"
    );
    let (_, r) = call(
        &gw,
        &c,
        Method::POST,
        "/models/dry-run",
        Some(json!({"name": "l", "served_model_name": "l", "local_path": "linked"})),
    )
    .await;
    assert!(
        r["warnings"]
            .to_string()
            .contains("leads outside the models directory"),
        "{r}"
    );
    // Both repo_id and local_path: refused, and neither is read as a path.
    let (_, r) = call(
        &gw,
        &c,
        Method::POST,
        "/models/dry-run",
        Some(
            json!({"name": "l", "served_model_name": "l", "repo_id": "etc", "local_path": "llama"}),
        ),
    )
    .await;
    assert_eq!(
        (r["valid"].as_bool(), &r["vram_estimate"]),
        (Some(false), &Value::Null),
        "{r}"
    );

    // Nothing outside the models directory, however asked.
    for (path, status, want) in [
        (
            "/models/inspect-folder?folder=../outside",
            400,
            "invalid folder",
        ),
        (
            "/models/inspect-folder?folder=escape",
            400,
            "invalid folder",
        ),
        ("/models/inspect-folder?folder=/etc", 400, "invalid folder"),
        (
            "/models/inspect-folder?folder=nope",
            404,
            "folder not found",
        ),
        ("/models/inspect-folder", 400, "missing query parameter"),
        (
            "/models/inspect-folder?base=/etc&folder=ssl",
            400,
            "invalid query parameter",
        ),
        (
            "/models/local-folders?base=/",
            400,
            "invalid query parameter",
        ),
    ] {
        let (s, e) = call(&gw, &c, Method::GET, path, None).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (status, Some(want)),
            "{path}: {e}"
        );
    }
}

#[tokio::test]
async fn the_models_directory_is_set_once_for_every_instance() {
    let redis = Redis::start().await;
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    let other = root.path().join("other");
    std::fs::create_dir_all(other.join("only-here")).unwrap();
    let config = format!(
        "[store]\nurl = {:?}\nprefix = \"files\"\n[runner]\nmodels_dir = {:?}\n",
        redis.url(),
        models.to_str().unwrap()
    );
    let a = Gateway::start(&config).await;
    let b = Gateway::start(&config).await;
    let c = Client::new();
    for (body, want) in [
        (json!({"base_dir": ""}), "base_dir is required"),
        (
            json!({"base_dir": "relative/dir"}),
            "must be an absolute path",
        ),
        (json!({"base_dir": "/no/such/dir"}), "No such file"),
        (
            json!({"base_dir": models.join("llama/config.json")}),
            "is not a directory",
        ),
        (json!({"base_dir": "/x", "base": "/y"}), "unknown field"),
    ] {
        let (s, e) = call(&a, &c, Method::PUT, "/models/base-dir", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(want), "{body}: {e}");
    }
    // Through a symbolic link: the real directory is kept.
    let link = root.path().join("link-to-other");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    let (s, set) = call(
        &a,
        &c,
        Method::PUT,
        "/models/base-dir",
        Some(json!({"base_dir": link})),
    )
    .await;
    assert_eq!(s, 200, "{set}");
    assert_eq!(
        (set["status"].as_str(), set["source"].as_str()),
        (Some("ok"), Some("admin"))
    );
    let real = other.canonicalize().unwrap();
    assert_eq!(set["base_dir"], real.to_str().unwrap());
    // The other instance uses it within a reconcile period.
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(&b, &c, Method::GET, "/models/base-dir", None).await.1["base_dir"]
                == real.to_str().unwrap()
        })
        .await
    );
    let (_, list) = call(&b, &c, Method::GET, "/models/local-folders", None).await;
    assert_eq!(list[0]["name"], "only-here", "{list}");
    // It is the directory folders are read in.
    let (s, _) = call(
        &b,
        &c,
        Method::GET,
        "/models/inspect-folder?folder=only-here",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &b,
        &c,
        Method::GET,
        "/models/inspect-folder?folder=llama",
        None,
    )
    .await;
    assert_eq!(s, 404);
}

/// A complete Llama-3.1-8B layout in bf16, in four sparse shards, with its config.
fn llama_8b(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, kv, ffn, vocab) = (4096u64, 1024u64, 14_336u64, 128_256u64);
    let mut tensors: Vec<(String, Vec<u64>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        ("lm_head.weight".into(), vec![vocab, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for l in 0..32 {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("self_attn.q_proj", vec![h, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, h]),
            ("mlp.gate_proj", vec![ffn, h]),
            ("mlp.up_proj", vec![ffn, h]),
            ("mlp.down_proj", vec![h, ffn]),
            ("input_layernorm", vec![h]),
            ("post_attention_layernorm", vec![h]),
        ] {
            tensors.push((format!("{p}.{n}.weight"), shape));
        }
    }
    for (i, chunk) in tensors.chunks(tensors.len().div_ceil(4)).enumerate() {
        let t: Vec<(&str, &str, &[u64])> = chunk
            .iter()
            .map(|(n, s)| (n.as_str(), "BF16", s.as_slice()))
            .collect();
        safetensors::write_sparse(
            &dir.join(format!("model-{:05}-of-00004.safetensors", i + 1)),
            &t,
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 131072, "intermediate_size": 14336,
            "torch_dtype": "bfloat16", "vocab_size": 128256})
        .to_string(),
    )
    .unwrap();
}

fn warning<'a>(r: &'a Value, title: &str) -> Option<&'a Value> {
    r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["title"] == title)
}

#[tokio::test]
async fn a_dry_run_shows_the_command_every_problem_and_a_vram_estimate_from_the_files() {
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    llama_8b(&models.join("llama8b"));
    let gw = Gateway::start(&format!(
        "[runner]\nmodels_dir = {:?}\n[[runner.gpus]]\nindex = 0\nmemory_gib = 80.0\n[[runner.gpus]]\nindex = 1\nmemory_gib = 24.0\n[[runner.gpus]]\nindex = 2\nmemory_gib = 12.0\n",
        models.to_str().unwrap()
    ))
    .await;
    let c = Client::new();
    let (s, m) = call(&gw, &c, Method::POST, "/models",
        Some(json!({"name": "l", "served_model_name": "llama-8b", "local_path": "llama8b", "max_model_len": 32768}))).await;
    assert_eq!(s, 201, "{m}");
    let id = m["id"].as_str().unwrap();
    let (s, r) = call(
        &gw,
        &c,
        Method::POST,
        &format!("/models/{id}/dry-run"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["valid"], true, "{r}");
    let cmd: Vec<&str> = r["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cmd[..2], ["vllm", "serve"]);
    assert!(cmd.windows(2).any(|w| w == ["--port", "<port>"]), "{cmd:?}");
    assert!(
        cmd.windows(2).any(|w| w == ["--max-model-len", "32768"]),
        "{cmd:?}"
    );
    assert!(r["command_str"]
        .as_str()
        .unwrap()
        .starts_with("vllm serve "));
    let v = &r["vram_estimate"];
    assert_eq!(v["weights_gib"], 14.96, "{v}");
    assert_eq!(v["kv_per_token_bytes"], 131_072.0);
    assert_eq!(v["basis"]["weights_from"], "safetensors");
    assert_eq!(v["basis"]["shape"]["weight_bytes"], 16_060_522_496u64);
    assert!(
        v["vllm"]["kv_cache_tokens"].as_u64().unwrap() > 100_000,
        "{v}"
    );
    assert_eq!(r["vram_estimate_gb"], v["per_gpu_gib"]);

    // An unsaved body, every problem at once.
    let dry = |body: Value| {
        let (gw, c) = (&gw, &c);
        async move { call(gw, c, Method::POST, "/models/dry-run", Some(body)).await }
    };
    let (s, r) = dry(
        json!({"name": "l", "served_model_name": "x", "local_path": "llama8b",
        "selected_gpus": [1], "max_model_len": 131072}),
    )
    .await;
    assert_eq!((s, r["valid"].as_bool()), (200, Some(false)), "{r}");
    let w = warning(&r, "One sequence of max_model_len does not fit").unwrap();
    assert_eq!(w["severity"], "error");
    assert!(
        w["fix"]
            .as_str()
            .unwrap()
            .contains("set max_model_len to at most"),
        "{w}"
    );
    let (_, r) = dry(
        json!({"name": "l", "served_model_name": "x", "local_path": "llama8b",
        "selected_gpus": [0], "tp_size": 2, "max_model_len": 200000}),
    )
    .await;
    assert!(warning(&r, "More ranks than GPUs").is_some(), "{r}");
    assert!(
        warning(&r, "Context longer than the model's").is_some(),
        "{r}"
    );
    let (_, r) = dry(
        json!({"name": "l", "served_model_name": "x", "local_path": "../outside",
        "engine_args": [{"flag": "--port", "type": "int", "value": 1}]}),
    )
    .await;
    assert_eq!(r["valid"], false);
    let all = r["warnings"].to_string();
    assert!(
        all.contains("--port is forbidden") && all.contains("local_path"),
        "{all}"
    );
    // GGUF: llama.cpp estimates by layer; a split set on vLLM is an error.
    let (_, r) = dry(
        json!({"name": "g", "served_model_name": "g", "engine_type": "llamacpp",
        "local_path": "gguf/llama-Q4_K_M.gguf", "ngl": 99, "context_size": 8192}),
    )
    .await;
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["vram_estimate"]["basis"]["weights_from"], "gguf");
    assert_eq!(
        r["vram_estimate"]["llamacpp"]["kv_per_token_bytes"],
        32.0 * 8.0 * 128.0 * 4.0
    );
    let (_, r) = dry(json!({"name": "g", "served_model_name": "g",
        "local_path": "gguf/llama-Q8_0-00001-of-00002.gguf"}))
    .await;
    assert!(warning(&r, "Multi-part GGUF on vLLM").is_some(), "{r}");
    assert!(
        warning(&r, "No tokenizer for a GGUF model").is_some(),
        "{r}"
    );
    // The memory verdicts: weights that do not fit a 12 GiB GPU; one 32k sequence at a time on
    // 24 GiB.
    let (_, r) = dry(
        json!({"name": "l", "served_model_name": "x", "local_path": "llama8b",
        "selected_gpus": [2], "max_model_len": 4096}),
    )
    .await;
    assert!(
        warning(&r, "The weights do not fit").is_some_and(|w| w["severity"] == "error"),
        "{r}"
    );
    let (_, r) = dry(
        json!({"name": "l", "served_model_name": "x", "local_path": "llama8b",
        "selected_gpus": [1], "max_model_len": 32768}),
    )
    .await;
    assert!(
        warning(&r, "One sequence at a time").is_some_and(|w| w["severity"] == "warning"),
        "{r}"
    );
    assert_eq!(r["valid"], true);
    // A quantization other than the weights'.
    let awq = models.join("awq");
    std::fs::create_dir_all(&awq).unwrap();
    safetensors::write_sparse(&awq.join("model.safetensors"), &[("w", "I32", &[64, 8])]).unwrap();
    std::fs::write(
        awq.join("config.json"),
        json!({"num_hidden_layers": 2, "hidden_size": 64,
        "num_attention_heads": 4, "quantization_config": {"quant_method": "awq", "bits": 4}})
        .to_string(),
    )
    .unwrap();
    let (_, r) = dry(
        json!({"name": "q", "served_model_name": "q", "local_path": "awq",
        "quantization": "gptq"}),
    )
    .await;
    let w = warning(&r, "Quantization does not match the weights").unwrap();
    assert!(w["message"].as_str().unwrap().contains("awq"), "{w}");
    let (_, r) = dry(
        json!({"name": "q", "served_model_name": "q", "local_path": "awq",
        "quantization": "awq_marlin"}),
    )
    .await;
    assert!(
        warning(&r, "Quantization does not match the weights").is_none(),
        "{r}"
    );
    // An MLA model (DeepSeek's config): one latent of kv_lora_rank + qk_rope_head_dim a layer.
    let mla = models.join("mla");
    std::fs::create_dir_all(&mla).unwrap();
    safetensors::write_sparse(
        &mla.join("model.safetensors"),
        &[("w", "BF16", &[7168, 1024])],
    )
    .unwrap();
    std::fs::write(
        mla.join("config.json"),
        json!({"architectures": ["DeepseekV3ForCausalLM"],
        "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
        "kv_lora_rank": 512, "qk_rope_head_dim": 64, "torch_dtype": "bfloat16"})
        .to_string(),
    )
    .unwrap();
    let (_, r) = dry(
        json!({"name": "d", "served_model_name": "d", "local_path": "mla",
        "max_model_len": 4096}),
    )
    .await;
    assert_eq!(
        r["vram_estimate"]["kv_per_token_bytes"],
        61.0 * 576.0 * 2.0,
        "{r}"
    );
    // A 32-bit checkpoint runs in 16 bits unless --dtype float32 is asked for.
    let fp32 = models.join("fp32");
    std::fs::create_dir_all(&fp32).unwrap();
    safetensors::write_sparse(
        &fp32.join("model.safetensors"),
        &[("w", "F32", &[1000, 1000])],
    )
    .unwrap();
    std::fs::write(
        fp32.join("config.json"),
        json!({"num_hidden_layers": 2, "hidden_size": 64,
        "num_attention_heads": 4, "torch_dtype": "float32"})
        .to_string(),
    )
    .unwrap();
    for (dtype, bytes) in [
        (json!(null), 2_000_000u64),
        (json!("float32"), 4_000_000),
        (json!("bfloat16"), 2_000_000),
    ] {
        let (_, r) = dry(
            json!({"name": "f", "served_model_name": "f", "local_path": "fp32", "dtype": dtype}),
        )
        .await;
        assert_eq!(
            r["vram_estimate"]["basis"]["shape"]["weight_bytes"], bytes,
            "{dtype}: {r}"
        );
    }
    // A flag the engine would not know, with the one that was meant.
    let (_, r) = dry(
        json!({"name": "l", "served_model_name": "x", "local_path": "llama8b",
        "engine_args": [{"flag": "--max-modle-len", "type": "int", "value": 4096}]}),
    )
    .await;
    let w = warning(&r, "Unknown flag").unwrap();
    assert_eq!(
        (w["severity"].as_str(), w["fix"].as_str()),
        (Some("warning"), Some("did you mean --max-model-len?")),
        "{w}"
    );
    let (s, e) = call(&gw, &c, Method::POST, "/models/mdl_nope/dry-run", None).await;
    assert_eq!(s, 404, "{e}");
}

#[tokio::test]
async fn without_known_gpu_memory_the_fit_is_unknown_not_guessed() {
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    let gw = Gateway::start(&format!(
        "[runner]\nmodels_dir = {:?}\n",
        models.to_str().unwrap()
    ))
    .await;
    let c = Client::new();
    let (s, r) = call(
        &gw,
        &c,
        Method::POST,
        "/models/dry-run",
        Some(json!({"name": "l", "served_model_name": "x", "local_path": "llama"})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    // A machine with an NVIDIA driver reports its GPUs (NVML); this one has none, and says why.
    if r["vram_estimate"]["basis"]["gpu_memory_from"] == "nvml" {
        return;
    }
    let w = warning(&r, "GPU memory unknown").unwrap();
    assert_eq!(w["severity"], "warning");
    assert!(
        w["message"].as_str().unwrap().contains("NVML unavailable"),
        "{w}"
    );
    assert_eq!(r["valid"], true);
    assert_eq!(r["vram_estimate"]["basis"]["gpu_memory_from"], "none");
}

#[tokio::test]
async fn the_hub_config_answers_precisely_and_is_cached() {
    let hub = crate::fake_hub::FakeHub::start().await;
    let gw = Gateway::start_with_env(
        "[runner]\nhub_timeout_secs = 1\n",
        &[("HF_ENDPOINT", hub.url.as_str()), ("HF_TOKEN", "hf_test")],
    )
    .await;
    let c = Client::new();
    let (s, m) = call(
        &gw,
        &c,
        Method::GET,
        "/models/hf-config?repo_id=meta-llama/Llama-3.1-8B",
        None,
    )
    .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(
        (m["num_key_value_heads"].as_u64(), m["head_dim"].as_u64()),
        (Some(8), Some(128))
    );
    assert_eq!(m["parameters"]["BF16"], 8_030_261_248u64);
    assert_eq!(m["params_b"], 8.03);
    assert_eq!(
        (m["revision"].as_str(), m["sha"].as_str()),
        (Some("main"), Some("sha-of-main"))
    );
    // Cached: the same question does not reach the Hub again.
    let hits = hub.hits.load(std::sync::atomic::Ordering::Relaxed);
    call(
        &gw,
        &c,
        Method::GET,
        "/models/hf-config?repo_id=meta-llama/Llama-3.1-8B",
        None,
    )
    .await;
    assert_eq!(hub.hits.load(std::sync::atomic::Ordering::Relaxed), hits);
    // The token from the environment reads a private repository.
    let (s, _) = call(
        &gw,
        &c,
        Method::GET,
        "/models/hf-config?repo_id=org/private",
        None,
    )
    .await;
    assert_eq!(s, 200);
    for (q, status, error) in [
        ("repo_id=../../etc", 400, "invalid query parameter"),
        (
            "repo_id=org/x&revision=..%2F..",
            400,
            "invalid query parameter",
        ),
        ("", 400, "missing query parameter"),
        ("repo_id=org/missing", 404, "model not found on the Hub"),
        ("repo_id=org/noconfig", 404, "model not found on the Hub"),
        ("repo_id=org/gated", 403, "gated model"),
        ("repo_id=org/slow", 504, "hub timeout"),
    ] {
        let (s, e) = call(
            &gw,
            &c,
            Method::GET,
            &format!("/models/hf-config?{q}"),
            None,
        )
        .await;
        assert_eq!((s, e["error"].as_str()), (status, Some(error)), "{q}: {e}");
    }
    let (_, e) = call(
        &gw,
        &c,
        Method::GET,
        "/models/hf-config?repo_id=org/gated",
        None,
    )
    .await;
    assert!(
        e["detail"].as_str().unwrap().contains("accept its license"),
        "{e}"
    );
    // A dry-run of a repo_id model is estimated from the Hub's config and parameter count.
    let body = json!({"name": "l", "served_model_name": "l", "repo_id": "meta-llama/Llama-3.1-8B"});
    let (s, r) = call(&gw, &c, Method::POST, "/models/dry-run", Some(body)).await;
    assert_eq!(s, 200, "{r}");
    let v = &r["vram_estimate"];
    assert_eq!(
        (
            v["basis"]["weights_from"].as_str(),
            v["weights_gib"].as_f64()
        ),
        (Some("hub"), Some(14.96)),
        "{r}"
    );
    assert_eq!(v["kv_per_token_bytes"], 131_072.0);
    let body = json!({"name": "l", "served_model_name": "l", "repo_id": "org/gated"});
    let (_, r) = call(&gw, &c, Method::POST, "/models/dry-run", Some(body)).await;
    let w = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["title"] == "The Hub did not answer");
    assert!(
        w.is_some_and(|w| w["message"].as_str().unwrap().contains("gated")),
        "{r}"
    );
    // A Hub that cannot be reached.
    let down = Gateway::start_with_env("", &[("HF_ENDPOINT", dead_url().as_str())]).await;
    let (s, e) = call(
        &down,
        &c,
        Method::GET,
        "/models/hf-config?repo_id=org/x",
        None,
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (502, Some("hub unreachable")),
        "{e}"
    );
}
