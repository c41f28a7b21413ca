//! Criterion benchmark of a model folder's inspection (issue 12: < 50 ms for 10 safetensors
//! shards and 20 GGUF files, headers only). The files are written sparse: a Llama-3.1-8B
//! layout in 10 shards, and 20 GGUF files of 32 layers with a 128k-token vocabulary each (their
//! token list is what makes a GGUF header a few MiB).

use criterion::{criterion_group, criterion_main, Criterion};
use infergate::modelfiles::folder;
use infergate::modelfiles::gguf::{self, Meta};
use infergate::modelfiles::safetensors;
use std::time::Duration;

fn fixture(dir: &std::path::Path) {
    let (h, kv, ffn, vocab) = (4096u64, 1024u64, 14_336u64, 128_256u64);
    let mut tensors: Vec<(String, Vec<u64>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        ("lm_head.weight".into(), vec![vocab, h]),
    ];
    for l in 0..32 {
        for (n, s) in [
            ("q_proj", vec![h, h]),
            ("k_proj", vec![kv, h]),
            ("v_proj", vec![kv, h]),
            ("o_proj", vec![h, h]),
            ("gate_proj", vec![ffn, h]),
            ("up_proj", vec![ffn, h]),
            ("down_proj", vec![h, ffn]),
        ] {
            tensors.push((format!("model.layers.{l}.{n}.weight"), s));
        }
    }
    for (i, chunk) in tensors.chunks(tensors.len().div_ceil(10)).enumerate() {
        let t: Vec<(&str, &str, &[u64])> = chunk
            .iter()
            .map(|(n, s)| (n.as_str(), "BF16", s.as_slice()))
            .collect();
        safetensors::write_sparse(
            &dir.join(format!("model-{:05}-of-00010.safetensors", i + 1)),
            &t,
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"num_hidden_layers":32,"hidden_size":4096,"num_attention_heads":32,"num_key_value_heads":8}"#,
    )
    .unwrap();
    let names: Vec<String> = (0..32)
        .flat_map(|l| {
            ["attn_q", "attn_k", "attn_v", "ffn_down"].map(|t| format!("blk.{l}.{t}.weight"))
        })
        .collect();
    let blocks: Vec<(&str, u32, &[u64])> = names
        .iter()
        .map(|n| (n.as_str(), 12, &[4096u64, 4096][..]))
        .collect();
    for i in 0..20 {
        gguf::write_sparse(
            &dir.join(format!("model-{i:02}-Q4_K_M.gguf")),
            &[
                ("general.architecture", Meta::Str("llama".into())),
                ("general.file_type", Meta::U32(15)),
                ("llama.block_count", Meta::U32(32)),
                ("tokenizer.ggml.tokens", Meta::Strings(vocab)),
            ],
            &blocks,
        )
        .unwrap();
    }
}

fn inspect(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    fixture(&dir);
    let report = folder::inspect(root.path(), "m", &dir);
    assert_eq!(report.safetensor_info.as_ref().unwrap().file_count, 10);
    assert_eq!(report.gguf_groups.len(), 20);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let mut g = c.benchmark_group("inspect_folder");
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("10_safetensors_20_gguf", |b| {
        b.iter(|| folder::inspect(root.path(), "m", &dir).gguf_groups.len())
    });
    g.finish();
}

criterion_group!(benches, inspect);
criterion_main!(benches);
