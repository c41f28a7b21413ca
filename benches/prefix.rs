//! Criterion micro-benchmark of cache-aware routing's decision (issue 16's bound: < 5 µs at
//! 1 M indexed blocks): chaining a prompt's block hashes and finding the longest cached prefix
//! in an index of 8 servers holding 1 M blocks in all.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use infergate::routing::prefix::{Chainer, PrefixIndex, DEFAULT_BLOCK_BYTES};

/// A prompt of `blocks` whole blocks: a system prompt shared by `family`, then a user's own
/// text.
fn prompt(family: usize, user: usize, blocks: usize) -> Vec<u8> {
    let mut p = format!("system prompt of family {family}: ").into_bytes();
    p.resize(blocks * DEFAULT_BLOCK_BYTES / 2, b's');
    p.extend_from_slice(format!("user {user} asks: ").as_bytes());
    p.resize(blocks * DEFAULT_BLOCK_BYTES, b'u');
    p
}

fn chain_of(text: &[u8], out: &mut Vec<u64>) {
    Chainer::new(out, DEFAULT_BLOCK_BYTES, usize::MAX).push(text);
}

fn decision(c: &mut Criterion) {
    const SERVERS: usize = 8;
    const TOTAL: usize = 1_000_000;
    let ix = PrefixIndex::new(TOTAL / SERVERS + 1);
    let mut buf = Vec::new();
    // 128-block prompts (8 KiB): 64 families of system prompts, each served by one server,
    // and users' own continuations until the index holds 1 M blocks.
    let mut user = 0;
    while ix.len() < TOTAL {
        let family = user % 64;
        chain_of(&prompt(family, user, 128), &mut buf);
        ix.record(&buf, family % SERVERS, user as u64);
        user += 1;
    }
    let mut g = c.benchmark_group("prefix_decision_1m_blocks");
    for blocks in [16usize, 128, 512] {
        // A new user of a known family: the shared half is cached, the rest is not.
        let text = prompt(7, usize::MAX, blocks);
        let mut chain = Vec::with_capacity(blocks);
        g.bench_with_input(
            BenchmarkId::new("chain_and_lookup", blocks),
            &text,
            |b, text| {
                b.iter(|| {
                    chain_of(black_box(text), &mut chain);
                    ix.longest(&chain, (1 << SERVERS) - 1)
                })
            },
        );
        chain_of(&text, &mut chain);
        g.bench_with_input(BenchmarkId::new("lookup", blocks), &chain, |b, chain| {
            b.iter(|| ix.longest(black_box(chain), (1 << SERVERS) - 1))
        });
    }
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
