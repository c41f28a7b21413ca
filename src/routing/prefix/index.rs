//! Which servers of one model's pool recently served which prompt prefixes, as block hashes
//! (see [`super::chain`]): an approximation of what each server still holds in its KV cache.
//!
//! Lookups take no lock (a lock-free map; readers only load atomics) and walk the prompt's chain
//! by galloping and binary search, which is sound because a server that holds a block's hash
//! holds its prefix too: a request records its whole chain, and eviction drops the least
//! recently used blocks first, so later blocks go no later than earlier ones.
//!
//! Memory is bounded per server: each holds at most `capacity` blocks (its KV cache's size in
//! blocks, or a configured share of it); [`PrefixIndex::evict`] takes the oldest of a server
//! over its bound, off the request path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Servers per pool the index can tell apart (one bit each).
pub const MAX_SERVERS: usize = 64;

/// One block hash: the servers that hold it and when it was last used.
struct Entry {
    servers: AtomicU64,
    last_ms: AtomicU64,
    /// Its place in the chain (a chain hash stands for its whole prefix, so for one depth).
    depth: u32,
}

/// The index of one model's pool. Servers are slots `0..MAX_SERVERS` (the pool's order).
pub struct PrefixIndex {
    map: papaya::HashMap<u64, Entry, foldhash::fast::RandomState>,
    /// Blocks each slot holds.
    held: [AtomicUsize; MAX_SERVERS],
    /// Blocks a slot may hold.
    capacity: AtomicUsize,
    evicted: AtomicU64,
}

/// The longest cached prefix: its length in blocks, and the servers (a bit per slot) that
/// hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Match {
    pub blocks: usize,
    pub servers: u64,
}

impl PrefixIndex {
    /// An index whose servers hold at most `capacity` blocks each.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            held: std::array::from_fn(|_| AtomicUsize::new(0)),
            capacity: AtomicUsize::new(capacity.max(1)),
            evicted: AtomicU64::new(0),
        }
    }

    /// Record that server `slot` was sent the prompt of `chain` at `now_ms`.
    pub fn record(&self, chain: &[u64], slot: usize, now_ms: u64) {
        if slot >= MAX_SERVERS {
            return;
        }
        let bit = 1u64 << slot;
        let map = self.map.pin();
        for (depth, &h) in chain.iter().enumerate() {
            let e = map.get_or_insert_with(h, || Entry {
                servers: AtomicU64::new(0),
                last_ms: AtomicU64::new(now_ms),
                depth: depth.min(u32::MAX as usize) as u32,
            });
            // Shared prefixes are touched by every request: write only what changes.
            if e.servers.load(Relaxed) & bit == 0 && e.servers.fetch_or(bit, Relaxed) & bit == 0 {
                self.held[slot].fetch_add(1, Relaxed);
            }
            if e.last_ms.load(Relaxed) < now_ms {
                e.last_ms.store(now_ms, Relaxed);
            }
        }
    }

    /// The longest prefix of `chain` that any of `candidates` (a bit per slot) holds.
    pub fn longest(&self, chain: &[u64], candidates: u64) -> Match {
        let map = self.map.pin();
        let holders = |i: usize| {
            map.get(&chain[i])
                .map_or(0, |e| e.servers.load(Relaxed) & candidates)
        };
        if chain.is_empty() || candidates == 0 {
            return Match::default();
        }
        let first = holders(0);
        if first == 0 {
            return Match::default();
        }
        // Gallop to a block no candidate holds (or the end), then bisect.
        let (mut lo, mut at_lo, mut step) = (0usize, first, 1usize);
        let mut hi = chain.len();
        while lo + step < chain.len() {
            let h = holders(lo + step);
            if h == 0 {
                hi = lo + step;
                break;
            }
            (lo, at_lo) = (lo + step, h);
            step *= 2;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let h = holders(mid);
            if h == 0 {
                hi = mid;
            } else {
                (lo, at_lo) = (mid, h);
            }
        }
        Match {
            blocks: lo + 1,
            servers: at_lo,
        }
    }

    /// Each candidate's longest cached prefix, deepest first: `f(slot, blocks)` for every
    /// candidate holding at least one block.
    pub fn each_depth(&self, chain: &[u64], mut candidates: u64, mut f: impl FnMut(usize, usize)) {
        while candidates != 0 {
            let m = self.longest(chain, candidates);
            if m.blocks == 0 {
                return;
            }
            let mut s = m.servers;
            while s != 0 {
                f(s.trailing_zeros() as usize, m.blocks);
                s &= s - 1;
            }
            candidates &= !m.servers;
        }
    }

    /// Drop every block of `slot` (a server that left the pool, or was ejected).
    pub fn forget(&self, slot: usize) {
        if slot >= MAX_SERVERS {
            return;
        }
        let bit = 1u64 << slot;
        let map = self.map.pin();
        let mut empty = Vec::new();
        for (k, e) in map.iter() {
            if e.servers.load(Relaxed) & bit != 0 && e.servers.fetch_and(!bit, Relaxed) == bit {
                empty.push(*k);
            }
        }
        self.held[slot].store(0, Relaxed);
        for k in empty {
            map.remove_if(&k, |_, e| e.servers.load(Relaxed) == 0).ok();
        }
    }

    /// Bring every server within its capacity, oldest blocks first; how many were dropped.
    /// Runs off the request path (a scan of the whole index).
    pub fn evict(&self) -> usize {
        let capacity = self.capacity.load(Relaxed);
        let over: u64 = (0..MAX_SERVERS)
            .filter(|&s| self.held[s].load(Relaxed) > capacity)
            .fold(0, |m, s| m | 1 << s);
        if over == 0 {
            return 0;
        }
        let map = self.map.pin();
        // (last use, deeper first, hash)
        let mut by_slot: Vec<Vec<(u64, std::cmp::Reverse<u32>, u64)>> =
            vec![Vec::new(); MAX_SERVERS];
        for (k, e) in map.iter() {
            let mut s = e.servers.load(Relaxed) & over;
            while s != 0 {
                let slot = s.trailing_zeros() as usize;
                by_slot[slot].push((e.last_ms.load(Relaxed), std::cmp::Reverse(e.depth), *k));
                s &= s - 1;
            }
        }
        let mut dropped = 0;
        for (slot, mut blocks) in by_slot.into_iter().enumerate() {
            let excess = blocks.len().saturating_sub(capacity);
            if excess == 0 {
                continue;
            }
            // The oldest first; among blocks of one instant, the deepest first (a prefix
            // outlives its continuations).
            blocks.sort_unstable();
            let bit = 1u64 << slot;
            for &(_, _, k) in &blocks[..excess] {
                if let Some(e) = map.get(&k) {
                    if e.servers.fetch_and(!bit, Relaxed) == bit {
                        map.remove_if(&k, |_, e| e.servers.load(Relaxed) == 0).ok();
                    }
                }
            }
            self.held[slot].fetch_sub(excess.min(self.held[slot].load(Relaxed)), Relaxed);
            dropped += excess;
        }
        self.evicted.fetch_add(dropped as u64, Relaxed);
        dropped
    }

    /// Blocks each server may hold (a reload, or a server's reported KV cache size).
    pub fn set_capacity(&self, blocks: usize) {
        self.capacity.store(blocks.max(1), Relaxed);
    }

    /// Distinct block hashes indexed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Blocks `slot` holds.
    pub fn held(&self, slot: usize) -> usize {
        self.held.get(slot).map_or(0, |h| h.load(Relaxed))
    }

    /// Blocks dropped by eviction since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::Chainer;
    use super::*;

    fn chain(text: &str) -> Vec<u64> {
        let mut out = Vec::new();
        Chainer::new(&mut out, 4, usize::MAX).push(text.as_bytes());
        out
    }

    #[test]
    fn the_longest_prefix_is_found_with_the_servers_that_hold_it() {
        let ix = PrefixIndex::new(1000);
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
        let mut depths = Vec::new();
        ix.each_depth(&ask, 0b111, |s, d| depths.push((s, d)));
        assert_eq!(depths, [(0, m.blocks), (1, m1.blocks)]);
        assert_eq!(
            ix.longest(&chain("Nothing alike here"), 0b111),
            Match::default()
        );
        assert_eq!(ix.longest(&ask, 0), Match::default());
    }

    #[test]
    fn a_server_that_leaves_takes_its_blocks_with_it() {
        let ix = PrefixIndex::new(1000);
        let c = chain("a prompt that is shared by two servers");
        ix.record(&c, 3, 1);
        ix.record(&c, 5, 1);
        assert_eq!(ix.held(3), c.len());
        ix.forget(3);
        assert_eq!(ix.held(3), 0);
        assert_eq!(ix.longest(&c, u64::MAX).servers, 1 << 5);
        ix.forget(5);
        assert!(ix.is_empty(), "blocks no one holds go");
    }

    #[test]
    fn eviction_keeps_each_server_within_its_capacity_oldest_first() {
        let ix = PrefixIndex::new(10);
        let old = chain("old prompt, used first, once: gone soon");
        let new = chain("new prompt, used after: stays in the cache");
        assert_eq!(new.len(), 10);
        ix.record(&old, 0, 1);
        ix.record(&new, 0, 2);
        assert_eq!(ix.evict(), old.len());
        assert_eq!(ix.held(0), 10);
        assert_eq!(ix.longest(&new, 1).blocks, 10);
        assert_eq!(ix.longest(&old, 1).blocks, 0);
        assert_eq!(ix.len(), 10);
        assert_eq!(ix.evicted(), old.len() as u64);
        assert_eq!(ix.evict(), 0);
    }

    #[test]
    fn eviction_never_breaks_a_prefix() {
        // A prompt touched again keeps its first blocks longest: the lookup's bisection
        // stays right however much is evicted.
        let ix = PrefixIndex::new(8);
        let c = chain("0123456789abcdefghijklmnopqrstuvwxyz0123456789");
        ix.record(&c[..4], 0, 5);
        ix.record(&c, 0, 3);
        ix.evict();
        assert_eq!(ix.longest(&c, 1).blocks, 8);
    }
}
