//! The open-loop load generator of `benches/fleet.sh` (issue 16, cache-aware routing): one of
//! three chat workloads, generated from a seed (the same requests at the same offsets for every
//! router), sent as streaming chat completions on a Poisson schedule whatever the answers do.
//! Prints one JSON line: what was sent, TTFT and end-to-end percentiles, errors, the workload's
//! token figures under ideal placement, and the fleet's ideal capacity and latency floor.
//! Not a criterion benchmark:
//!
//! ```text
//! cargo bench --bench fleet_load -- --url http://127.0.0.1:8080 --workload a --rate 20 \
//!     --duration 60 --seed 1 --model fleet --max-tokens 32 [--plan] [sim figures, see Args]
//! ```
//!
//! Workloads (a prompt's tokens are its rendered bytes / 4, a rendering being each message's role
//! then content; text is random lowercase words, so unrelated prompts share no 64-byte block):
//! - `a`, multi-turn chats: conversations of 4-12 turns; the first user message is 384-640 tokens,
//!   each later one 32-96, each answer `--max-tokens` tokens (synthetic, from the seed, so the
//!   traffic does not depend on what a server answered). A turn carries every earlier turn and
//!   answer; `user` is the conversation. `round(rate * think)` conversations are open at once
//!   (at least 8); each arrival continues one of them picked at random (so a conversation's turns
//!   are `think` seconds apart on average) and a finished one is replaced by a new one. The open
//!   conversations start at random turns, so the mix of turns is steady from the start.
//!   (Their earlier turns were never sent, so a cold fleet meets every open conversation's whole
//!   history at once; `--ramp` brings the traffic in gradually.)
//! - `b`, shared system prompts: 8 system prompts of 1,024-2,048 tokens, picked with Zipf(1.0)
//!   popularity (the first takes 37% of requests), each followed by a unique 32-96-token
//!   question; 512 users per system prompt, a user always with the same one.
//! - `c`, no sharing: one unique user message of 256-768 tokens; 4,096 users.
//!
//! Ideal placement: every prefix a request shares with any earlier request is found (an unbounded
//! cache that every request sees), counted in whole 16-token blocks as vLLM's prefix cache does.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
struct Args {
    /// Base URL of the router (without /v1); several, comma-separated: requests alternate
    /// between them, as a load balancer without stickiness in front of several instances.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// a: multi-turn chats, b: shared system prompts, c: no sharing.
    #[arg(long)]
    workload: char,
    /// Requests per second (Poisson).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of arrivals.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "fleet")]
    model: String,
    /// Output tokens per request (max_tokens, with ignore_eos).
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Workload a: mean seconds between a conversation's turns.
    #[arg(long, default_value_t = 3.0)]
    think: f64,
    /// Requests scheduled in the first this many seconds are sent but left out of the latencies,
    /// and the servers' counters are read at its end (not at the start).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Seconds over which the arrival rate rises linearly from 0 to --rate (a Poisson process of
    /// that intensity), so cold caches fill at a rate a fleet can prefill; 0: full rate at once.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Comma-separated base URLs of the servers: their /metrics give the prefix-cache hit rate
    /// and the requests each finished, from the end of the warm-up until every answer is in.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Seconds a request may take before it counts as an error.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Only print the workload's figures (over --plan-requests requests), send nothing.
    #[arg(long)]
    plan: bool,
    #[arg(long, default_value_t = 20_000)]
    plan_requests: usize,
    // The simulated fleet, for the ideal capacity and the latency floor.
    #[arg(long, default_value_t = 8)]
    servers: usize,
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    #[arg(long, default_value_t = 1000.0)]
    prefill_us_per_token: f64,
    #[arg(long, default_value_t = 10.0)]
    decode_ms_per_step: f64,
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    max_batched_tokens: usize,
    /// Send each request's prompt tokens that ideal placement finds cached (every earlier
    /// request's prefix is where it goes) as `sim_assume_cached_tokens`, which servers run with
    /// `--sim-assume-cached-field` honour: the ideal-placement run, queueing included.
    #[arg(long)]
    assume_cached: bool,
    /// Share of the requests (0 to 1, chosen by the seed) asking for a whole answer rather
    /// than a stream; the TTFT figures are the streamed requests', end to end all of them.
    #[arg(long, default_value_t = 0.0)]
    whole_share: f64,
    /// `cargo bench` appends --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

/// SplitMix64: small, and the same sequence from a seed on every platform and crate version.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// Exponential with this rate.
    fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
    /// Random lowercase words, exactly `tokens * 4` bytes.
    fn text(&mut self, tokens: usize) -> Arc<str> {
        let mut s = String::with_capacity(tokens * 4);
        while s.len() < tokens * 4 {
            for b in self.next().to_le_bytes() {
                if s.len() == tokens * 4 {
                    break;
                }
                s.push(if b % 7 == 0 {
                    ' '
                } else {
                    (b'a' + b % 26) as char
                });
            }
        }
        s.into()
    }
}

type Message = (&'static str, Arc<str>);

/// One planned request.
struct Req {
    at: f64,
    user: String,
    messages: Vec<Message>,
}

struct Conversation {
    id: u64,
    /// user[0], answer[0], user[1], ... (answers interleaved), `turns` user messages.
    messages: Vec<Message>,
    next: usize,
    turns: usize,
}

fn conversation(rng: &mut Rng, id: u64, answer_tokens: usize) -> Conversation {
    let turns = rng.range(4, 12);
    let mut messages = Vec::with_capacity(2 * turns);
    for t in 0..turns {
        let n = if t == 0 {
            rng.range(384, 640)
        } else {
            rng.range(32, 96)
        };
        messages.push(("user", rng.text(n)));
        messages.push(("assistant", rng.text(answer_tokens)));
    }
    Conversation {
        id,
        messages,
        next: 0,
        turns,
    }
}

/// The requests of a run (`n` arrivals if given, else those within `duration`), and the tokens
/// the workload keeps live in caches: the open conversations' latest prompts (a), the system
/// prompts (b), none (c).
fn plan(a: &Args, n: Option<usize>) -> (Vec<Req>, usize) {
    let mut times = Rng::new(a.seed, 1);
    let mut arrivals = Vec::new();
    // `u` runs at the full rate; the ramp maps it to time through the intensity's integral
    // (rate * t^2 / 2 ramp while ramping, then rate * (t - ramp / 2)).
    let mut u = 0.0;
    loop {
        u += times.exp(a.rate);
        let t = if u < a.ramp / 2.0 {
            (2.0 * a.ramp * u).sqrt()
        } else {
            u + a.ramp / 2.0
        };
        match n {
            Some(n) if arrivals.len() == n => break,
            None if t >= a.duration => break,
            _ => arrivals.push(t),
        }
    }
    let mut rng = Rng::new(a.seed, 2 + a.workload as u64);
    let mut out = Vec::with_capacity(arrivals.len());
    let live = |m: &[Message]| m.iter().map(|(r, c)| r.len() + c.len()).sum::<usize>() / 4;
    let mut working_set = 0;
    match a.workload {
        'a' => {
            let open = ((a.rate * a.think).round() as usize).max(8);
            let mut next_id = 0;
            let mut slots: Vec<Conversation> = (0..open)
                .map(|_| {
                    next_id += 1;
                    let mut c = conversation(&mut rng, next_id, a.max_tokens);
                    c.next = rng.range(0, c.turns - 1);
                    c
                })
                .collect();
            for at in arrivals {
                let j = rng.range(0, open - 1);
                let c = &mut slots[j];
                out.push(Req {
                    at,
                    user: format!("conv-{}-{}", a.seed, c.id),
                    messages: c.messages[..2 * c.next + 1].to_vec(),
                });
                c.next += 1;
                if c.next == c.turns {
                    next_id += 1;
                    slots[j] = conversation(&mut rng, next_id, a.max_tokens);
                }
            }
            working_set = slots
                .iter()
                .map(|c| live(&c.messages[..(2 * c.next).saturating_sub(1)]))
                .sum();
        }
        'b' => {
            const PROMPTS: usize = 8;
            let prompts: Vec<Arc<str>> = (0..PROMPTS)
                .map(|_| {
                    let n = rng.range(1024, 2048);
                    rng.text(n)
                })
                .collect();
            working_set = prompts.iter().map(|p| live(&[("system", p.clone())])).sum();
            // Zipf(1.0) over the prompts' ranks.
            let weights: Vec<f64> = (1..=PROMPTS).map(|r| 1.0 / r as f64).collect();
            let total: f64 = weights.iter().sum();
            for at in arrivals {
                let mut x = rng.unit() * total;
                let mut p = 0;
                while p + 1 < PROMPTS && x >= weights[p] {
                    x -= weights[p];
                    p += 1;
                }
                let user = format!("u{}-{}", p, rng.range(0, 511));
                let question = rng.range(32, 96);
                out.push(Req {
                    at,
                    user,
                    messages: vec![("system", prompts[p].clone()), ("user", rng.text(question))],
                });
            }
        }
        'c' => {
            for at in arrivals {
                let user = format!("u{}", rng.range(0, 4095));
                let n = rng.range(256, 768);
                out.push(Req {
                    at,
                    user,
                    messages: vec![("user", rng.text(n))],
                });
            }
        }
        w => panic!("unknown workload {w:?} (a, b or c)"),
    }
    (out, working_set)
}

/// Per request: (prompt tokens, tokens uncached under ideal placement).
fn ideal_tokens(reqs: &[Req], block_tokens: usize) -> Vec<(usize, usize)> {
    seen_before(reqs, block_tokens, |r| {
        let mut rendered = Vec::new();
        for (role, content) in &r.messages {
            rendered.extend_from_slice(role.as_bytes());
            rendered.extend_from_slice(content.as_bytes());
        }
        rendered
    })
}

/// Per request, the prompt tokens ideal placement finds cached, in the simulator's rendering
/// of a chat (its own template: `infergate::mock::sim::tokens::render_chat`).
fn ideal_cached_as_simulated(reqs: &[Req], block_tokens: usize) -> Vec<usize> {
    let render = |r: &Req| {
        infergate::mock::sim::tokens::render_chat(&messages_json(r), true)
            .expect("a workload's chat has messages with roles")
            .into_bytes()
    };
    seen_before(reqs, block_tokens, render)
        .into_iter()
        .map(|(tokens, uncached)| tokens - uncached)
        .collect()
}

/// Per request, as `render` renders it: (prompt tokens, tokens past its longest run of
/// leading blocks that an earlier request had too).
fn seen_before(
    reqs: &[Req],
    block_tokens: usize,
    render: impl Fn(&Req) -> Vec<u8>,
) -> Vec<(usize, usize)> {
    let block_bytes = block_tokens * 4;
    let mut seen: HashSet<u64> = HashSet::new();
    reqs.iter()
        .map(|r| {
            let rendered = render(r);
            let tokens = (rendered.len() / 4).max(1);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let (mut hit, mut missed) = (0, false);
            for block in rendered.chunks_exact(block_bytes) {
                block.hash(&mut h);
                let key = h.finish();
                if seen.insert(key) {
                    missed = true;
                } else if !missed {
                    hit += block_tokens;
                }
            }
            (tokens, tokens - hit.min(tokens))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The workload's token figures, the fleet's ideal capacity and the latency floor.
fn figures(a: &Args, reqs: &[Req], working_set: usize) -> Value {
    let toks = ideal_tokens(reqs, a.block_tokens);
    let n = toks.len().max(1) as f64;
    let prompt = toks.iter().map(|t| t.0).sum::<usize>() as f64 / n;
    let uncached = toks.iter().map(|t| t.1).sum::<usize>() as f64 / n;
    let (u_s, d_s) = (a.prefill_us_per_token / 1e6, a.decode_ms_per_step / 1e3);
    let (servers, seqs, out) = (a.servers as f64, a.max_num_seqs as f64, a.max_tokens as f64);
    // Prefill: the fleet computes servers / u_s tokens a second; a request needs `uncached`.
    let prefill_rps = servers / (u_s * uncached);
    // Decode: a server's step moves at most max_num_seqs sequences one token; a request holds a
    // seat for max_tokens steps.
    let decode_rps = servers * seqs / (out * d_s);
    // Both on one engine whose step takes d_s plus u_s per prefill token in it:
    // rate * out seat-steps a second <= seqs * (1 - rate * uncached * u_s) / d_s.
    let combined_rps = servers * seqs / (out * d_s + seqs * uncached * u_s);
    // Floor: no queueing, every prefix found: the uncached tokens in chunks of at most
    // max_batched_tokens, a step each (d_s + u_s per token), then max_tokens - 1 decode steps.
    // Over the requests after the warm-up, as the latencies are.
    let ttft: Vec<f64> = toks
        .iter()
        .zip(reqs)
        .filter(|(_, r)| r.at >= a.warmup)
        .map(|(&(_, u), _)| {
            let steps = u.div_ceil(a.max_batched_tokens).max(1) as f64;
            steps * d_s + u as f64 * u_s
        })
        .collect();
    let e2e: Vec<f64> = ttft
        .iter()
        .map(|t| t + (out - 1.0).max(0.0) * d_s)
        .collect();
    let (ttft, e2e) = (sorted(ttft), sorted(e2e));
    json!({
        "requests": toks.len(),
        "working_set_tokens": working_set,
        "mean_prompt_tokens": prompt,
        "mean_uncached_tokens": uncached,
        "ideal_hit_rate": 1.0 - uncached / prompt,
        "capacity_prefill_rps": prefill_rps,
        "capacity_decode_rps": decode_rps,
        "capacity_combined_rps": combined_rps,
        "capacity_rps": prefill_rps.min(decode_rps),
        "floor_ttft_p50_ms": percentile(&ttft, 0.5) * 1e3,
        "floor_ttft_p99_ms": percentile(&ttft, 0.99) * 1e3,
        "floor_e2e_p50_ms": percentile(&e2e, 0.5) * 1e3,
        "floor_e2e_p99_ms": percentile(&e2e, 0.99) * 1e3,
    })
}

/// A request's `messages` as JSON.
fn messages_json(r: &Req) -> Value {
    r.messages
        .iter()
        .map(|(role, content)| json!({"role": role, "content": &**content}))
        .collect()
}

fn body(a: &Args, r: &Req, assume_cached: Option<usize>, stream: bool) -> Bytes {
    let messages = messages_json(r);
    // The constant fields first and `user` last, so a body's leading bytes follow its messages
    // (the plain mock hashes the raw body for its prefix cache).
    let head = format!(
        r#"{{"model":{},"max_tokens":{},"ignore_eos":true,{},"messages":"#,
        Value::from(a.model.as_str()),
        a.max_tokens,
        match stream {
            true => r#""stream":true,"stream_options":{"include_usage":true}"#,
            false => r#""stream":false"#,
        }
    );
    let mut s = head;
    s.push_str(&messages.to_string());
    if let Some(n) = assume_cached {
        s.push_str(&format!(r#","sim_assume_cached_tokens":{n}"#));
    }
    s.push_str(&format!(r#","user":{}}}"#, Value::from(r.user.as_str())));
    Bytes::from(s)
}

/// Per server: prefix-cache queries and hits (tokens), requests finished.
async fn scrape(client: &reqwest::Client, urls: &[String]) -> Vec<[f64; 3]> {
    const NAMES: [&str; 3] = [
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:request_success_total",
    ];
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let page = match client
            .get(format!("{}/metrics", url.trim_end_matches('/')))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut sums = [0.0; 3];
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if let Some(i) = NAMES.iter().position(|n| *n == name) {
                let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
                sums[i] += value.unwrap_or(0.0);
            }
        }
        out.push(sums);
    }
    out
}

struct Outcome {
    /// None for a whole answer.
    ttft: Option<Duration>,
    e2e: Duration,
    completion_tokens: Option<u64>,
}

async fn one(
    client: reqwest::Client,
    url: String,
    body: Bytes,
    stream: bool,
    timeout: Duration,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let work = async {
        let mut r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    "connect".to_string()
                } else {
                    "send".to_string()
                }
            })?;
        if !r.status().is_success() {
            return Err(format!("status_{}", r.status().as_u16()));
        }
        if !stream {
            let v: Value = r.json().await.map_err(|_| "body".to_string())?;
            return Ok(Outcome {
                ttft: None,
                e2e: start.elapsed(),
                completion_tokens: v["usage"]["completion_tokens"].as_u64(),
            });
        }
        let (mut buf, mut ttft, mut usage) = (Vec::<u8>::new(), None, None);
        while let Some(chunk) = r.chunk().await.map_err(|_| "body".to_string())? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = memchr::memmem::find(&buf, b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let Some(data) = event.strip_prefix(b"data: ") else {
                    continue;
                };
                let data = &data[..data.len() - 2];
                // Past the first token only the usage event is read.
                if data == b"[DONE]"
                    || (ttft.is_some() && memchr::memmem::find(data, b"\"usage\"").is_none())
                {
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(data) else {
                    continue;
                };
                let choice = &v["choices"][0];
                let text = choice["delta"]["content"]
                    .as_str()
                    .or(choice["text"].as_str());
                if ttft.is_none() && text.is_some_and(|t| !t.is_empty()) {
                    ttft = Some(start.elapsed());
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    usage = Some(n);
                }
            }
        }
        Ok(Outcome {
            ttft: Some(ttft.ok_or("no_content")?),
            e2e: start.elapsed(),
            completion_tokens: usage,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "timeout".to_string())?
}

fn main() {
    let a = Args::parse();
    if a.plan {
        let (reqs, working_set) = plan(&a, Some(a.plan_requests));
        let mut f = figures(&a, &reqs, working_set);
        f["workload"] = json!(a.workload.to_string());
        f["seed"] = json!(a.seed);
        println!("{f}");
        return;
    }
    let (reqs, working_set) = plan(&a, None);
    let mut out = figures(&a, &reqs, working_set);
    let cached = match a.assume_cached {
        true => ideal_cached_as_simulated(&reqs, a.block_tokens),
        false => Vec::new(),
    };
    // Which requests ask for a whole answer: a draw of their own per request and seed.
    let mut draws = Rng::new(a.seed, 99);
    let bodies: Vec<(f64, Bytes, bool)> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let stream = draws.unit() >= a.whole_share;
            (r.at, body(&a, r, cached.get(i).copied(), stream), stream)
        })
        .collect();
    drop(reqs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (results, lags, before, after) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()
            .expect("a client");
        let urls: Vec<String> = a
            .url
            .split(',')
            .map(|u| format!("{}/v1/chat/completions", u.trim().trim_end_matches('/')))
            .collect();
        let timeout = Duration::from_secs_f64(a.timeout);
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let mut handles = Vec::with_capacity(bodies.len());
        let mut lags = Vec::with_capacity(bodies.len());
        // The servers' counters at the end of the warm-up, read beside the sends.
        let before = tokio::spawn({
            let (client, urls) = (client.clone(), a.metrics.clone());
            let at = start + Duration::from_secs_f64(a.warmup);
            async move {
                tokio::time::sleep_until(at).await;
                scrape(&client, &urls).await
            }
        });
        for (i, (at, body, stream)) in bodies.into_iter().enumerate() {
            let url = urls[i % urls.len()].clone();
            let due = start + Duration::from_secs_f64(at);
            tokio::time::sleep_until(due).await;
            lags.push(due.elapsed().as_secs_f64());
            let task = tokio::spawn(one(client.clone(), url, body, stream, timeout));
            handles.push((at, task));
        }
        let mut results = Vec::with_capacity(handles.len());
        for (at, h) in handles {
            results.push((at, h.await.unwrap_or_else(|_| Err("panic".into()))));
        }
        let before = before.await.unwrap_or_default();
        let after = scrape(&client, &a.metrics).await;
        (results, lags, before, after)
    });
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ttft, mut e2e, mut short) = (Vec::new(), Vec::new(), 0);
    for (at, r) in &results {
        match r {
            Ok(o) => {
                if o.completion_tokens
                    .is_some_and(|n| n != a.max_tokens as u64)
                {
                    short += 1;
                }
                if *at >= a.warmup {
                    if let Some(t) = o.ttft {
                        ttft.push(t.as_secs_f64() * 1e3);
                    }
                    e2e.push(o.e2e.as_secs_f64() * 1e3);
                }
            }
            Err(kind) => *errors.entry(kind.clone()).or_default() += 1,
        }
    }
    let (ttft, e2e, lags) = (sorted(ttft), sorted(e2e), sorted(lags));
    let ok = results.len() as u64 - errors.values().sum::<u64>();
    let extra = json!({
        "workload": a.workload.to_string(),
        "seed": a.seed,
        "rate": a.rate,
        "duration": a.duration,
        "sent": results.len(),
        "ok": ok,
        "errors": errors.values().sum::<u64>(),
        "error_kinds": errors,
        "other_token_counts": short,
        // The schedule's realised rate, and how late the sends were against it.
        "sent_rate": results.len() as f64 / a.duration,
        "measured": ttft.len(),
        "ttft_p50_ms": percentile(&ttft, 0.5),
        "ttft_p99_ms": percentile(&ttft, 0.99),
        "e2e_p50_ms": percentile(&e2e, 0.5),
        "e2e_p99_ms": percentile(&e2e, 0.99),
        "send_lag_p99_ms": percentile(&lags, 0.99) * 1e3,
        "send_lag_max_ms": lags.last().copied().unwrap_or(0.0) * 1e3,
    });
    if !a.metrics.is_empty() {
        let d: Vec<[f64; 3]> = after
            .iter()
            .zip(&before)
            .map(|(x, y)| [x[0] - y[0], x[1] - y[1], x[2] - y[2]])
            .collect();
        let (queries, hits): (f64, f64) =
            (d.iter().map(|x| x[0]).sum(), d.iter().map(|x| x[1]).sum());
        let counts: Vec<u64> = d.iter().map(|x| x[2] as u64).collect();
        let mean = counts.iter().sum::<u64>() as f64 / counts.len().max(1) as f64;
        out["hit_rate"] = json!((queries > 0.0).then(|| hits / queries));
        out["per_server"] = json!(counts);
        out["spread"] =
            json!((mean > 0.0).then(|| *counts.iter().max().unwrap_or(&0) as f64 / mean));
    }
    for (k, v) in extra.as_object().expect("an object") {
        out[k] = v.clone();
    }
    println!("{out}");
}
