//! Criterion micro-benchmarks of the data plane's per-request work: reading the route key from
//! a body, and scanning an SSE stream for TTFT and usage.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use infergate::routing::prefix::{Chainer, DEFAULT_BLOCK_BYTES};
use infergate::routing::route_key_json;
use infergate::telemetry::sse::SseScanner;
use infergate::telemetry::usage::UsageTail;
use std::time::Instant;

fn chat_body(content_bytes: usize) -> Vec<u8> {
    // The OpenAI Python client writes `messages` before `model`.
    format!(
        r#"{{"messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{}"}}],"model":"qwen3-8b","max_tokens":16,"temperature":0.7,"user":"user-1234"}}"#,
        "x".repeat(content_bytes)
    )
    .into_bytes()
}

fn route_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_key_json");
    for size in [200usize, 64 * 1024, 5 * 1024 * 1024] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(body.len()), &body, |b, body| {
            b.iter(|| route_key_json(black_box(body), None).unwrap().model.len())
        });
    }
    g.finish();
    // The same scan feeding cache-aware routing's chain (the defaults: 128-byte blocks, at
    // most 512).
    let mut g = c.benchmark_group("route_key_json_chained");
    let mut chain = Vec::new();
    for size in [200usize, 64 * 1024, 5 * 1024 * 1024] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(body.len()), &body, |b, body| {
            b.iter(|| {
                let mut ch =
                    Chainer::new(&mut chain, DEFAULT_BLOCK_BYTES, 512, 0x9e37_79b9_7f4a_7c15);
                route_key_json(black_box(body), Some(&mut ch))
                    .unwrap()
                    .model
                    .len()
            })
        });
    }
    g.finish();
}

fn sse_stream(tokens: usize) -> Bytes {
    let mut s = String::from("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
    for i in 0..tokens {
        s.push_str(&format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen3-8b\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":256,\"total_tokens\":276}}\n\ndata: [DONE]\n\n");
    Bytes::from(s)
}

fn sse_scan(c: &mut Criterion) {
    let stream = sse_stream(256);
    let mut g = c.benchmark_group("sse_scan");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    // One event per chunk, as servers flush them.
    let events: Vec<Bytes> = stream
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| Bytes::copy_from_slice(&pair.concat()))
        .collect();
    g.bench_function("256_tokens_event_per_chunk", |b| {
        b.iter(|| {
            let mut s = SseScanner::default();
            let now = Instant::now();
            for e in &events {
                s.feed(black_box(e), now);
            }
            s.completion_tokens()
        })
    });
    g.bench_function("256_tokens_split_every_100_bytes", |b| {
        let chunks: Vec<Bytes> = stream.chunks(100).map(Bytes::copy_from_slice).collect();
        b.iter(|| {
            let mut s = SseScanner::default();
            let now = Instant::now();
            for e in &chunks {
                s.feed(black_box(e), now);
            }
            s.completion_tokens()
        })
    });
    g.finish();
}

fn usage_tail(c: &mut Criterion) {
    let body = Bytes::from(
        r#"{"id":"cmpl","object":"chat.completion","created":0,"model":"qwen3-8b","choices":[{"index":0,"message":{"role":"assistant","content":"tok tok tok tok tok tok tok tok tok tok tok tok tok tok tok tok "},"finish_reason":"length"}],"usage":{"prompt_tokens":23,"completion_tokens":16,"total_tokens":39}}"#,
    );
    c.bench_function("usage_tail_one_chunk", |b| {
        b.iter(|| {
            let mut t = UsageTail::default();
            t.feed(black_box(&body));
            t.finish()
        })
    });
}

criterion_group!(benches, route_key, sse_scan, usage_tail);
criterion_main!(benches);
