//! The prefix index's unit tests.

use super::super::chain::Chainer;
use super::*;

impl PrefixIndex {
    /// Each slot's bits set in the table (an entry emptied by a scan while a writer set
    /// its bit keeps it, and its count, until the entry is given to another block).
    fn counted(&self) -> Vec<usize> {
        let mut n = vec![0; MAX_SERVERS];
        for e in self.buckets.iter().flat_map(|b| &b.0) {
            let mut s = e.servers.load(Relaxed);
            while s != 0 {
                n[s.trailing_zeros() as usize] += 1;
                s &= s - 1;
            }
        }
        n
    }

    fn counted_entries(&self) -> usize {
        let entries = self.buckets.iter().flat_map(|b| &b.0);
        entries.filter(|e| e.key.load(Relaxed) != 0).count()
    }

    fn running(&self) -> Vec<usize> {
        (0..MAX_SERVERS).map(|s| self.held(s)).collect()
    }
}

fn chain(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    Chainer::new(&mut out, 4, usize::MAX, 0).push(text.as_bytes());
    out
}

#[test]
fn the_longest_prefix_is_found_with_the_servers_that_hold_it() {
    let ix = PrefixIndex::new(4096, 1000);
    let system = "You are a careful assistant. ";
    ix.record(&chain(&format!("{system}Tell me about cats.")), 0, 1);
    ix.record(
        &chain(&format!("{system}Tell me about dogs, please.")),
        1,
        2,
    );
    ix.record(&chain("Something else entirely."), 2, 3);
    let ask = chain(&format!("{system}Tell me about cats and mice."));
    let m = ix.longest(&ask, 0b111);
    assert_eq!(m.servers, 0b001, "{m:?}");
    assert_eq!(m.blocks, (system.len() + "Tell me about cats".len()) / 4);
    // Without server 0, server 1 shares the system prompt and "Tell me about ".
    let m1 = ix.longest(&ask, 0b110);
    assert_eq!(m1.servers, 0b010);
    assert_eq!(m1.blocks, (system.len() + "Tell me about ".len()) / 4);
    let mut found = [Match::default(); 4];
    let n = ix.holders_by_depth(&ask, 0b111, &mut found);
    let depths: Vec<(u32, usize)> = found[..n]
        .iter()
        .map(|d| (d.servers.trailing_zeros(), d.blocks))
        .collect();
    assert_eq!(depths, [(0, m.blocks), (1, m1.blocks)]);
    // Bounded by the room given: the deepest only.
    assert_eq!(ix.holders_by_depth(&ask, 0b111, &mut found[..1]), 1);
    assert_eq!(found[0], m);
    assert_eq!(
        ix.longest(&chain("Nothing alike here"), 0b111),
        Match::default()
    );
    assert_eq!(ix.longest(&ask, 0), Match::default());
}

#[test]
fn every_length_of_held_prefix_is_found_exactly() {
    let ix = PrefixIndex::new(1 << 14, 1 << 14);
    let text: String = (0..400)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let full = chain(&text);
    for n in 1..=full.len() {
        let ix2 = PrefixIndex::new(1 << 14, 1 << 14);
        ix2.record(&full[..n], 1, 1);
        assert_eq!(
            ix2.longest(&full, 0b10).blocks,
            n,
            "held {n} of {}",
            full.len()
        );
    }
    ix.record(&full, 0, 1);
    assert_eq!(ix.longest(&full, 1).blocks, full.len());
}

#[test]
fn a_server_that_leaves_takes_its_blocks_with_it() {
    let ix = PrefixIndex::new(4096, 1000);
    let c = chain("a prompt that is shared by two servers");
    ix.record(&c, 3, 1);
    ix.record(&c, 5, 1);
    assert_eq!(ix.held(3), c.len());
    ix.forget(1 << 3);
    assert_eq!(ix.held(3), 0);
    assert_eq!(ix.longest(&c, u64::MAX).servers, 1 << 5);
    ix.forget(1 << 5);
    assert_eq!(ix.longest(&c, u64::MAX), Match::default());
    assert_eq!(ix.evict(1), 0);
    assert_eq!(ix.held_total(), 0, "blocks no one holds go");
}

#[test]
fn eviction_keeps_each_server_within_its_capacity_oldest_first() {
    let ix = PrefixIndex::new(4096, 10);
    let old = chain("old prompt, used first, once: gone soon");
    let new = chain("new prompt, used after: stays in the cache");
    assert_eq!(new.len(), 10);
    ix.record(&old, 0, 1);
    ix.record(&new, 0, 2);
    ix.record(&new, 1, 2);
    assert!(ix.over_capacity());
    assert_eq!(ix.evict(3), old.len());
    assert!(!ix.over_capacity());
    assert_eq!(ix.held(0), 10);
    assert_eq!(ix.held(1), 10, "server 1 was within its bound");
    assert_eq!(ix.longest(&new, 1).blocks, 10);
    assert_eq!(ix.longest(&old, 1).blocks, 0);
    assert_eq!(ix.evicted(), old.len() as u64);
    assert_eq!(ix.evict(3), 0);
}

#[test]
fn a_prompt_longer_than_a_server_holds_is_kept_to_its_capacity() {
    let ix = PrefixIndex::new(4096, 8);
    let long = chain("a prompt of many more blocks than the server can hold at all");
    assert!(long.len() > 8);
    ix.record(&chain("an older prompt"), 0, 1);
    ix.record(&long, 0, 2);
    ix.evict(3);
    assert_eq!(ix.longest(&long, 1).blocks, 8, "its first 8 blocks stay");
    assert_eq!(ix.held(0), 8);
}

#[test]
fn eviction_never_breaks_a_prefix() {
    // A prompt touched again keeps its first blocks longest: the lookup's bisection
    // stays right however much is evicted.
    let ix = PrefixIndex::new(4096, 8);
    let c = chain("0123456789abcdefghijklmnopqrstuvwxyz0123456789");
    ix.record(&c, 0, 3);
    ix.record(&c[..4], 0, 50);
    ix.record(&chain("another prompt."), 0, 55);
    assert!(ix.over_capacity());
    ix.evict(60);
    let m = ix.longest(&c, 1);
    assert_eq!(
        m.blocks, 4,
        "the recent prefix stays, its older continuation goes"
    );
    assert!(ix.held(0) <= 8);
}

#[test]
fn blocks_unused_for_the_maximum_age_go_and_the_stamp_wraps_safely() {
    let ix = PrefixIndex::new(4096, 1000);
    let start = STAMP_MASK - 5; // the stamp wraps soon after
    let c = chain("a prompt nobody sends again");
    ix.record(&c, 0, start);
    assert_eq!(ix.evict(start + 100), 0);
    assert_eq!(ix.longest(&c, 1).blocks, c.len());
    assert_eq!(ix.evict(start + MAX_AGE_MS + 1), c.len());
    assert_eq!(ix.longest(&c, 1), Match::default());
}

#[test]
fn a_full_table_gives_the_least_recently_used_entry_and_counts_stay_right() {
    // One bucket: four entries.
    let ix = PrefixIndex::new(WAYS, 1000);
    let hashes: Vec<u64> = (1..=6u64).map(|i| i << 40).collect();
    for (t, h) in hashes.iter().enumerate() {
        ix.record(std::slice::from_ref(h), t % 2, 10 * t as u64 + 10);
    }
    assert_eq!(ix.replaced(), 2);
    assert_eq!(ix.held_total(), WAYS);
    // The two oldest went.
    assert_eq!(ix.holders(hashes[0]), 0);
    assert_eq!(ix.holders(hashes[1]), 0);
    assert_eq!(ix.holders(hashes[5]), 0b10);
    ix.evict(100);
    assert_eq!(ix.held(0) + ix.held(1), WAYS);
}

#[test]
fn a_prompt_whose_blocks_fill_a_bucket_keeps_its_head() {
    // One bucket: the chain's fifth and sixth blocks find it full of its first four,
    // stamped this instant. They go unrecorded; the first four stay findable (giving up the
    // least recently used entry would have given up block 0, and the whole prefix with it).
    let ix = PrefixIndex::new(WAYS, 1000);
    let c: Vec<u64> = (1..=6u64).map(|i| i << 40).collect();
    ix.record(&c, 0, 5);
    assert_eq!(ix.longest(&c, 1).blocks, WAYS);
    assert_eq!(ix.held(0), WAYS);
    assert_eq!(ix.replaced(), 2, "the two lost blocks are counted");
    // A millisecond later the same prompt's blocks are older than a new one's: LRU again.
    let other: Vec<u64> = (7..=8u64).map(|i| i << 40).collect();
    ix.record(&other, 1, 6);
    assert_eq!(ix.longest(&other, 0b10).blocks, 2);
    assert_eq!(ix.held_total(), WAYS);
}

#[test]
fn counts_stay_exact_while_scans_run_beside_writers() {
    // Scans beside writers: the running counts must match the table after. A scan that
    // replaced them with its own count lost the blocks written behind it while it ran.
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let ix = Arc::new(PrefixIndex::new(1 << 13, 1 << 20));
    let scanning = Arc::new(AtomicBool::new(true));
    let scanner = {
        let (ix, scanning) = (ix.clone(), scanning.clone());
        std::thread::spawn(move || {
            let mut scans = 0;
            while scanning.load(Relaxed) {
                assert_eq!(ix.evict(5_000), 0);
                scans += 1;
            }
            scans
        })
    };
    // The writers go on after the last scan (which ran beside them): no quiet scan after.
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let (ix, scanning) = (ix.clone(), scanning.clone());
            std::thread::spawn(move || {
                let mut after = 0;
                for i in 0u64.. {
                    let c = chain(&format!("writer {t} prompt {i} with a few blocks"));
                    ix.record(&c, (i % 4) as usize, 1 + i % 4_000);
                    if !scanning.load(Relaxed) {
                        after += 1;
                        if after == 200 {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    scanning.store(false, Relaxed);
    let scans = scanner.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    assert!(scans > 0);
    assert_eq!(ix.running(), ix.counted(), "after {scans} scans");
    // Forgetting a server beside writers: its count is what is left of it.
    let writer = {
        let ix = ix.clone();
        std::thread::spawn(move || {
            for i in 0..2000u64 {
                ix.record(&chain(&format!("late prompt {i}")), 1, 4_000);
            }
        })
    };
    ix.forget(1 << 1);
    writer.join().unwrap();
    assert_eq!(ix.running(), ix.counted());
    // Scans that drop beside writers: each server brought within a small capacity.
    ix.set_capacity(64);
    let evicted = ix.evicted();
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let ix = ix.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let c = chain(&format!("third wave {t}: {i} with a few more blocks"));
                    ix.record(&c, (i % 4) as usize, 4_000 + i / 8);
                }
            })
        })
        .collect();
    while writers.iter().any(|w| !w.is_finished()) {
        ix.evict(4_300);
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(ix.evicted() > evicted, "the scans dropped blocks");
    assert_eq!(ix.running(), ix.counted());
    // Every block past its age: all counts go to 0.
    ix.evict(5_000 + MAX_AGE_MS);
    assert_eq!(ix.held_total(), 0);
    assert_eq!(ix.counted(), vec![0; MAX_SERVERS]);
}

#[test]
fn a_larger_table_carries_what_a_smaller_one_held() {
    let small = PrefixIndex::new(64, 1000);
    let prompts: Vec<Vec<u64>> = (0..6)
        .map(|p| chain(&format!("{p} prompt: a few blocks of text, some more")))
        .collect();
    for (p, c) in prompts.iter().enumerate() {
        small.record(c, p % 3, 10 + 10 * p as u64);
    }
    small.record(&prompts[0][..3], 5, 70);
    let large = PrefixIndex::new(1024, 1000);
    let carried = large_carry(&small, &large);
    assert!(carried > 0);
    for c in &prompts {
        for servers in [u64::MAX, 0b1, 0b10, 0b100, 1 << 5] {
            assert_eq!(large.longest(c, servers), small.longest(c, servers));
        }
    }
    assert_eq!(large.running(), small.running());
    assert_eq!(large.running(), large.counted());
    // The stamps came too: the oldest blocks go first (server 2 holds prompts 2 and 5).
    assert_eq!(prompts[5].len(), 10);
    large.set_capacity(10);
    large.evict(80);
    assert_eq!(large.longest(&prompts[5], 0b100).blocks, 10);
    assert_eq!(large.longest(&prompts[2], 0b100).blocks, 0);
    assert_eq!(large.longest(&prompts[0], 1 << 5).blocks, 3);
}

#[test]
fn a_carry_into_a_table_in_use_merges_with_what_it_holds() {
    let small = PrefixIndex::new(64, 1000);
    let prompt = chain("a prompt of a few blocks of text, and some more of it");
    small.record(&prompt, 0, 10);
    let large = PrefixIndex::new(1024, 1000);
    // Recorded into the larger table before the carry reaches it: part by the same server,
    // part by another.
    large.record(&prompt[..2], 0, 20);
    large.record(&prompt[..3], 1, 20);
    assert_eq!(small.carry_into(&large), prompt.len());
    // One entry per block: each held once per server, counts exact.
    assert_eq!(large.counted_entries(), prompt.len());
    assert_eq!(large.longest(&prompt, 0b01).blocks, prompt.len());
    assert_eq!(large.longest(&prompt, 0b10).blocks, 3);
    assert_eq!((large.held(0), large.held(1)), (prompt.len(), 3));
    assert_eq!(large.running(), large.counted());
}

fn large_carry(from: &PrefixIndex, to: &PrefixIndex) -> usize {
    let n = from.carry_into(to);
    assert_eq!(n, from.counted_entries());
    n
}

#[test]
fn concurrent_writers_and_readers_keep_the_bounds() {
    let ix = std::sync::Arc::new(PrefixIndex::new(1 << 12, 200));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ix = ix.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let c = chain(&format!("shared system prompt ... user {t} turn {i}"));
                    ix.record(&c, (i % 8) as usize, i);
                    let m = ix.longest(&c, 0xff);
                    assert!(m.blocks <= c.len());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ix.evict(3000);
    for s in 0..8 {
        assert!(ix.held(s) <= 200, "server {s} holds {}", ix.held(s));
    }
    assert!(ix.held_total() <= ix.entries() * 8);
}
