//! Client-side time to first token through a URL: sends N sequential streaming chat requests and
//! reports the p50/p90/p99 time until the first token event arrives, as JSON on stdout.
//! Usage: cargo bench --bench ttft -- <base-url> <model> <requests>

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() < 4 {
        eprintln!("usage: ttft <base-url> <model> <requests>");
        return;
    }
    let (url, model) = (&args[1], &args[2]);
    let n: usize = args[3].parse().expect("a request count");
    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": model, "stream": true, "max_tokens": 16, "user": "ttft-bench",
        "messages": [{"role": "user", "content": "hi"}]});
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let start = Instant::now();
        let mut r = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("request");
        let mut seen = Vec::new();
        let mut first = None;
        while let Some(chunk) = r.chunk().await.expect("chunk") {
            seen.extend_from_slice(&chunk);
            if first.is_none() && memchr::memmem::find(&seen, b"\"content\":\"tok").is_some() {
                first = Some(start.elapsed());
            }
        }
        // The first 20 requests warm connections up and are not counted.
        if i >= 20 {
            samples.push(first.expect("a token event"));
        }
    }
    samples.sort();
    println!(
        "{}",
        serde_json::json!({"requests": n, "p50_ms": percentile(&samples, 0.5),
            "p90_ms": percentile(&samples, 0.9), "p99_ms": percentile(&samples, 0.99)})
    );
}
