//! The simulated GPU's scheduler: one task per server runs vLLM V1's step loop in real time.
//!
//! Each step schedules the running requests first (a decoding one takes one token of the
//! step's budget, a prefilling one a chunk of its uncached prompt), then admits waiting
//! requests in arrival order while fewer than `max_num_seqs` run, the step's token budget
//! (`max_batched_tokens`) lasts and the KV cache has the blocks (their cached prefix is
//! shared, not computed); the first that does not fit stops the admissions. The step lasts
//! `decode_per_step` when a request decodes in it, plus `prefill_per_token` for each prompt
//! token prefilled in it; then every request whose prefill ended samples its first token, every
//! decoding one its next, and those at `max_tokens` finish and free their blocks. A decoding
//! request whose output needs a block when none is free preempts the most recently admitted
//! running request (its blocks are freed, it waits again at the queue's head and later
//! recomputes its prompt and output, mostly from the prefix cache), as vLLM V1 does.
//! Requests talk to the loop through channels; an idle loop sleeps on its channel.

use super::kv_cache::{BlockId, KvCache};
use super::SimConfig;
use crate::mock::metrics::ModelSeries;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A request handed to the engine.
#[derive(Debug)]
pub struct Submit {
    /// Index of the model in the server's list (its metric series).
    pub model: usize,
    /// The prompt's chained block hashes (its whole blocks).
    pub hashes: Vec<u64>,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// Prompt tokens to take as found in the prefix cache whatever it holds (whole blocks,
    /// at most all but the last token): the fleet benchmark's ideal-placement run, where
    /// every prefix is where its request goes. 0: the cache decides.
    pub assume_cached: usize,
    /// Send a [`Event::Token`] for every token after the first.
    pub stream: bool,
    /// Where its events go; the request is aborted when the receiver is dropped.
    pub events: mpsc::UnboundedSender<Event>,
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Its first token, with the prompt tokens found in the prefix cache.
    First { cached_tokens: usize },
    /// One more token (streaming requests only).
    Token,
    /// Its last token has been produced (after that token's `First` or `Token`).
    Done,
}

struct Request {
    sub: Submit,
    arrival: Instant,
    /// Its blocks: the prompt's first (in order), then the output's.
    blocks: Vec<BlockId>,
    /// Tokens in the KV cache.
    computed: usize,
    /// Tokens to compute before the next token is sampled: the prompt (and, after a
    /// preemption, the output so far).
    target: usize,
    generated: usize,
    /// Prompt blocks already cached under their hash.
    registered: usize,
    /// The prefix-cache hit at its first admission.
    cached_tokens: Option<usize>,
    /// Tokens scheduled in the current step.
    scheduled: usize,
    last_token: Option<Instant>,
}

/// What a step computes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Step {
    pub prefill_tokens: usize,
    pub decoding: usize,
    pub preempted: bool,
}

impl Step {
    fn is_empty(&self) -> bool {
        self.prefill_tokens == 0 && self.decoding == 0
    }

    /// The step's duration in the model.
    pub(super) fn duration(&self, cfg: &SimConfig) -> Duration {
        let decode = if self.decoding > 0 {
            cfg.decode_per_step
        } else {
            Duration::ZERO
        };
        decode + cfg.prefill_per_token * u32::try_from(self.prefill_tokens).unwrap_or(u32::MAX)
    }
}

/// One simulated GPU.
pub(super) struct Engine {
    cfg: SimConfig,
    cache: KvCache,
    waiting: VecDeque<Request>,
    running: Vec<Request>,
    series: Vec<ModelSeries>,
}

impl Engine {
    pub(super) fn new(cfg: SimConfig, num_blocks: usize, series: Vec<ModelSeries>) -> Self {
        Self {
            cache: KvCache::new(num_blocks),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            series,
        }
    }

    /// The loop: until every sender is gone and nothing is left to do.
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Submit>) {
        loop {
            self.reap();
            if self.running.is_empty() && self.waiting.is_empty() {
                self.publish();
                match rx.recv().await {
                    Some(s) => self.enqueue(s),
                    None => return,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.enqueue(s);
            }
            let start = Instant::now();
            let step = self.schedule();
            self.publish();
            if step.is_empty() {
                if step.preempted {
                    continue;
                }
                // Nothing can run (the admission checks make this unreachable): wait for news
                // rather than spin.
                tracing::warn!(
                    waiting = self.waiting.len(),
                    "simulator: no request can be scheduled"
                );
                match rx.recv().await {
                    Some(s) => self.enqueue(s),
                    None => return,
                }
                continue;
            }
            let d = step.duration(&self.cfg);
            if d.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep_until((start + d).into()).await;
            }
            self.complete(Instant::now());
        }
    }

    fn enqueue(&mut self, sub: Submit) {
        self.waiting.push_back(Request {
            target: sub.prompt_tokens.max(1),
            sub,
            arrival: Instant::now(),
            blocks: Vec::new(),
            computed: 0,
            generated: 0,
            registered: 0,
            cached_tokens: None,
            scheduled: 0,
            last_token: None,
        });
    }

    /// Forget the requests whose client went away (their blocks are freed).
    fn reap(&mut self) {
        let Engine {
            cache,
            running,
            waiting,
            ..
        } = self;
        running.retain(|r| {
            let gone = r.sub.events.is_closed();
            if gone {
                cache.free(&r.blocks);
            }
            !gone
        });
        waiting.retain(|r| !r.sub.events.is_closed());
    }

    /// Plan a step: the running requests first, then admissions.
    pub(super) fn schedule(&mut self) -> Step {
        let b = self.cfg.block_tokens.max(1);
        let mut budget = self.cfg.max_batched_tokens.max(1);
        let mut step = Step::default();
        let mut i = 0;
        'running: while i < self.running.len() {
            if budget == 0 {
                self.running[i].scheduled = 0;
                i += 1;
                continue;
            }
            let r = &mut self.running[i];
            if r.computed < r.target {
                let chunk = (r.target - r.computed).min(budget);
                r.scheduled = chunk;
                budget -= chunk;
                step.prefill_tokens += chunk;
                i += 1;
                continue;
            }
            // Decoding: the last sampled token enters the KV cache.
            while self.running[i].blocks.len() * b < self.running[i].computed + 1 {
                if let Some(block) = self.cache.allocate_one() {
                    self.running[i].blocks.push(block);
                    continue;
                }
                let victim = self.running.len() - 1;
                self.preempt(victim);
                step.preempted = true;
                if victim == i {
                    break 'running;
                }
            }
            self.running[i].scheduled = 1;
            budget -= 1;
            step.decoding += 1;
            i += 1;
        }
        // vLLM admits nothing in a step that preempted.
        while !step.preempted && self.running.len() < self.cfg.max_num_seqs.max(1) && budget > 0 {
            let Some(w) = self.waiting.front() else {
                break;
            };
            // A whole-prompt hit still recomputes its last token (vLLM: at most len - 1
            // tokens come from the cache, in whole blocks).
            let max_hits = (w.target - 1) / b;
            let Some(a) = self
                .cache
                .allocate(&w.sub.hashes, max_hits, w.target.div_ceil(b))
            else {
                break;
            };
            let mut r = self.waiting.pop_front().expect("front exists");
            // Assumed hits are computed already; their blocks are cached at the step's end.
            let hits = a.hits.max((r.sub.assume_cached / b).min(max_hits));
            r.blocks = a.blocks;
            r.computed = hits * b;
            r.registered = a.hits;
            let s = &self.series[r.sub.model];
            s.prefix_queries.inc_by(r.target as u64);
            s.prefix_hits.inc_by(r.computed as u64);
            if r.cached_tokens.is_none() {
                r.cached_tokens = Some(r.computed);
                s.queue_time.observe(r.arrival.elapsed().as_secs_f64());
            }
            let chunk = (r.target - r.computed).min(budget);
            r.scheduled = chunk;
            budget -= chunk;
            step.prefill_tokens += chunk;
            self.running.push(r);
        }
        step
    }

    /// Back to the waiting queue's head, its blocks freed, to recompute what it had.
    fn preempt(&mut self, idx: usize) {
        let mut r = self.running.remove(idx);
        self.cache.free(&r.blocks);
        r.blocks.clear();
        r.computed = 0;
        r.registered = 0;
        r.scheduled = 0;
        r.target = r.sub.prompt_tokens.max(1) + r.generated;
        self.series[r.sub.model].preemptions.inc();
        tracing::debug!(
            prompt_tokens = r.sub.prompt_tokens,
            generated = r.generated,
            "simulator: request preempted"
        );
        self.waiting.push_front(r);
    }

    /// The step has run: what it computed is in the KV cache, tokens are sampled, finished
    /// requests leave.
    pub(super) fn complete(&mut self, now: Instant) {
        let b = self.cfg.block_tokens.max(1);
        let Engine {
            cache,
            running,
            series,
            ..
        } = self;
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let n = std::mem::take(&mut r.scheduled);
            if n == 0 {
                i += 1;
                continue;
            }
            let s = &series[r.sub.model];
            let sampled = if r.computed < r.target {
                r.computed += n;
                let full = (r.computed / b).min(r.sub.hashes.len());
                for k in r.registered..full {
                    cache.register(r.blocks[k], r.sub.hashes[k]);
                }
                r.registered = r.registered.max(full);
                r.computed >= r.target
            } else {
                r.computed += 1;
                true
            };
            if !sampled {
                i += 1;
                continue;
            }
            r.generated += 1;
            s.generation_tokens.inc();
            if r.generated == 1 {
                s.ttft.observe(now.duration_since(r.arrival).as_secs_f64());
                s.prompt_tokens.inc_by(r.sub.prompt_tokens as u64);
                let _ = r.sub.events.send(Event::First {
                    cached_tokens: r.cached_tokens.unwrap_or(0),
                });
            } else {
                if let Some(t) = r.last_token {
                    s.itl.observe(now.duration_since(t).as_secs_f64());
                }
                if r.sub.stream {
                    let _ = r.sub.events.send(Event::Token);
                }
            }
            r.last_token = Some(now);
            if r.generated >= r.sub.max_tokens {
                let _ = r.sub.events.send(Event::Done);
                s.success.inc();
                s.e2e.observe(now.duration_since(r.arrival).as_secs_f64());
                let done = running.remove(i);
                cache.free(&done.blocks);
                continue;
            }
            i += 1;
        }
    }

    /// The gauges: running and waiting per model, the KV cache's use.
    fn publish(&self) {
        let mut counts = vec![(0u32, 0u32); self.series.len()];
        for r in &self.running {
            counts[r.sub.model].0 += 1;
        }
        for r in &self.waiting {
            counts[r.sub.model].1 += 1;
        }
        let usage = self.cache.usage();
        for (s, (running, waiting)) in self.series.iter().zip(counts) {
            s.running.set(f64::from(running));
            s.waiting.set(f64::from(waiting));
            s.kv_cache.set(usage);
        }
    }

    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        (
            self.running.len(),
            self.waiting.len(),
            self.cache.num_blocks() - self.cache.free_blocks(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::metrics::MockMetrics;

    fn engine(cfg: SimConfig, num_blocks: usize) -> Engine {
        let m = MockMetrics::new(1);
        Engine::new(cfg, num_blocks, vec![m.series("m")])
    }

    fn submit(
        e: &mut Engine,
        hashes: Vec<u64>,
        prompt: usize,
        max_tokens: usize,
    ) -> mpsc::UnboundedReceiver<Event> {
        submit_assuming(e, hashes, prompt, max_tokens, 0)
    }

    fn submit_assuming(
        e: &mut Engine,
        hashes: Vec<u64>,
        prompt: usize,
        max_tokens: usize,
        assume_cached: usize,
    ) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        e.enqueue(Submit {
            model: 0,
            hashes,
            prompt_tokens: prompt,
            max_tokens,
            assume_cached,
            stream: true,
            events: tx,
        });
        rx
    }

    fn cfg() -> SimConfig {
        SimConfig {
            block_tokens: 4,
            prefill_per_token: Duration::from_micros(100),
            decode_per_step: Duration::from_millis(10),
            max_num_seqs: 2,
            max_batched_tokens: 16,
            ..SimConfig::default()
        }
    }

    fn events(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[test]
    fn chunked_prefill_then_one_token_a_step() {
        let mut e = engine(cfg(), 64);
        let mut rx = submit(&mut e, vec![1, 2, 3, 4, 5], 20, 3);
        // 20 prompt tokens, 16 a step: two prefill steps, the first token after the second.
        let s = e.schedule();
        assert_eq!((s.prefill_tokens, s.decoding), (16, 0));
        assert_eq!(s.duration(&cfg()), Duration::from_micros(1600));
        e.complete(Instant::now());
        assert!(events(&mut rx).is_empty());
        assert_eq!(e.schedule().prefill_tokens, 4);
        e.complete(Instant::now());
        assert_eq!(events(&mut rx), vec![Event::First { cached_tokens: 0 }]);
        let s = e.schedule();
        assert_eq!((s.prefill_tokens, s.decoding), (0, 1));
        assert_eq!(s.duration(&cfg()), Duration::from_millis(10));
        e.complete(Instant::now());
        e.schedule();
        e.complete(Instant::now());
        assert_eq!(
            events(&mut rx),
            vec![Event::Token, Event::Token, Event::Done]
        );
        assert_eq!(e.counts(), (0, 0, 0));
    }

    #[test]
    fn a_cached_prefix_is_not_prefilled_again() {
        let mut e = engine(cfg(), 64);
        let mut a = submit(&mut e, vec![1, 2, 3], 14, 1);
        assert_eq!(e.schedule().prefill_tokens, 14);
        e.complete(Instant::now());
        assert_eq!(
            events(&mut a),
            vec![Event::First { cached_tokens: 0 }, Event::Done]
        );
        // Same three leading blocks, then a different one: 12 tokens come from the cache.
        let mut b = submit(&mut e, vec![1, 2, 3, 9], 18, 1);
        assert_eq!(e.schedule().prefill_tokens, 6);
        e.complete(Instant::now());
        assert_eq!(events(&mut b)[0], Event::First { cached_tokens: 12 });
        // A whole-prompt hit recomputes its last block.
        let mut c = submit(&mut e, vec![1, 2, 3], 12, 1);
        assert_eq!(e.schedule().prefill_tokens, 4);
        e.complete(Instant::now());
        assert_eq!(events(&mut c)[0], Event::First { cached_tokens: 8 });
    }

    #[test]
    fn tokens_assumed_cached_are_not_prefilled_and_are_cached_after() {
        let mut e = engine(cfg(), 64);
        // A cold cache: 9 tokens assumed found are 2 whole blocks.
        let mut a = submit_assuming(&mut e, vec![1, 2, 3, 4], 16, 1, 9);
        assert_eq!(e.schedule().prefill_tokens, 8);
        e.complete(Instant::now());
        assert_eq!(
            events(&mut a),
            vec![Event::First { cached_tokens: 8 }, Event::Done]
        );
        // At most all but the last block; and the blocks are in the cache now.
        let mut b = submit_assuming(&mut e, vec![1, 2, 3, 4], 16, 1, 100);
        assert_eq!(e.schedule().prefill_tokens, 4);
        e.complete(Instant::now());
        assert_eq!(events(&mut b)[0], Event::First { cached_tokens: 12 });
        let mut c = submit(&mut e, vec![1, 2, 3, 5], 16, 1);
        assert_eq!(e.schedule().prefill_tokens, 4);
        e.complete(Instant::now());
        assert_eq!(events(&mut c)[0], Event::First { cached_tokens: 12 });
    }

    #[test]
    fn at_most_max_num_seqs_run_and_the_rest_wait() {
        let mut e = engine(cfg(), 64);
        let _rx: Vec<_> = (0..5).map(|i| submit(&mut e, vec![i], 4, 10)).collect();
        e.schedule();
        assert_eq!(e.counts().0, 2);
        assert_eq!(e.counts().1, 3);
        e.publish();
        assert_eq!(e.series[0].waiting.get(), 3.0);
        assert_eq!(e.series[0].running.get(), 2.0);
    }

    #[test]
    fn a_request_waits_for_blocks_and_the_output_preempts_the_newest() {
        // 6 blocks of 4 tokens.
        let mut e = engine(cfg(), 6);
        let mut a = submit(&mut e, vec![1, 2], 8, 10);
        let mut b = submit(&mut e, vec![3, 4], 8, 10);
        let mut c = submit(&mut e, vec![5, 6, 7], 12, 1);
        e.schedule();
        // a and b hold 4 blocks; c waits (max_num_seqs is 2).
        assert_eq!(e.counts(), (2, 1, 4));
        e.complete(Instant::now());
        assert_eq!(events(&mut a).len(), 1);
        assert_eq!(events(&mut b).len(), 1);
        // Decoding: each needs a third block for its 9th token: 6 blocks, no preemption yet.
        e.schedule();
        e.complete(Instant::now());
        assert_eq!(e.counts(), (2, 1, 6));
        // Three more steps fill the third blocks; then a needs a fourth: b is preempted.
        for _ in 0..3 {
            e.schedule();
            e.complete(Instant::now());
        }
        let s = e.schedule();
        assert!(s.preempted);
        assert_eq!(e.counts().0, 1);
        assert_eq!(e.series[0].preemptions.get(), 1);
        // Everything still finishes.
        for _ in 0..200 {
            e.complete(Instant::now());
            if e.counts() == (0, 0, 0) {
                break;
            }
            e.schedule();
        }
        assert_eq!(e.counts(), (0, 0, 0));
        let count = |rx: &mut mpsc::UnboundedReceiver<Event>| events(rx).len();
        assert_eq!(count(&mut a), 9 + 1); // 9 more tokens and Done
        assert_eq!(count(&mut b), 9 + 1);
        assert_eq!(
            events(&mut c),
            vec![Event::First { cached_tokens: 0 }, Event::Done]
        );
    }

    #[test]
    fn a_client_that_went_away_frees_its_blocks() {
        let mut e = engine(cfg(), 64);
        let rx = submit(&mut e, vec![1, 2], 8, 100);
        e.schedule();
        e.complete(Instant::now());
        assert_eq!(e.counts(), (1, 0, 2));
        drop(rx);
        e.reap();
        assert_eq!(e.counts(), (0, 0, 0));
    }
}
