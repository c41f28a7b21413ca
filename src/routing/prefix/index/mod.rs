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

mod scans;
#[cfg(test)]
mod tests;

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
