//! The prefix index's scans of its whole table, off the request path: forgetting the servers
//! that left, eviction to each server's capacity and by age, and carrying the blocks into a
//! larger table.

use super::{age, PrefixIndex, LOW_WATER, MAX_AGE_MS, MAX_SERVERS, STAMP_MASK};
use std::sync::atomic::Ordering::Relaxed;

impl PrefixIndex {
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

    /// Copy every block held into `to` (a table of another size), with its stamp and servers.
    /// `to` may be in use: a block already there gains this table's servers for it. Blocks
    /// carried over (a block whose bucket in `to` is full is not, unless it is more recent
    /// than one there). Blocks recorded here meanwhile may be missed: record them into `to`
    /// too (as `PoolIndex` does once it has a successor).
    pub fn carry_into(&self, to: &PrefixIndex) -> usize {
        let mut carried = 0;
        for e in self.buckets.iter().flat_map(|b| &b.0) {
            let (key, servers) = (e.key.load(Relaxed), e.servers.load(Relaxed));
            if key == 0 || servers == 0 {
                continue;
            }
            let tag = key & !STAMP_MASK;
            let bucket = &to.bucket_of_tag(tag).0;
            let gained = if let Some(there) = bucket
                .iter()
                .find(|x| x.key.load(Relaxed) & !STAMP_MASK == tag)
            {
                // Recorded into `to` since it took this table's place.
                servers & !there.servers.fetch_or(servers, Relaxed)
            } else {
                // An empty entry, else the least recent one if older than this block.
                let older = |k: u64| if k == 0 { u64::MAX } else { age(k, key) };
                let Some((at, seen)) = bucket
                    .iter()
                    .map(|x| (x, x.key.load(Relaxed)))
                    .max_by_key(|&(_, k)| older(k))
                    .filter(|&(_, k)| older(k) > 0)
                else {
                    continue;
                };
                if at
                    .key
                    .compare_exchange(seen, key, Relaxed, Relaxed)
                    .is_err()
                {
                    // Taken by a concurrent writer first.
                    continue;
                }
                to.release(at.servers.swap(servers, Relaxed));
                servers
            };
            let mut s = gained;
            while s != 0 {
                to.held[s.trailing_zeros() as usize].fetch_add(1, Relaxed);
                s &= s - 1;
            }
            carried += 1;
        }
        carried
    }
}
