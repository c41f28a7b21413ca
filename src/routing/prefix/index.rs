//! Which servers of one model's pool recently served which prompt prefixes, as block hashes
//! (see [`super::chain`]): an approximation of what each server still holds in its KV cache.
//!
//! A flat table of a fixed number of entries, allocated once, in buckets of one cache line
//! (four entries of a 40-bit tag with a 24-bit last-use stamp, and a bit per server). A probe
//! reads one cache line; no lock is taken, readers and writers only load and swap atomics. The
//! table is lossy, as the caches it mirrors are: a full bucket gives its least recently used
//! entry to a new block.
//!
//! A block's bucket is the low bits of its tag, so that a larger table can be filled from a
//! smaller one ([`PrefixIndex::carry_into`]: a pool that outgrows its table keeps what it
//! learnt). The entries of a bucket share those bits, which leaves 40 − log2(buckets) bits to
//! tell its blocks apart: 20 at 4 M entries, a false match once in about 260,000 probes.
//!
//! A lookup walks the prompt's chain by galloping and then bisection, which is sound because a
//! server that holds a block's hash holds its prefix too: a request records its whole chain
//! (the prefix's stamps are never older than its continuation's), and eviction drops the
//! least recently used blocks first.
//!
//! Each server may hold `capacity` blocks (its KV cache's size in blocks, or a configured
//! share of it). [`PrefixIndex::evict`] brings a server over its bound back under it, oldest
//! blocks first, off the request path (a scan of the table).

use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Servers per pool the index can tell apart (one bit each).
pub const MAX_SERVERS: usize = 64;

/// Entries per bucket (one 64-byte cache line of 16-byte entries).
const WAYS: usize = 4;
/// Bits of the last-use stamp (milliseconds, wrapping every 4.66 hours).
const STAMP_BITS: u32 = 24;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
/// A block unused this long is dropped by the next scan whatever the capacity (well inside the
/// stamp's wrap, so that an age is never misread).
pub const MAX_AGE_MS: u64 = 2 * 3_600_000;
/// A shared prefix's stamp is rewritten at most this often (every request touches it: writing
/// it each time would move its cache line between cores for nothing).
const STAMP_GRAIN_MS: u64 = 8;
/// Blocks ahead whose buckets `record` prefetches.
const PREFETCH_AHEAD: usize = 8;
/// Eviction brings a server over its capacity down to this share of it, so that the next scan
/// is not due at once.
const LOW_WATER: f64 = 0.9;

/// One block hash: `key` is its tag and last-use stamp (0: empty); `servers` a bit per slot.
#[derive(Default)]
struct Entry {
    key: AtomicU64,
    servers: AtomicU64,
}

#[derive(Default)]
#[repr(C, align(64))]
struct Bucket([Entry; WAYS]);

/// The index of one model's pool. Servers are slots `0..MAX_SERVERS`.
pub struct PrefixIndex {
    buckets: Box<[Bucket]>,
    mask: usize,
    /// Blocks each slot holds: its bits set in the table, counted as each is set or cleared,
    /// never recounted by a scan (which would miss the blocks recorded while it ran). Signed: a
    /// block cleared before its writer counted it shows briefly below 0 (read as 0).
    held: [AtomicIsize; MAX_SERVERS],
    /// Blocks a slot may hold.
    capacity: AtomicUsize,
    /// Blocks dropped to keep servers within their capacity (or for age).
    evicted: AtomicU64,
    /// Blocks lost to a full bucket: entries given to another block, or blocks not recorded
    /// because every entry of their bucket was stamped at that instant.
    replaced: AtomicU64,
}

/// The longest cached prefix: its length in blocks, and the servers (a bit per slot) that
/// hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Match {
    pub blocks: usize,
    pub servers: u64,
}

#[inline]
fn tag_of(h: u64) -> u64 {
    // The high 40 bits (the bucket comes from the low ones); never 0, which marks an empty
    // entry.
    (h >> STAMP_BITS).max(1) << STAMP_BITS
}

#[inline]
fn stamp_of(now_ms: u64) -> u64 {
    now_ms & STAMP_MASK
}

/// Milliseconds since `key` was stamped; 0 for a stamp a little ahead of `now_ms` (another
/// thread's clock read later), which is told from an old one by the half of the stamp's range
/// it falls in (ages beyond [`MAX_AGE_MS`] never last, a scan drops them).
#[inline]
fn age(key: u64, now_ms: u64) -> u64 {
    let a = stamp_of(now_ms).wrapping_sub(key & STAMP_MASK) & STAMP_MASK;
    if a > STAMP_MASK / 2 {
        0
    } else {
        a
    }
}

impl PrefixIndex {
    /// An index of `entries` blocks in all (rounded up to a power of two, at least one
    /// bucket), whose servers hold at most `capacity` blocks each.
    pub fn new(entries: usize, capacity: usize) -> Self {
        let buckets = entries.div_ceil(WAYS).max(1).next_power_of_two();
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets - 1,
            held: std::array::from_fn(|_| AtomicIsize::new(0)),
            capacity: AtomicUsize::new(capacity.max(1)),
            evicted: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        }
    }

    #[inline]
    fn bucket(&self, h: u64) -> &Bucket {
        self.bucket_of_tag(tag_of(h))
    }

    #[inline]
    fn bucket_of_tag(&self, tag: u64) -> &Bucket {
        // `mask` < the slice's length by construction.
        &self.buckets[(tag >> STAMP_BITS) as usize & self.mask]
    }

    /// The servers (a bit per slot) that hold block hash `h`.
    #[inline]
    fn holders(&self, h: u64) -> u64 {
        let tag = tag_of(h);
        for e in &self.bucket(h).0 {
            if e.key.load(Relaxed) & !STAMP_MASK == tag {
                return e.servers.load(Relaxed);
            }
        }
        0
    }

    /// Record that server `slot` was sent the prompt of `chain` at `now_ms`: as much of it
    /// as the server can hold (its first `capacity` blocks). Returns the blocks the server did
    /// not hold yet.
    pub fn record(&self, chain: &[u64], slot: usize, now_ms: u64) -> usize {
        if slot >= MAX_SERVERS {
            return 0;
        }
        let chain = &chain[..chain.len().min(self.capacity.load(Relaxed))];
        let bit = 1u64 << slot;
        let stamp = stamp_of(now_ms);
        // Blocks newly held by `slot`, counted once at the end.
        let mut added = 0usize;
        for (i, &h) in chain.iter().enumerate() {
            // The buckets of the next blocks are fetched while this one is written: a long
            // new prompt's blocks are cold in the CPU's cache.
            if let Some(&ahead) = chain.get(i + PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            let tag = tag_of(h);
            let bucket = &self.bucket(h).0;
            let mut victim: Option<(&Entry, u64)> = None;
            let mut oldest = 0;
            let mut found = false;
            for e in bucket {
                let key = e.key.load(Relaxed);
                if key & !STAMP_MASK == tag {
                    found = true;
                    if e.servers.load(Relaxed) & bit == 0
                        && e.servers.fetch_or(bit, Relaxed) & bit == 0
                    {
                        added += 1;
                    }
                    if age(key, now_ms) >= STAMP_GRAIN_MS {
                        // Lost to a concurrent writer: its stamp is as fresh.
                        let _ = e.key.compare_exchange(key, tag | stamp, Relaxed, Relaxed);
                    }
                    break;
                }
                // An empty entry is the best victim, then the least recently used.
                let a = if key == 0 { u64::MAX } else { age(key, now_ms) };
                if victim.is_none() || a > oldest {
                    victim = Some((e, key));
                    oldest = a;
                }
            }
            if found {
                continue;
            }
            let Some((e, old)) = victim else { continue };
            if old != 0 && oldest == 0 {
                // The bucket is full of blocks stamped this very instant: this prompt's own
                // earlier blocks, or a concurrent one's. Giving one up could break a prefix at
                // its head (a lookup finds nothing past a lost block); this deeper block goes
                // unrecorded instead, which only shortens what a lookup may find.
                self.replaced.fetch_add(1, Relaxed);
                continue;
            }
            if e.key
                .compare_exchange(old, tag | stamp, Relaxed, Relaxed)
                .is_err()
            {
                // Another writer took the entry first: this block goes unrecorded (lossy).
                continue;
            }
            let gone = e.servers.swap(bit, Relaxed);
            if old != 0 {
                self.replaced.fetch_add(1, Relaxed);
            }
            self.release(gone);
            added += 1;
        }
        if added > 0 {
            self.held[slot].fetch_add(added as isize, Relaxed);
        }
        added
    }

    /// Ask the CPU to fetch the bucket of `h` (a hint; nothing on other targets).
    #[inline]
    fn prefetch(&self, h: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.bucket(h) as *const Bucket as *const i8;
            // SAFETY: a prefetch is only a hint to the cache; it reads nothing and cannot
            // fault, and `p` points into the table anyway.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = h;
    }

    /// Count the blocks of `servers` (a bit per slot) as no longer held.
    fn release(&self, mut servers: u64) {
        while servers != 0 {
            self.drop_held(servers.trailing_zeros() as usize, 1);
            servers &= servers - 1;
        }
    }

    /// Count `n` blocks of `slot` as no longer held.
    fn drop_held(&self, slot: usize, n: usize) {
        if n > 0 {
            self.held[slot].fetch_sub(n as isize, Relaxed);
        }
    }

    /// The candidates (a bit per slot) by how much of `chain` they hold, deepest first: into
    /// `out`, one [`Match`] per depth (its servers among the candidates only), until `out` is
    /// full or no candidate left holds any of it. The number of depths found; a candidate in
    /// none of them holds nothing of the prompt, or less than the last depth found.
    pub fn holders_by_depth(&self, chain: &[u64], mut candidates: u64, out: &mut [Match]) -> usize {
        let mut found = 0;
        while found < out.len() && candidates != 0 {
            let m = self.longest(chain, candidates);
            if m.blocks == 0 {
                break;
            }
            out[found] = Match {
                blocks: m.blocks,
                servers: m.servers & candidates,
            };
            found += 1;
            candidates &= !m.servers;
        }
        found
    }

    /// The longest prefix of `chain` that any of `candidates` (a bit per slot) holds.
    pub fn longest(&self, chain: &[u64], candidates: u64) -> Match {
        if chain.is_empty() || candidates == 0 {
            return Match::default();
        }
        let holders = |i: usize| self.holders(chain[i]) & candidates;
        // The gallop's first probes, fetched together.
        for i in [1, 3, 7, 15, 31] {
            if let Some(&h) = chain.get(i) {
                self.prefetch(h);
            }
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
        if hi == chain.len() && lo + 1 < hi {
            // Galloped past the end: the last block decides whether the whole chain is held.
            let h = holders(hi - 1);
            if h != 0 {
                return Match {
                    blocks: hi,
                    servers: h,
                };
            }
            hi -= 1;
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

    /// Drop every block of the servers in `slots` (a bit per slot: servers that left the pool,
    /// or were ejected). A scan of the table, off the request path.
    pub fn forget(&self, slots: u64) {
        if slots == 0 {
            return;
        }
        for b in self.buckets.iter() {
            for e in &b.0 {
                let s = e.servers.load(Relaxed);
                if s & slots != 0 {
                    let before = e.servers.fetch_and(!slots, Relaxed);
                    // Counted off as cleared: a block recorded for a slot while the scan ran
                    // stays held, and counted.
                    self.release(before & slots);
                    if before & !slots == 0 {
                        let key = e.key.load(Relaxed);
                        let _ = e.key.compare_exchange(key, 0, Relaxed, Relaxed);
                    }
                }
            }
        }
    }

    /// Bring every server within its capacity, oldest blocks first, and drop blocks older than
    /// [`MAX_AGE_MS`]; how many blocks (per server) were dropped. A scan of the table (two when
    /// a server is over its capacity), off the request path.
    pub fn evict(&self, now_ms: u64) -> usize {
        let capacity = self.capacity.load(Relaxed);
        let over: u64 = (0..MAX_SERVERS)
            .filter(|&s| self.held(s) > capacity)
            .fold(0, |m, s| m | 1 << s);
        // The age at or under which each server over its capacity keeps a block.
        let mut keep_age = [MAX_AGE_MS; MAX_SERVERS];
        if over != 0 {
            let mut ages: Vec<Vec<u64>> = vec![Vec::new(); MAX_SERVERS];
            for b in self.buckets.iter() {
                for e in &b.0 {
                    let key = e.key.load(Relaxed);
                    if key == 0 {
                        continue;
                    }
                    let mut s = e.servers.load(Relaxed) & over;
                    while s != 0 {
                        ages[s.trailing_zeros() as usize].push(age(key, now_ms));
                        s &= s - 1;
                    }
                }
            }
            let keep = ((capacity as f64 * LOW_WATER) as usize).max(1);
            for (slot, a) in ages.iter_mut().enumerate() {
                if a.len() > keep {
                    // Blocks of one instant go together (a chain is stamped at once): those
                    // of the instant at the cut stay if the server is then within its
                    // capacity, else they go too. Never a prefix broken.
                    let (_, nth, _) = a.select_nth_unstable(keep);
                    let nth = *nth;
                    let within = a.iter().filter(|&&x| x <= nth).count() <= capacity;
                    let cut = if within || nth == 0 { nth } else { nth - 1 };
                    keep_age[slot] = cut.min(MAX_AGE_MS);
                }
            }
        }
        let mut gone = [0usize; MAX_SERVERS];
        for b in self.buckets.iter() {
            for e in &b.0 {
                let key = e.key.load(Relaxed);
                if key == 0 {
                    continue;
                }
                let a = age(key, now_ms);
                let servers = e.servers.load(Relaxed);
                let mut drop = 0u64;
                let mut s = servers;
                while s != 0 {
                    let slot = s.trailing_zeros() as usize;
                    if a > keep_age[slot] {
                        drop |= 1 << slot;
                    }
                    s &= s - 1;
                }
                if drop != 0 {
                    let before = e.servers.fetch_and(!drop, Relaxed);
                    let mut d = before & drop;
                    while d != 0 {
                        gone[d.trailing_zeros() as usize] += 1;
                        d &= d - 1;
                    }
                    if before & !drop == 0 {
                        let _ = e.key.compare_exchange(key, 0, Relaxed, Relaxed);
                    }
                }
            }
        }
        // The running counts lose exactly the blocks dropped. (A count the scan made would be
        // wrong by the blocks of the prompts recorded while it ran, whichever it saw.)
        for (slot, n) in gone.iter().enumerate() {
            self.drop_held(slot, *n);
        }
        let dropped = gone.iter().sum::<usize>();
        self.evicted.fetch_add(dropped as u64, Relaxed);
        dropped
    }

    /// Copy every block held into `to` (a table of another size, not yet in use), with its
    /// stamp and servers; blocks recorded here meanwhile may be missed. Blocks carried over
    /// (a block whose bucket in `to` is full is not, unless it is more recent than one there).
    pub fn carry_into(&self, to: &PrefixIndex) -> usize {
        let mut carried = 0;
        for e in self.buckets.iter().flat_map(|b| &b.0) {
            let (key, servers) = (e.key.load(Relaxed), e.servers.load(Relaxed));
            if key == 0 || servers == 0 {
                continue;
            }
            let bucket = &to.bucket_of_tag(key & !STAMP_MASK).0;
            // An empty entry, else the least recent one if older than this block.
            let older = |x: &&Entry| age(x.key.load(Relaxed), key);
            let Some(at) = bucket
                .iter()
                .find(|x| x.key.load(Relaxed) == 0)
                .or_else(|| bucket.iter().max_by_key(older).filter(|x| older(x) > 0))
            else {
                continue;
            };
            let old = at.servers.swap(servers, Relaxed);
            at.key.store(key, Relaxed);
            to.release(old);
            let mut s = servers;
            while s != 0 {
                to.held[s.trailing_zeros() as usize].fetch_add(1, Relaxed);
                s &= s - 1;
            }
            carried += 1;
        }
        carried
    }

    /// Whether a server holds more than its capacity (an [`Self::evict`] is due).
    pub fn over_capacity(&self) -> bool {
        let capacity = self.capacity.load(Relaxed);
        (0..MAX_SERVERS).any(|s| self.held(s) > capacity)
    }

    /// Blocks each server may hold (a reload, or a server's reported KV cache size).
    pub fn set_capacity(&self, blocks: usize) {
        self.capacity.store(blocks.max(1), Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Relaxed)
    }

    /// Entries the table has room for.
    pub fn entries(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes the table takes.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// Blocks `slot` holds.
    pub fn held(&self, slot: usize) -> usize {
        self.held
            .get(slot)
            .map_or(0, |h| h.load(Relaxed).max(0) as usize)
    }

    /// Blocks held, summed over the servers.
    pub fn held_total(&self) -> usize {
        (0..MAX_SERVERS).map(|s| self.held(s)).sum()
    }

    /// Blocks dropped by eviction since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// Blocks lost to a full bucket (see the field), since the start.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
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
        Chainer::new(&mut out, 4, usize::MAX).push(text.as_bytes());
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
}
