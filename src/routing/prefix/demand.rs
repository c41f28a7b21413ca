//! How often each prompt prefix is asked for: the requests per second whose longest cached
//! prefix ended at a given block, for the deepest blocks seen recently. It tells a prefix
//! that many users share (a system prompt, a document: worth a copy on more servers when its
//! holder is over its share) from one conversation's history (asked for once a turn: moving it
//! only prefills it again).
//!
//! A fixed table of [`SLOTS`] counters, lossy like the index: a block takes a slot held by a
//! prefix asked for less than [`KEEP_PER_S`] a second, never one asked for more, so two hot
//! prefixes on one slot leave one of them counted (it is then only not spread early). The
//! request path adds to a counter; the maintenance tick turns counts into rates (decaying as
//! the servers' request rates do, [`crate::routing::rate::RATE_WINDOW_S`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Slots per pool (16 bytes each: 64 KiB).
pub const SLOTS: usize = 4096;
/// A slot whose prefix is asked for at least this often is kept from other blocks.
const KEEP_PER_S: f32 = 1.0;

#[derive(Default)]
struct Slot {
    /// The block hash counted (0: none).
    key: AtomicU64,
    /// Requests since the last update.
    count: AtomicU32,
    /// Requests per second, recently (f32 bits).
    rate: AtomicU32,
}

/// One pool's prefix demand.
pub struct PrefixDemand {
    slots: Box<[Slot]>,
}

impl Default for PrefixDemand {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

impl PrefixDemand {
    #[inline]
    fn slot(&self, key: u64) -> &Slot {
        &self.slots[(key as usize) & (SLOTS - 1)]
    }

    /// Count one request whose longest cached prefix ends at block hash `key`, and answer how
    /// many a second asked for it recently (before this one).
    #[inline]
    pub fn note(&self, key: u64) -> f32 {
        let key = key.max(1);
        let s = self.slot(key);
        if s.key.load(Relaxed) == key {
            s.count.fetch_add(1, Relaxed);
            return f32::from_bits(s.rate.load(Relaxed));
        }
        let held = f32::from_bits(s.rate.load(Relaxed));
        if held < KEEP_PER_S && s.count.load(Relaxed) == 0 {
            // (Two requests may both take it; one of them is counted.)
            s.key.store(key, Relaxed);
            s.rate.store(0f32.to_bits(), Relaxed);
            s.count.store(1, Relaxed);
        }
        0.0
    }

    /// Turn the counts since the last update, `dt_s` seconds ago, into rates. One updater at a
    /// time (the maintenance tick).
    pub fn update(&self, dt_s: f64) {
        if dt_s <= 0.0 {
            return;
        }
        for s in self.slots.iter() {
            let n = s.count.swap(0, Relaxed);
            let was = f64::from(f32::from_bits(s.rate.load(Relaxed)));
            if n == 0 && was == 0.0 {
                continue;
            }
            let now = crate::routing::rate::decayed(was, f64::from(n), dt_s);
            // Below a request an hour: forgotten.
            let now = if now < 1.0 / 3600.0 { 0.0 } else { now };
            s.rate.store((now as f32).to_bits(), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rate::RATE_WINDOW_S as WINDOW_S;

    #[test]
    fn a_prefix_asked_for_often_is_told_from_one_asked_for_once_and_keeps_its_slot() {
        let d = PrefixDemand::default();
        let hot = 7u64;
        // 20 requests a second for two windows.
        for _ in 0..(2.0 * WINDOW_S / 0.05) as usize {
            d.note(hot);
            d.update(0.05);
        }
        let rate = d.note(hot);
        assert!((rate - 20.0 * (1.0 - (-2f32).exp())).abs() < 1.0, "{rate}");
        // Another block on its slot is not counted while it stays hot...
        let other = hot + SLOTS as u64;
        assert_eq!(d.note(other), 0.0);
        d.update(0.05);
        assert_eq!(d.note(other), 0.0);
        assert!(d.note(hot) > 10.0);
        // ...and a block asked for once, on a slot of its own, is asked for rarely.
        let once = 9u64;
        assert_eq!(d.note(once), 0.0);
        d.update(0.05);
        let rate = d.note(once);
        assert!(rate > 0.0 && rate < 0.1, "{rate}");
        // Once the hot prefix is no longer asked for, its slot goes to another block.
        for _ in 0..(5.0 * WINDOW_S / 0.05) as usize {
            d.update(0.05);
        }
        assert_eq!(d.note(other), 0.0);
        d.update(0.05);
        assert!(d.note(other) > 0.0, "the slot was taken");
    }
}
