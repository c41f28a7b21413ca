//! The simulated GPU's KV cache: a fixed number of blocks, with vLLM V1's prefix caching.
//!
//! Each block is in use (pinned by the requests that hold it: a reference count) or free. A
//! free block keeps its hash, so a later prompt with the same prefix finds it, until it is
//! evicted: the free blocks are a queue (vLLM's free-block queue), a new block is taken from
//! its front, and a request's blocks go to its back when the request ends, its last (deepest)
//! block first, so that the least recently freed blocks are evicted first and, of one prompt,
//! its tail before its head. A block found by a prefix lookup while free leaves the queue.

use std::collections::HashMap;

/// A block's index.
pub type BlockId = u32;

const NIL: BlockId = BlockId::MAX;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    hash: Option<u64>,
    prev: BlockId,
    next: BlockId,
}

/// The blocks, the hash table of the cached ones, and the free queue (a doubly linked list
/// threaded through the blocks).
#[derive(Debug)]
pub struct KvCache {
    blocks: Vec<Block>,
    cached: HashMap<u64, BlockId>,
    head: BlockId,
    tail: BlockId,
    free_len: usize,
    evictions: u64,
}

/// Blocks given to a request: the hit blocks first (`hits` of them), then the new ones.
#[derive(Debug)]
pub struct Allocation {
    pub blocks: Vec<BlockId>,
    pub hits: usize,
}

impl KvCache {
    pub fn new(num_blocks: usize) -> Self {
        let n = num_blocks.clamp(1, NIL as usize - 1) as BlockId;
        let blocks = (0..n)
            .map(|i| Block {
                ref_cnt: 0,
                hash: None,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == n { NIL } else { i + 1 },
            })
            .collect();
        Self {
            blocks,
            cached: HashMap::new(),
            head: 0,
            tail: n - 1,
            free_len: n as usize,
            evictions: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks not held by a request (cached or not).
    pub fn free_blocks(&self) -> usize {
        self.free_len
    }

    /// Share of the blocks held by requests (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        1.0 - self.free_len as f64 / self.blocks.len() as f64
    }

    /// Blocks with a hash (a prefix a lookup can find).
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Cached blocks evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// How many of `hashes`' leading blocks are cached: the longest cached prefix, in blocks.
    pub fn cached_prefix(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// Blocks for a request of `total` blocks whose prompt has the block `hashes`: its longest
    /// cached prefix (at most `max_hits` blocks) is shared, the rest taken from the free
    /// queue's front (evicting what they cached). None, and nothing changed, when the free
    /// blocks do not suffice.
    pub fn allocate(
        &mut self,
        hashes: &[u64],
        max_hits: usize,
        total: usize,
    ) -> Option<Allocation> {
        let hits = self.cached_prefix(hashes).min(max_hits).min(total);
        let hit_ids: Vec<BlockId> = hashes[..hits].iter().map(|h| self.cached[h]).collect();
        let hits_free = hit_ids
            .iter()
            .filter(|&&b| self.blocks[b as usize].ref_cnt == 0)
            .count();
        if self.free_len - hits_free < total - hits {
            return None;
        }
        let mut blocks = Vec::with_capacity(total);
        for b in hit_ids {
            self.touch(b);
            blocks.push(b);
        }
        for _ in hits..total {
            blocks.push(self.take_free().expect("counted free blocks"));
        }
        Some(Allocation { blocks, hits })
    }

    /// One more block (a request's output outgrew its blocks); None when none is free.
    pub fn allocate_one(&mut self) -> Option<BlockId> {
        self.take_free()
    }

    /// A full block of a prompt has been computed: cache it under `hash`, unless a block with
    /// that hash is cached already (two requests computed the same prefix at once; the first
    /// stays, as in vLLM).
    pub fn register(&mut self, block: BlockId, hash: u64) {
        let b = &mut self.blocks[block as usize];
        if b.hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            b.hash = Some(hash);
        }
    }

    /// A request lets go of its blocks: those no other request holds go to the free queue's
    /// back, its last block first (so that its tail is evicted before its head).
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.ref_cnt > 0, "freeing a free block");
            block.ref_cnt = block.ref_cnt.saturating_sub(1);
            if block.ref_cnt == 0 {
                self.push_back(b);
            }
        }
    }

    /// Pin a cached block found by a lookup (it leaves the free queue if it was there).
    fn touch(&mut self, b: BlockId) {
        if self.blocks[b as usize].ref_cnt == 0 {
            self.unlink(b);
        }
        self.blocks[b as usize].ref_cnt += 1;
    }

    /// The free queue's front block, its cached hash evicted, pinned once.
    fn take_free(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        let block = &mut self.blocks[b as usize];
        if let Some(h) = block.hash.take() {
            self.cached.remove(&h);
            self.evictions += 1;
        }
        block.ref_cnt = 1;
        Some(b)
    }

    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let block = &self.blocks[b as usize];
            (block.prev, block.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.blocks[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.blocks[n as usize].prev = prev,
        }
        let block = &mut self.blocks[b as usize];
        block.prev = NIL;
        block.next = NIL;
        self.free_len -= 1;
    }

    fn push_back(&mut self, b: BlockId) {
        let tail = self.tail;
        {
            let block = &mut self.blocks[b as usize];
            block.prev = tail;
            block.next = NIL;
        }
        match tail {
            NIL => self.head = b,
            t => self.blocks[t as usize].next = b,
        }
        self.tail = b;
        self.free_len += 1;
    }

    /// The free queue from front to back (tests).
    #[cfg(test)]
    fn queue(&self) -> Vec<BlockId> {
        let mut out = Vec::new();
        let mut b = self.head;
        while b != NIL {
            out.push(b);
            b = self.blocks[b as usize].next;
        }
        out
    }

    /// Every invariant: the queue holds exactly the unpinned blocks, the hash table points at
    /// blocks that carry that hash (tests).
    #[cfg(test)]
    fn check(&self) {
        let q = self.queue();
        assert_eq!(q.len(), self.free_len);
        let unpinned = self.blocks.iter().filter(|b| b.ref_cnt == 0).count();
        assert_eq!(unpinned, self.free_len);
        assert!(self.cached.len() <= self.blocks.len());
        for (h, &b) in &self.cached {
            assert_eq!(self.blocks[b as usize].hash, Some(*h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cache `blocks` under `hashes` (a prompt's computed blocks).
    fn compute(c: &mut KvCache, a: &Allocation, hashes: &[u64]) {
        for (b, h) in a.blocks.iter().zip(hashes) {
            c.register(*b, *h);
        }
    }

    #[test]
    fn longest_prefix_is_found_and_shared() {
        let mut c = KvCache::new(8);
        let a = c.allocate(&[1, 2, 3], 3, 3).unwrap();
        assert_eq!(a.hits, 0);
        compute(&mut c, &a, &[1, 2, 3]);
        // Held by the first request, found by the second: shared, not copied.
        assert_eq!(c.cached_prefix(&[1, 2, 9]), 2);
        assert_eq!(c.cached_prefix(&[9, 2, 3]), 0); // a chain: no hit past a miss
        let b = c.allocate(&[1, 2, 9, 10], 4, 4).unwrap();
        assert_eq!(b.hits, 2);
        assert_eq!(&b.blocks[..2], &a.blocks[..2]);
        assert_eq!(c.free_blocks(), 8 - 5);
        c.check();
        c.free(&a.blocks);
        c.free(&b.blocks);
        assert_eq!(c.free_blocks(), 8);
        // Freed blocks stay cached.
        assert_eq!(c.cached_prefix(&[1, 2, 3]), 3);
        // max_hits caps the hit (a whole-prompt hit recomputes its last block).
        assert_eq!(c.allocate(&[1, 2, 3], 2, 3).unwrap().hits, 2);
        c.check();
    }

    #[test]
    fn pinned_blocks_are_never_evicted_and_capacity_holds() {
        let mut c = KvCache::new(4);
        let a = c.allocate(&[1, 2, 3], 3, 3).unwrap();
        compute(&mut c, &a, &[1, 2, 3]);
        // One block left: a request of two waits, nothing is evicted.
        assert!(c.allocate(&[7, 8], 2, 2).is_none());
        assert_eq!(c.cached_prefix(&[1, 2, 3]), 3);
        assert_eq!(c.free_blocks(), 1);
        let one = c.allocate_one().unwrap();
        assert!(c.allocate_one().is_none());
        c.check();
        c.free(&[one]);
        c.free(&a.blocks);
        // Now two fit, evicting the cached blocks a request freed (its deepest first).
        let d = c.allocate(&[7, 8], 2, 2).unwrap();
        assert_eq!(d.hits, 0);
        assert_eq!(c.cached_prefix(&[1, 2, 3]), 2);
        assert_eq!(c.evictions(), 1); // the unhashed block went first, then a's last block
        c.check();
    }

    #[test]
    fn eviction_order_is_least_recently_freed_and_deepest_first() {
        let mut c = KvCache::new(6);
        let a = c.allocate(&[1, 2, 3], 3, 3).unwrap();
        compute(&mut c, &a, &[1, 2, 3]);
        let b = c.allocate(&[4, 5, 6], 3, 3).unwrap();
        compute(&mut c, &b, &[4, 5, 6]);
        c.free(&b.blocks); // b freed first: its blocks are evicted before a's
        c.free(&a.blocks);
        assert_eq!(
            c.queue(),
            vec![
                b.blocks[2],
                b.blocks[1],
                b.blocks[0],
                a.blocks[2],
                a.blocks[1],
                a.blocks[0]
            ]
        );
        let x = c.allocate(&[9], 1, 1).unwrap();
        assert_eq!(x.blocks, vec![b.blocks[2]]);
        assert_eq!(c.cached_prefix(&[4, 5, 6]), 2); // b's deepest block went first
        assert_eq!(c.evictions(), 1);
        // A hit on a free block takes it out of the queue: a's head survives what follows.
        let y = c.allocate(&[1], 1, 1).unwrap();
        assert_eq!((y.hits, y.blocks[0]), (1, a.blocks[0]));
        let z = c.allocate(&[20, 21, 22, 23], 4, 4).unwrap();
        assert_eq!(z.hits, 0);
        assert_eq!(c.cached_prefix(&[1, 2, 3]), 1);
        assert_eq!(c.cached_prefix(&[4]), 0);
        assert_eq!(c.free_blocks(), 0);
        c.check();
    }

    #[test]
    fn a_duplicate_block_is_not_cached_twice() {
        let mut c = KvCache::new(4);
        let a = c.allocate(&[1], 1, 1).unwrap();
        let b = c.allocate(&[1], 1, 1).unwrap(); // not computed yet: no hit
        assert_eq!(b.hits, 0);
        c.register(a.blocks[0], 1);
        c.register(b.blocks[0], 1);
        assert_eq!(c.cached_blocks(), 1);
        c.free(&b.blocks);
        c.free(&a.blocks);
        c.check();
    }

    #[test]
    fn random_use_keeps_every_invariant() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut c = KvCache::new(64);
        let mut held: Vec<Allocation> = Vec::new();
        for _ in 0..5_000 {
            if rng.random_bool(0.55) {
                // A prompt from one of a few families, sharing leading blocks.
                let family: u64 = rng.random_range(0..4);
                let len = rng.random_range(1..12);
                let hashes: Vec<u64> = (0..len)
                    .map(|i| {
                        if i < 4 {
                            family * 100 + i
                        } else {
                            rng.random()
                        }
                    })
                    .collect();
                let total = len as usize + rng.random_range(0..3);
                if let Some(a) = c.allocate(&hashes, hashes.len(), total) {
                    compute(&mut c, &a, &hashes);
                    held.push(a);
                }
            } else if !held.is_empty() {
                let a = held.swap_remove(rng.random_range(0..held.len()));
                c.free(&a.blocks);
            }
            let pinned: usize = c.num_blocks() - c.free_blocks();
            assert!(pinned <= c.num_blocks());
            c.check();
        }
    }
}
