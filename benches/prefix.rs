//! Criterion micro-benchmark of cache-aware routing's decision (issue 16's bound: < 5 µs at
//! 1 M indexed blocks): chaining a prompt's block hashes and finding the longest cached prefix
//! in an index of 8 servers holding 1 M blocks in all, and recording a routed prompt.
//!
//! Each iteration asks for another prompt (a ring of 4,096), so that the lookups of returning
//! users and the misses of new text read cold cache lines, as a gateway's would: repeating one
//! lookup would only measure the CPU's cache.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use infergate::routing::prefix::{Chainer, Match, PrefixIndex, DEFAULT_BLOCK_BYTES};

const SERVERS: usize = 8;
const TOTAL: usize = 1_000_000;
const FAMILIES: usize = 64;
const RING: usize = 4096;

/// A prompt of `blocks` whole blocks: a system prompt shared by `family` (the first half, at
/// most 64 blocks), then a user's own text.
fn prompt(family: usize, user: usize, blocks: usize) -> Vec<u8> {
    let mut p = format!("system prompt of family {family}: ").into_bytes();
    p.resize(blocks.min(128) * DEFAULT_BLOCK_BYTES / 2, b's');
    p.extend_from_slice(format!("user {user} asks: ").as_bytes());
    p.resize(blocks * DEFAULT_BLOCK_BYTES, b'u');
    p
}

fn chain_of(text: &[u8], out: &mut Vec<u64>) {
    Chainer::new(out, DEFAULT_BLOCK_BYTES, usize::MAX, 0x9e37_79b9_7f4a_7c15).push(text);
}

fn decision(c: &mut Criterion) {
    // The table at twice the blocks it holds (a four-way table loses little there).
    let ix = PrefixIndex::new(2 * TOTAL, TOTAL / SERVERS + 1);
    let mut buf = Vec::new();
    // 128-block prompts (8 KiB): 64 families of system prompts, each served by one server,
    // and users' own continuations until the index holds 1 M blocks.
    let mut user = 0;
    while ix.held_total() < TOTAL {
        let family = user % FAMILIES;
        chain_of(&prompt(family, user, 128), &mut buf);
        ix.record(&buf, family % SERVERS, user as u64);
        user += 1;
    }
    let users = user;
    let all = (1u64 << SERVERS) - 1;
    let mut g = c.benchmark_group("prefix_decision_1m_blocks");
    for blocks in [16usize, 128, 512] {
        // New users of known families (the shared half is cached, the rest is not), and
        // returning users whose whole 128-block prompt was recorded (the last ones, not yet
        // given to other blocks), each prompt another.
        let new: Vec<Vec<u8>> = (0..RING)
            .map(|i| prompt(i % FAMILIES, usize::MAX - i, blocks))
            .collect();
        let mut chains: Vec<Vec<u64>> = new
            .iter()
            .map(|t| {
                let mut c = Vec::new();
                chain_of(t, &mut c);
                c
            })
            .collect();
        // The bench must look up what it claims: the shared half found, on the family's server.
        for (i, chain) in chains.iter().enumerate().take(FAMILIES) {
            let m = ix.longest(chain, all);
            assert_eq!(m.servers, 1 << (i % FAMILIES % SERVERS), "{m:?}");
            assert!(m.blocks >= blocks.min(128) / 2 - 1, "{m:?} of {blocks}");
        }
        let mut chain = Vec::with_capacity(blocks);
        let mut at = 0;
        g.bench_with_input(
            BenchmarkId::new("chain_and_lookup", blocks),
            &new,
            |b, new| {
                b.iter(|| {
                    at = (at + 1) % RING;
                    chain_of(black_box(&new[at]), &mut chain);
                    ix.longest(&chain, all)
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("lookup", blocks), &chains, |b, chains| {
            b.iter(|| {
                at = (at + 1) % RING;
                ix.longest(black_box(&chains[at]), all)
            })
        });
        // What the policy's choice does (`routing::cache_aware`, up to 4 depths): lookups until
        // no server left holds any of the prompt; here the family's server, then none.
        let mut depths = [Match::default(); 4];
        g.bench_with_input(
            BenchmarkId::new("lookup_rounds", blocks),
            &chains,
            |b, chains| {
                b.iter(|| {
                    at = (at + 1) % RING;
                    ix.holders_by_depth(black_box(&chains[at]), all, &mut depths)
                })
            },
        );
        if blocks == 128 {
            let returning: Vec<Vec<u64>> = (0..RING)
                .map(|i| {
                    let u = users - 1 - i;
                    let mut c = Vec::new();
                    chain_of(&prompt(u % FAMILIES, u, 128), &mut c);
                    c
                })
                .collect();
            let held = returning
                .iter()
                .filter(|c| ix.longest(c, all).blocks == 128)
                .count();
            assert!(
                held > RING * 9 / 10,
                "{held} of {RING} returning users found whole"
            );
            g.bench_with_input(
                BenchmarkId::new("lookup_returning", blocks),
                &returning,
                |b, chains| {
                    b.iter(|| {
                        at = (at + 1) % RING;
                        ix.longest(black_box(&chains[at]), all)
                    })
                },
            );
        }
        // Recording a routed prompt (a new user: its shared half is there, the rest is new).
        let mut now = users as u64;
        g.bench_with_input(BenchmarkId::new("record", blocks), &(), |b, _| {
            b.iter(|| {
                at = (at + 1) % RING;
                now += 1;
                ix.record(black_box(&chains[at]), at % SERVERS, now)
            })
        });
        chains.clear();
    }
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
